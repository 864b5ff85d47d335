"""Code the benchmarks share: machine description, clips, model directories, servers, load client, FLOPs.

Nothing here runs at import; each benchmark calls `ensure_venv()` first (stdlib only), so `bench/serving`
works whether it is started with the venv's Python or the system's.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def server_allocator_env() -> dict[str, str]:
    """The glibc allocator settings serve/serve exports, read from it: MALLOC_* name -> default value."""
    text = (ROOT / "serve" / "serve").read_text()
    return dict(re.findall(r'export (MALLOC_\w+)="\$\{\1:-([^}]*)\}"', text))


def ensure_venv(server_allocator: bool = False) -> None:
    """Re-exec under the repository's .venv Python unless already running there (or no venv exists).
    server_allocator: also run this process with serve/serve's allocator settings (read at process start),
    so a bare forward pass timed here allocates as the server's does; servers we start for comparison get
    glibc's defaults back (servers.py)."""
    missing = {k: v for k, v in server_allocator_env().items() if k not in os.environ} if server_allocator else {}
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = venv_python if venv_python.exists() else Path(sys.executable)
    if missing or (venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve()):
        os.environ.update(missing)
        os.environ["BENCH_ALLOCATOR_SET"] = " ".join(sorted(missing))
        os.execv(str(python), [str(python), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
