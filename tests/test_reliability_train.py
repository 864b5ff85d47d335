"""Faults in training: SIGTERM at a random step, corrupt audio files, an unwritable or full model directory.

Each drives train/train natively on the synthetic set with the micro model (a few CPU steps).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

from train_helpers import (FAST, failure_first_line, make_opt_ml, metrics, micro_model_dir, run_train, start_train)

FINAL_STEP = 8


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("rel_micro"))


def copy_split(src, dest):
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("manifest.csv"))
    return dest


def test_sigterm_at_a_random_step_then_restart_finishes_at_the_same_final_step(tmp_path, synthetic_data, micro):
    step = random.Random(os.environ.get("RELIABILITY_SEED", time.time_ns())).randint(1, FINAL_STEP - 2)
    print(f"SIGTERM after step {step}")
    hp = {**FAST, "max_steps": str(FINAL_STEP), "test_split": "0"}
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": micro}, hp)
    proc = start_train(opt)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"[metrics] step={step} "):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 143, out[-3000:]
    saved = re.search(r"\[train\] stopped by SIGTERM at step (\d+); checkpoint saved", out)
    assert saved, out[-3000:]
    stopped_at = int(saved.group(1))
    assert step <= stopped_at < FINAL_STEP
    assert (opt / "checkpoints" / f"checkpoint-{stopped_at}" / "trainer_state.json").is_file()
    assert not (opt / "output" / "failure").exists()

    # The restart is the same job with the same hyperparameters, as after a spot interruption.
    again = run_train(opt)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"(step {stopped_at})" in again.stdout and "[train] resuming from checkpoint" in again.stdout
    logged = [int(s) for s in re.findall(r"\[metrics\] step=(\d+) ", again.stdout)]
    assert logged == list(range(stopped_at + 1, FINAL_STEP + 1)), logged
    m = metrics(opt)
    assert m["steps"] == FINAL_STEP and m["resumed_from_step"] == stopped_at
    assert (opt / "model" / "model.safetensors").is_file()


def cut(wav):
    """The clip as FLAC (under its own name: decoders go by content), cut off at 60% (an interrupted copy):
    its STREAMINFO header is read fine at indexing, the decoder refuses it (fewer samples than declared)
    when a DataLoader worker reads it. A cut WAV is found at indexing already (its data size is checked
    against the file), so it would not reach the workers."""
    import soundfile as sf

    samples, rate = sf.read(wav, dtype="int16")
    sf.write(wav, samples, rate, format="FLAC")
    data = wav.read_bytes()
    wav.write_bytes(data[: int(len(data) * 0.6)])


def test_five_percent_corrupt_audio_is_skipped_named_and_counted(tmp_path, synthetic_data, micro):
    """A broken header is found when the channel is indexed; a truncated file (its header is fine) only when a
    DataLoader worker decodes it during the first epoch. Both are named and counted once."""
    split = copy_split(synthetic_data / "train", tmp_path / "train")
    wavs = sorted((split / "audio").glob("*.wav"))
    # 2 of 48 files (4.2%, under the default max_skipped_fraction 0.05): one truncated, one with a broken header.
    truncated, garbled = wavs[3], wavs[17]
    cut(truncated)
    data = bytearray(garbled.read_bytes())
    data[20:36] = os.urandom(16)  # the fmt chunk: format, channels, rate, block size
    data[:4] = b"JUNK"
    garbled.write_bytes(bytes(data))
    # 24 steps of 4: two epochs, so the truncated file is drawn twice and still counted once.
    opt = make_opt_ml(tmp_path / "opt", {"train": split, "model": micro},
                      {**FAST, "max_steps": "24", "test_split": "0", "dataloader_num_workers": "2"})
    proc = run_train(opt)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for bad in (truncated, garbled):
        assert proc.stdout.count(f"[data] skipped unreadable train/audio/{bad.name}: ") == 1, proc.stdout[-3000:]
    assert "FLAC is truncated" in proc.stdout
    skipped = metrics(opt)["skipped_files"]["train"]
    assert skipped["count"] == 2 and skipped["of"] == len(wavs)
    assert sorted(f.split(":")[0] for f in skipped["files"]) == sorted(f"audio/{b.name}" for b in (truncated, garbled))
    assert (opt / "model" / "model.safetensors").is_file()


def test_files_found_unreadable_during_training_count_against_the_fraction(tmp_path, synthetic_data, micro):
    """4 of 48 files (8.3% > 5%) decode badly only past their headers: the job fails once the DataLoader
    workers have met enough of them, with the whole run's count."""
    split = copy_split(synthetic_data / "train", tmp_path / "train")
    for wav in sorted((split / "audio").glob("*.wav"))[10:14]:
        cut(wav)
    opt = make_opt_ml(tmp_path / "opt", {"train": split, "model": micro},
                      {**FAST, "max_steps": "24", "test_split": "0", "dataloader_num_workers": "2"})
    proc = run_train(opt)
    assert proc.returncode == 1, proc.stdout[-3000:]
    line = failure_first_line(opt)
    assert re.match(r"^[34] of 48 audio files in channel train are unreadable \(counted over the whole run\) "
                    r"\((6\.2|8\.3)% > max_skipped_fraction=0\.05\)", line), line
    assert not (opt / "model" / "model.safetensors").exists()


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@needs_root
def test_read_only_model_directory_fails_with_a_clear_message(tmp_path, synthetic_data, micro):
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": micro}, FAST)
    (opt / "model").mkdir()
    mount("--bind", "-o", "ro", str(opt / "model"), str(opt / "model"))
    try:
        proc = run_train(opt)
    finally:
        subprocess.run(["umount", str(opt / "model")], check=True)
    assert proc.returncode != 0
    line = failure_first_line(opt)
    assert line.startswith(f"cannot write to output directory {opt / 'model'}: Read-only file system"), line


@needs_root
def test_full_disk_for_the_model_fails_with_a_clear_message(tmp_path, synthetic_data, micro):
    """A model directory on a 64 kB tmpfs: room for the start-up write check, not for the weights."""
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": micro},
                      {**FAST, "test_split": "0"})
    (opt / "model").mkdir()
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(opt / "model"))
    try:
        proc = run_train(opt)
    finally:
        subprocess.run(["umount", str(opt / "model")], check=True)
    assert proc.returncode != 0, proc.stdout[-2000:]
    line = failure_first_line(opt)
    print(line)
    assert line.startswith(f"cannot write the model to {opt / 'model'}"), line
    assert "No space left on device" in line, line
