"""launcher/launch prepare on each local format: the channel it writes is read back by the training program's
own loader with the same transcripts and (16-bit FLAC) the same audio."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from conftest import ROOT, program_env
from test_launcher_cli import ConnectionCounter, clean_env

LAUNCH = ROOT / "launcher" / "launch"


def launch(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCH), "prepare", *args], capture_output=True, text=True,
                          env=env or program_env(), timeout=300)


def rows(channel: Path) -> list[dict]:
    return [json.loads(line) for line in (channel / "manifest.jsonl").read_text().splitlines() if line.strip()]


def load(channel: Path):
    from train.data import load_channel

    return load_channel(channel, "train", max_skipped_fraction=0.0, log=lambda m: None)


def assert_same_channel(source: Path, written: Path, expected_count: int) -> None:
    """The written channel holds every utterance of the source: same texts, same 16 kHz audio."""
    src, out = load(source), load(written)
    assert out.format == "manifest.jsonl"
    assert len(out.utterances) == len(src.utterances) == expected_count
    for a, b in zip(src.utterances, out.utterances):
        assert b.text == a.text
        assert len(b.input_values) == len(a.input_values)
        assert np.max(np.abs(b.input_values - a.input_values)) < 2e-4  # 16-bit quantisation
    for row in rows(written):
        info = sf.info(written / row["audio"])
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)


def summary(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_manifest_jsonl(synthetic_data, tmp_path):
    out = tmp_path / "channel"
    s = summary(launch(str(synthetic_data / "train"), str(out)))
    assert s["source_format"] == "manifest.jsonl" and s["utterances"] == 48 and s["skipped"] == 0
    assert_same_channel(synthetic_data / "train", out, 48)


def test_manifest_csv_with_other_rates_and_stereo(synthetic_data, tmp_path):
    src = tmp_path / "csv"
    (src / "audio").mkdir(parents=True)
    with (synthetic_data / "train" / "manifest.csv").open() as f:
        entries = list(csv.DictReader(f))[:8]
    for i, e in enumerate(entries):
        x, rate = sf.read(synthetic_data / "train" / e["audio"], dtype="float32")
        if i % 2:  # 44.1 kHz stereo: prepare must give 16 kHz mono like training does
            x = soxr.resample(x, rate, 44100)
            x, rate = np.stack([x, 0.5 * x], axis=1), 44100
        sf.write(src / e["audio"], x, rate)
    with (src / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio", "text"])
        w.writeheader()
        w.writerows({"audio": e["audio"], "text": e["text"]} for e in entries)
    out = tmp_path / "channel"
    s = summary(launch(str(src), str(out)))
    assert s["source_format"] == "manifest.csv" and s["utterances"] == 8
    assert_same_channel(src, out, 8)


def test_save_to_disk_dataset(synthetic_data, tmp_path):
    out = tmp_path / "channel"
    s = summary(launch(str(synthetic_data / "hf" / "train"), str(out)))
    assert s["source_format"] == "save_to_disk" and s["utterances"] == 48
    assert_same_channel(synthetic_data / "hf" / "train", out, 48)


def test_librispeech_layout(synthetic_data, tmp_path):
    src = tmp_path / "LibriSpeech" / "train-clean-5"
    entries = rows(synthetic_data / "train")[:6]
    for i, e in enumerate(entries):
        speaker, chapter = 100 + i % 2, 7
        folder = src / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{speaker}-{chapter}-{i:04d}"
        x, rate = sf.read(synthetic_data / "train" / e["audio"], dtype="float32")
        sf.write(folder / f"{utt}.flac", x, rate)
        with (folder / f"{speaker}-{chapter}.trans.txt").open("a") as f:
            f.write(f"{utt} {e['text'].upper()}\n")
    out = tmp_path / "channel"
    s = summary(launch(str(src.parent), str(out)))
    assert s["source_format"] == "librispeech" and s["utterances"] == 6
    assert_same_channel(src.parent, out, 6)
    assert sorted(r["text"] for r in rows(out)) == sorted(e["text"].upper() for e in entries)


def test_unreadable_files_are_counted_then_fail_past_the_limit(synthetic_data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synthetic_data / "train", src)
    (src / "manifest.csv").unlink()
    first = rows(src)[0]["audio"]
    (src / first).write_bytes(b"RIFF but not really audio")
    s = summary(launch(str(src), str(tmp_path / "ok"), "--max-skipped-fraction", "0.05"))
    assert s["utterances"] == 47 and s["skipped"] == 1
    r = launch(str(src), str(tmp_path / "strict"), "--max-skipped-fraction", "0")
    assert r.returncode == 2
    assert "unreadable" in r.stderr and first.split("/")[-1] in r.stderr
    assert "Traceback" not in r.stderr


def test_as_is_copies_after_checking(synthetic_data, tmp_path):
    out = tmp_path / "copy"
    s = summary(launch(str(synthetic_data / "hf" / "test"), str(out), "--as-is"))
    assert s["copied_as_is"] and s["utterances"] == 12
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (synthetic_data / "hf" / "test").iterdir())


def test_folder_without_data_is_refused(tmp_path):
    src = tmp_path / "empty-ish"
    src.mkdir()
    (src / "notes.txt").write_text("nothing here")
    r = launch(str(src), str(tmp_path / "out"))
    assert r.returncode == 2
    assert "holds no recognised data" in r.stderr


def test_existing_destination_is_not_overwritten(synthetic_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = launch(str(synthetic_data / "test"), str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_s3_destination_checks_credentials_first(synthetic_data, tmp_path):
    counter = ConnectionCounter()
    try:
        r = launch(str(synthetic_data / "test"), "s3://bucket-x/speech/train", "--region", "eu-west-1",
                   env=clean_env(tmp_path, AWS_ENDPOINT_URL=counter.url))
    finally:
        counter.close()
    assert r.returncode == 2
    assert "no AWS credentials found" in r.stderr
    assert "[data]" not in r.stdout  # failed before reading (or converting) anything
    assert counter.count == 0
