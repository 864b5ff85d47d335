"""The `model` channel as a model directory: as given, inside a single top-level folder, or a model.tar.gz.

Users chain jobs by giving the `model` channel the S3 URI of an earlier job's model.tar.gz; SageMaker then
puts that one file in the channel. It is unpacked (common/archive.py: no member outside the target, no
links, no special files) under OPT_ML/input/unpacked/model, once per host: the first process unpacks under a
file lock and leaves a marker naming the archive's size and time, so torchrun's workers (and a restarted job)
reuse it.
"""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path
from typing import Callable

from common.archive import ArchiveError, is_archive, unpack

from .failure import TrainingError

MARKER = ".unpacked-from.json"


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _descend(folder: Path) -> Path:
    """Go down through folders that hold nothing but one folder (`my-model/` inside the channel or the tar)."""
    while not (folder / "config.json").is_file():
        entries = _visible(folder)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        folder = entries[0]
    return folder


def resolve(channel_dir: Path, unpack_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The folder to load the model from, for a `model` channel at `channel_dir` (which must exist)."""
    entries = _visible(channel_dir) if channel_dir.is_dir() else []
    if (channel_dir / "config.json").is_file() or not entries:
        return channel_dir
    archives = [p for p in entries if is_archive(p)]
    if len(entries) == 1 and archives:
        return _descend(_unpack_once(archives[0], unpack_dir, log))
    if archives:
        raise TrainingError(f"channel model holds {[p.name for p in entries]}: give either one model.tar.gz or the "
                            f"files of a save_pretrained directory, not both")
    return _descend(channel_dir)


def _unpack_once(archive: Path, target: Path, log: Callable[[str], None]) -> Path:
    stat = archive.stat()
    stamp = {"archive": str(archive), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes of this host wait, then reuse what was unpacked
        marker = target / MARKER
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except (OSError, ValueError):
            pass
        if target.exists():
            shutil.rmtree(target)
        try:
            names = unpack(archive, target)
        except ArchiveError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise TrainingError(f"channel model: refusing to unpack {archive.name}: {exc}; give the model.tar.gz "
                                f"that a training job wrote (or the model's files themselves)") from None
        marker.write_text(json.dumps(stamp))
    log(f"[model] unpacked {archive.name} ({len(names)} entries) into {target}")
    return target
