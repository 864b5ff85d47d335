"""What the lent GPU machine lacks, carried to it as wheels: the list, the download, the install, the check.

The lent machine (the device tool's KINDS.md) runs Python 3.12 on x86_64 with torch, transformers, accelerate,
numpy, pandas, pyarrow, matplotlib, werkzeug, jinja2 and click already installed, and no network. The serving
and training programs also need the packages in `CARRIED`; `download` fetches their wheels here (PyPI, at the
versions the images pin in docker/constraints.txt), `install` puts them into a temporary folder there
(`pip install --no-index --no-deps --target`), and `check_imports` imports every module both programs use in
a fresh interpreter with that folder first on PYTHONPATH, reporting versions, where each came from, and any
carried package whose requirements the machine's own packages do not meet.

Stdlib only: this module runs before anything is installed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .. import ROOT

# The lent machine's interpreter and platform (KINDS.md: Python 3.12.3, x86_64, glibc-based image).
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]

# Distributions the programs need that the lent machine lacks, with the ones they need in turn that it
# lacks too (KINDS.md's package list, read 2026-11-17). Versions come from docker/constraints.txt.
CARRIED = [
    "flask", "itsdangerous", "blinker",          # serving: Flask (werkzeug, jinja2, click are there)
    "gunicorn",                                   # serving: the WSGI server
    "soundfile", "cffi", "pycparser",             # both: audio decoding (the wheel bundles libsndfile)
    "soxr",                                       # both: resampling
    "jiwer", "rapidfuzz",                         # training metrics (WER/CER); also the check's CER
    "datasets", "dill", "multiprocess",           # training: Hugging Face datasets channels
]

# Modules the check imports, and what each stands for.
MODULES = {
    "torch": "both", "transformers": "both", "numpy": "both", "safetensors": "both", "soundfile": "both",
    "soxr": "both", "flask": "serving", "gunicorn": "serving", "accelerate": "training",
    "datasets": "training", "jiwer": "training", "matplotlib": "training",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(constraints: Path = ROOT / "docker" / "constraints.txt") -> dict[str, str]:
    """CARRIED name -> version pinned in docker/constraints.txt (what the images install)."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    missing = [n for n in CARRIED if _norm(n) not in pins]
    if missing:
        raise SystemExit(f"gpu_check: {', '.join(missing)} not pinned in {constraints}")
    return {n: pins[_norm(n)] for n in CARRIED}


def download(dest: Path) -> list[Path]:
    """Fetch exactly the CARRIED wheels for CPython 3.12 / manylinux x86_64 into dest (older wheels of
    these packages there are removed, so one version of each travels). Needs PyPI."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = pinned_versions()
    wanted = [f"{n}=={v}" for n, v in pins.items()]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
           *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(dest), *wanted]
    subprocess.run(cmd, check=True)
    keep = []
    for whl in sorted(dest.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if pins.get(next((n for n in pins if _norm(n) == _norm(name)), ""), None) == version:
            keep.append(whl)
        else:
            whl.unlink()
    got = {_norm(w.name.split("-")[0]) for w in keep}
    lacking = [n for n in CARRIED if _norm(n) not in got]
    if lacking:
        raise SystemExit(f"gpu_check: no wheel for {', '.join(lacking)} in {dest}")
    return keep


def install(wheels: Path, target: Path) -> list[str]:
    """pip-install every wheel in `wheels` into `target` (no index, no dependencies, no bytecode), as on the
    lent machine. Returns the wheel file names."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no wheels in {wheels}: run bench/gpu_check --prepare first")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                    "--target", str(target), *map(str, files)], check=True)
    return [f.name for f in files]


_CHECK = r"""
import importlib, importlib.metadata as md, json, os, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}, "unmet": []}
carried = os.environ.get("GPU_CHECK_CARRIED_DIR") or None
for name in sys.argv[1:]:
    try:
        mod = importlib.import_module(name)
        where = os.path.dirname(getattr(mod, "__file__", "") or "")
        out["modules"][name] = {"version": getattr(mod, "__version__", None) or md.version(name),
                                "carried": bool(carried) and where.startswith(carried)}
    except Exception as exc:  # report every failure, not the first
        out["modules"][name] = {"error": f"{type(exc).__name__}: {exc}"}
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
    if carried:
        for dist in md.distributions(path=[carried]):
            for spec in dist.requires or []:
                req = Requirement(spec)
                if req.marker and not req.marker.evaluate({"extra": ""}):
                    continue
                try:
                    have = md.version(req.name)
                except md.PackageNotFoundError:
                    out["unmet"].append(f"{dist.metadata['Name']} needs {req}: not installed")
                    continue
                if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                    out["unmet"].append(f"{dist.metadata['Name']} needs {req}: found {have}")
except ImportError as exc:
    out["unmet"].append(f"requirements not checked: {exc}")
print(json.dumps(out))
"""


def check_imports(env: dict[str, str]) -> dict:
    """Import every module in MODULES in a fresh interpreter with `env` (as the programs will run).
    Returns {"python", "executable", "modules": {name: {"version", "carried"} | {"error"}}, "unmet": [...]}."""
    proc = subprocess.run([sys.executable, "-c", _CHECK, *MODULES], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"import check failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def env_with(target: Path | None) -> dict[str, str]:
    """This process's environment with the carried packages (target) and the repository on PYTHONPATH and
    this interpreter's folder first on PATH (serve/serve and train/train run the `python3` found there)."""
    env = dict(os.environ)
    parts = [str(target)] if target else []
    parts += [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if target:
        env["GPU_CHECK_CARRIED_DIR"] = str(target)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    return env
