"""bench/streaming end to end with tiny sizes (a random tiny model, 2 held-out clips, 1 stream of 6 s, in both protocols), so that it
cannot rot: it finishes, prints its tables and ends with one JSON object of the figures README quotes. No speed
is asserted (figures belong to the benchmark)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, program_env


def test_streaming_bench_runs_end_to_end(tmp_path, tiny_model_dir, synthetic_data):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "streaming"), "--trained-model", str(tiny_model_dir),
         "--data", str(synthetic_data), "--clips", "2", "--models", "tiny", "--streams", "1",
         "--stream-s", "6", "--workdir", str(tmp_path)],
        env=program_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f["bench"] == "streaming" and f["machine"]["cores"] >= 1
    acc = f["accuracy"]
    assert acc["clips"] == 2 and 0 <= acc["identical"] <= 2
    assert math.isclose(acc["cer_difference"], acc["cer_stream"] - acc["cer_offline"], abs_tol=1e-3)
    row = f["latency"]["tiny"]["1"]
    assert row["words"] >= 1 and row["finals"] >= 1 and row["max_batch"] >= 1
    assert row["partial_p50_ms"] <= row["partial_p95_ms"]
    assert f["max_streams_p95_under_1s"]["tiny"] in (0, 1)
    rt = f["realtime"]["tiny"]["1"]  # part 3: Realtime events with server VAD
    assert 1 <= rt["utterances"] == rt["expected"] and rt["completed_p50_ms"] <= rt["completed_p95_ms"]
    assert rt["completed_p50_ms"] > 400  # the VAD's 0.5 s pause is in it (less a window's rounding)
    assert f["max_sessions_completed_p95_under_1s"]["tiny"] in (0, 1)
