"""Code the benchmarks share: machine description, clips, model directories, servers, load client, FLOPs.

Nothing here runs at import; each benchmark calls `ensure_venv()` first (stdlib only), so `bench/serving`
works whether it is started with the venv's Python or the system's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def ensure_venv() -> None:
    """Re-exec under the repository's .venv Python unless already running there (or no venv exists)."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
