"""A channel's index: every utterance's audio location, transcript and duration; no audio decoded.

Durations come from each file's header (common.audio.probe_seconds, read in threads), from the layout's own
field (a manifest's `duration`, Common Voice's clip_durations.tsv, NeMo), or from the Arrow table (lengths
of processed input_values); the audio itself is decoded later, one item at a time, by whichever process
draws it (`ChannelIndex.audio.load(i)`). Entries are held in numpy arrays and byte buffers rather than
Python objects, so memory stays flat as the data grows and DataLoader workers forked from the training
process do not copy it (reading a Python object touches its reference count, which copies its page).

One file because the compact storage (`Strings`, `Ragged`) and the three audio sources (files, Arrow tables,
processed input values) are used only through `ChannelIndex`, and keeping its memory flat is the point of all of
them together.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from common import audio
from common.audio import TARGET_RATE, AudioError, AudioTooLarge

from . import formats
from .failure import TrainingError

PROBE_THREADS = 16  # header reads wait on storage (FastFile reads them from S3), not on the CPU


class Strings:
    """An immutable list of str in one UTF-8 buffer plus offsets (no per-item Python objects)."""

    def __init__(self, items: Iterable[str]):
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, rows: Sequence[int]) -> "Strings":
        return Strings(self[int(i)] for i in rows)


class Ragged:
    """Integer sequences of different lengths (label ids) in one array plus offsets."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    @classmethod
    def from_lists(cls, lists: Iterable[Sequence[int]]) -> "Ragged":
        lists = [np.asarray(x, dtype=np.int32) for x in lists]
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        return cls(np.concatenate(lists) if lists else np.zeros(0, np.int32), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "Ragged":
        return Ragged.from_lists(self[int(i)] for i in rows)


# ---- Where each utterance's audio comes from --------------------------------------------------------------

def read_segment(path: Path, offset_s: float, duration_s: float | None,
                 max_decoded_bytes: int | None = None) -> np.ndarray:
    """`duration_s` seconds from `offset_s` of an audio file, decoding only those frames, as 16 kHz mono float32.

    (common/audio.py reads whole files; NeMo manifests cut many utterances out of one long recording.) The
    segment's float32 samples (channels x frames, from the header) are bounded before anything is decoded, as
    whole files are (max_decoded_bytes, default common.audio.DEFAULT_MAX_DECODED_BYTES): AudioTooLarge."""
    import soundfile as sf

    limit = audio.DEFAULT_MAX_DECODED_BYTES if max_decoded_bytes is None else max_decoded_bytes
    try:
        with sf.SoundFile(str(path)) as f:
            start = int(round(offset_s * f.samplerate))
            if start >= f.frames:
                raise AudioError(f"offset {offset_s:g} s is past the end of {path.name} ({f.frames / f.samplerate:.2f} s)")
            f.seek(start)
            frames = -1 if duration_s is None else max(1, int(round(duration_s * f.samplerate)))
            decoded = (f.frames - start if frames < 0 else min(frames, f.frames - start)) * f.channels * 4
            if decoded > limit:
                raise AudioTooLarge(
                    f"the segment of {path.name} at {offset_s:g} s is {decoded / 2 ** 20:.0f} MB of samples "
                    f"({f.channels} channels at {f.samplerate} Hz), over the {limit / 2 ** 20:g} MB limit; give it "
                    f"a shorter duration in the manifest, or downmix/resample the recording")
            data, rate = f.read(frames, dtype="float32", always_2d=True), f.samplerate
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, EOFError) as exc:
        raise AudioError(f"cannot decode audio segment of {path}: {exc}") from None
    return audio.to_model_input(data, rate)


@dataclass
class FileAudio:
    """Audio files under `root` (paths relative to it, or absolute); NeMo segments where offsets are set."""
    root: Path
    paths: Strings
    offsets: np.ndarray | None = None  # seconds; NaN = the whole file
    durations: np.ndarray | None = None  # segment lengths, with offsets
    normalized = False

    def load(self, i: int) -> np.ndarray:
        path = self.root / self.paths[i]
        if self.offsets is not None and not math.isnan(self.offsets[i]):
            duration = None if math.isnan(self.durations[i]) else float(self.durations[i])
            return read_segment(path, float(self.offsets[i]), duration)
        return audio.load_file(path)


def probe_bytes_seconds(view: memoryview) -> float:
    """Duration of an encoded file held in memory, read as common.audio.probe_seconds reads a file (every format
    load_file decodes: WebM, MP4/M4A, AAC and OGG Opus included; the bytes are not copied)."""
    return audio.probe_seconds(view)


class TableAudio:
    """The audio column of a memory-mapped save_to_disk table: encoded bytes, a path, or an array + rate.

    Each load reads one row through the Arrow table (pyarrow scalars over the mapped file)."""
    normalized = False

    def __init__(self, dataset, column: str, root: Path, rows: np.ndarray):
        self._table = dataset.with_format("arrow")
        self.column, self.root, self.rows = column, root, rows

    def load(self, i: int) -> np.ndarray:
        value = self._table[int(self.rows[i])].column(self.column)[0]
        kind, payload = _audio_cell(value)
        if kind == "bytes":
            return audio.decode_bytes(bytes(payload))
        if kind == "path":
            return audio.load_file(self.root / payload)
        if kind == "array":
            return audio.to_model_input(np.asarray(payload[0], dtype=np.float32), payload[1])
        raise AudioError("the audio cell is empty")


class ProcessedAudio:
    """The seed's processed form: already normalised 16 kHz `input_values` read row by row from the table."""
    normalized = True

    def __init__(self, dataset, rows: np.ndarray):
        self._table = dataset.with_format("arrow")
        self.rows = rows

    def load(self, i: int) -> np.ndarray:
        cell = self._table[int(self.rows[i])].column("input_values")[0]
        return np.asarray(cell.values.to_numpy(zero_copy_only=False), dtype=np.float32)


def _audio_cell(value) -> tuple[str, object]:
    """(kind, payload) of one audio cell scalar: ("bytes", memoryview) | ("path", str) | ("array", (x, rate))."""
    import pyarrow as pa

    if isinstance(value, pa.StructScalar):
        names = {f.name for f in value.type}
        b = value["bytes"] if "bytes" in names else None
        if b is not None and b.is_valid:
            return "bytes", memoryview(b.as_buffer())
        if "array" in names and value["array"].is_valid:
            return "array", (value["array"].values.to_numpy(zero_copy_only=False), value["sampling_rate"].as_py())
        p = value["path"] if "path" in names else None
        if p is not None and p.is_valid and p.as_py():
            return "path", p.as_py()
        return "none", None
    if isinstance(value, (pa.StringScalar, pa.LargeStringScalar)) and value.is_valid:
        return "path", value.as_py()
    return "none", None


# ---- The index ---------------------------------------------------------------------------------------------

@dataclass
class ChannelIndex:
    """One channel's utterances before decoding. Entry i: `names[i]`, `texts[i]` (or `labels[i]` in the
    processed form), `seconds[i]`; `audio.load(i)` decodes it (16 kHz mono float32)."""
    name: str
    format: str
    audio: object  # FileAudio | TableAudio | ProcessedAudio
    names: Strings
    texts: Strings | None
    labels: Ragged | None
    seconds: np.ndarray  # float64, estimated from headers or the layout's own field
    total: int  # entries listed, whether or not they could be indexed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): could not be indexed

    def __len__(self) -> int:
        return len(self.seconds)

    @property
    def processed(self) -> bool:
        return self.labels is not None

    @property
    def hours(self) -> float:
        return float(self.seconds.sum()) / 3600


def _probe_all(items: list, probe: Callable, threads: int) -> list[tuple[float | None, str | None]]:
    def one(item):
        try:
            return probe(item), None
        except (AudioError, OSError) as exc:
            return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    if len(items) < 64:
        return [one(x) for x in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, items))


def _from_files(listing: formats.Files, threads: int) -> tuple:
    rows = listing.rows
    nemo = any(r.offset is not None for r in rows)
    need = [i for i, r in enumerate(rows) if r.seconds is None]
    probed = _probe_all([listing.root / rows[i].audio for i in need], audio.probe_seconds, threads)
    seconds = np.array([r.seconds if r.seconds is not None else math.nan for r in rows], dtype=np.float64)
    errors: dict[int, str] = {}
    for i, (value, error) in zip(need, probed):
        if error is not None:
            errors[i] = error
        else:
            seconds[i] = value
    if nemo:  # a segment from `offset` lasts `duration`; without a duration, to the end of the file
        for i, r in enumerate(rows):
            if r.offset is not None and r.seconds is None and i not in errors:
                seconds[i] = max(0.0, seconds[i] - r.offset)
    keep = [i for i in range(len(rows)) if i not in errors]
    skipped = [(rows[i].audio, errors[i]) for i in sorted(errors)]
    names = Strings(rows[i].audio for i in keep)
    offsets = durations = None
    if nemo:
        offsets = np.array([math.nan if rows[i].offset is None else rows[i].offset for i in keep], dtype=np.float64)
        durations = np.array([math.nan if rows[i].seconds is None else rows[i].seconds for i in keep], dtype=np.float64)
    source = FileAudio(listing.root, names, offsets, durations)
    return source, names, Strings(rows[i].text for i in keep), None, seconds[keep], len(rows), skipped


def _from_table(listing: formats.Table, threads: int) -> tuple:
    import pyarrow.compute as pc

    ds = listing.dataset
    total = len(ds)
    if listing.processed:
        lengths, labels = [], []
        for batch in ds.with_format("arrow").iter(batch_size=1000):
            lengths.append(pc.list_value_length(batch.column("input_values")).to_numpy(zero_copy_only=False))
            labels.extend(np.asarray(x, dtype=np.int32) for x in batch.column("labels").to_pylist())
        seconds = np.concatenate(lengths).astype(np.float64) / TARGET_RATE if lengths else np.zeros(0)
        rows = np.arange(total, dtype=np.int64)
        names = Strings(f"row {i}" for i in range(total))
        return ProcessedAudio(ds, rows), names, None, Ragged.from_lists(labels), seconds, total, []

    seconds = np.full(total, math.nan, dtype=np.float64)
    names_list: list[str] = []
    texts: list[str] = []
    paths: list[tuple[int, str]] = []
    errors: dict[int, str] = {}
    row = 0
    for batch in ds.with_format("arrow").iter(batch_size=256):
        column = batch.column(listing.audio_column)
        for text in batch.column(listing.text_column).to_pylist():
            texts.append("" if text is None else str(text))
        for j in range(batch.num_rows):
            kind, payload = _audio_cell(column[j])
            name = f"row {row}"
            if kind == "bytes":
                try:
                    seconds[row] = probe_bytes_seconds(payload)
                except AudioError as exc:
                    errors[row] = str(exc)
                p = column[j]["path"].as_py() if "path" in {f.name for f in column.type} else None
                name = p or name
            elif kind == "array":
                x, rate = payload
                seconds[row] = len(x) / rate if rate else math.nan
            elif kind == "path":
                paths.append((row, payload))
                name = payload
            else:
                errors[row] = "the audio cell is empty"
            names_list.append(name)
            row += 1
    probed = _probe_all([listing.root / p for _, p in paths], audio.probe_seconds, threads)
    for (r, _), (value, error) in zip(paths, probed):
        if error is not None:
            errors[r] = error
        else:
            seconds[r] = value
    keep = np.array([r for r in range(total) if r not in errors], dtype=np.int64)
    skipped = [(names_list[r], errors[r]) for r in sorted(errors)]
    names = Strings(names_list[r] for r in keep)
    source = TableAudio(ds, listing.audio_column, listing.root, keep)
    return source, names, Strings(texts[r] for r in keep), None, seconds[keep], total, skipped


def index_channel(channel_dir: Path, options: formats.Options, *, max_skipped_fraction: float,
                  log: Callable[[str], None] = print, threads: int = PROBE_THREADS) -> ChannelIndex:
    """Index a channel: detect its layout, list its utterances, read durations; entries whose file cannot
    be opened are skipped, named in the log and counted, and the job fails past `max_skipped_fraction`."""
    name = options.channel
    if not channel_dir.is_dir():
        raise TrainingError(f"channel {name} is missing: expected a directory at {channel_dir}")
    if not any(channel_dir.iterdir()):
        raise TrainingError(f"channel {name} is empty ({channel_dir}): check the S3 prefix given for it")
    root = formats.root_of(channel_dir)
    fmt = formats.detect(root, options)
    listing = fmt.read(root, options)
    if (len(listing.rows) if isinstance(listing, formats.Files) else len(listing.dataset)) == 0:
        raise TrainingError(f"channel {name} ({fmt.name}) lists no utterances: add audio and transcripts")
    build = _from_files if isinstance(listing, formats.Files) else _from_table
    source, names, texts, labels, seconds, total, skipped = build(listing, threads)
    for entry, why in skipped[:100]:
        log(f"[data] skipped unreadable {name}/{entry}: {why}")
    if len(skipped) > 100:
        log(f"[data] ... and {len(skipped) - 100} more unreadable files in channel {name}")
    if len(seconds) == 0:
        first = skipped[0]
        hint = ""
        if isinstance(listing, formats.Files) and os.path.isabs(first[0]):
            hint = "; the paths are absolute: in a channel they must be relative to the manifest's folder"
        raise TrainingError(f"no readable audio in channel {name}: all {total} files failed to decode "
                            f"(first: {first[0]}: {first[1]}){hint}")
    check_skipped(name, len(skipped), total, max_skipped_fraction, skipped[0] if skipped else None)
    ix = ChannelIndex(name, fmt.name, source, names, texts, labels, seconds, total, skipped)
    log(f"[data] channel {name}: {fmt.name}, {len(ix)} utterances ({ix.hours:.2f} h), {len(skipped)} skipped")
    return ix


def check_skipped(channel: str, count: int, total: int, max_fraction: float, first: tuple[str, str] | None,
                  when: str = "") -> None:
    """Fail when more than `max_fraction` of a channel's entries are unreadable."""
    fraction = count / max(total, 1)
    if fraction > max_fraction:
        raise TrainingError(
            f"{count} of {total} audio files in channel {channel} are unreadable{when} ({fraction:.1%} > "
            f"max_skipped_fraction={max_fraction}); fix them or raise max_skipped_fraction"
            + (f" (first: {first[0]}: {first[1]})" if first else ""))
