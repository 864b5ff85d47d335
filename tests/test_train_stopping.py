"""The time-budget learning-rate schedule (train/stopping.py): warm-up, then decay from the peak."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train.stopping import time_budget_scheduler  # noqa: E402


def factors(warmup_steps: float, kind: str = "linear", total: int = 100) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    # A budget far beyond the run: progress is the steps' share, so the factors are exact.
    scheduler = time_budget_scheduler(optimizer, kind=kind, warmup_steps=warmup_steps, total_steps=total,
                                      max_train_seconds=1e9)
    out = []
    for _ in range(total + 1):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_whole_step_warmup_reaches_the_peak_then_decays_from_it():
    f = factors(10)
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5)
    assert f[10] == pytest.approx(1.0)  # the decay starts after the warm-up, not at step 0 (it was 0.9)
    assert f[55] == pytest.approx(0.5) and f[100] == pytest.approx(0.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[10:], f[11:]))
    cosine = factors(10, "cosine")
    assert cosine[10] == pytest.approx(1.0) and cosine[55] == pytest.approx(0.5) and cosine[100] == pytest.approx(0.0)


def test_fractional_warmup_is_the_same_schedule():
    assert factors(0.1) == pytest.approx(factors(10))
