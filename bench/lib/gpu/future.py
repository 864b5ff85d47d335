"""Stage 4 of the GPU check: features added after the first three stages (LM decoding, issue #12; streaming,
issue #13).

Each feature has a probe that looks for it through the serving program's public surface (its `--help`, which
lists every setting, and nothing that imports torch) and a measurement that drives it through HTTP with the
feature's own benchmark on the carried trained tiny model, returning its figures as a dict:
- LM decoding: `bench/serving --lm`, greedy against beam + LM at concurrency 4 on the GPU-served logits (an LM
  estimated from the carried training transcripts): RTFx ratio and WER/CER;
- streaming: `bench/streaming`, finals against /invocations and partial/final latency at 1, 4 and 16 real-time
  streams over the WebSocket route.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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


LM_TIMEOUT_S = 1200


def _run_bench(cmd: list[str], env: dict[str, str], name: str, timeout_s: float) -> tuple[dict | None, dict | None]:
    """(the benchmark's last-line JSON figures, None), or (None, {"status": "failed: ..."}) when it timed out
    or exited non-zero."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, {"status": f"failed: {name} ran past {timeout_s} s"}
    if proc.returncode != 0:
        return None, {"status": f"failed: {name} exited {proc.returncode}",
                      "output_tail": (proc.stdout + proc.stderr)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _lm_missing(env: dict[str, str]) -> list[str]:
    """What beam search + LM needs that this environment lacks (requirements/lm.txt and KenLM's programs)."""
    missing = [m for m in ("kenlm", "pyctcdecode") if importlib.util.find_spec(m) is None]
    bins = [Path(env["KENLM_BIN"])] if env.get("KENLM_BIN") else []
    bins.append(Path(sys.executable).parent)
    missing += [t for t in ("lmplz", "build_binary") if not any((b / t).is_file() for b in bins)]
    return missing


def measure_lm_decoding(env: dict[str, str], work: Path, assets: Path, small: bool = False) -> dict:
    """Greedy against beam + LM (width 16, the default) through one server at concurrency 4, with an LM
    estimated from the carried training transcripts (`bench/serving --lm`): its RTFx ratio (target >= 0.40 on
    the tiny model) and WER/CER. "present, not measured" when this environment cannot build an LM."""
    missing = _lm_missing(env)
    if missing:
        return {"status": f"present, not measured: this environment lacks {', '.join(missing)} "
                          "(pip install -r requirements/lm.txt; KenLM's lmplz/build_binary, see setup.sh)"}
    cmd = [sys.executable, str(ROOT / "bench" / "serving"), "--lm", "--trained-model", str(assets / "tiny_model"),
           "--data", str(assets / "data"), "--beam-widths", "16", "--rounds", "1", "--concurrency", "4",
           "--clips", "2" if small else "4", "--shortest-s", "2", "--longest-s", "4" if small else "8",
           "--tuning-seconds", "5" if small else "20",
           "--workdir", str(work / "lm")]
    f, failed = _run_bench(cmd, env, "bench/serving --lm", LM_TIMEOUT_S)
    if failed:
        return failed
    return {"status": "measured", "server_dtype": f["server_dtype"], "lm": f["lm"],
            "rtfx": f["rtfx"], "ratio_to_greedy": f["ratio_to_greedy"], "wer": f["wer"], "cer": f["cer"],
            "target": f["target"], "errors": f["errors"]}


STREAM_TIMEOUT_S = 900


def measure_streaming(env: dict[str, str], work: Path, assets: Path, small: bool = False) -> dict:
    """Live transcription through the WebSocket route with `bench/streaming` on the carried trained tiny model:
    finals against /invocations (CER difference, target <= 0.02) on a few held-out clips, then partial and
    final latency p50/p95 with 1, 4 and 16 real-time streams, and the most streams whose p95 partial latency
    stays under 1 s (issue 13's target: 16)."""
    cmd = [sys.executable, str(ROOT / "bench" / "streaming"), "--trained-model", str(assets / "tiny_model"),
           "--data", str(assets / "data"), "--models", "tiny",
           "--streams", "1,2" if small else "1,4,16", "--clips", "2" if small else "4",
           "--stream-s", "4" if small else "6", "--workdir", str(work / "streaming")]
    f, failed = _run_bench(cmd, env, "bench/streaming", STREAM_TIMEOUT_S)
    if failed:
        return failed
    return {"status": "measured", **{k: v for k, v in f.items() if k not in ("bench", "machine")}}


def run(env: dict[str, str], work: Path, assets: Path, small: bool = False) -> dict:
    """small: --rehearse's sizes (fewer clips and streams, a shorter tuning budget)."""
    found = probe(env)
    return {
        "lm_decoding": measure_lm_decoding(env, work, assets, small) if found["lm_decoding"]
        else {"status": "not present (issue #12)"},
        "streaming": measure_streaming(env, work, assets, small) if found["streaming"] else {"status": "not present (issue #13)"},
    }
