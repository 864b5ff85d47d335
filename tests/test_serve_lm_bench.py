"""Smoke test of `bench/serving --lm` (beam search + LM against greedy through the server) at tiny sizes, so it
cannot rot: it finishes, builds an LM for a model without one, and ends with its JSON line. No speed is
asserted (figures belong to the benchmark)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, program_env


def test_serving_lm_bench_runs_end_to_end(tiny_model_dir, synthetic_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving"), "--lm", "--trained-model", str(tiny_model_dir),
         "--data", str(synthetic_data), "--beam-widths", "2,4", "--clips", "2", "--shortest-s", "1",
         "--longest-s", "2", "--tuning-seconds", "5", "--workdir", str(tmp_path)],
        env=program_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f["bench"] == "serving_lm" and "estimated here" in f["lm"]
    assert "beam search + LM by default" in f["decoder_log"]
    for system in ("greedy", "beam2", "beam4"):
        assert f["errors"][system] == {"4": 0}
        assert math.isfinite(f["rtfx"][system]["4"]) and f["rtfx"][system]["4"] > 0
        assert 0 <= f["wer"][system]
    assert f["ratio_to_greedy"]["greedy"]["4"] == 1.0
    assert f["target"]["concurrency"] == 4 and f["target"]["ratio_at_least"] == 0.4
    assert "target at concurrency 4" in proc.stdout
