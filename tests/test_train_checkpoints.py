"""Interrupted checkpoint writes (train/checkpointing.py): a checkpoint cut short is recognised, skipped and
logged, and the job resumes from the previous complete one."""
from __future__ import annotations

import json
import os
import re

import pytest

from train_helpers import FAST, assert_ok, make_opt_ml, metrics, micro_model_dir, run_train
from train import checkpointing


def truncate(path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, synthetic_data):
    """A job that saved checkpoint-2 and checkpoint-4 (and finished at step 4)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    hp = {**FAST, "max_steps": "4", "save_steps": "2", "save_total_limit": "3", "test_split": "0"}
    opt = make_opt_ml(tmp / "opt", {"train": synthetic_data / "train", "model": micro_model_dir(tmp / "src")}, hp)
    assert_ok(run_train(opt))
    return opt, hp


def test_every_checkpoint_has_a_manifest_of_its_files(two_checkpoints):
    opt, _ = two_checkpoints
    for step in (2, 4):
        folder = opt / "checkpoints" / f"checkpoint-{step}"
        files = json.loads((folder / checkpointing.MANIFEST_FILE).read_text())["files"]
        assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(files)
        assert files == {n: (folder / n).stat().st_size for n in files}
        assert checkpointing.problem(folder) is None


def test_a_truncated_newest_checkpoint_is_skipped_and_the_job_resumes_from_the_previous(two_checkpoints,
                                                                                        tmp_path):
    import shutil

    opt_done, hp = two_checkpoints
    opt = tmp_path / "opt"
    shutil.copytree(opt_done, opt, symlinks=True)
    shutil.rmtree(opt / "model")
    shutil.rmtree(opt / "output")
    truncate(opt / "checkpoints" / "checkpoint-4" / "model.safetensors")  # a spot stop mid-write
    (opt / "input" / "config" / "hyperparameters.json").write_text(json.dumps({**hp, "max_steps": "6"}))
    proc = run_train(opt)
    assert_ok(proc)
    assert re.search(r"\[train\] WARNING: skipping incomplete checkpoint \S+checkpoint-4 \(step 4\): "
                     r"model\.safetensors is \d+ bytes, \d+ were written", proc.stdout), proc.stdout[-3000:]
    assert f"[train] resuming from checkpoint {opt / 'checkpoints' / 'checkpoint-2'} (step 2)" in proc.stdout
    m = metrics(opt)
    assert m["resumed_from_step"] == 2 and m["steps"] == 6


@pytest.mark.parametrize("damage, says", [
    (lambda d: truncate(d / "optimizer.pt"), "optimizer.pt is"),
    (lambda d: (d / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda d: (d / checkpointing.MANIFEST_FILE).write_text("{\"fi"), "checkpoint_manifest.json is unreadable"),
])
def test_each_kind_of_damage_is_named(two_checkpoints, tmp_path, damage, says):
    import shutil

    folder = tmp_path / "checkpoint-2"
    shutil.copytree(two_checkpoints[0] / "checkpoints" / "checkpoint-2", folder)
    damage(folder)
    assert says in checkpointing.problem(folder)


def test_checkpoints_without_a_manifest_are_read_file_by_file(two_checkpoints, tmp_path):
    """Written before the manifest existed (or by Trainer alone): each file must still read as what it is."""
    import shutil

    folder = tmp_path / "checkpoint-2"
    shutil.copytree(two_checkpoints[0] / "checkpoints" / "checkpoint-2", folder)
    (folder / checkpointing.MANIFEST_FILE).unlink()
    assert checkpointing.problem(folder) is None
    truncate(folder / "model.safetensors", 0.9)
    assert "model.safetensors is cut short" in checkpointing.problem(folder)
    shutil.copy(two_checkpoints[0] / "checkpoints" / "checkpoint-2" / "model.safetensors", folder)
    truncate(folder / "rng_state.pth")
    assert "rng_state.pth is not a complete torch archive" in checkpointing.problem(folder)
    (folder / "trainer_state.json").unlink()
    assert "trainer_state.json is missing" in checkpointing.problem(folder)
    logs = []
    assert checkpointing.newest_complete(tmp_path, log=logs.append) is None
    assert "skipping incomplete checkpoint" in logs[0]
