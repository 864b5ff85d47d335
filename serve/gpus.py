"""Which GPUs this host shows, found without initialising CUDA (the gunicorn master must never do that)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """Identifiers to put in each worker's CUDA_VISIBLE_DEVICES, one per usable GPU ([] on a CPU host)."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",") if d.strip()]
        # CUDA stops at the first invalid entry, such as -1; so do we.
        out = []
        for d in ids:
            if d.startswith("-"):
                break
            out.append(d)
        return out
    return [str(i) for i in range(_count_gpus())]


def _count_gpus() -> int:
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            if listing.returncode == 0:
                return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0
