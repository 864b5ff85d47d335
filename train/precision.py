"""Which floating-point precision training runs in.

`auto`: bf16 on GPUs that support it, else fp16 on GPU; on a CPU bf16 where it is native (AVX512-BF16 or
AMX-BF16: oneDNN runs its matmuls in hardware; elsewhere bf16 is emulated and slower than fp32), else fp32.
(serve/model.py reads the same CPU flags for SERVE_CPU_BF16=auto; the training image does not ship serve/.)
"""
from __future__ import annotations

from .failure import TrainingError

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def choose(setting: str, *, cuda: bool, cuda_bf16: bool = False, cpu_bf16: bool = False) -> str:
    """`setting` (auto, fp32, fp16, bf16) -> the precision to train in; fp16 needs a GPU."""
    if setting == "auto":
        if cuda:
            return "bf16" if cuda_bf16 else "fp16"
        return "bf16" if cpu_bf16 else "fp32"
    if setting == "fp16" and not cuda:
        raise TrainingError("hyperparameter precision=fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return setting


def for_this_machine(setting: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    return choose(setting, cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
                  cpu_bf16=not cuda and cpu_has_native_bf16())
