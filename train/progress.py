"""Stdout progress lines in one stable format, and the SageMaker metric_definitions that parse them.

  [metrics] step=120 epoch=1.50 loss=2.3141 learning_rate=0.0004 grad_norm=1.2 max_steps=1000 elapsed_s=300
            eta_s=2200 samples_per_s=12.8 audio_s_per_s=71.3 [train_seconds=300 max_train_seconds=600]
  [eval] step=120 epoch=1.50 wer=0.8123 cer=0.4012 loss=3.0415

METRIC_DEFINITIONS is the one place a launcher takes its regexes from (README prints the same list). This module
imports nothing beyond the standard library: the launcher and `train --help` import it without torch or
transformers (the Trainer callback that prints these lines is train/callbacks.py).
"""
from __future__ import annotations

import math
import time
from typing import Callable

_NUM = r"([0-9.eE+-]+)"


# metric name -> the key it reads; train:* metrics read [metrics] lines, eval:* ones [eval] lines. The last two:
# beam search with the job's language model (train/lm.py), on the same evaluation set, once at the end.
_KEYS = {"train:loss": "loss", "train:learning_rate": "learning_rate", "train:epoch": "epoch",
         "train:grad_norm": "grad_norm", "train:samples_per_second": "samples_per_s",
         "train:audio_seconds_per_second": "audio_s_per_s", "train:eta_seconds": "eta_s",
         "eval:wer": "wer", "eval:cer": "cer", "eval:loss": "loss", "eval:wer_lm": "wer_lm", "eval:cer_lm": "cer_lm"}
_LINES = {"train": "metrics", "eval": "eval"}

# `\b` + `key=`: `loss=` never matches `eval_loss=`, and a [metrics] regex never an [eval] line.
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"\[{_LINES[name.split(':')[0]]}\] .*\b{key}=" + _NUM}
                      for name, key in _KEYS.items()]


def _fmt(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.4g}"
    return str(value)


def line(kind: str, **values) -> str:
    return f"[{kind}] " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items() if v is not None)


def say(text: str) -> None:
    print(text, flush=True)


class Pace:
    """How far training is and how fast it goes, for the [metrics] line.

    Samples and audio seconds are counted from the epochs done (`epoch` is fractional), so a resumed job counts
    only what this run trained. Rates are over the interval since the previous line (evaluation time inside it
    counts: it is time the job spends); the ETA is the steps left at that rate, or the time budget left when that
    comes first. All times are seconds of `clock` (time.monotonic)."""

    def __init__(self, max_steps: int, max_train_seconds: float, samples_per_epoch: int,
                 audio_seconds_per_epoch: float, clock: Callable[[], float] = time.monotonic):
        self.max_steps, self.max_train_seconds = max_steps, max_train_seconds
        self.samples_per_epoch, self.audio_seconds_per_epoch = samples_per_epoch, audio_seconds_per_epoch
        self.clock = clock
        self.started = clock()
        self._last = (self.started, 0, 0.0)  # (time, step, epoch) of the previous line

    def start(self, step: int, epoch: float) -> None:
        self.started = self.clock()
        self._last = (self.started, step, epoch)

    def fields(self, step: int, epoch: float) -> dict:
        """{max_steps, elapsed_s, eta_s, samples_per_s, audio_s_per_s[, train_seconds, max_train_seconds]};
        a rate is None before any step of the interval has run."""
        now = self.clock()
        t0, step0, epoch0 = self._last
        self._last = (now, step, epoch)
        dt = now - t0
        elapsed = now - self.started
        steps_per_s = (step - step0) / dt if dt > 0 and step > step0 else None
        epochs_per_s = (epoch - epoch0) / dt if dt > 0 and epoch > epoch0 else None
        eta = (max(0, self.max_steps - step) / steps_per_s) if steps_per_s and self.max_steps > 0 else None
        if self.max_train_seconds > 0:
            left = max(0.0, self.max_train_seconds - elapsed)
            eta = left if eta is None else min(eta, left)
        out = {"max_steps": self.max_steps if self.max_steps > 0 else None,
               "elapsed_s": round(elapsed), "eta_s": None if eta is None else round(eta),
               "samples_per_s": None if epochs_per_s is None else round(epochs_per_s * self.samples_per_epoch, 2),
               "audio_s_per_s": None if epochs_per_s is None else round(epochs_per_s * self.audio_seconds_per_epoch, 2)}
        if self.max_train_seconds > 0:
            budget = self.max_train_seconds
            out.update(train_seconds=round(elapsed), max_train_seconds=int(budget) if budget == int(budget) else budget)
        return out
