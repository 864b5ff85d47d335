"""Checkpoints a resumed job can trust: a manifest written last, and a check of every file before resuming.

transformers' Trainer (5.x, Trainer._save_checkpoint) writes checkpoint-N/ in place: the weights, then the
optimizer, scheduler and RNG states, trainer_state.json last, and then calls the callbacks' `on_save`. A job
stopped mid-write (a spot interruption), or a checkpoint that SageMaker's S3 sync of /opt/ml/checkpoints
copied back only in part, leaves files cut short that Trainer would fail on when resuming. So:

- `ManifestCallback.on_save` writes checkpoint-N/MANIFEST_FILE, every file's name and size, to a temporary
  name first and renames it into place: a checkpoint with the manifest was complete on disk.
- `newest_complete` resumes from the newest checkpoint whose files are all there at their recorded sizes and
  read as what they are (a safetensors header whose tensors fit the file, a torch zip archive whose central
  directory is at its end, JSON that parses). Newer ones that fail are skipped, each with the reason logged.
  A checkpoint without a manifest (written before it existed) is checked the same way, file by file.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

MANIFEST_FILE = "checkpoint_manifest.json"
REQUIRED = ("trainer_state.json",)  # what Trainer writes last and reads first when resuming
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TORCH_ZIP = (".pt", ".pth", ".bin")  # torch.save archives (zip since torch 1.6)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def write_manifest(folder: Path) -> Path:
    """folder/MANIFEST_FILE listing every file under it (relative path -> size in bytes), written whole or not
    at all (a temporary file renamed into place)."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(f".{MANIFEST_FILE}")}
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST_FILE)
    return folder / MANIFEST_FILE


class ManifestCallback(TrainerCallback):
    """Marks each checkpoint complete once Trainer has written all of it (see the module docstring)."""

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_dir(args.output_dir, state.global_step)
        if args.should_save and folder.is_dir():
            write_manifest(folder)
        return control


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name} is cut short: its header alone needs {n + 8} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name} has an unreadable safetensors header"
    end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"] or [0])
    if 8 + n + end != size:
        return f"{path.name} is cut short: its tensors need {8 + n + end} bytes, the file has {size}"
    return None


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be what it claims (None when it reads as one)."""
    try:
        if path.suffix == ".safetensors":
            return _safetensors_problem(path)
        if path.suffix in _TORCH_ZIP:
            try:
                zipfile.ZipFile(path).close()  # the central directory is the archive's last record
            except zipfile.BadZipFile:
                return f"{path.name} is not a complete torch archive (cut short?)"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except ValueError:
        return f"{path.name} is not valid JSON (cut short?)"
    except OSError as exc:
        return f"cannot read {path.name}: {exc.strerror or exc}"
    return None


def problem(folder: Path) -> str | None:
    """Why `folder` (a checkpoint-N) cannot be resumed from; None when it can."""
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError, OSError):
            return f"{MANIFEST_FILE} is unreadable"
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes, {size} were written"
        names = [folder / name for name in files]
    else:
        missing = [n for n in REQUIRED if not (folder / n).is_file()]
        if missing:
            return f"{', '.join(missing)} is missing (the write was interrupted)"
        if not any((folder / w).is_file() for w in WEIGHTS):
            return f"no weights file ({' or '.join(WEIGHTS)})"
        names = sorted(p for p in folder.iterdir() if p.is_file())
    for path in names:
        why = file_problem(path)
        if why:
            return why
    return None


def newest_complete(checkpoints_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, int] | None:
    """(checkpoint-N, N) with the largest N that is complete (`problem` is None); each newer incomplete one is
    logged and skipped. None when there is none."""
    found = []
    for d in checkpoints_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if checkpoints_dir.is_dir() else []:
        step = d.name.rpartition("-")[2]
        if d.is_dir() and step.isdigit():
            found.append((int(step), d))
    for step, path in sorted(found, reverse=True):
        why = problem(path)
        if why is None:
            return path, step
        log(f"[train] WARNING: skipping incomplete checkpoint {path} (step {step}): {why}; resuming from an "
            f"earlier one if there is one")
    return None
