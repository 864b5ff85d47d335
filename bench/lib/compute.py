"""Bare model forward timing, FLOP counting and the matmul peak, all in this process.

"Bare forward" is the model call alone (`model(input_values).logits`), batch 1, in inference mode, on
already normalised audio, with the device, dtype and torch threads the server uses, and the model prepared
as the server prepares it (serve.model.prepare): no HTTP, no decoding.
"""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np


def dtype_of(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def device():
    """The GPU when there is one (as the server picks), else the CPU."""
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def normalized(audio: np.ndarray) -> np.ndarray:
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


def _inputs(model, audio: np.ndarray, dtype):
    import torch

    values = torch.from_numpy(normalized(audio))[None, :].to(device()).to(dtype)
    kwargs = {}
    if model.config.feat_extract_norm == "layer":  # as the server: mask only for layer-norm encoders
        kwargs["attention_mask"] = torch.ones(values.shape, dtype=torch.long, device=values.device)
    return values, kwargs


def bare_forward_s(model, clips, dtype_name: str, repeats: int = 1, cpu_out: dict | None = None) -> dict[str, float]:
    """clip name -> median seconds of one batch-1 forward pass (after a warm-up pass over every clip)."""
    import torch

    from serve.model import prepare

    dtype = dtype_of(dtype_name)
    model = prepare(copy.deepcopy(model), device(), dtype)  # exactly what the server runs
    out = {}
    with torch.inference_mode():
        for clip in clips:  # warm-up: the first passes pay one-off kernel set-up (the servers are warmed too)
            v, kw = _inputs(model, clip.audio, dtype)
            model(v, **kw)
        for clip in clips:
            v, kw = _inputs(model, clip.audio, dtype)
            times, cpu = [], []
            for _ in range(repeats):
                _sync()
                t0, c0 = time.perf_counter(), time.process_time()
                model(v, **kw).logits.argmax(-1)
                _sync()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[clip.name] = statistics.median(times)
            if cpu_out is not None:  # CPU seconds of this process (all its threads): cpu_out[name]
                cpu_out[clip.name] = statistics.median(cpu)
    return out


def forward_flops(model, audio: np.ndarray) -> int:
    """FLOPs of the batch-1 forward pass on this clip, counted by torch's FlopCounterMode (matmuls,
    convolutions and attention; element-wise ops and norms are not counted). Runs the pass once, in bf16
    when the CPU has it, since the count depends only on shapes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .machine import cpu_has_bf16

    dtype = torch.bfloat16 if cpu_has_bf16() or torch.cuda.is_available() else torch.float32
    model = model.to(device=device(), dtype=dtype)
    v, kw = _inputs(model, audio, dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:  # not inference_mode: the counter's module hooks need autograd tensors
        model(v, **kw)
    model.to(device="cpu", dtype=torch.float32)
    return int(counter.get_total_flops())


def matmul_peak_gflops(dtype_name: str, n: int = 2048, seconds: float = 3.0) -> float:
    """Best GFLOP/s of an n x n x n matmul in this process and dtype, over about `seconds`."""
    import torch

    dtype = dtype_of(dtype_name)
    a, b = (torch.randn(n, n).to(device()).to(dtype) for _ in range(2))
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best
