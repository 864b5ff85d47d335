"""bench/lm_decoding end to end at tiny sizes, so that it cannot rot; it asserts keys and consistency, never speed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_lm_decoding_benchmark_runs(tmp_path, tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lm_decoding"), "--model", str(tiny_model_dir), "--train", "6",
         "--test", "2", "--dev", "2", "--beam-widths", "2,4", "--tuning-seconds", "2", "--repeats", "1",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "lm_decoding" and figures["clips"] == 2 and figures["lm_order"] == 3
    assert set(figures["beam"]) == {"2", "4"} and figures["greedy"]["audio_s_per_s"] > 0
    assert all(0 <= figures["beam"][w]["wer"] and figures["beam"][w]["audio_s_per_s"] > 0 for w in ("2", "4"))
    assert not (Path(tiny_model_dir) / "language_model").exists()  # the LM went into a copy
