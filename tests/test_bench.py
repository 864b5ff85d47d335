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


def test_vad_chunking_compares_pauses_with_fixed_chunks(tmp_path):
    f = run_bench("vad_chunking", "--recordings", "1", "--minutes", "0.4", "--short", "1", "--repeats", "1",
                  "--chunk-s", "8", "--stride-s", "2", "--workdir", str(tmp_path))
    for mode in ("long_fixed", "long_vad", "short_vad", "short_vad_short"):
        m = f[mode]
        assert positive(m["forward_s"]) and positive(m["cpu_s"]) and m["chunks"] >= 1, mode
        assert (m["cer"] is None) == (not f["trained"]), mode
    # The pauses are not sent: less audio than the recording, and less than fixed chunks with their overlaps.
    assert f["long_vad"]["sent_s"] < f["long_vad"]["audio_s"] <= f["long_fixed"]["sent_s"]
    assert positive(f["long_vad"]["vad_s"])
    assert f["short_vad"]["sent_s"] == f["short_vad"]["audio_s"] and f["short_vad"]["chunks"] == 1
    assert f["long_fixed"]["vad_s"] == 0


def test_batching_compares_one_clip_exact_and_plain_batches(bench_dir):
    f = run_bench("batching", "--models", "tiny", "--dtypes", "fp32", "--batch-sizes", "1,2", "--clips", "3",
                  "--shortest-s", "0.5", "--longest-s", "1.5", "--repeats", "1", "--workdir", str(bench_dir))
    speeds = f["audio_s_per_s"]["tiny"]["fp32"]
    assert positive(speeds["one_clip"])
    for way in ("exact", "plain"):
        assert all(positive(speeds[way][b]) for b in ("1", "2")), way
        # Exact batches give one-clip logits; the tiny model's layer-norm encoder is exact with the mask too.
        assert f["clips_argmax_differ"]["tiny"]["fp32"][way] == {"1": 0, "2": 0}
        assert f["max_diff_vs_one_clip"]["tiny"]["fp32"][way]["2"] < 1e-4
    assert f["padding_fraction"]["tiny"]["fp32"]["1"] == 0 and f["padding_fraction"]["tiny"]["fp32"]["2"] > 0
    assert f["clips_s"] == [0.5, 1.0, 1.5]


def test_training_compares_with_the_seed_style_script(tmp_path):
    f = run_bench("training", "--utterances", "8", "--epochs", "1", "--batch", "8", "--warmup", "0",
                  "--workdir", str(tmp_path))
    assert f["steps"] == 1
    assert positive(f["audio_seconds_per_second"]["ours"]) and positive(f["audio_seconds_per_second"]["seed"])
    assert f["ratio"] == pytest.approx(f["audio_seconds_per_second"]["ours"] / f["audio_seconds_per_second"]["seed"],
                                       rel=0.01)
    assert positive(f["cpu_seconds"]["ours"]) and positive(f["cpu_seconds"]["seed"])
    assert f["cer"] is None  # --accuracy not given: said not measured, not invented


def test_train_accuracy_scores_both_layouts_on_three_disjoint_heldout_sets(tmp_path):
    f = run_bench("train_accuracy", "--utterances", "8", "--heldout-utterances", "3", "--max-steps", "1",
                  "--seconds", "0", "--plain-loop", "--workdir", str(tmp_path), timeout=600)
    sets = "ABC"
    assert set(f["results"]) == {"layer", "group"} and set(f["plain_loop"]) == {"layer", "group"}
    for r in [*f["results"].values(), *f["plain_loop"].values()]:
        assert r["steps"] == 1
        assert all(0 <= r[f"cer_{s}"] and 0 <= r[f"wer_{s}"] for s in sets)
    # The training program built its default LM: every held-out set is also scored with it.
    assert all(0 <= r[f"cer_lm_{s}"] and 0 <= r[f"wer_lm_{s}"] for r in f["results"].values() for s in sets)
    assert f["cer"] == max(r[f"cer_{s}"] for r in f["results"].values() for s in sets)

    def column(split, key):
        return {json.loads(line)[key] for line in (tmp_path / split / "manifest.jsonl").read_text().splitlines()}

    for key in ("voice", "text"):  # no voice and no sentence in two of training, A, B, C
        values = [column("data_a/train", key), *(column(f"data_{s.lower()}/test", key) for s in sets)]
        assert sum(len(v) for v in values) == len(set().union(*values)), key
    for r in f["results"].values():  # CER per held-out voice, each a rate
        assert [set(r[f"cer_by_voice_{s}"]) for s in sets] == [column(f"data_{s.lower()}/test", "voice") for s in sets]
        assert all(0 <= c for s in sets for c in r[f"cer_by_voice_{s}"].values())


def test_train_accuracy_refuses_heldout_sets_that_share_a_sentence(tmp_path):
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("train_accuracy", str(BENCH / "train_accuracy"))
    bench = importlib.util.module_from_spec(importlib.util.spec_from_loader("train_accuracy", loader))
    loader.exec_module(bench)

    def channel(path, rows):
        path.mkdir(parents=True)
        (path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    channel(tmp_path / "a" / "train", [{"audio": "1.wav", "text": "red cat", "voice": "en-us"}])
    channel(tmp_path / "a" / "test", [{"audio": "2.wav", "text": "big dog", "voice": "en-us+f2"}])
    channel(tmp_path / "b" / "test", [{"audio": "3.wav", "text": "small bird", "voice": "en-us+f4"}])
    bench.check_disjoint({"A": tmp_path / "a", "B": tmp_path / "b"})  # disjoint: no error
    (tmp_path / "b" / "test" / "manifest.jsonl").write_text(json.dumps({"audio": "3.wav", "text": "big dog",
                                                                         "voice": "en-us+f4"}) + "\n")
    with pytest.raises(SystemExit, match="set A and set B share the text"):
        bench.check_disjoint({"A": tmp_path / "a", "B": tmp_path / "b"})


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


# bench/gpu_check: its CPU rehearsal runs every stage of the GPU path (servers over HTTP, train/train, torchrun)
# at tiny sizes, with this venv's packages instead of carried wheels (--no-install).
@pytest.fixture(scope="module")
def gpu_check_assets(tmp_path_factory, synthetic_data, tiny_model_dir):
    """The layout --prepare writes, made from the session's synthetic speech and tiny model."""
    import shutil

    out = tmp_path_factory.mktemp("gpu_check_assets")
    for split in ("train", "test"):
        shutil.copytree(synthetic_data / split, out / "data" / split)
    shutil.copytree(tiny_model_dir, out / "tiny_model")
    (out / "info.json").write_text(json.dumps({"tiny_model": "random (test)"}))
    return out


def run_gpu_check(*args: str, timeout: float = 900) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check"), "--no-install", *args], env=program_env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


def test_gpu_check_without_a_gpu_checks_its_setup(tmp_path, gpu_check_assets):
    code, f, out = run_gpu_check("--assets", str(tmp_path / "none"), "--json", str(tmp_path / "a.json"))
    assert code == 1 and f["mode"] == "no-gpu", out[-3000:]
    assert f["checks"]["setup_assets"]["result"] == "FAIL" and "--prepare" in f["checks"]["setup_assets"]["detail"]
    code, f, out = run_gpu_check("--assets", str(gpu_check_assets), "--json", str(tmp_path / "b.json"))
    assert code == 0 and f["mode"] == "no-gpu" and "no GPU here" in out, out[-3000:]
    assert json.loads((tmp_path / "b.json").read_text())["checks"] == f["checks"]
    assert all(v["result"] == "pass" for v in f["checks"].values())
    assert f["setup"]["modules"]["flask"]["version"] and not f["setup"]["modules"]["flask"]["carried"]


def test_gpu_check_rehearsal_runs_every_stage(tmp_path, gpu_check_assets):
    code, f, out = run_gpu_check(
        "--rehearse", "--assets", str(gpu_check_assets), "--workdir", str(tmp_path), "--clips", "2",
        "--models", "tiny_trained", "--cells", "fp32:2", "--concurrency", "1,2", "--window-s", "0.5",
        "--anchor-batch", "2", "--train-runs", "torchrun_bf16", "--torchrun-steps", "2")
    assert code == 0, out[-5000:]
    assert f["mode"] == "rehearsal" and f["device"]["cuda_available"] is False
    s1 = f["stages"]["1_precision"]["tiny_trained"]
    assert s1["errors"] == {"fp32": 0, "fp16": 0, "bf16": 0}
    # The server's transcripts are transformers' own decoding of the same model (fp16 runs in fp32 on a CPU).
    assert s1["dtypes"]["fp32"]["equal_to_transformers_decode"] == 2 == s1["dtypes"]["fp16"]["equal_to_fp32"]
    cell = f["stages"]["2_throughput"]["cells"][0]
    for c in ("1", "2"):
        r = cell["by_concurrency"][c]
        assert r["errors"] == 0 and positive(r["rtfx"]) and positive(r["ratio_to_bare"]), r
    assert cell["memory"]["method"] == "host RSS" and positive(cell["memory"]["peak_mib"])
    assert {(b["dtype"], b["batch"]) for b in f["stages"]["2_throughput"]["bare"]} == {("fp32", 1), ("fp32", 2), ("bf16", 2)}
    # One training run keeps the test short: the torchrun path, which runs train/train inside it.
    t = f["stages"]["3_training"]["torchrun_bf16"]
    assert t["exit"] == 0 and t["processes"] == 1 and t["steps"] == 2 and t["loss_first"] is not None, out[-5000:]
    assert f["stages"]["1_precision"]["tiny_trained"]["model"]["source"] == "carried (--prepare)"
    # The development environment has KenLM (setup.sh): LM decoding is measured through one server.
    lm = f["stages"]["4_future"]["lm_decoding"]
    assert lm["status"] == "measured", lm
    assert lm["errors"] == {"greedy": {"4": 0}, "beam16": {"4": 0}} and positive(lm["ratio_to_greedy"]["beam16"]["4"])
    assert f["stages"]["4_future"]["streaming"]["status"] == "measured", f["stages"]["4_future"]["streaming"]
    assert not [k for k, v in f["checks"].items() if v["result"] == "FAIL"]
