"""The training job's metric_definitions: the training program's own regexes (train/progress.py), never a copy."""
from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "train" / "progress.py"
NAMES = ("_NUM", "METRIC_DEFINITIONS")


def metric_definitions() -> list[dict[str, str]]:
    """train.progress.METRIC_DEFINITIONS; without transformers installed (a launch-only environment), the
    same assignments are evaluated from train/progress.py itself, so there is still one source of truth."""
    try:
        from train.progress import METRIC_DEFINITIONS
    except ImportError:
        return _from_source(SOURCE)
    return [dict(d) for d in METRIC_DEFINITIONS]


def _from_source(path: Path) -> list[dict[str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    wanted = [node for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id in NAMES for t in node.targets)]
    namespace: dict = {}
    # Only plain string/list/dict assignments are evaluated, with no builtins.
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), {"__builtins__": {}}, namespace)
    return [dict(d) for d in namespace["METRIC_DEFINITIONS"]]
