"""Each data format a channel may hold, detected automatically; any rate and channel count in."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from train_helpers import FAST, assert_ok, is_model_dir, make_opt_ml, metrics, micro_model_dir, model_files, run_train


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro_model"))


def rows_of(split_dir):
    return [json.loads(l) for l in (split_dir / "manifest.jsonl").read_text().splitlines()]


def train_ok(tmp_path, channels, hp=None):
    opt = make_opt_ml(tmp_path / "opt", channels, {**FAST, **(hp or {})})
    proc = run_train(opt)
    assert_ok(proc)
    assert is_model_dir(model_files(opt))
    return opt, proc, metrics(opt)


@pytest.mark.parametrize("manifest", ["manifest.jsonl", "manifest.csv"])
def test_manifest_formats(tmp_path, synthetic_data, micro, manifest):
    # Only one manifest per channel: link the audio and the one manifest under test.
    for split in ("train", "test"):
        d = tmp_path / split
        d.mkdir()
        (d / "audio").symlink_to(synthetic_data / split / "audio")
        (d / manifest).symlink_to(synthetic_data / split / manifest)
    opt, proc, m = train_ok(tmp_path, {"train": tmp_path / "train", "test": tmp_path / "test", "model": micro})
    assert m["formats"] == {"train": manifest, "test": manifest}
    assert f"[data] channel train: {manifest}, 48 utterances" in proc.stdout
    assert f"[data] channel test: {manifest}, 12 utterances" in proc.stdout
    assert m["steps"] == 2 and m["cer"] is not None


def test_save_to_disk_with_extra_columns_and_test_split(tmp_path, synthetic_data, micro):
    from datasets import load_from_disk

    ds = load_from_disk(str(synthetic_data / "hf" / "train"))
    ds = ds.add_column("speaker", ["x"] * len(ds))  # extra columns are ignored
    ds.save_to_disk(str(tmp_path / "hf"))
    opt, proc, m = train_ok(tmp_path, {"train": tmp_path / "hf", "model": micro}, {"test_split": "0.25"})
    assert m["formats"] == {"train": "save_to_disk"}
    assert "[data] no test channel: held out 12 training utterances (test_split=0.25)" in proc.stdout
    assert "[data] training on 36 utterances" in proc.stdout
    assert m["cer"] is not None


def test_processed_save_to_disk_with_vocab_channel(tmp_path, synthetic_data, micro):
    """The seed's processed form: input_values + labels, made with the vocab given in the vocab channel."""
    from datasets import Dataset

    from common import audio, modeldir, text

    rows = rows_of(synthetic_data / "train")
    vocab = text.build_vocab([text.normalize(r["text"]) for r in rows])
    processor = modeldir.make_processor(vocab)
    values = [processor.feature_extractor(audio.load_file(synthetic_data / "train" / r["audio"]),
                                          sampling_rate=16_000).input_values[0].tolist() for r in rows]
    labels = [processor.tokenizer(text.normalize(r["text"])).input_ids for r in rows]
    Dataset.from_dict({"input_values": values, "labels": labels}).save_to_disk(str(tmp_path / "processed"))
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.json").write_text(json.dumps(vocab))
    opt, proc, m = train_ok(tmp_path, {"train": tmp_path / "processed", "vocab": tmp_path / "vocab",
                                       "model": micro}, {"test_split": "0.25"})
    assert "[data] vocabulary of %d tokens from vocab channel" % len(vocab) in proc.stdout
    assert json.loads((opt / "model" / "vocab.json").read_text()) == vocab
    assert m["cer"] is not None


def test_processed_form_without_vocab_fails(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"input_values": [[0.0] * 16000], "labels": [[1, 2]]}).save_to_disk(str(tmp_path / "p"))
    opt = make_opt_ml(tmp_path / "opt", {"train": tmp_path / "p"}, FAST)
    proc = run_train(opt)
    assert proc.returncode != 0
    assert (opt / "output" / "failure").read_text().startswith(
        "channel train holds processed input_values/labels: add a vocab channel")


def test_librispeech_layout_any_rate_and_channels(tmp_path, synthetic_data, micro):
    """speaker/chapter/ID.flac beside speaker-chapter.trans.txt; 44.1 kHz stereo FLAC and 8 kHz WAV in."""
    import soxr

    rows = rows_of(synthetic_data / "train")
    root = tmp_path / "LibriSpeech" / "train-clean-5"
    lines = {}
    for i, r in enumerate(rows):
        spk, chap = 100 + i % 2, 7
        d = root / str(spk) / str(chap)
        d.mkdir(parents=True, exist_ok=True)
        utt = f"{spk}-{chap}-{i:04d}"
        x, rate = sf.read(synthetic_data / "train" / r["audio"], dtype="float32")
        if i % 2:
            sf.write(d / f"{utt}.flac", np.stack([soxr.resample(x, rate, 44_100)] * 2, axis=1), 44_100)
        else:
            sf.write(d / f"{utt}.wav", soxr.resample(x, rate, 8_000), 8_000, subtype="PCM_16")
        lines.setdefault(d / f"{spk}-{chap}.trans.txt", []).append(f"{utt} {r['text'].upper()}")
    for path, ls in lines.items():
        path.write_text("\n".join(ls) + "\n")
    opt, proc, m = train_ok(tmp_path, {"train": tmp_path / "LibriSpeech", "model": micro}, {"test_split": "0.25"})
    assert m["formats"] == {"train": "librispeech"}
    assert "[data] channel train: librispeech, 48 utterances" in proc.stdout
    assert m["skipped_files"]["train"]["count"] == 0
    # Upper-case LibriSpeech text is normalised to the same lower-case vocabulary.
    vocab = json.loads((opt / "model" / "vocab.json").read_text())
    assert "a" in vocab and "A" not in vocab


def test_a_nemo_segment_is_bounded_before_it_is_decoded(tmp_path, monkeypatch):
    """NeMo segments were read without the decoded-memory bound whole files have (a manifest line with no
    duration reads the rest of a recording, whatever its channels and rate declare)."""
    import soundfile as sf

    from common import audio
    from train import index

    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros((16000 * 4, 2), dtype=np.float32), 16000)  # 4 s, 2 channels: 512 KB of float32
    assert len(index.read_segment(path, 1.0, 0.5, max_decoded_bytes=100_000)) == 8000
    with pytest.raises(audio.AudioTooLarge, match="over the 0.0953674 MB limit"):
        index.read_segment(path, 1.0, None, max_decoded_bytes=100_000)  # 3 s x 2 channels = 384 KB
    monkeypatch.setattr(audio, "DEFAULT_MAX_DECODED_BYTES", 100_000)
    with pytest.raises(audio.AudioTooLarge, match="shorter duration"):
        index.read_segment(path, 0.0, 3.0)
