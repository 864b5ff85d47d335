"""What the figures were measured on: CPU model, cores, load, versions."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: where oneDNN runs bfloat16 matmuls natively (as the server decides)."""
    from serve.model import cpu_has_native_bf16

    return cpu_has_native_bf16()


def load() -> float:
    return os.getloadavg()[0]


def describe() -> dict:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(), "gpu": gpu,
        "load_avg_1m_at_start": round(load(), 2),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }


def header(info: dict) -> str:
    return (f"{info['date']}  {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), "
            f"GPU {info['gpu'] or 'none'}, load {info['load_avg_1m_at_start']}, torch {info['torch']}, "
            f"transformers {info['transformers']}")
