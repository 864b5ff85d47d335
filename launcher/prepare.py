"""`launch prepare`: a folder of audio and transcripts (or a Hugging Face hub split) -> a training channel.

The source is read with the training program's own loader (train/data.py: manifest.jsonl, manifest.csv,
save_to_disk, LibriSpeech), so whatever `prepare` accepts, training accepts, and unreadable files are
found here rather than an hour into a paid job. The channel written is the simplest format training reads:
  DEST/manifest.jsonl          {"audio": "audio/000000.flac", "text": "..."} per line
  DEST/audio/NNNNNN.flac       16 kHz mono 16-bit FLAC (lossless for 16-bit input, about half a WAV)
`--as-is` checks the source and copies it unchanged instead. An s3:// DEST is written to a temporary folder,
then uploaded. The decoded audio is held in memory while converting (~230 MB per hour of audio).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import aws, options
from .errors import LaunchError

MAX_SKIPPED_DEFAULT = 0.05


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "prepare", parents=parents, help="turn a folder of audio + transcripts into a training channel",
        description="Check and convert SOURCE (a folder with manifest.jsonl / manifest.csv, a LibriSpeech "
                    "layout, or a save_to_disk dataset; or --hf-dataset) into a training channel at DEST: a "
                    "local folder or an s3:// prefix (uploaded). Give DEST to `launch train --channel train=DEST`.",
        epilog="example: launcher/launch prepare ./my-recordings s3://my-bucket/speech/train")
    p.add_argument("source", nargs="?", help="local folder (omit with --hf-dataset)")
    p.add_argument("dest", help="output: a new local folder or an s3:// prefix")
    p.add_argument("--hf-dataset", metavar="NAME[:CONFIG]",
                   help="read a Hugging Face hub dataset instead of SOURCE (needs network access to the hub)")
    p.add_argument("--split", default="train", help="split of a hub dataset or of a saved DatasetDict (default train)")
    p.add_argument("--audio-column", default="audio", help="hub dataset: the audio column (default audio)")
    p.add_argument("--text-column", default="text", help="hub dataset: the transcript column (default text)")
    p.add_argument("--as-is", action="store_true", help="check SOURCE, then copy/upload it unchanged")
    p.add_argument("--max-skipped-fraction", type=float, default=MAX_SKIPPED_DEFAULT,
                   help=f"fail when more than this fraction of the audio is unreadable (default {MAX_SKIPPED_DEFAULT})")
    p.add_argument("--overwrite", action="store_true", help="replace a local DEST that is not empty")


@dataclass
class PrepareOptions:
    aws: aws.AwsOptions
    source: Path | None
    dest: str
    hf_dataset: str | None
    split: str
    audio_column: str
    text_column: str
    as_is: bool
    max_skipped_fraction: float
    overwrite: bool

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "PrepareOptions":
        a = options.aws_options(ns)
        if a.local:
            raise LaunchError("prepare writes a local folder already: give DEST as a folder instead of --local")
        if bool(ns.source) == bool(ns.hf_dataset):
            raise LaunchError("give either SOURCE (a local folder) or --hf-dataset NAME, not both or neither")
        source = options.local_dir(ns.source, "SOURCE") if ns.source else None
        if not 0 <= ns.max_skipped_fraction < 1:
            raise LaunchError(f"--max-skipped-fraction must be in [0, 1), got {ns.max_skipped_fraction}")
        if ns.as_is and ns.hf_dataset:
            raise LaunchError("--as-is copies a local SOURCE; it does not apply to --hf-dataset")
        dest = ns.dest
        if options.is_s3(dest):
            options.check_s3(dest, "DEST")
        else:
            path = options.local_dir(dest, "DEST", must_exist=False)
            if source and (path == source or source in path.parents):
                raise LaunchError(f"DEST {dest} must not be SOURCE or inside it")
            if path.exists() and any(path.iterdir()) and not ns.overwrite:
                raise LaunchError(f"DEST {dest} exists and is not empty: pick a new folder or pass --overwrite")
            dest = str(path)
        return cls(aws=a, source=source, dest=dest, hf_dataset=ns.hf_dataset, split=ns.split,
                   audio_column=ns.audio_column, text_column=ns.text_column, as_is=ns.as_is,
                   max_skipped_fraction=ns.max_skipped_fraction, overwrite=ns.overwrite)


def _load(source: Path, split: str, max_skipped_fraction: float):
    try:
        from train.data import load_channel
        from train.failure import TrainingError
    except ImportError as exc:
        raise LaunchError(f"prepare reads audio with the training program's code, which needs {exc.name}: run it "
                          "from the repository's .venv (./setup.sh) rather than a launcher-only environment") from None

    try:
        return load_channel(source, split, max_skipped_fraction=max_skipped_fraction,
                            log=lambda m: print(m, flush=True))
    except TrainingError as exc:
        raise LaunchError(str(exc)) from None


def write_channel(channel, dest: Path) -> dict:
    """manifest.jsonl + audio/NNNNNN.flac from decoded utterances; returns a summary."""
    import soundfile as sf

    from common.audio import TARGET_RATE

    if channel.processed:
        raise LaunchError("SOURCE is the already processed form (input_values + labels): it is a channel as it "
                          "is; use --as-is (and give training its vocab channel)")
    (dest / "audio").mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    with (dest / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        for i, utt in enumerate(channel.utterances):
            rel = f"audio/{i:06d}.flac"
            sf.write(dest / rel, utt.input_values, TARGET_RATE, format="FLAC", subtype="PCM_16")
            manifest.write(json.dumps({"audio": rel, "text": utt.text, "source": utt.name}, ensure_ascii=False) + "\n")
            seconds += utt.seconds
    return {"utterances": len(channel.utterances), "hours": round(seconds / 3600, 4),
            "skipped": len(channel.skipped), "source_format": channel.format}


def _from_hub(opts: PrepareOptions, work: Path) -> Path:
    """Download one split of a hub dataset and save it as a save_to_disk dataset with audio/text columns."""
    import datasets

    name, _, config = opts.hf_dataset.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=opts.split)
    except Exception as exc:  # offline, unknown name, gated dataset...
        raise LaunchError(f"cannot load {opts.hf_dataset} split {opts.split} from the Hugging Face hub "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); download it "
                          "where the hub is reachable and pass the saved folder as SOURCE") from None
    missing = {opts.audio_column, opts.text_column} - set(ds.column_names)
    if missing:
        raise LaunchError(f"{opts.hf_dataset} has no column(s) {sorted(missing)}; its columns are "
                          f"{ds.column_names}: pass --audio-column / --text-column")
    ds = ds.select_columns([opts.audio_column, opts.text_column])
    if isinstance(ds.features[opts.audio_column], datasets.Audio):
        ds = ds.cast_column(opts.audio_column, datasets.Audio(decode=False))
    ds = ds.rename_columns({k: v for k, v in {opts.audio_column: "audio", opts.text_column: "text"}.items() if k != v})
    out = work / "hub"
    ds.save_to_disk(str(out))
    return out


def run(opts: PrepareOptions) -> int:
    target = None
    if options.is_s3(opts.dest):
        target = aws.resolve(opts.aws, need_role=False)  # fail on credentials before any work
    with tempfile.TemporaryDirectory(prefix="wav2vec2-prepare-") as tmp:
        work = Path(tmp)
        source = _from_hub(opts, work) if opts.hf_dataset else opts.source
        channel = _load(source, opts.split, opts.max_skipped_fraction)
        out = work / "channel" if target else Path(opts.dest)
        if out.exists() and opts.overwrite:
            shutil.rmtree(out)
        if opts.as_is:
            shutil.copytree(source, out)
            summary = {"utterances": len(channel.utterances), "skipped": len(channel.skipped),
                       "source_format": channel.format, "copied_as_is": True}
        else:
            summary = write_channel(channel, out)
        if target:
            _upload(target, out, opts.dest)
        summary["channel"] = opts.dest
        print(json.dumps(summary))
    return 0


def _upload(target: aws.Target, folder: Path, dest: str) -> None:
    import boto3.s3.transfer

    bucket, _, prefix = dest[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    s3 = target.boto_session.client("s3", region_name=target.region)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    print(f"[launch] uploading {len(files)} files to {dest}", flush=True)
    config = boto3.s3.transfer.TransferConfig(max_concurrency=8)
    for path in files:
        key = "/".join(filter(None, [prefix, path.relative_to(folder).as_posix()]))
        s3.upload_file(str(path), bucket, key, Config=config)
