"""`report_to`: the progress values also go to TensorBoard event files or an MLflow tracking server.

- `tensorboard`: event files in /opt/ml/output/tensorboard (tensorboardX's writer: one small pure-Python
  package instead of tensorboard's 50 MB with grpcio). The training job's TensorBoardOutputConfig syncs that
  folder to S3, where SageMaker's managed TensorBoard (or `tensorboard --logdir s3://...`) reads it.
- `mlflow`: a run on the tracking server named by MLFLOW_TRACKING_URI (MLflow's own variable; also
  MLFLOW_EXPERIMENT_NAME). A SageMaker managed MLflow tracking server's ARN works as the URI through the
  `sagemaker-mlflow` plugin (requirements/mlflow.txt, an optional extra: see README).

Tags are `train/<field>` and `eval/<field>`, with the [metrics]/[eval] line's field names. Only the first process
reports. Imports of tensorboardX and mlflow happen only when asked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from .failure import TrainingError

TENSORBOARD_DIR = "tensorboard"  # under /opt/ml/output: the default local path of TensorBoardOutputConfig


class Reporter:
    """Nothing reported (report_to=none)."""

    def params(self, values: Mapping[str, object]) -> None:
        pass

    def scalars(self, prefix: str, step: int, values: Mapping[str, object]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED (stopped by SIGTERM; a restarted job resumes)."""


def _numbers(prefix: str, values: Mapping[str, object]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in values.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard(Reporter):
    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=30)

    def params(self, values):
        self.writer.add_text("hyperparameters", "```\n" + json.dumps(dict(values), indent=1, default=str) + "\n```")

    def scalars(self, prefix, step, values):
        for tag, value in _numbers(prefix, values).items():
            self.writer.add_scalar(tag, value, global_step=step)
        if prefix == "eval":
            self.writer.flush()  # evaluations are rare: have them on disk for the S3 sync at once

    def close(self, status="FINISHED"):
        self.writer.close()


class MLflow(Reporter):
    def __init__(self, run_name: str | None):
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)

    def params(self, values):
        # MLflow keeps parameters as strings of at most 6,000 characters.
        self.mlflow.log_params({k: str(v)[:6000] for k, v in values.items()})

    def scalars(self, prefix, step, values):
        numbers = _numbers(prefix, values)
        if numbers:
            self.mlflow.log_metrics(numbers, step=step)

    def close(self, status="FINISHED"):
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status=status)


_opened: list[Reporter] = []


def close_all(status: str) -> None:
    """Close what open_reporter opened and is still open (a failed job's MLflow run ends FAILED)."""
    while _opened:
        _opened.pop().close(status)


def open_reporter(report_to: str, output_dir: Path, environ: Mapping[str, str] | None = None) -> Reporter:
    """The reporter for `report_to`, checked before any training time is spent. Raises TrainingError when the
    package is missing or MLFLOW_TRACKING_URI is not set."""
    reporter = _open(report_to, output_dir, os.environ if environ is None else environ)
    _opened.append(reporter)
    return reporter


def _open(report_to: str, output_dir: Path, environ: Mapping[str, str]) -> Reporter:
    if report_to == "tensorboard":
        try:
            return TensorBoard(output_dir / TENSORBOARD_DIR)
        except ImportError:
            raise TrainingError("report_to=tensorboard needs the tensorboardX package, which this image lacks; "
                                "use the project's training image (requirements/train.txt)") from None
    if report_to == "mlflow":
        if not environ.get("MLFLOW_TRACKING_URI"):
            raise TrainingError("report_to=mlflow needs MLFLOW_TRACKING_URI: set it in the job's environment to "
                                "the tracking server (a SageMaker managed MLflow ARN, an http(s) URL or file:PATH)")
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise TrainingError("report_to=mlflow needs MLflow (mlflow-skinny and sagemaker-mlflow, "
                                "requirements/mlflow.txt), which this training image lacks: build the image with "
                                "it (README, Training, report_to) or use report_to=tensorboard") from None
        try:
            return MLflow(environ.get("TRAINING_JOB_NAME") or None)
        except Exception as exc:  # noqa: BLE001 - any tracking-server error: say it before training
            raise TrainingError(f"report_to=mlflow: cannot start a run on {environ['MLFLOW_TRACKING_URI']}: "
                                f"{type(exc).__name__}: {exc}") from None
    return Reporter()
