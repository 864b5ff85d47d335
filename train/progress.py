"""Stdout progress lines in one stable format, and the SageMaker metric_definitions that parse them.

  [metrics] step=120 epoch=1.50 loss=2.3141 learning_rate=0.0004 grad_norm=1.2
  [eval] step=120 epoch=1.50 wer=0.8123 cer=0.4012 loss=3.0415

METRIC_DEFINITIONS is the one place a launcher takes its regexes from (README prints the same list).
"""
from __future__ import annotations

import math

from transformers import TrainerCallback

from .distributed import is_leader

_NUM = r"([0-9.eE+-]+)"

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"\[metrics\] .*\bloss=" + _NUM},
    {"Name": "train:learning_rate", "Regex": r"\[metrics\] .*\blearning_rate=" + _NUM},
    {"Name": "train:epoch", "Regex": r"\[metrics\] .*\bepoch=" + _NUM},
    {"Name": "eval:wer", "Regex": r"\[eval\] .*\bwer=" + _NUM},
    {"Name": "eval:cer", "Regex": r"\[eval\] .*\bcer=" + _NUM},
    {"Name": "eval:loss", "Regex": r"\[eval\] .*\bloss=" + _NUM},
    # Beam search with the job's language model (train/lm.py), on the same evaluation set, once at the end.
    {"Name": "eval:wer_lm", "Regex": r"\[eval\] .*\bwer_lm=" + _NUM},
    {"Name": "eval:cer_lm", "Regex": r"\[eval\] .*\bcer_lm=" + _NUM},
]


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


class ProgressCallback(TrainerCallback):
    """Prints [metrics]/[eval] lines on global rank 0 only and keeps their history for metrics.json."""

    def __init__(self):
        self.train_history: list[dict] = []
        self.eval_history: list[dict] = []
        self.last_eval_step: int | None = None  # on every rank: all ranks must agree on a final evaluation

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not is_leader() or not logs:
            return
        step, epoch = state.global_step, round(float(state.epoch or 0.0), 2)
        if "loss" in logs:
            row = {"step": step, "epoch": epoch, "loss": float(logs["loss"]),
                   "learning_rate": float(logs.get("learning_rate", 0.0))}
            if "grad_norm" in logs:
                row["grad_norm"] = float(logs["grad_norm"])
            self.train_history.append(row)
            say(line("metrics", **row))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last_eval_step = state.global_step
        if not is_leader() or not metrics:
            return
        row = {"step": state.global_step, "epoch": round(float(state.epoch or 0.0), 2),
               "wer": metrics.get("eval_wer"), "cer": metrics.get("eval_cer"), "loss": metrics.get("eval_loss")}
        row = {k: (float(v) if isinstance(v, (int, float)) and k not in ("step",) else v) for k, v in row.items()}
        if self.eval_history and self.eval_history[-1]["step"] == row["step"]:
            self.eval_history[-1] = row
        else:
            self.eval_history.append(row)
        say(line("eval", **row))
