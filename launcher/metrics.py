"""The training job's metric_definitions: the training program's own regexes (train/progress.py), never a copy.

train/progress.py imports only the standard library, so a launch-only environment (no torch, no transformers)
imports it directly."""
from __future__ import annotations

from train.progress import METRIC_DEFINITIONS


def metric_definitions() -> list[dict[str, str]]:
    """train.progress.METRIC_DEFINITIONS, as fresh dicts (the SDK may modify what it is given)."""
    return [dict(d) for d in METRIC_DEFINITIONS]
