"""The one error type of the training program and the SageMaker failure file it becomes.

SageMaker shows the first 1,024 characters of /opt/ml/output/failure as the job's FailureReason, so the
first line of every message says what to fix.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

FAILURE_REASON_CHARS = 1024


class TrainingError(Exception):
    """A problem the user can fix (settings, data, output location); the message says how.
    `details` (optional) goes below the first line in the failure file and the log, e.g. a long list of names."""

    def __init__(self, message: str = "", *, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def write_failure(path: Path, message: str, details: str = "") -> None:
    """Write `message` (first line = what to fix) and optional details; never raise from here."""
    text = message.strip() + "\n"
    if details:
        text += "\n" + details.strip() + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        print(f"[error] cannot write failure file {path}: {exc}", file=sys.stderr, flush=True)


def report(path: Path, exc: BaseException) -> None:
    """Log and record a failure: user errors as is, anything else with its traceback after line one."""
    if isinstance(exc, TrainingError):
        message, details = str(exc), exc.details
    else:
        first = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        message = f"training failed unexpectedly ({first}); see the job log for the traceback"
        details = "".join(traceback.format_exception(exc))
    print(f"[error] {message}", file=sys.stderr, flush=True)
    if details:
        print(details, file=sys.stderr, flush=True)
    write_failure(path, message, details)
