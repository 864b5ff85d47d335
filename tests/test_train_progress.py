"""Training progress: the [metrics] line's fields (step of max_steps, time budget, elapsed, ETA, samples/s,
audio-seconds/s), the metric regexes that parse them, report_to=tensorboard/mlflow, and light imports."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from train_helpers import ROOT, assert_ok, make_opt_ml, metrics, micro_model_dir, program_env, run_train

from train.progress import METRIC_DEFINITIONS, Pace, line  # noqa: E402


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_pace_steps_eta_and_rates():
    clock = Clock()
    pace = Pace(max_steps=100, max_train_seconds=0, samples_per_epoch=200, audio_seconds_per_epoch=800.0,
                clock=clock)
    pace.start(step=0, epoch=0.0)
    clock.t += 50  # 10 steps, a quarter epoch (50 samples, 200 audio seconds) in 50 s
    f = pace.fields(step=10, epoch=0.25)
    assert f == {"max_steps": 100, "elapsed_s": 50, "eta_s": 450, "samples_per_s": 1.0, "audio_s_per_s": 4.0}
    clock.t += 10  # faster now: the rates and the ETA follow the last interval
    f = pace.fields(step=20, epoch=0.5)
    assert f["elapsed_s"] == 60 and f["eta_s"] == 80 and f["samples_per_s"] == 5.0 and f["audio_s_per_s"] == 20.0


def test_pace_time_budget_caps_the_eta_and_is_reported():
    clock = Clock()
    pace = Pace(max_steps=10_000, max_train_seconds=600, samples_per_epoch=100, audio_seconds_per_epoch=100.0,
                clock=clock)
    pace.start(step=0, epoch=0.0)
    clock.t += 100
    f = pace.fields(step=10, epoch=0.1)
    assert f["eta_s"] == 500  # the budget ends before the 99,900 s the steps would take
    assert f["train_seconds"] == 100 and f["max_train_seconds"] == 600


def test_pace_resumed_counts_only_this_run():
    clock = Clock()
    pace = Pace(max_steps=40, max_train_seconds=0, samples_per_epoch=10, audio_seconds_per_epoch=30.0, clock=clock)
    pace.start(step=20, epoch=2.0)  # resumed at step 20
    clock.t += 10
    f = pace.fields(step=30, epoch=3.0)
    assert f["samples_per_s"] == 1.0 and f["audio_s_per_s"] == 3.0 and f["eta_s"] == 10 and f["elapsed_s"] == 10


def _callback_run(reporter, tmp_steps=(2, 4)):
    """ProgressCallback driven as the Trainer drives it (no model): two [metrics] lines, one [eval]."""
    from train.callbacks import ProgressCallback

    cb = ProgressCallback(samples_per_epoch=16, audio_seconds_per_epoch=48.0, max_train_seconds=0, reporter=reporter)
    state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=8)
    cb.on_train_begin(None, state, None)
    for step in tmp_steps:
        state.global_step, state.epoch = step, step / 8
        cb.on_log(None, state, None, logs={"loss": 3.0 / step, "learning_rate": 1e-4 * step, "grad_norm": 0.5 * step})
    cb.on_evaluate(None, state, None, metrics={"eval_wer": 0.75, "eval_cer": 0.25, "eval_loss": 1.5})
    return cb


def test_every_progress_field_and_the_regexes_that_read_them(capsys):
    cb = _callback_run(None)
    out = capsys.readouterr().out
    metric_lines = [x for x in out.splitlines() if x.startswith("[metrics] ")]
    assert len(metric_lines) == 2
    last = dict(kv.split("=", 1) for kv in metric_lines[-1].split()[1:])
    assert set(last) == {"step", "epoch", "loss", "learning_rate", "grad_norm", "max_steps", "elapsed_s", "eta_s",
                         "samples_per_s", "audio_s_per_s"}
    assert last["step"] == "4" and last["max_steps"] == "8"
    assert metric_lines[0].startswith("[metrics] step=2 epoch=0.2500 ")  # the order tests and users parse
    row = cb.train_history[-1]
    by_name = {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    expect = {"train:loss": row["loss"], "train:learning_rate": row["learning_rate"], "train:epoch": row["epoch"],
              "train:grad_norm": row["grad_norm"], "train:samples_per_second": row["samples_per_s"],
              "train:audio_seconds_per_second": row["audio_s_per_s"], "train:eta_seconds": row["eta_s"],
              "eval:wer": 0.75, "eval:cer": 0.25, "eval:loss": 1.5}
    text = out + line("eval", step=4, wer_lm=0.5, cer_lm=0.125) + "\n"
    expect.update({"eval:wer_lm": 0.5, "eval:cer_lm": 0.125})
    assert set(expect) == set(by_name)
    for name, value in expect.items():
        found = re.findall(by_name[name], text)
        assert found, name
        assert float(found[-1]) == pytest.approx(value, rel=1e-3, abs=1e-4), name
    # A [metrics] regex never reads an [eval] line and the other way round.
    assert len(re.findall(by_name["train:loss"], text)) == 2 and len(re.findall(by_name["eval:loss"], text)) == 1
    assert not re.search(by_name["eval:wer"], line("eval", step=4, wer_lm=0.5))


def test_mlflow_reports_to_a_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from train import reporting

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    reporter = reporting.open_reporter("mlflow", tmp_path / "output", {"MLFLOW_TRACKING_URI": uri,
                                                                       "TRAINING_JOB_NAME": "job-7"})
    run_id = reporter.run.info.run_id
    reporter.params({"learning_rate": 1e-4, "report_to": "mlflow"})
    _callback_run(reporter)
    reporter.scalars("eval", 4, {"wer_lm": 0.5, "cer_lm": 0.125})
    reporting.close_all("FINISHED")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "job-7"
    assert run.data.params["learning_rate"] == "0.0001"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(2, 1.5), (4, 0.75)]
    assert [m.value for m in client.get_metric_history(run_id, "train/learning_rate")] == pytest.approx([2e-4, 4e-4])
    assert run.data.metrics["eval/wer"] == 0.75 and run.data.metrics["eval/cer"] == 0.25
    assert run.data.metrics["eval/wer_lm"] == 0.5 and "train/samples_per_s" in run.data.metrics


def test_report_to_mlflow_needs_its_tracking_uri(tmp_path):
    from train import reporting
    from train.failure import TrainingError

    with pytest.raises(TrainingError, match="report_to=mlflow needs MLFLOW_TRACKING_URI"):
        reporting.open_reporter("mlflow", tmp_path, {})


def test_report_to_tensorboard_in_a_real_run(tmp_path, synthetic_data):
    """A real job with report_to=tensorboard: its event files, read with tensorboard's own reader, hold loss,
    learning rate, eval WER/CER; the log's [metrics] lines say step N of M with pace fields."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = micro_model_dir(tmp_path / "model_src")
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": model}, {
        "max_steps": "4", "train_batch_size": "4", "eval_batch_size": "8", "logging_steps": "2",
        "save_steps": "1000", "test_split": "0.25", "report_to": "tensorboard", "learning_rate": "1e-3"})
    proc = run_train(opt)
    assert_ok(proc)
    lines = re.findall(r"^\[metrics\] .*$", proc.stdout, re.M)
    assert [re.search(r"step=(\d+) ", x).group(1) for x in lines] == ["2", "4"]
    assert all(" max_steps=4 " in x and re.search(r" eta_s=\d+ ", x) and re.search(r" samples_per_s=[0-9.]+", x)
               and re.search(r" audio_s_per_s=[0-9.]+", x) and re.search(r" elapsed_s=\d+", x) for x in lines), lines
    assert re.search(r" eta_s=0 ", lines[-1])  # the last step: nothing left
    for d in METRIC_DEFINITIONS:  # every train:* regex reads the real lines
        if d["Name"].startswith("train:"):
            assert len(re.findall(d["Regex"], proc.stdout)) == 2, d
    events = list((opt / "output" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list((opt / "output").iterdir())
    acc = EventAccumulator(str(opt / "output" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/samples_per_s", "eval/wer",
            "eval/cer", "eval/loss"} <= tags, tags
    m = metrics(opt)
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in m["train_history"]])
    assert acc.Scalars("eval/cer")[-1].value == pytest.approx(m["cer"], rel=1e-5)
    assert acc.Scalars("eval/wer")[-1].value == pytest.approx(m["wer"], rel=1e-5)
    assert [e.value for e in acc.Scalars("train/learning_rate")] == pytest.approx(
        [r["learning_rate"] for r in m["train_history"]])


HEAVY = ("torch", "transformers", "datasets", "accelerate")


def _heavy_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] "
                          f"for m in sys.modules}} & set({list(HEAVY)!r}))))"],
                         cwd=str(ROOT), env=program_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_help_and_the_metric_regexes_load_no_torch():
    assert _heavy_after("from train.progress import METRIC_DEFINITIONS") == []
    assert _heavy_after("import common.settings, train.hyperparameters, train.progress") == []
    assert _heavy_after("import contextlib, io\nfrom train.main import main\n"
                        "with contextlib.redirect_stdout(io.StringIO()): assert main(['--help']) == 0") == []
    # The check itself can fail: the Trainer callback does load them.
    assert "torch" in _heavy_after("import train.callbacks")


def test_importing_the_launcher_loads_no_torch():
    code = ("import pkgutil, importlib, launcher\n"
            "for m in pkgutil.iter_modules(launcher.__path__):\n    if m.name != '__main__': importlib.import_module('launcher.' + m.name)\n"
            "from launcher.metrics import metric_definitions\nassert metric_definitions()")
    assert _heavy_after(code) == []
