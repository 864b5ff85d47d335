"""Smoke tests of the benchmarks (bench/): each runs end to end with tiny sizes, so none can rot unnoticed.

They check that every benchmark finishes, prints its table and ends with one JSON object holding the
figures the README quotes; they assert no speed figure (figures belong to the benchmarks themselves).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, program_env
from image_fixtures import images  # noqa: F401  (session fixture: both images built once per test session)

BENCH = ROOT / "bench"


def run_bench(name: str, *args: str, timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], env=program_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench/{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["bench"] == name
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["cpu"]
    return figures


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """Clips and tiny model shared by the serving and efficiency smoke tests."""
    return tmp_path_factory.mktemp("bench")


def test_serving_compares_three_servers(bench_dir):
    f = run_bench("serving", "--model", "tiny", "--clips", "2", "--shortest-s", "1", "--longest-s", "2",
                  "--concurrency", "1,3", "--systems", "ours_fp32,seed,pipeline", "--bare-repeats", "1",
                  "--workdir", str(bench_dir))
    for system in ("ours_fp32", "seed", "pipeline"):
        assert f["errors"][system] == {"1": 0, "3": 0}
        for c in ("1", "3"):
            assert positive(f["rtfx"][system][c]) and positive(f["overhead"][system][c])
            assert positive(f["cpu_s_per_audio_s"][system][c]) and positive(f["overhead_cpu"][system][c])
            assert f["p50_ms"][system][c] <= f["p99_ms"][system][c]
    for c in ("1", "3"):
        assert positive(f["ratio_vs_seed"]["fp32"][c]) and positive(f["ratio_vs_pipeline"]["fp32"][c])
    # The seed's path and the pipeline run the same model on the same clips: at batch 1 they must agree
    # with our server, or one of the three is not transcribing what the others do.
    assert f["same_transcript_as_ours_fp32"] == {"seed": 2, "pipeline": 2}
    assert f["clips_s"] == [1.0, 2.0]


def test_efficiency_reports_fractions_of_the_measured_peak(bench_dir):
    f = run_bench("efficiency", "--model", "tiny", "--clips", "2", "--shortest-s", "1", "--longest-s", "2",
                  "--dtypes", "fp32", "--matmul-n", "256", "--concurrency", "2", "--workdir", str(bench_dir))
    assert positive(f["gflop_per_audio_second"])
    for key in ("peak_gflops", "bare_gflops", "server_gflops", "bare_fraction", "server_fraction"):
        assert positive(f[key]["fp32"]), key
    assert f["bare_fraction"]["fp32"] == pytest.approx(f["bare_gflops"]["fp32"] / f["peak_gflops"]["fp32"], rel=0.01)


def test_training_compares_with_the_seed_style_script(tmp_path):
    f = run_bench("training", "--utterances", "8", "--epochs", "1", "--batch", "8", "--warmup", "0",
                  "--workdir", str(tmp_path))
    assert f["steps"] == 1
    assert positive(f["audio_seconds_per_second"]["ours"]) and positive(f["audio_seconds_per_second"]["seed"])
    assert f["ratio"] == pytest.approx(f["audio_seconds_per_second"]["ours"] / f["audio_seconds_per_second"]["seed"],
                                       rel=0.01)
    assert positive(f["cpu_seconds"]["ours"]) and positive(f["cpu_seconds"]["seed"])
    assert f["cer"] is None  # --accuracy not given: said not measured, not invented


def test_train_accuracy_scores_both_layouts_on_both_heldout_sets(tmp_path):
    f = run_bench("train_accuracy", "--utterances", "8", "--heldout-utterances", "2", "--max-steps", "1",
                  "--seconds", "0", "--plain-loop", "--workdir", str(tmp_path), timeout=600)
    assert set(f["results"]) == {"layer", "group"} and set(f["plain_loop"]) == {"layer", "group"}
    for r in [*f["results"].values(), *f["plain_loop"].values()]:
        assert r["steps"] == 1
        assert all(0 <= r[f"cer_{s}"] and 0 <= r[f"wer_{s}"] for s in "AB")
    assert f["cer"] == max(r[f"cer_{s}"] for r in f["results"].values() for s in "AB")
    voices = [{json.loads(line)["voice"] for line in (tmp_path / d / "test" / "manifest.jsonl").read_text().splitlines()}
              for d in ("data_a", "data_b")]
    trained = {json.loads(line)["voice"] for line in (tmp_path / "data_a" / "train" / "manifest.jsonl").read_text().splitlines()}
    assert not (voices[0] & voices[1]) and not (voices[0] | voices[1]) & trained


def test_coldstart_times_the_serving_image(images, tmp_path):  # noqa: F811
    f = run_bench("coldstart", "--serve-image", images.serve, "--train-image", images.train, "--model", "tiny",
                  "--runs", "1", "--docker", images.docker, "--workdir", str(tmp_path), timeout=600)
    assert len(f["ping_seconds"]) == 1 and positive(f["ping_seconds"][0])
    assert positive(f["image_size_mb"]["serve"]) and positive(f["image_size_mb"]["train"])


def test_coldstart_says_not_measured_without_the_image(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "coldstart"), "--serve-image", "wav2vec2-no-such-image:none"],
                          env=program_env(), capture_output=True, text=True, timeout=120)
    if "docker" in proc.stderr.lower() and "not found" in proc.stderr.lower():
        pytest.skip("no docker client")
    assert proc.returncode == 1
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["ping_seconds"] is None and "not found" in figures["error"]
