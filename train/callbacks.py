"""The Trainer callback that prints the [metrics]/[eval] lines (train/progress.py) and sends the same values to
`report_to` (train/reporting.py)."""
from __future__ import annotations

from transformers import TrainerCallback

from .distributed import is_leader
from .progress import Pace, line, say
from .reporting import Reporter


class ProgressCallback(TrainerCallback):
    """Prints [metrics]/[eval] lines on global rank 0 only and keeps their history for metrics.json.

    samples_per_epoch / audio_seconds_per_epoch: the training set's size (for samples/s and audio-seconds/s)."""

    def __init__(self, samples_per_epoch: int = 0, audio_seconds_per_epoch: float = 0.0,
                 max_train_seconds: float = 0.0, reporter: Reporter | None = None):
        self.train_history: list[dict] = []
        self.eval_history: list[dict] = []
        self.last_eval_step: int | None = None  # on every rank: all ranks must agree on a final evaluation
        self.reporter = reporter or Reporter()
        self.pace = Pace(0, max_train_seconds, samples_per_epoch, audio_seconds_per_epoch)

    def on_train_begin(self, args, state, control, **kwargs):
        self.pace.max_steps = state.max_steps
        self.pace.start(state.global_step, float(state.epoch or 0.0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not is_leader() or not logs:
            return
        step, epoch = state.global_step, round(float(state.epoch or 0.0), 2)
        if "loss" in logs:
            row = {"step": step, "epoch": epoch, "loss": float(logs["loss"]),
                   "learning_rate": float(logs.get("learning_rate", 0.0))}
            if "grad_norm" in logs:
                row["grad_norm"] = float(logs["grad_norm"])
            row.update(self.pace.fields(step, float(state.epoch or 0.0)))
            self.train_history.append(row)
            say(line("metrics", **row))
            self.reporter.scalars("train", step, row)

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
        self.reporter.scalars("eval", row["step"], row)


class AugmentationStartCallback(TrainerCallback):
    """Tells the training dataset the optimizer step (SpeechDataset.step), for `augmentation_start_step`: voices
    and rooms join the training audio from that step on, resumed jobs included (on_train_begin sets the resumed
    step before the first batch is drawn)."""

    def __init__(self, dataset):
        self.step = dataset.step

    def on_train_begin(self, args, state, control, **kwargs):
        self.step.value = int(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.step.value = int(state.global_step)
