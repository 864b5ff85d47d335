"""End-to-end native runs: the model learns, the outputs honour the contract, SIGTERM saves and resumes."""
from __future__ import annotations

import re
import signal
import sys
import time

import pytest

from train_helpers import (FAST, ROOT, assert_ok, is_model_dir, make_opt_ml, metrics, micro_model_dir,
                           model_files, run_train, start_train)

sys.path.insert(0, str(ROOT))
from train.progress import METRIC_DEFINITIONS  # noqa: E402

LEARN_STEPS = 350


@pytest.fixture(scope="module")
def learned(tmp_path_factory, synthetic_data):
    """A small model from a random start, trained LEARN_STEPS steps on 36 of the 48 synthetic training clips
    and evaluated (at step 0 and at the end) on the other 12 (seeded test_split). CTC from scratch spends
    its first ~200 steps emitting blanks only; by step 350 it emits right characters (CER 0.84 at step
    300 when this was written)."""
    tmp = tmp_path_factory.mktemp("learn")
    model = micro_model_dir(tmp / "model_src")
    opt = make_opt_ml(tmp / "opt", {"train": synthetic_data / "train", "model": model}, {
        "max_steps": str(LEARN_STEPS), "train_batch_size": "8", "learning_rate": "3e-3", "warmup_steps": "20",
        "lr_scheduler": "constant_with_warmup", "test_split": "0.25", "eval_on_start": "true",
        "logging_steps": "50",
        "save_steps": "1000", "mask_time_prob": "0.0", "speed_perturbation": "0", "reverberation": "0",
        "voice_perturbation": "0", "lm_order": "3",
        "lm_tuning_seconds": "20",
    })
    started = time.monotonic()
    proc = run_train(opt, timeout=600)
    assert_ok(proc)
    return opt, proc, metrics(opt), time.monotonic() - started


def test_learning_cer_drops_clearly_below_step_zero(learned):
    opt, proc, m, seconds = learned
    history = m["eval_history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == LEARN_STEPS
    start, end = history[0]["cer"], history[-1]["cer"]
    print(f"CER {start:.3f} at step 0 -> {end:.3f} at step {LEARN_STEPS} ({seconds:.0f} s)")
    # A random model's CER is >= 1 (it emits noise or nothing); emitting blanks only scores exactly 1.0,
    # so "below 0.92" means it transcribes characters correctly, not just that it stopped babbling.
    assert start >= 0.95
    assert end < 0.92 and end < start - 0.2
    assert m["eval_loss"] < history[0]["loss"] / 2
    assert m["train_history"][-1]["loss"] < 2.9  # below the all-blank plateau (~2.97)


def test_model_dir_is_exactly_what_serving_loads(learned):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from common import modeldir

    opt = learned[0]
    assert is_model_dir(model_files(opt), lm=True), model_files(opt)
    model, processor = modeldir.load(opt / "model")
    assert model.config.vocab_size == len(processor.tokenizer)
    Wav2Vec2Processor.from_pretrained(opt / "model")
    Wav2Vec2ForCTC.from_pretrained(opt / "model")


def test_metrics_json_and_plot(learned):
    opt, _, m, _ = learned
    for key in ("wer", "cer", "eval_history", "train_seconds", "audio_seconds_per_second", "skipped_files"):
        assert key in m
    assert m["steps"] == LEARN_STEPS and m["train_seconds"] > 0 and m["audio_seconds_per_second"] > 0
    assert m["cer"] == m["eval_history"][-1]["cer"]
    assert m["skipped_files"]["train"]["count"] == 0
    assert [e["step"] for e in m["eval_history"]] == [0, LEARN_STEPS]
    # A config-only model channel: the from-scratch preset, whose values never override the job's own.
    from train.hyperparameters import FROM_SCRATCH

    assert m["preset"] == "from_scratch" and "[train] preset from_scratch (random start)" in learned[1].stdout
    assert m["hyperparameters"]["learning_rate"] == 3e-3 and m["hyperparameters"]["lr_scheduler"] == "constant_with_warmup"
    assert all(m["hyperparameters"][k] == v for k, v in FROM_SCRATCH.items()
               if k not in ("learning_rate", "lr_scheduler", "warmup_steps", "mask_time_prob", "speed_perturbation"))
    assert m["hyperparameters"]["reverberation"] == 0  # the job's 0, not the layer-norm preset's 0.5
    assert m["hyperparameters"]["voice_perturbation"] == 0  # likewise
    png = (opt / "output" / "data" / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_metric_definitions_match_the_log(learned):
    """The regexes SageMaker gets (train.progress.METRIC_DEFINITIONS) capture the values of real lines."""
    _, proc, m, _ = learned
    found = {}
    for d in METRIC_DEFINITIONS:
        values = [float(x) for x in re.findall(d["Regex"], proc.stdout)]
        assert values, f"{d['Name']} matches no log line"
        found[d["Name"]] = values
    assert found["eval:cer"][-1] == pytest.approx(m["cer"], abs=1e-4)
    assert found["eval:wer"][-1] == pytest.approx(m["wer"], abs=1e-4)
    assert len(found["eval:cer"]) == 2
    assert len(found["train:loss"]) == LEARN_STEPS // 50
    # "loss=" of a [metrics] line is not confused with an [eval] line's loss, nor the other way round.
    assert found["eval:loss"][-1] == pytest.approx(m["eval_loss"], abs=1e-3)
    assert found["train:loss"][-1] == pytest.approx(m["train_history"][-1]["loss"], abs=1e-3)
    assert found["eval:wer_lm"] == [pytest.approx(m["wer_lm"], abs=1e-4)]
    assert found["eval:cer_lm"] == [pytest.approx(m["cer_lm"], abs=1e-4)]


def test_language_model_built_beside_the_model(learned):
    """lm_order=3: a KenLM 3-gram from the 36 training transcripts (never the 12 held out), alpha/beta tuned
    on the held-out clips within lm_tuning_seconds; serving's common.lm loads it; greedy and LM figures
    side by side in the log and metrics.json."""
    from common import lm as common_lm

    opt, proc, m, _ = learned
    assert common_lm.load(opt / "model").has_lm
    lm = m["lm"]
    assert lm["order"] == 3 and lm["transcripts"] == 36 and lm["tuning"]
    assert lm["tuning_seconds"] <= 20 + 10
    # The same clips decoded greedily (one clip at a time in fp32 there, in batches under the training
    # precision in evaluation: bf16 on CPUs with native bf16 may flip a rare frame).
    assert lm["cer_greedy_same_logits"] == pytest.approx(m["cer"], abs=0.02)
    attrs = __import__("json").loads((opt / "model" / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (lm["alpha"], lm["beta"])
    done = re.search(r"\[train\] done: .*greedy wer=([0-9.]+) cer=([0-9.]+), with the LM wer_lm=([0-9.]+) "
                     r"cer_lm=([0-9.]+)", proc.stdout)
    assert done, proc.stdout[-3000:]
    assert float(done.group(4)) == pytest.approx(m["cer_lm"], abs=1e-4)


def test_transformers_pipeline_decodes_with_the_jobs_lm_as_the_server_does(learned, synthetic_data):
    """pipeline("automatic-speech-recognition", model=model/) loads the LM the job saved (processor_config.json
    declares Wav2Vec2ProcessorWithLM, train/outputs.declare_processor) and, at the server's beam width, writes
    the server's default (beam + LM) transcript of each held-out clip; it decoded greedily before."""
    import json

    import soundfile as sf
    from transformers import AutoProcessor, Wav2Vec2ProcessorWithLM, pipeline

    from common import lm as common_lm
    from serve import model as serve_model, options
    from serve.contract import Clip
    from serve.settings import Settings

    opt = learned[0]
    model_dir = opt / "model"
    assert json.loads((model_dir / "processor_config.json").read_text())["feature_extractor"][
        "processor_class"] == "Wav2Vec2ProcessorWithLM"
    assert isinstance(AutoProcessor.from_pretrained(str(model_dir)), Wav2Vec2ProcessorWithLM)
    pipe = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
    assert pipe.type == "ctc_with_lm"
    rows = [json.loads(line) for line in (synthetic_data / "test" / "manifest.jsonl").read_text().splitlines()]
    clips = [sf.read(synthetic_data / "test" / r["audio"], dtype="float32")[0] for r in rows]
    served = serve_model.load(Settings.from_env({"OPT_ML": str(opt), "SERVE_CPU_BF16": "false"}))
    try:
        assert served.info.default_decoder == "beam"
        deadline = time.monotonic() + 300
        server = [served.transcribe([Clip(c)], deadline=deadline)[0].text for c in clips]
        greedy = [served.transcribe([Clip(c, options.Options(decoder="greedy"))], deadline=deadline)[0].text
                  for c in clips]
    finally:
        served.close()
    piped = [pipe(c, decoder_kwargs={"beam_width": common_lm.DEFAULT_BEAM_WIDTH})["text"] for c in clips]
    assert piped == server
    assert server != greedy  # the LM changes transcripts here: the comparison can tell the decoders apart


def test_sigterm_saves_a_checkpoint_then_a_restart_resumes(tmp_path, synthetic_data):
    model = micro_model_dir(tmp_path / "model_src")
    hp = {**FAST, "max_steps": "10000", "save_steps": "10000", "test_split": "0", "lm_order": "0"}
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": model}, hp)
    proc = start_train(opt)
    seen = []
    try:
        for line in proc.stdout:  # wait for real training progress
            seen.append(line)
            if line.startswith("[metrics] step=3 "):
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    out = "".join(seen) + rest
    assert proc.returncode == 143, out[-3000:]
    assert took < 60
    match = re.search(r"\[train\] stopped by SIGTERM at step (\d+); checkpoint saved", out)
    assert match, out[-3000:]
    step = int(match.group(1))
    assert step >= 3
    assert (opt / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (opt / "model" / "model.safetensors").exists()
    assert not (opt / "output" / "failure").exists()

    # Restart (as SageMaker does after a spot interruption) with 3 more steps to go.
    (opt / "input" / "config" / "hyperparameters.json").write_text(
        __import__("json").dumps({**hp, "max_steps": str(step + 3)}))
    proc2 = run_train(opt)
    assert_ok(proc2)
    assert f"[train] resuming from checkpoint {opt / 'checkpoints' / f'checkpoint-{step}'} (step {step})" \
        in proc2.stdout
    steps_logged = [int(s) for s in re.findall(r"\[metrics\] step=(\d+) ", proc2.stdout)]
    assert steps_logged == [step + 1, step + 2, step + 3]
    m = metrics(opt)
    assert m["resumed_from_step"] == step and m["steps"] == step + 3
    assert is_model_dir(model_files(opt))


def test_help_lists_every_hyperparameter(tmp_path):
    from train import hyperparameters

    proc = run_train(tmp_path, "--help", timeout=60)
    assert proc.returncode == 0
    for name in hyperparameters.names():
        assert f"  {name} (default " in proc.stdout


def test_training_plot_shows_the_lm_figures_beside_greedy(tmp_path, monkeypatch):
    """training.png draws WER/CER with the job's LM at the step it was built, beside the greedy curves."""
    import matplotlib.pyplot as plt

    from train import outputs

    seen = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: seen.update(
        labels=[t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()],
        titles=[ax.get_title() for ax in fig.axes], lr=[ln.get_ydata().tolist() for ax in fig.axes
                                                        if ax.get_title() == "Learning rate" for ln in ax.lines]))
    evals = [{"step": 10, "wer": 1.0, "cer": 0.9, "loss": 3.0}, {"step": 20, "wer": 0.8, "cer": 0.5, "loss": 2.0}]
    outputs.plot(tmp_path, [{"step": 10, "loss": 3.2, "learning_rate": 1e-4}, {"step": 20, "loss": 2.9,
                                                                              "learning_rate": 5e-5}],
                 evals, {"step": 20, "wer_lm": 0.4, "cer_lm": 0.3})
    assert seen["lr"] == [[1e-4, 5e-5]] and "Learning rate" in seen["titles"]
    assert {"WER (greedy)", "CER (greedy)", "WER with LM", "CER with LM"} <= set(seen["labels"])
    outputs.plot(tmp_path, [{"step": 10, "loss": 3.2}], evals, None)
    assert not any("with LM" in label for label in seen["labels"])


def test_fairseq_style_vocab_channel_with_a_literal_space_trains(tmp_path, synthetic_data):
    """A vocab channel whose vocab.json has a literal space and no `|` (fairseq's and some hub checkpoints'
    style): the data step labels a space with the tokenizer's id for it (as tokenizer(text).input_ids), the
    job trains, evaluates and saves a model serving loads. (It failed with KeyError: '|' in the encoder.)"""
    import json

    from checkpoints import VOCAB_SPACE
    from common import modeldir

    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.json").write_text(json.dumps(VOCAB_SPACE))
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "vocab": vocab_dir,
                                         "model": micro_model_dir(tmp_path / "model_src")},
                      {**FAST, "test_split": "0.25", "precision": "fp32"})
    proc = run_train(opt)
    assert_ok(proc)
    assert "[data] vocabulary of" in proc.stdout and "from vocab channel" in proc.stdout
    m = metrics(opt)
    assert m["unknown_characters"]["train"] == {} and m["wer"] is not None
    assert json.loads((opt / "model" / "vocab.json").read_text()) == VOCAB_SPACE
    model, processor = modeldir.load(opt / "model")
    assert model.config.vocab_size == len(processor.tokenizer)


def half_precision_model(dest, dtype):
    """A save_pretrained directory in float16 or bfloat16, as many hub checkpoints are."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config.from_pretrained(micro_model_dir(dest))
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).to(dtype).save_pretrained(dest)
    return dest


def saved_dtypes(model_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


@pytest.mark.parametrize("dtype, precision", [("float16", "auto"), ("float16", "fp32"), ("bfloat16", "auto")])
def test_a_half_precision_model_channel_trains_float32_masters_and_saves_float32(tmp_path, synthetic_data,
                                                                                 dtype, precision):
    """A float16 model channel failed (`mixed dtype (CPU)` under precision=auto, a dtype mismatch under fp32)
    and a bfloat16 one trained bf16 master weights and saved bf16: weights load into float32 always."""
    import json

    import torch

    source = half_precision_model(tmp_path / "model_src", getattr(torch, dtype))
    assert saved_dtypes(source) == {"F16" if dtype == "float16" else "BF16"}
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": source},
                      {**FAST, "test_split": "0.25", "precision": precision})
    assert_ok(run_train(opt))
    assert saved_dtypes(opt / "model") == {"F32"}
    assert json.loads((opt / "model" / "config.json").read_text()).get("dtype") in (None, "float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_serving_loads_a_half_precision_directory_in_float32(tmp_path, speech_clip, dtype):
    """The served transcript of a float16/bfloat16 directory is the one of the same weights in float32."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from checkpoints import VOCAB_RECIPE
    from common import modeldir
    from serve.contract import Clip
    from serve.model import ServingModel

    processor = modeldir.make_processor(VOCAB_RECIPE)
    cfg = modeldir.tiny_config(len(processor.tokenizer), processor.tokenizer.pad_token_id,
                               hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    weights = Wav2Vec2ForCTC(cfg).to(getattr(torch, dtype))
    modeldir.save(tmp_path / "half", weights, processor)
    modeldir.save(tmp_path / "full", weights.float(), processor)
    texts = {}
    for name in ("half", "full"):
        checkpoint = modeldir.load_checkpoint(tmp_path / name)
        assert {p.dtype for p in checkpoint.model.parameters()} == {torch.float32}
        model = ServingModel(checkpoint, device=torch.device("cpu"), dtype=torch.float32).start()
        try:
            texts[name] = model.transcribe([Clip(speech_clip)], deadline=time.monotonic() + 120)[0].text
        finally:
            model.close()
    assert texts["half"] == texts["full"] and len(set(texts["full"])) >= 3, texts
