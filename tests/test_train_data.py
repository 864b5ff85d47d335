"""The data step as units: layouts and their registry, tabular quirks, the index, label ids, the training
filters, lazy items, skip accounting. No training runs here (see test_train_layouts.py for those)."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from common import modeldir, text
from train import data, formats, hyperparameters as H
from train.collator import CTCCollator
from train.failure import TrainingError
from train.index import index_channel

RATE = 16_000


def write_wav(path, seconds: float = 1.0, hz: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), RATE, subtype="PCM_16")


def index(root, channel="train", max_skipped=0.5, **options):
    return index_channel(root, formats.Options(channel, **options), max_skipped_fraction=max_skipped,
                         log=lambda _: None)


# ---- Layouts --------------------------------------------------------------------------------------------------

def test_the_registered_formats_in_detection_order():
    # docs/training-data.md carries formats.markdown(): tests/test_docs_tables.py checks it.
    names = [f.name for f in formats.FORMATS]
    assert names == ["manifest.jsonl", "manifest.csv", "nemo", "audiofolder", "common_voice", "save_to_disk",
                     "librispeech"]


def test_detection_follows_the_registry_order(tmp_path):
    """A folder holding several layouts is read as the first one in FORMATS."""
    write_wav(tmp_path / "a.wav")
    (tmp_path / "metadata.csv").write_text("file_name,transcription\na.wav,from audiofolder\n")
    (tmp_path / "x_manifest.json").write_text(json.dumps({"audio_filepath": "a.wav", "text": "from nemo"}) + "\n")
    assert formats.detect(tmp_path, formats.Options("train")).name == "nemo"
    (tmp_path / "manifest.csv").write_text("audio,text\na.wav,from csv\n")
    assert formats.detect(tmp_path, formats.Options("train")).name == "manifest.csv"


def test_unrecognised_channel_lists_every_layout_and_hints_at_archives(tmp_path):
    (tmp_path / "data.tar.gz").write_bytes(b"x")
    with pytest.raises(TrainingError) as e:
        formats.detect(tmp_path, formats.Options("train"))
    message = str(e.value)
    assert "extract archives before uploading" in message
    for f in formats.FORMATS:
        assert f.label in message


def test_csv_with_bom_crlf_and_quoted_fields(tmp_path):
    write_wav(tmp_path / "a b.wav")
    write_wav(tmp_path / "c.wav")
    (tmp_path / "manifest.csv").write_bytes(
        '\ufeffaudio,text,speaker\r\n"a b.wav","hello, ""world""\r\nagain",s1\r\nc.wav,plain,s2\r\n'.encode())
    ix = index(tmp_path)
    assert list(ix.texts) == ['hello, "world"\r\nagain', "plain"]
    assert list(ix.names) == ["a b.wav", "c.wav"]


def test_tsv_fields_are_unquoted_only_when_wholly_quoted(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes('\ufeffpath\tsentence\r\na.mp3\t"Stop!"\r\nb.mp3\t"Yes," he said, "no."\r\n'
                     'c.mp3\t"a ""b"" c"\r\n'.encode())
    header, rows = formats.read_table(path, "\t")
    assert header == ["path", "sentence"]
    assert [r["sentence"] for _, r in rows] == ["Stop!", '"Yes," he said, "no."', 'a "b" c']


def test_column_options_choose_columns_and_name_them_in_errors(tmp_path):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"wav": "a.wav", "words": "hi", "duration": 1.0}) + "\n")
    assert list(index(tmp_path, audio_column="wav", text_column="words").texts) == ["hi"]
    with pytest.raises(TrainingError, match=r"line 1 needs a non-empty `audio` \(audio\) and a `text`.*audio_column"):
        index(tmp_path)


def test_duration_field_spares_the_header_read(tmp_path):
    """With `duration` in the manifest no file is opened at indexing (a missing file shows when it is read)."""
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"audio": "gone.wav", "text": "x", "duration": 2.5}) + "\n")
    ix = index(tmp_path)
    assert ix.seconds.tolist() == [2.5] and ix.skipped == []
    with pytest.raises(Exception):
        ix.audio.load(0)


def test_unreadable_files_are_skipped_at_indexing_and_absolute_paths_get_a_hint(tmp_path):
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"audio": "/data/x.wav", "text": "x"}) + "\n")
    with pytest.raises(TrainingError, match=r"^no readable audio in channel train: all 1 files .*paths are absolute"):
        index(tmp_path)


def test_nemo_segments_decode_only_their_span(tmp_path):
    long = np.concatenate([np.full(RATE, 0.1, np.float32), np.full(RATE // 2, -0.2, np.float32)])
    sf.write(tmp_path / "long.wav", long, RATE, subtype="FLOAT")
    rows = [{"audio_filepath": "long.wav", "text": "first", "duration": 1.0, "offset": 0.0},
            {"audio_filepath": "long.wav", "text": "second", "duration": 0.5, "offset": 1.0},
            {"audio_filepath": "long.wav", "text": "whole", "duration": 1.5}]
    (tmp_path / "train_manifest.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test_manifest.json").write_text(json.dumps(rows[0]) + "\n")
    ix = index(tmp_path)
    assert ix.format == "nemo" and list(ix.texts) == ["first", "second", "whole"]
    first, second, whole = (ix.audio.load(i) for i in range(3))
    assert len(first) == RATE and np.allclose(first, 0.1)
    assert len(second) == RATE // 2 and np.allclose(second, -0.2)
    assert len(whole) == len(long)


def test_common_voice_reads_the_channels_tsv_and_clip_durations(tmp_path):
    root = tmp_path / "cv-corpus-23.0" / "en"
    (root / "clips").mkdir(parents=True)
    x = (0.1 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32)
    sf.write(root / "clips" / "a.mp3", x, RATE, format="MP3")
    for name in ("train", "test", "dev"):
        (root / f"{name}.tsv").write_text(f"client_id\tpath\tsentence\tup_votes\nc1\ta.mp3\t{name} words\t2\n")
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\na.mp3\t1234\n")
    ix = index(tmp_path)  # the release folder inside the channel is found
    assert ix.format == "common_voice" and list(ix.texts) == ["train words"] and ix.seconds.tolist() == [1.234]
    assert list(index(tmp_path, channel="test").texts) == ["test words"]
    assert list(index(tmp_path, channel="test", tsv="dev.tsv").texts) == ["dev words"]
    assert abs(len(ix.audio.load(0)) - RATE) < 0.1 * RATE
    with pytest.raises(TrainingError, match="without validated.tsv.*train_tsv hyperparameter"):
        index(tmp_path, tsv="validated.tsv")


def test_audiofolder_picks_the_transcript_column_and_the_split_folder(tmp_path):
    write_wav(tmp_path / "train" / "data" / "a.wav")
    (tmp_path / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "data/a.wav", "transcription": "a b", "speaker": 1}) + "\n")
    ix = index(tmp_path, channel="train")
    assert ix.format == "audiofolder" and list(ix.texts) == ["a b"]
    assert len(ix.audio.load(0)) == RATE


def test_save_to_disk_is_read_through_the_arrow_table(tmp_path, synthetic_data):
    ix = index(synthetic_data / "hf" / "train")
    assert ix.format == "save_to_disk" and len(ix) == 48
    direct = sf.info(synthetic_data / "train" / "audio" / "tr00000.wav").duration
    assert ix.seconds[0] == pytest.approx(direct)
    assert len(ix.audio.load(0)) == round(direct * RATE)


# ---- Label ids and filters -------------------------------------------------------------------------------------

def test_encode_gives_the_tokenizers_ids():
    texts = ["the red cat", "über naïve café", "a  b", "", "zz top|x"]
    vocab = text.build_vocab(["the red cat", "a b zz top"])
    tok = modeldir.make_processor(vocab).tokenizer
    labels, unknown = data.encode(texts, vocab)
    for i, t in enumerate(texts):
        assert labels[i].tolist() == tok(t).input_ids
    assert unknown["ü"] == 1 and unknown["é"] == 1 and " " not in unknown


def test_encode_a_literal_space_vocab_gives_the_tokenizers_ids():
    """fairseq style: a literal space in vocab.json and no `|` (the tokenizer adds `|` as its delimiter)."""
    from checkpoints import VOCAB_SPACE

    tok = modeldir.make_processor(VOCAB_SPACE).tokenizer
    texts = ["the red cat", "a  b", "zz top|x"]
    labels, unknown = data.encode(texts, VOCAB_SPACE, tok.convert_tokens_to_ids(tok.word_delimiter_token))
    for i, t in enumerate(texts):
        assert labels[i].tolist() == tok(t).input_ids
    assert unknown == {}


def test_output_frames_match_the_model():
    import torch
    from transformers import Wav2Vec2ForCTC

    cfg = modeldir.tiny_config(10, 9)
    model = Wav2Vec2ForCTC(cfg)
    n = np.array([400, 401, 16_000, 12_345, 33_333])
    assert data.output_frames(cfg, n).tolist() == model._get_feat_extract_output_lengths(torch.tensor(n)).tolist()
    assert data.output_frames(cfg, np.array([0, 399])).tolist() == [0, 0]
    cfg.add_adapter, cfg.adapter_stride, cfg.num_adapter_layers, cfg.adapter_kernel_size = True, 2, 2, 3
    adapted = Wav2Vec2ForCTC(cfg)
    assert data.output_frames(cfg, n).tolist() == \
        adapted._get_feat_extract_output_lengths(torch.tensor(n), add_adapter=True).tolist()


def _examples(samples, labels):
    ix = types.SimpleNamespace(name="train")
    return data.Examples(ix, np.arange(len(samples)), data.Ragged.from_lists(labels), np.array(samples),
                         data.Strings(["x"] * len(samples)))


def test_ctc_length_and_mask_span_filters():
    cfg = modeldir.tiny_config(10, 9, mask_time_prob=0.05, mask_time_length=10)
    hp = H.parse({})
    # 0.2 s: 9 frames. 1 s: 49 frames.
    ex = _examples([3_200, 16_000, 16_000, 16_000], [[1], [1] * 49, [1] * 25, [1, 2] * 25])
    keep, dropped = data.training_filter(ex, hp, cfg)
    # [1]*49 needs 49 + 48 repeats; [1]*25 needs 49 (fits); [1,2]*25 needs 50 > 49.
    assert keep.tolist() == [2]
    assert dropped == {"too_short": 0, "too_long": 0, "too_few_frames_for_transcript": 2, "shorter_than_mask_span": 1}
    # Speed perturbation of up to 10%: the fastest version of a clip must still fit its transcript.
    keep, _ = data.training_filter(ex, H.parse({"speed_perturbation": "0.1"}), cfg)
    assert keep.tolist() == []
    # No masking, no mask-span drop.
    keep, dropped = data.training_filter(ex, hp, modeldir.tiny_config(10, 9, mask_time_prob=0.0))
    assert dropped["shorter_than_mask_span"] == 0 and keep.tolist() == [0, 2]


def test_hold_out_is_seeded_and_disjoint():
    rest, held = data.hold_out(48, 0.25, 42)
    assert len(held) == 12 and not set(rest) & set(held) and len(rest) + len(held) == 48
    assert data.hold_out(48, 0.25, 42)[1].tolist() == held.tolist()


# ---- Items, batches, skips ---------------------------------------------------------------------------------------

def _dataset(tmp_path, n=4, *, train=True, bad=()):
    rows = []
    for i in range(n):
        write_wav(tmp_path / f"{i}.wav", 0.5 + 0.1 * i)
        rows.append({"audio": f"{i}.wav", "text": f"utterance {i}"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ix = index(tmp_path)
    for i in bad:  # unreadable after indexing: the header is fine, the samples are cut off
        (tmp_path / f"{i}.wav").write_bytes((tmp_path / f"{i}.wav").read_bytes()[:1000])
    vocab = text.build_vocab([f"utterance {i}" for i in range(n)])
    ex, _, _ = data.channel_examples(ix, vocab, "", None)
    return data.SpeechDataset(ex, train=train, min_samples=400)


def test_items_are_decoded_and_normalised_on_demand(tmp_path):
    ds = _dataset(tmp_path)
    item = ds[2]
    assert item["index"] == 2 and item["skipped"] == []
    x = item["input_values"]
    assert len(x) == ds.lengths[2] == int(0.7 * RATE)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_unreadable_training_item_is_replaced_and_reported(tmp_path):
    ds = _dataset(tmp_path, bad=(1,))
    item = ds[1]
    assert item["index"] == 2
    [(channel, entry, name, reason)] = item["skipped"]
    assert (channel, entry, name) == ("train", 1, "1.wav") and "truncated" in reason


def test_unreadable_evaluation_item_becomes_silence_left_out_of_wer(tmp_path):
    ds = _dataset(tmp_path, train=False, bad=(1,))
    item = ds[1]
    assert item["index"] == -1 and len(item["labels"]) == 0 and len(item["input_values"]) == 400
    batch = CTCCollator()([ds[0], item])
    assert batch["example_index"].tolist() == [0, -1]
    assert batch["input_lengths"].tolist() == [int(0.5 * RATE), 400]
    assert [s[2] for s in batch["skipped"]] == ["1.wav"]
    assert batch["labels"][1].tolist() == [-100] * batch["labels"].shape[1]


def test_skip_tracker_counts_each_file_once_and_fails_past_the_fraction(tmp_path):
    import torch

    from train.trainer import SkipTracker

    ds = _dataset(tmp_path, n=10, bad=(3,))
    ix = ds.examples.index
    tracker = SkipTracker({"train": ix}, 0.15, log=lambda _: None)
    report = ds[3]["skipped"]
    tracker.record(report)
    tracker.record(report)  # the same file in a later epoch
    tracker.sync(torch.device("cpu"))
    assert tracker.summary()["train"]["count"] == 1 and tracker.summary()["train"]["of"] == 10
    tracker.record([("train", 5, "5.wav", "broken"), ("train", 6, "6.wav", "broken")])
    with pytest.raises(TrainingError, match=r"^3 of 10 audio files in channel train are unreadable \(counted over "
                                            r"the whole run\) \(30.0% > max_skipped_fraction=0.15\)"):
        tracker.sync(torch.device("cpu"))


# ---- Settings -------------------------------------------------------------------------------------------------------

def test_sagemaker_reserved_hyperparameters_are_accepted_unknown_ones_are_not():
    raw = {"_tuning_objective_metric": "eval:cer", "sagemaker_program": "\"train\"", "max_steps": "3"}
    assert H.parse(raw).max_steps == 3
    assert H.reserved(raw) == {"_tuning_objective_metric": "eval:cer", "sagemaker_program": "train"}
    with pytest.raises(TrainingError, match="^unknown hyperparameter tuning_objective: "):
        H.parse({"tuning_objective": "x"})


def test_precision_auto_picks_bf16_on_cpus_with_native_bf16(tmp_path):
    from train import precision

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert precision.cpu_has_native_bf16(str(amx)) and not precision.cpu_has_native_bf16(str(plain))
    assert precision.choose("auto", cuda=False, cpu_bf16=True) == "bf16"
    assert precision.choose("auto", cuda=False, cpu_bf16=False) == "fp32"
    assert precision.choose("auto", cuda=True, cuda_bf16=False) == "fp16"
    with pytest.raises(TrainingError, match="fp16 needs a GPU"):
        precision.choose("fp16", cuda=False)


def test_pipe_mode_is_refused_fastfile_accepted():
    from train.main import check_input_modes

    assert check_input_modes({"train": {"TrainingInputMode": "FastFile"}, "test": {}}) == \
        {"train": "FastFile", "test": "File"}
    with pytest.raises(TrainingError, match=r"^channel train uses Pipe input mode.*File or FastFile"):
        check_input_modes({"train": {"TrainingInputMode": "Pipe"}})


def test_auto_workers_follow_the_cpus_per_process():
    from train.trainer import auto_workers

    assert auto_workers(0) == 0 and auto_workers(3) == 3
    assert 1 <= auto_workers(-1, {"LOCAL_WORLD_SIZE": "1"}) <= 8
    assert auto_workers(-1, {"LOCAL_WORLD_SIZE": "1000"}) == 1
