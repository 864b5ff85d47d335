"""Stage 4 of the GPU check: features that do not exist yet (LM decoding, issue #12; streaming, issue #13).

Each feature has a probe that looks for it through the serving program's public surface (its `--help`, which
lists every setting, and nothing that imports torch) and a measurement that is "not present" until the
feature lands. When one lands, replace its `measure_*` with a function that drives it through HTTP like
serving.py does (for LM decoding: WER/CER and RTFx with and without the LM on the stage-1 clips; for
streaming: first-partial latency and RTFx per concurrent stream) and returns its figures as a dict.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from .. import ROOT


def _serve_help(env: dict[str, str]) -> str:
    proc = subprocess.run([str(ROOT / "serve" / "serve"), "--help"], env=env, capture_output=True, text=True,
                          timeout=60)
    return proc.stdout + proc.stderr


def probe(env: dict[str, str]) -> dict[str, bool]:
    """Which of the features the serving program advertises (settings named for them in `serve --help`)."""
    text = _serve_help(env).upper()
    return {
        "lm_decoding": any(k in text for k in ("SERVE_LM", "KENLM", "SERVE_DECODER")),
        "streaming": any(k in text for k in ("STREAM",)),
    }


def measure_lm_decoding(env: dict[str, str], work: Path) -> dict:
    return {"status": "present, not measured: add its measurement in bench/lib/gpu/future.py"}


def measure_streaming(env: dict[str, str], work: Path) -> dict:
    return {"status": "present, not measured: add its measurement in bench/lib/gpu/future.py"}


def run(env: dict[str, str], work: Path) -> dict:
    found = probe(env)
    return {
        "lm_decoding": measure_lm_decoding(env, work) if found["lm_decoding"] else {"status": "not present (issue #12)"},
        "streaming": measure_streaming(env, work) if found["streaming"] else {"status": "not present (issue #13)"},
    }
