"""Stopping early: SIGTERM (SageMaker stop or spot interruption) and the max_train_seconds budget.

On SIGTERM the current step finishes, a checkpoint is saved to /opt/ml/checkpoints and training stops;
main() then exits with 143 (128 + SIGTERM). With several processes the stop flag is max-reduced every step
so that all ranks stop at the same step.
"""
from __future__ import annotations

import math
import signal
import time

from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback

from .collective import max_across_processes

SIGTERM_EXIT_CODE = 143


class StopCallback(TrainerCallback):
    def __init__(self, max_train_seconds: float = 0.0):
        self.max_train_seconds = max_train_seconds
        self.sigterm = False
        self.reason: str | None = None  # "sigterm" or "time limit" once stopped
        self.started = time.monotonic()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        print("[train] SIGTERM received: finishing this step, saving a checkpoint, then stopping", flush=True)
        self.sigterm = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        # Every process stops at the same step: the flags are max-reduced over processes (on the training
        # device: NCCL refuses CPU tensors).
        flags = max_across_processes([float(self.sigterm),
                                      float(0 < self.max_train_seconds <= time.monotonic() - self.started)],
                                     args.device)
        if flags[0] > 0:
            self.reason = "sigterm"
            control.should_save = True
            control.should_training_stop = True
        elif flags[1] > 0:
            self.reason = "time limit"
            control.should_training_stop = True
        return control


def time_budget_scheduler(optimizer, *, kind: str, warmup_steps: float, total_steps: int,
                          max_train_seconds: float) -> LambdaLR:
    """Warm-up then decay, where progress is the larger of steps done and training time used.

    With only a time budget a step-based schedule would stop at a high learning rate; this one reaches
    the end of its decay when the budget (or max_steps/epochs, whichever comes first) runs out.
    warmup_steps: a number of steps (>= 1) or a fraction of the progress (< 1); either way the decay starts
    where the warm-up ends, from the peak.
    """
    start = time.monotonic()
    warm_end: list[float] = []  # progress when a warm-up of whole steps ended (time makes it unknown before)

    def progress(step: int) -> float:
        p = step / max(1, total_steps)
        if max_train_seconds > 0:
            p = max(p, (time.monotonic() - start) / max_train_seconds)
        return min(1.0, p)

    def factor(step: int) -> float:
        p = progress(step)
        if warmup_steps >= 1:
            warm = min(1.0, step / warmup_steps)
            if step < warmup_steps:
                rest = 0.0
            else:
                if not warm_end:
                    # The step the warm-up ended at (a fresh run), else a resumed run past it: its step share.
                    warm_end.append(p if step < warmup_steps + 1 else min(p, warmup_steps / max(1, total_steps)))
                rest = max(0.0, (p - warm_end[0]) / (1 - warm_end[0])) if warm_end[0] < 1 else 1.0
        else:
            warm = min(1.0, p / warmup_steps) if warmup_steps > 0 else 1.0
            rest = max(0.0, (p - warmup_steps) / (1 - warmup_steps)) if warmup_steps > 0 else p
        if kind == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * rest))
        elif kind == "constant_with_warmup":
            decay = 1.0
        else:
            decay = 1.0 - rest
        return max(0.0, warm * decay)

    return LambdaLR(optimizer, factor)
