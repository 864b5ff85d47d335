"""Dataset layouts a channel may hold: one small reader each, detected in the order of FORMATS.

A reader lists a channel's utterances (where each one's audio is, its transcript, and its duration where
the layout records one) and decodes no audio. README's list of formats with a tree each
(`markdown()`), the detection order and the message for an unrecognised channel all come from FORMATS; a
new layout is one `Format` entry and its reader here.

Tabular files are read as their tools write them: UTF-8 with or without a byte-order mark, LF or CRLF line
ends; CSV fields may be quoted (RFC 4180); Common Voice's TSVs are not quoted (a sentence may hold a lone `"`),
so a TSV field is unquoted only when it is wholly quoted RFC-style.

One file because FORMATS is the one table that detection, README's list and the error for an unknown channel all
read: each reader is short and sits beside its entry, so a new layout is one edit in one place.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .failure import TrainingError

# What load_file decodes (common/audio.py).
AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".weba", ".mp4", ".aac")
TRANSCRIPT_COLUMNS = ("transcription", "text", "sentence", "transcript")  # AudioFolder: first present wins
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long transcripts are legitimate


@dataclass(frozen=True)
class Options:
    """What readers take from the hyperparameters; empty strings mean "the layout's own name"."""
    channel: str
    audio_column: str = ""
    text_column: str = ""
    tsv: str = ""  # Common Voice: the TSV to read (default: <channel>.tsv)


@dataclass
class Row:
    """One utterance of a file-based layout."""
    audio: str  # path relative to the listing's root, or absolute
    text: str
    seconds: float | None = None  # duration recorded by the layout, if any
    offset: float | None = None  # NeMo: start of the segment in the file (s); None = the whole file


@dataclass
class Files:
    """Listing of a file-based layout: rows whose audio paths are relative to `root`."""
    root: Path
    rows: list[Row]
    source: str  # the file the rows came from, for messages


@dataclass
class Table:
    """Listing of a save_to_disk dataset: read through its memory-mapped Arrow table, row by row."""
    dataset: object  # datasets.Dataset
    root: Path  # relative audio paths in the table are relative to it
    audio_column: str = "audio"
    text_column: str = "text"
    processed: bool = False  # the seed's input_values + labels


@dataclass(frozen=True)
class Format:
    name: str  # as metrics.json's `formats` reports it
    label: str  # a few words for the "no recognised data" message
    summary: str  # one line: README and the "no recognised data" message
    tree: str  # README: what the channel looks like
    detect: Callable[[Path, Options], bool]
    read: Callable[[Path, Options], "Files | Table"] = field(repr=False)


# ---- Tabular files -----------------------------------------------------------------------------------------

def _unquote(value: str) -> str:
    """A TSV field wholly quoted RFC-style ("a ""b"" c") loses its quotes; any other field is kept as is."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return value


def read_table(path: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """(header, rows as (line number, {column: value})) of a CSV (quoted fields) or TSV (unquoted) file."""
    f = path.open(encoding="utf-8-sig", newline="")
    try:
        if delimiter == "\t":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        f.close()
        raise TrainingError(f"{path} cannot be read as UTF-8 {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") from None
    if not header:
        f.close()
        raise TrainingError(f"{path} is empty: it needs a header line naming its columns")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with f:
            try:
                for values in reader:
                    if not any(v.strip() for v in values):
                        continue
                    if delimiter == "\t":
                        values = [_unquote(v) for v in values]
                    yield reader.line_num, dict(zip(header, values))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise TrainingError(f"{path} line {reader.line_num} cannot be read: {exc}") from None

    return header, rows()


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path} line {n} is not valid JSON ({exc.msg}): fix or remove it") from None
            if not isinstance(row, dict):
                raise TrainingError(f"{path} line {n} must be a JSON object, got {str(row)[:100]}")
            yield n, row


def _seconds(value, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise TrainingError(f"{where}: duration {value!r} is not a number of seconds >= 0")
    return seconds


def _row(record: dict, audio: str, text: str, where: str, *, duration: str | None = "duration",
         offset: str | None = None) -> Row:
    """A Row from one manifest record, or an error naming the line and the columns it needs."""
    a, t = record.get(audio), record.get(text)
    if a is None or str(a).strip() == "" or t is None:
        raise TrainingError(f"{where} needs a non-empty `{audio}` (audio) and a `{text}` (transcript) field, got "
                            f"{str(record)[:200]}; the audio_column / text_column hyperparameters name other columns")
    return Row(str(a).strip(), str(t),
               _seconds(record.get(duration), where) if duration else None,
               _seconds(record.get(offset), where) if offset and offset in record else None)


def _need_columns(path: Path, header: list[str], *columns: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise TrainingError(f"{path} lacks column(s) {', '.join(missing)}: its header must name "
                            f"{' and '.join(f'`{c}`' for c in columns)} (found {header}); the audio_column / "
                            f"text_column hyperparameters name other columns")


# ---- 1, 2. Our manifests ----------------------------------------------------------------------------------

def _read_jsonl(root: Path, o: Options) -> Files:
    path = root / "manifest.jsonl"
    audio, text = o.audio_column or "audio", o.text_column or "text"
    return Files(root, [_row(r, audio, text, f"{path} line {n}") for n, r in _json_lines(path)], str(path))


def _read_csv(root: Path, o: Options) -> Files:
    path = root / "manifest.csv"
    audio, text = o.audio_column or "audio", o.text_column or "text"
    header, rows = read_table(path, ",")
    _need_columns(path, header, audio, text)
    return Files(root, [_row(r, audio, text, f"{path} line {n}") for n, r in rows], str(path))


# ---- 3. NeMo ----------------------------------------------------------------------------------------------

def _first_record(path: Path) -> dict | None:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line in iter(lambda: f.readline(1 << 20), ""):
                if line.strip():
                    value = json.loads(line)
                    return value if isinstance(value, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def _nemo_manifests(root: Path) -> list[Path]:
    """JSON-lines files whose first record has `audio_filepath` (NeMo's own key, which identifies the layout)."""
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")
                  and p.name not in ("manifest.jsonl", "metadata.jsonl")
                  and "audio_filepath" in (_first_record(p) or {}))


def _read_nemo(root: Path, o: Options) -> Files:
    found = _nemo_manifests(root)
    if len(found) > 1:
        named = [p for p in found if o.channel in p.stem]
        if len(named) != 1:
            raise TrainingError(f"channel {o.channel} holds several NeMo manifests {[p.name for p in found]}: keep one, "
                                f"or one whose name contains `{o.channel}` (e.g. {o.channel}_manifest.json)")
        found = named
    path = found[0]
    audio, text = o.audio_column or "audio_filepath", o.text_column or "text"
    rows = [_row(r, audio, text, f"{path} line {n}", offset="offset") for n, r in _json_lines(path)]
    return Files(root, rows, str(path))


# ---- 4. Hugging Face AudioFolder ---------------------------------------------------------------------------

def _audiofolder_metadata(root: Path, o: Options) -> Path | None:
    for folder in (root, root / o.channel):
        for name in ("metadata.csv", "metadata.jsonl"):
            if (folder / name).is_file():
                return folder / name
    return None


def _transcript_column(path: Path, columns, o: Options) -> str:
    if o.text_column:
        return o.text_column
    for c in TRANSCRIPT_COLUMNS:
        if c in columns:
            return c
    raise TrainingError(f"{path} has no transcript column: expected one of {', '.join(TRANSCRIPT_COLUMNS)} "
                        f"(found {list(columns)}), or name it with the text_column hyperparameter")


def _read_audiofolder(root: Path, o: Options) -> Files:
    path = _audiofolder_metadata(root, o)
    audio = o.audio_column or "file_name"
    if path.suffix == ".csv":
        header, rows = read_table(path, ",")
        text = _transcript_column(path, header, o)
        _need_columns(path, header, audio, text)
    else:
        rows = _json_lines(path)
        text = _transcript_column(path, (_first_record(path) or {}).keys(), o)
    return Files(path.parent, [_row(r, audio, text, f"{path} line {n}") for n, r in rows], str(path))


# ---- 5. Common Voice ---------------------------------------------------------------------------------------

_CV_TSVS = ("train.tsv", "dev.tsv", "test.tsv", "validated.tsv")


def _is_common_voice(root: Path, o: Options) -> bool:
    return (root / "clips").is_dir() and any((root / t).is_file() for t in _CV_TSVS)


def _clip_durations(root: Path) -> dict[str, float]:
    """clip_durations.tsv (clip, duration[ms]), shipped with releases since 2023; absent in older ones."""
    path = root / "clip_durations.tsv"
    if not path.is_file():
        return {}
    header, rows = read_table(path, "\t")
    if len(header) < 2:
        return {}
    out = {}
    for n, r in rows:
        try:
            out[r[header[0]]] = float(r[header[1]]) / 1000.0
        except (KeyError, TypeError, ValueError):
            raise TrainingError(f"{path} line {n}: expected a clip name and a duration in ms, got {r}") from None
    return out


def _read_common_voice(root: Path, o: Options) -> Files:
    name = o.tsv or f"{o.channel}.tsv"
    path = root / name
    if not path.is_file():
        have = sorted(p.name for p in root.glob("*.tsv"))
        raise TrainingError(f"channel {o.channel} is a Common Voice release without {name} (it has {have}): name the "
                            f"TSV to read with the {o.channel}_tsv hyperparameter, e.g. validated.tsv")
    audio, text = o.audio_column or "path", o.text_column or "sentence"
    header, rows = read_table(path, "\t")
    _need_columns(path, header, audio, text)
    durations = _clip_durations(root)
    out = []
    for n, r in rows:
        row = _row(r, audio, text, f"{path} line {n}", duration=None)
        clip = row.audio if "." in Path(row.audio).name else row.audio + ".mp3"  # early releases omit .mp3
        row.seconds = durations.get(clip)
        row.audio = f"clips/{clip}"
        out.append(row)
    return Files(root, out, str(path))


# ---- 6. save_to_disk ---------------------------------------------------------------------------------------

def _is_save_to_disk(root: Path, o: Options) -> bool:
    return any((root / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _read_save_to_disk(root: Path, o: Options) -> Table:
    import datasets

    try:
        ds = datasets.load_from_disk(str(root))  # memory-mapped: nothing is copied into memory here
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise TrainingError(f"channel {o.channel}: cannot open the save_to_disk dataset in {root}: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if o.channel in ds:
            ds = ds[o.channel]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise TrainingError(f"channel {o.channel} holds a DatasetDict with splits {list(ds)}: give one "
                                f"split per channel (or name a split `{o.channel}`)")
    cols = set(ds.column_names)
    if {"input_values", "labels"} <= cols and not o.audio_column:
        return Table(ds.select_columns(["input_values", "labels"]), root, processed=True)
    audio, text = o.audio_column or "audio", o.text_column or "text"
    if not {audio, text} <= cols:
        raise TrainingError(f"the save_to_disk dataset in channel {o.channel} needs `{audio}` and `{text}` columns "
                            f"(or the processed `input_values` and `labels`); it has {sorted(cols)}: the "
                            f"audio_column / text_column hyperparameters name other columns")
    ds = ds.select_columns([audio, text])
    if isinstance(ds.features[audio], datasets.Audio):
        ds = ds.cast_column(audio, datasets.Audio(decode=False))  # soundfile decodes, never torchcodec
    return Table(ds, root, audio, text)


# ---- 7. LibriSpeech ----------------------------------------------------------------------------------------

def _is_librispeech(root: Path, o: Options) -> bool:
    return next(root.rglob("*.trans.txt"), None) is not None


def _read_librispeech(root: Path, o: Options) -> Files:
    rows = []
    for trans in sorted(root.rglob("*.trans.txt")):
        audio = {p.stem: p.name for p in trans.parent.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
        folder = trans.parent.relative_to(root)
        for n, line in enumerate(trans.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            rows.append(Row(str(folder / audio.get(utt_id, utt_id + ".flac")), text))
    return Files(root, rows, str(root / "**" / "*.trans.txt"))


FORMATS: tuple[Format, ...] = (
    Format("manifest.jsonl", "manifest.jsonl",
           "`manifest.jsonl`: one JSON object per line with `audio` (a path relative to the channel, or absolute) "
           "and `text`; an optional `duration` (seconds) saves reading each file's header.",
           "train/\n├── manifest.jsonl      {\"audio\": \"audio/0001.wav\", \"text\": \"the red cat\", \"duration\": 2.1}\n"
           "└── audio/\n    ├── 0001.wav\n    └── ...",
           lambda root, o: (root / "manifest.jsonl").is_file(), _read_jsonl),
    Format("manifest.csv", "manifest.csv",
           "`manifest.csv`: a header naming `audio` and `text` columns (others ignored, optional `duration`).",
           "train/\n├── manifest.csv        audio,text\n│                     audio/0001.flac,\"the red cat, again\"\n"
           "└── audio/\n    └── 0001.flac ...",
           lambda root, o: (root / "manifest.csv").is_file(), _read_csv),
    Format("nemo", "a NeMo manifest",
           "NeMo manifest: a `*.json` / `*.jsonl` file of JSON lines with `audio_filepath`, `text`, `duration` and an "
           "optional `offset` (a segment of a longer file); with several, the one whose name contains the channel "
           "name (`train_manifest.json`).",
           "train/\n├── train_manifest.json {\"audio_filepath\": \"wavs/a.wav\", \"text\": \"...\", \"duration\": 3.2, "
           "\"offset\": 12.0}\n└── wavs/\n    └── a.wav ...",
           lambda root, o: bool(_nemo_manifests(root)), _read_nemo),
    Format("audiofolder", "AudioFolder metadata.csv/metadata.jsonl",
           "Hugging Face AudioFolder: `metadata.csv` or `metadata.jsonl` with `file_name` and a transcript column "
           "(`transcription`, `text`, `sentence` or `transcript`), in the channel or in a folder named like it.",
           "train/\n├── metadata.csv        file_name,transcription\n│                     data/a.mp3,the red cat\n"
           "└── data/\n    └── a.mp3 ...",
           lambda root, o: _audiofolder_metadata(root, o) is not None, _read_audiofolder),
    Format("common_voice", "a Common Voice release (clips/ + train.tsv, ...)",
           "Common Voice release as the Mozilla Data Collective ships it: `train.tsv` / `dev.tsv` / `test.tsv` / "
           "`validated.tsv` and `clips/*.mp3`; columns `path` and `sentence` (others ignored). The train channel "
           "reads `train.tsv` and the test channel `test.tsv` unless `train_tsv` / `test_tsv` name another; "
           "durations come from `clip_durations.tsv` when the release has it.",
           "cv-corpus-23.0-2025-09-05/en/    (the channel may hold this folder or its contents)\n"
           "├── train.tsv           client_id  path  sentence  up_votes ...\n├── dev.tsv\n├── test.tsv\n"
           "├── validated.tsv\n├── clip_durations.tsv\n└── clips/\n    ├── common_voice_en_1.mp3\n    └── ...",
           _is_common_voice, _read_common_voice),
    Format("save_to_disk", "a Hugging Face save_to_disk dataset",
           "A Hugging Face dataset saved with `save_to_disk` (a `DatasetDict` with a split named like the channel, "
           "or a single split): `audio` (bytes or path; decoded with soundfile, never torchcodec) and `text`, "
           "extra columns ignored; or the seed's processed form `input_values` + `labels`, which needs the `vocab` "
           "channel that made the labels. Read through its memory-mapped Arrow files.",
           "train/\n├── dataset_info.json\n├── state.json\n└── data-00000-of-00001.arrow",
           _is_save_to_disk, _read_save_to_disk),
    Format("librispeech", "LibriSpeech *.trans.txt files",
           "LibriSpeech layout: `*.trans.txt` files (`ID TRANSCRIPT` lines) beside `ID.flac` (or `.wav`, `.mp3`, "
           "`.ogg`, `.opus`, `.m4a`, `.webm`, `.aac`, ...), at any depth.",
           "LibriSpeech/train-clean-100/\n└── 103/\n    └── 1240/\n        ├── 103-1240.trans.txt   "
           "103-1240-0000 CHAPTER ONE ...\n        ├── 103-1240-0000.flac\n        └── ...",
           _is_librispeech, _read_librispeech),
)


def root_of(channel_dir: Path) -> Path:
    """The channel's data folder: its only folder when it holds nothing else (an uploaded release folder)."""
    root = channel_dir
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        root = entries[0]


def detect(root: Path, o: Options) -> Format:
    for f in FORMATS:
        if f.detect(root, o):
            return f
    archives = sorted(p.name for p in root.iterdir() if p.name.endswith(_ARCHIVES))
    hint = f" (it holds {', '.join(archives)}: extract archives before uploading)" if archives else ""
    expected = ", ".join(f.label for f in FORMATS[:-1]) + ", or " + FORMATS[-1].label
    raise TrainingError(f"channel {o.channel} ({root}) holds no recognised data{hint}: expected {expected} "
                        f"(see README, Data formats)")


def markdown() -> str:
    """README's numbered list of formats, each with its tree; a test checks README carries exactly this."""
    out = []
    for i, f in enumerate(FORMATS, 1):
        tree = "\n".join("   " + line for line in ("```", *f.tree.splitlines(), "```"))
        out.append(f"{i}. {f.summary}\n\n{tree}\n")
    return "\n".join(out)
