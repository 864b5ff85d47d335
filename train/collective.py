"""Collective operations between training processes, always on the training device.

NCCL, the backend accelerate picks on GPUs, refuses tensors that are not on the GPU ("No backend type
associated with device type cpu"); gloo, on CPUs, takes CPU tensors. So every tensor given to a collective
is made on `device`: the training device, TrainingArguments.device (cuda:LOCAL_RANK under torchrun with
GPUs, cpu otherwise). tests/test_train_collective.py checks this without a GPU.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def max_across_processes(values, device: torch.device, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Element-wise maximum of `values` (a sequence or array) over all processes, as a numpy array.
    Every process must call it at the same point with the same shape."""
    tensor = torch.as_tensor(np.asarray(values), dtype=dtype, device=device)
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.cpu().numpy()
