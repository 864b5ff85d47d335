"""Each failure the training program reports: output/failure's first line says what to fix; exit non-zero."""
from __future__ import annotations

import json
import re
import os
import shutil

import pytest

from train_helpers import FAST, failure_first_line, make_opt_ml, metrics, micro_model_dir, run_train


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro_model"))


def copy_split(src, dest, rows=None):
    """A writable copy of a manifest split (audio + manifest.jsonl), optionally with rewritten rows."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("manifest.csv"))
    if rows is not None:
        (dest / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def rows_of(split_dir):
    return [json.loads(l) for l in (split_dir / "manifest.jsonl").read_text().splitlines()]


def failed(proc, opt_ml):
    assert proc.returncode != 0, proc.stdout[-3000:]
    return failure_first_line(opt_ml)


def test_unknown_hyperparameter_names_it_and_lists_valid_names(tmp_path, synthetic_data):
    opt = make_opt_ml(tmp_path, {"train": synthetic_data / "train"}, {"epoch": "3"})
    line = failed(run_train(opt), opt)
    assert line == "unknown hyperparameter epoch: did you mean epochs?"
    # The full list is below the first line (and in the log), not in the short FailureReason line.
    text = (opt / "output" / "failure").read_text()
    assert "valid names: " in text and "learning_rate" in text and "max_steps" in text


@pytest.mark.parametrize("name,value,expected", [
    ("learning_rate", "fast", "hyperparameter learning_rate='fast' is not a valid float"),
    ("train_batch_size", "\"0\"", "hyperparameter train_batch_size=0 must be >= 1"),
    ("precision", "fp8", "hyperparameter precision='fp8' must be one of auto, fp32, fp16, bf16"),
    ("gradient_checkpointing", "maybe", "hyperparameter gradient_checkpointing='maybe' is not a valid bool"),
])
def test_bad_hyperparameter_value_names_it(tmp_path, synthetic_data, name, value, expected):
    opt = make_opt_ml(tmp_path, {"train": synthetic_data / "train"}, {name: value})
    assert failed(run_train(opt), opt).startswith(expected)


def test_missing_train_channel(tmp_path):
    opt = make_opt_ml(tmp_path, {}, FAST)
    line = failed(run_train(opt), opt)
    assert line.startswith("channel train is missing: expected a directory at ")


def test_empty_train_channel(tmp_path):
    (tmp_path / "empty").mkdir()
    opt = make_opt_ml(tmp_path / "opt", {"train": tmp_path / "empty"}, FAST)
    assert failed(run_train(opt), opt).startswith("channel train is empty (")


def test_unrecognised_channel_content(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    opt = make_opt_ml(tmp_path / "opt", {"train": tmp_path / "junk"}, FAST)
    assert failed(run_train(opt), opt).startswith("channel train (")
    assert "holds no recognised data: expected manifest.jsonl, manifest.csv" in failure_first_line(opt)


def test_no_readable_audio(tmp_path, synthetic_data):
    split = copy_split(synthetic_data / "train", tmp_path / "train")
    for wav in (split / "audio").iterdir():
        wav.write_bytes(b"this is not audio")
    opt = make_opt_ml(tmp_path / "opt", {"train": split}, FAST)
    line = failed(run_train(opt), opt)
    assert line.startswith("no readable audio in channel train: all 48 files failed to decode (first: audio/")


def test_too_many_unreadable_files_fail_past_the_fraction(tmp_path, synthetic_data):
    split = copy_split(synthetic_data / "train", tmp_path / "train")
    for wav in sorted((split / "audio").iterdir())[:6]:  # 6 of 48 = 12.5% > 5%
        wav.write_bytes(b"RIFF garbage")
    opt = make_opt_ml(tmp_path / "opt", {"train": split}, FAST)
    line = failed(run_train(opt), opt)
    assert line.startswith("6 of 48 audio files in channel train are unreadable (12.5% > max_skipped_fraction=0.05)")


def test_few_unreadable_files_are_skipped_named_and_counted(tmp_path, synthetic_data, micro):
    split = copy_split(synthetic_data / "train", tmp_path / "train")
    bad = sorted((split / "audio").iterdir())[0]
    bad.write_bytes(b"RIFF garbage")
    (split / "manifest.jsonl").write_text((split / "manifest.jsonl").read_text()
                                          + json.dumps({"audio": "audio/missing.wav", "text": "gone"}) + "\n")
    opt = make_opt_ml(tmp_path / "opt", {"train": split, "model": micro},
                      {**FAST, "max_skipped_fraction": "0.1", "test_split": "0"})
    proc = run_train(opt)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"[data] skipped unreadable train/audio/{bad.name}: " in proc.stdout
    assert "[data] skipped unreadable train/audio/missing.wav: " in proc.stdout
    skipped = metrics(opt)["skipped_files"]["train"]
    assert skipped["count"] == 2 and skipped["of"] == 49
    assert any(f.startswith(f"audio/{bad.name}: ") for f in skipped["files"])


def test_a_failed_language_model_keeps_the_trained_model(tmp_path, synthetic_data, micro):
    """The LM step runs after the model is saved: when it fails (here an lm channel of text in another script,
    so the LM's words are ones the model cannot write), the job still succeeds with the model, minus any LM
    file, and says why in the log and metrics.json."""
    channel = tmp_path / "lm"
    channel.mkdir()
    words = ["αβγ", "δεζ", "ηθι", "κλμ"]
    (channel / "greek.txt").write_text("".join(f"{a} {b}{i}\n" for i in range(200) for a, b in zip(words, words[1:])),
                                       encoding="utf-8")
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": micro, "lm": channel},
                      {**FAST, "test_split": "0", "lm_order": "2", "lm_tuning_seconds": "0"})
    proc = run_train(opt)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not (opt / "output" / "failure").exists()
    assert re.search(r"\[lm\] WARNING: no language model: the language model: \d+ of \d+ words \(\d+%\) use characters "
                     r"the model cannot write", proc.stdout), proc.stdout[-3000:]
    assert "no language model (see [lm] above)" in proc.stdout
    model = opt / "model"
    assert (model / "model.safetensors").is_file() and (model / "vocab.json").is_file()
    assert not (model / "alphabet.json").exists() and not (model / "language_model").exists()
    m = metrics(opt)
    assert "cannot write" in m["lm"]["error"] and "wer_lm" not in m


def test_transcripts_with_no_usable_characters(tmp_path, synthetic_data):
    rows = [{**r, "text": "?!. ,;"} for r in rows_of(synthetic_data / "train")]
    split = copy_split(synthetic_data / "train", tmp_path / "train", rows)
    opt = make_opt_ml(tmp_path / "opt", {"train": split}, FAST)
    line = failed(run_train(opt), opt)
    assert line.startswith("transcripts in channel train have no usable characters after normalisation")


def test_transcripts_outside_the_supplied_vocab(tmp_path, synthetic_data):
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.json").write_text(json.dumps({"|": 0, "ж": 1, "я": 2, "[UNK]": 3, "[PAD]": 4}))
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "vocab": vocab}, FAST)
    line = failed(run_train(opt), opt)
    assert line == "transcripts in channel train have no usable characters: none is in the vocabulary"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_unwritable_output(tmp_path, synthetic_data):
    opt = make_opt_ml(tmp_path, {"train": synthetic_data / "train"}, FAST)
    (opt / "model").mkdir()
    (opt / "model").chmod(0o500)
    try:
        line = failed(run_train(opt), opt)
    finally:
        (opt / "model").chmod(0o700)
    assert line.startswith(f"cannot write to output directory {opt / 'model'}: ")


def test_unwritable_output_as_root_too(tmp_path, synthetic_data):
    """A file where the model directory should be fails the same way, whoever runs the job."""
    opt = make_opt_ml(tmp_path, {"train": synthetic_data / "train"}, FAST)
    (opt / "model").write_text("a file, not a directory")
    line = failed(run_train(opt), opt)
    assert line.startswith(f"cannot write to output directory {opt / 'model'}: ")


def test_bad_arguments_print_usage(tmp_path):
    proc = run_train(tmp_path, "serve")
    assert proc.returncode == 2
    assert "usage: train [train]" in proc.stdout
