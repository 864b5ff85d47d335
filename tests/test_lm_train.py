"""The training side of the LM (train/lm.py): estimation, the lm channel, tuning bounded in time, the saved
layout loading with Wav2Vec2ProcessorWithLM.from_pretrained and with common.lm."""
from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import audio, lm as common_lm, modeldir, text  # noqa: E402
from train import lm  # noqa: E402
from train.failure import TrainingError  # noqa: E402

from test_lm import SENTENCES, spell  # noqa: E402


def processor_dir(dest: Path, sentences=SENTENCES) -> Path:
    modeldir.make_processor(text.build_vocab(sentences)).save_pretrained(dest)
    return dest


def test_estimated_lm_loads_with_wav2vec2_processor_with_lm(tmp_path):
    from transformers import Wav2Vec2ProcessorWithLM

    channel = tmp_path / "lm"
    (channel / "more").mkdir(parents=True)
    (channel / "extra.txt").write_text("The Farmer, the KING!\n\nseven hills\n")
    with gzip.open(channel / "more" / "big.txt.gz", "wt") as f:
        f.write("a red river\n" * 1000)
    (channel / ".hidden").write_text("never read\n")
    model_dir = processor_dir(tmp_path / "model")
    plan = lm.plan(3, 0.0, channel)
    logs = []
    result = lm.build(plan, model_dir, train_texts=["The cat runs!", "the dog walks."],
                      chars_to_ignore=text.DEFAULT_CHARS_TO_IGNORE, log=logs.append)

    processor = Wav2Vec2ProcessorWithLM.from_pretrained(str(model_dir))
    language_model = processor.language_model
    assert {"cat", "runs", "farmer", "king", "hills", "river"} <= set(language_model._unigram_set)
    assert "never" not in language_model._unigram_set and "The" not in language_model._unigram_set
    assert (language_model.alpha, language_model.beta) == (0.5, 1.5)
    assert (model_dir / "language_model" / "3gram.bin").is_file()
    assert (result.counts.transcripts, result.counts.channel_lines) == (2, 1002)
    assert result.metrics["lm"]["order"] == 3 and result.wer_lm is None
    assert any("estimated a 3-gram from 2 transcripts and 1002 lm channel lines" in l for l in logs)
    decoder = common_lm.load(model_dir)
    assert decoder.has_lm and decoder.order == 3
    assert decoder.decode(spell("the king sees the farmer", decoder.labels, {"k": "c"})).text == \
        "the king sees the farmer"
    for f in [model_dir / "alphabet.json", *(model_dir / "language_model").iterdir()]:
        assert f.stat().st_mode & 0o044 == 0o044, f


def test_ready_made_lm_channels(tmp_path):
    arpa = lm.estimate_arpa(SENTENCES, 2, tmp_path / "work")
    channel = tmp_path / "lm"
    channel.mkdir()
    shutil.copy(arpa, channel / "my.arpa")
    model_dir = processor_dir(tmp_path / "model")
    result = lm.build(lm.plan(5, 0.0, channel), model_dir, train_texts=["unused words here"],
                      chars_to_ignore="", log=lambda _: None)
    assert result.source == "lm channel: my.arpa" and result.order == 2  # the channel's LM, not lm_order
    assert "here" not in set((model_dir / "language_model" / "unigrams.txt").read_text().split())

    # A published checkpoint's language_model/ folder (KenLM binary + unigrams.txt + attrs.json) as it is.
    binary_channel = tmp_path / "lm_bin"
    shutil.copytree(model_dir / "language_model", binary_channel)
    model_two = processor_dir(tmp_path / "model_two")
    result = lm.build(lm.plan(3, 0.0, binary_channel), model_two, train_texts=[], chars_to_ignore="",
                      log=lambda _: None)
    assert result.order == 2 and common_lm.load(model_two).has_lm


@pytest.mark.parametrize("files, order, message", [
    ({"a.arpa": "x", "b.bin": "y"}, 3, "channel lm holds 2 language models"),
    ({"a.arpa": "x", "notes.txt": "y"}, 3, "holds a ready-made language model \\(a.arpa\\) and text files"),
    ({"lm.bin": "x"}, 3, "the KenLM binary lm.bin needs unigrams.txt"),
    ({".hidden": "x"}, 3, "channel lm is empty"),
    ({"text.txt": "hello"}, 0, "channel lm is given but lm_order=0"),
])
def test_lm_channel_mistakes_fail_before_training(tmp_path, files, order, message):
    channel = tmp_path / "lm"
    channel.mkdir()
    for name, body in files.items():
        (channel / name).write_text(body)
    with pytest.raises(TrainingError, match=message):
        lm.plan(order, 0.0, channel)


def test_no_lm_and_missing_tools(tmp_path, monkeypatch):
    assert lm.plan(0, 10.0, None) is None and lm.plan(0, 10.0, tmp_path / "absent") is None
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(TrainingError, match="KenLM's lmplz is not installed: run ./setup.sh"):
        lm.plan(3, 10.0, None)


def test_upper_case_lm_for_a_lower_case_model_is_refused(tmp_path):
    channel = tmp_path / "lm"
    channel.mkdir()
    shutil.copy(lm.estimate_arpa([s.upper() for s in SENTENCES], 2, tmp_path / "work"), channel / "upper.arpa")
    with pytest.raises(TrainingError, match="characters the model cannot write.*upper-case and the model lower"):
        lm.build(lm.plan(3, 0.0, channel), processor_dir(tmp_path / "model"), train_texts=[], chars_to_ignore="",
                 log=lambda _: None)


def test_ready_made_lm_over_other_characters_is_refused_before_training(tmp_path):
    """check_ready_words runs once the vocabulary exists, before any step: ARPA 1-grams or unigrams.txt."""
    from common import text

    vocab = text.build_vocab(SENTENCES)
    channel = tmp_path / "lm"
    channel.mkdir()
    shutil.copy(lm.estimate_arpa([s.upper() for s in SENTENCES], 2, tmp_path / "work"), channel / "upper.arpa")
    with pytest.raises(TrainingError, match="characters the model cannot write.*upper-case and the model lower"):
        lm.check_ready_words(lm.plan(3, 0.0, channel), vocab)
    binary = tmp_path / "lm_bin"
    binary.mkdir()
    (binary / "lm.bin").write_bytes(b"not read by this check")
    (binary / "unigrams.txt").write_text("\n".join(["alpha", "beta", "gamma"] + ["αβγ"] * 4))
    with pytest.raises(TrainingError, match=r"4 of 7 words \(57%\) use characters the model cannot write"):
        lm.check_ready_words(lm.plan(3, 0.0, binary), vocab)
    (binary / "unigrams.txt").write_text("\n".join(SENTENCES[0].split()))
    lm.check_ready_words(lm.plan(3, 0.0, binary), vocab)  # the model's own words pass
    lm.check_ready_words(lm.plan(3, 0.0, None), vocab)  # text LMs are checked after training


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory) -> Path:
    model_dir = processor_dir(tmp_path_factory.mktemp("tune_model"))
    lm.build(lm.plan(3, 0.0, None), model_dir, train_texts=SENTENCES, chars_to_ignore="", log=lambda _: None)
    return model_dir


def test_tuning_finds_weights_at_least_as_good_as_the_defaults(tuned_dir):
    decoder = common_lm.load(tuned_dir)
    confusions = {"c": "k", "b": "p", "v": "f", "d": "t"}
    clips = [spell(s, decoder.labels, confusions) for s in SENTENCES]
    logs = []
    with common_lm.make_pool(tuned_dir, 2) as pool:
        default = lm.decode_texts(pool, clips, common_lm.DecodeOptions(), 0.02)
        tuning = lm.tune(pool, clips, SENTENCES, max_seconds=120, log=logs.append)
    from train.metrics import error_rates

    assert not tuning.stopped_by_time and tuning.clips == len(SENTENCES)
    coarse = len(lm.COARSE_ALPHAS) * len(lm.COARSE_BETAS)
    assert len(tuning.points) >= coarse and len([l for l in logs if l.startswith("[lm] tuning alpha=")]) == \
        len(tuning.points)
    assert tuning.wer <= error_rates(SENTENCES, default)["wer"] and tuning.wer == 0.0
    assert tuning.points[0] == {**tuning.points[0], "alpha": 0.25, "beta": 0.0}


def test_tuning_is_bounded_in_time(tuned_dir):
    decoder = common_lm.load(tuned_dir)
    rng = np.random.default_rng(0)
    clips = [(rng.normal(size=(300, decoder.vocab_size)) * 3).astype(np.float32) for _ in range(60)]
    logs = []
    with common_lm.make_pool(tuned_dir, 2) as pool:
        pool.submit(common_lm.pool_info).result(timeout=120)  # started, so the bound measures the search
        started = time.monotonic()
        tuning = lm.tune(pool, clips, ["x"] * len(clips), max_seconds=3.0, beam_width=64, log=logs.append)
        elapsed = time.monotonic() - started
    assert tuning.stopped_by_time and len(tuning.points) < 20
    assert elapsed < 3.0 + 2.0, elapsed  # the bound plus at most one clip per process
    if not tuning.points:
        assert (tuning.alpha, tuning.beta) == (lm.DEFAULT_ALPHA, lm.DEFAULT_BETA)
        assert any("no point finished within lm_tuning_seconds=3" in l for l in logs)


def test_build_after_training_tunes_and_scores_on_the_evaluation_set(tmp_path, tiny_model_dir, synthetic_data):
    """The calls train/main.py makes after saving the model: the tiny (random) model and the held-out clips."""
    from transformers import Wav2Vec2ProcessorWithLM

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    model, processor = modeldir.load(model_dir)
    rows = [json.loads(l) for l in (synthetic_data / "test" / "manifest.jsonl").open()][:4]
    inputs = [audio.normalize(sf.read(synthetic_data / "test" / r["audio"], dtype="float32")[0]) for r in rows]
    references = [text.normalize(r["text"]) for r in rows]
    train_texts = [json.loads(l)["text"] for l in (synthetic_data / "train" / "manifest.jsonl").open()]
    plan = lm.plan(3, 2.0, None)
    logs = []
    result = lm.build(plan, model_dir, train_texts=train_texts, chars_to_ignore=text.DEFAULT_CHARS_TO_IGNORE,
                      model=model, eval_inputs=inputs, eval_references=references, log=logs.append)
    assert result.wer_lm is not None and result.cer_lm is not None and result.wer_greedy is not None
    assert set(result.metrics) == {"wer_lm", "cer_lm", "lm"}
    json.dumps(result.metrics)  # metrics.json takes it as it is
    attrs = json.loads((model_dir / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (result.alpha, result.beta)
    assert Wav2Vec2ProcessorWithLM.from_pretrained(str(model_dir)).language_model.alpha == result.alpha
    logits = lm.collect_logits(model, inputs, attention_mask=True)
    assert [x.shape[0] for x in logits] == [
        int(model._get_feat_extract_output_lengths(len(x))) for x in inputs]
    assert any(l.startswith("[lm] alpha=") and "greedy ->" in l for l in logs)
