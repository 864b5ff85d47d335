"""Channels of audio and transcripts: format detection, decoding to 16 kHz mono, skip accounting.

A channel directory may hold, detected in this order:
  1. manifest.jsonl  one JSON object per line with `audio` (path relative to the channel) and `text`
  2. manifest.csv    the same two columns (others ignored)
  3. a Hugging Face dataset saved with `save_to_disk`: `audio` and `text` columns (audio decoded with
     soundfile, never torchcodec), or the seed's processed form: `input_values` and `labels`
  4. LibriSpeech layout: `*.trans.txt` files ("ID TRANSCRIPT" lines) beside ID.flac / ID.wav

All audio is decoded once, up front, into memory (4 bytes per sample, ~230 MB per hour of audio).
"""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common import audio
from common.audio import TARGET_RATE

from .failure import TrainingError

FORMATS = ("manifest.jsonl", "manifest.csv", "save_to_disk", "librispeech")
_AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg")


@dataclass
class Utterance:
    input_values: np.ndarray  # 16 kHz mono float32
    text: str | None = None  # raw transcript (None in the processed form)
    labels: list[int] | None = None  # token ids (processed form only)
    name: str = ""

    @property
    def seconds(self) -> float:
        return len(self.input_values) / TARGET_RATE


@dataclass
class Channel:
    name: str
    format: str
    utterances: list[Utterance]
    total: int  # entries found, readable or not
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def processed(self) -> bool:
        return bool(self.utterances) and self.utterances[0].labels is not None


# An entry before decoding: its name, a function returning (samples, rate) or 16 kHz samples, its text.
@dataclass
class _Entry:
    name: str
    read: Callable[[], np.ndarray]
    text: str | None = None
    labels: list[int] | None = None


def detect_format(path: Path) -> str:
    if (path / "manifest.jsonl").is_file():
        return "manifest.jsonl"
    if (path / "manifest.csv").is_file():
        return "manifest.csv"
    if any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "save_to_disk"
    if next(path.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    raise TrainingError(
        f"channel {path.name} ({path}) holds no recognised data: expected manifest.jsonl, manifest.csv, a "
        f"Hugging Face save_to_disk dataset, or LibriSpeech *.trans.txt files (see README, Data formats)")


def _file_reader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: audio.load_file(path)


def _resolve(channel_dir: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else channel_dir / p


def _row_entry(channel_dir: Path, row: dict, where: str) -> _Entry:
    if not isinstance(row, dict) or not row.get("audio") or row.get("text") is None:
        raise TrainingError(f"{where} needs non-empty `audio` and `text` fields, got {str(row)[:200]}")
    path = _resolve(channel_dir, str(row["audio"]))
    return _Entry(str(row["audio"]), _file_reader(path), str(row["text"]))


def _jsonl_entries(channel_dir: Path) -> list[_Entry]:
    entries = []
    manifest = channel_dir / "manifest.jsonl"
    with manifest.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{manifest} line {n} is not valid JSON ({exc.msg}): fix or remove it") from None
            entries.append(_row_entry(channel_dir, row, f"{manifest} line {n}"))
    return entries


def _csv_entries(channel_dir: Path) -> list[_Entry]:
    manifest = channel_dir / "manifest.csv"
    with manifest.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"audio", "text"} - set(reader.fieldnames or [])
        if missing:
            raise TrainingError(f"{manifest} lacks column(s) {', '.join(sorted(missing))}: its header must name "
                                f"`audio` and `text` (found {reader.fieldnames})")
        return [_row_entry(channel_dir, row, f"{manifest} line {n}") for n, row in enumerate(reader, 2)]


def _hf_entries(channel_dir: Path, channel_name: str) -> list[_Entry]:
    import datasets

    ds = datasets.load_from_disk(str(channel_dir))
    if isinstance(ds, datasets.DatasetDict):
        if channel_name in ds:
            ds = ds[channel_name]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise TrainingError(f"channel {channel_name} holds a DatasetDict with splits {list(ds)}: give one "
                                f"split per channel (or name a split `{channel_name}`)")
    cols = set(ds.column_names)
    if {"input_values", "labels"} <= cols:
        return [_Entry(f"row {i}", (lambda v=row["input_values"]: np.asarray(v, dtype=np.float32)),
                       labels=[int(t) for t in row["labels"]])
                for i, row in enumerate(ds.select_columns(["input_values", "labels"]))]
    if not {"audio", "text"} <= cols:
        raise TrainingError(f"the save_to_disk dataset in channel {channel_name} needs `audio` and `text` columns "
                            f"(or the processed `input_values` and `labels`); it has {sorted(cols)}")
    ds = ds.select_columns(["audio", "text"])
    if isinstance(ds.features["audio"], datasets.Audio):
        ds = ds.cast_column("audio", datasets.Audio(decode=False))  # soundfile decodes, not torchcodec
    entries = []
    for i, row in enumerate(ds):
        a = row["audio"]
        if isinstance(a, dict) and a.get("bytes"):
            name = a.get("path") or f"row {i}"
            entries.append(_Entry(str(name), (lambda b=a["bytes"]: audio.decode_bytes(b)), row["text"]))
        elif isinstance(a, dict) and "array" in a:
            entries.append(_Entry(f"row {i}", (lambda x=a: audio.to_model_input(x["array"], x["sampling_rate"])),
                                  row["text"]))
        else:
            rel = a.get("path") if isinstance(a, dict) else a
            name = str(rel or f"row {i}")
            entries.append(_Entry(name, _file_reader(_resolve(channel_dir, name)), row["text"]))
    return entries


def _librispeech_entries(channel_dir: Path) -> list[_Entry]:
    entries = []
    for trans in sorted(channel_dir.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            path = next((trans.parent / (utt_id + s) for s in _AUDIO_SUFFIXES
                         if (trans.parent / (utt_id + s)).is_file()), trans.parent / (utt_id + ".flac"))
            entries.append(_Entry(str(path.relative_to(channel_dir)), _file_reader(path), text))
    return entries


def _decode(entry: _Entry):
    try:
        return entry.read(), None
    except (audio.AudioError, OSError) as exc:
        return None, str(exc).splitlines()[0]


def load_channel(channel_dir: Path, channel_name: str, *, max_skipped_fraction: float,
                 log: Callable[[str], None] = print) -> Channel:
    """Read every entry of a channel, decode its audio, skip (and name) unreadable files."""
    if not channel_dir.is_dir():
        raise TrainingError(f"channel {channel_name} is missing: expected a directory at {channel_dir}")
    if not any(channel_dir.iterdir()):
        raise TrainingError(f"channel {channel_name} is empty ({channel_dir}): check the S3 prefix given for it")
    fmt = detect_format(channel_dir)
    entries = {
        "manifest.jsonl": _jsonl_entries, "manifest.csv": _csv_entries,
        "save_to_disk": lambda d: _hf_entries(d, channel_name), "librispeech": _librispeech_entries,
    }[fmt](channel_dir)
    if not entries:
        raise TrainingError(f"channel {channel_name} ({fmt}) lists no utterances: add audio and transcripts")
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(_decode, entries))
    utterances, skipped = [], []
    for entry, (samples, error) in zip(entries, decoded):
        if error is not None:
            skipped.append((entry.name, error))
            log(f"[data] skipped unreadable {channel_name}/{entry.name}: {error}")
            continue
        utterances.append(Utterance(samples, text=entry.text, labels=entry.labels, name=entry.name))
    if not utterances:
        raise TrainingError(f"no readable audio in channel {channel_name}: all {len(entries)} files failed to "
                            f"decode (first: {skipped[0][0]}: {skipped[0][1]})")
    fraction = len(skipped) / len(entries)
    if fraction > max_skipped_fraction:
        raise TrainingError(
            f"{len(skipped)} of {len(entries)} audio files in channel {channel_name} are unreadable "
            f"({fraction:.1%} > max_skipped_fraction={max_skipped_fraction}); fix them or raise "
            f"max_skipped_fraction (first: {skipped[0][0]}: {skipped[0][1]})")
    seconds = sum(u.seconds for u in utterances)
    log(f"[data] channel {channel_name}: {fmt}, {len(utterances)} utterances ({seconds / 3600:.2f} h), "
        f"{len(skipped)} skipped")
    return Channel(channel_name, fmt, utterances, len(entries), skipped)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """`x` played `factor` times faster: read as if recorded at factor x 16 kHz, resampled to 16 kHz."""
    import soxr

    if abs(factor - 1.0) < 1e-3:
        return x
    return soxr.resample(x, TARGET_RATE * factor, TARGET_RATE, quality="HQ").astype(np.float32, copy=False)


def split(utterances: list[Utterance], fraction: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """Seeded hold-out: (train, test)."""
    if fraction <= 0 or len(utterances) < 2:
        return utterances, []
    order = np.random.default_rng(seed).permutation(len(utterances))
    n_test = min(len(utterances) - 1, max(1, round(len(utterances) * fraction)))
    test_idx = set(order[:n_test].tolist())
    return ([u for i, u in enumerate(utterances) if i not in test_idx],
            [u for i, u in enumerate(utterances) if i in test_idx])


class SpeechDataset:
    """Map-style dataset of (normalised audio, label ids), with lengths for length-grouped batches.

    With `speed_perturbation` = s > 0 every item is resampled by a random factor in [1 - s, 1 + s] each
    time it is drawn (Ko et al. 2015): tempo and pitch both change, so a few voices stand for many. The
    factor comes from torch's generator, which the Trainer seeds (and gives each dataloader worker its own).
    """

    def __init__(self, inputs: list[np.ndarray], labels: list[list[int]], speed_perturbation: float = 0.0):
        self.inputs, self.labels = inputs, labels
        self.lengths = [len(x) for x in inputs]
        self.speed_perturbation = speed_perturbation

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        x = self.inputs[i]
        if self.speed_perturbation > 0:
            import torch

            x = speed_perturb(x, float(torch.empty(()).uniform_(1 - self.speed_perturbation,
                                                                 1 + self.speed_perturbation)))
        return {"input_values": x, "labels": self.labels[i]}

    @property
    def seconds(self) -> float:
        return sum(self.lengths) / TARGET_RATE
