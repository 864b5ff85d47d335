"""Each newer dataset layout end to end through train/train, with the SageMaker job plumbing real jobs hit:
Common Voice (MP3 clips) in a read-only FastFile-style channel with tuning hyperparameters and a model.tar.gz
model channel; NeMo segments with an AudioFolder test channel; a BOM/CRLF/quoted CSV with column options."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import soundfile as sf

from train_helpers import FAST, assert_ok, failure_first_line, is_model_dir, make_opt_ml, metrics, micro_model_dir, \
    model_files, run_train


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return micro_model_dir(tmp_path_factory.mktemp("micro_model"))


def rows_of(split_dir):
    return [json.loads(line) for line in (split_dir / "manifest.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def read_only(folder):
    """The folder as FastFile mode mounts a channel: nothing in it can be written, even by root."""
    if os.geteuid() == 0 and shutil.which("mount"):
        subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & 0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


def common_voice_release(synthetic_data, root):
    """A Common Voice release folder: MP3 clips (32 kHz, as recent releases) and the split TSVs."""
    release = root / "cv-corpus-23.0-2025-09-05" / "en"
    (release / "clips").mkdir(parents=True)
    header = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age"]
    durations = ["clip\tduration[ms]"]
    for split, src in (("train", "train"), ("test", "test")):
        lines = ["\t".join(header)]
        for i, r in enumerate(rows_of(synthetic_data / src)):
            x, rate = sf.read(synthetic_data / src / r["audio"], dtype="float32")
            import soxr

            clip = f"common_voice_en_{split}{i:04d}.mp3"
            sf.write(release / "clips" / clip, soxr.resample(x, rate, 32_000), 32_000, format="MP3")
            if i % 2:
                durations.append(f"{clip}\t{round(1000 * len(x) / rate)}")
            sentence = r["text"].capitalize() + ("." if i % 3 else "!")
            lines.append("\t".join([f"c{i % 5}", clip, str(i), sentence, "", "2", "0", "thirties"]))
        (release / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (release / "dev.tsv").write_text("\t".join(header) + "\n")
    (release / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    return release


def test_common_voice_fastfile_tuning_job_with_model_tar_gz(tmp_path, synthetic_data, micro):
    channel = tmp_path / "cv"
    common_voice_release(synthetic_data, channel)
    model = tmp_path / "model_channel"
    model.mkdir()
    with tarfile.open(model / "model.tar.gz", "w:gz") as tar:  # as an earlier job's S3 output
        tar.add(micro / "config.json", arcname="config.json")
    hp = {**FAST, "_tuning_objective_metric": "eval:cer", "sagemaker_program": "\"train\"",
          "sagemaker_region": "\"us-east-1\""}
    opt = make_opt_ml(tmp_path / "opt", {"train": channel, "test": channel, "model": model}, hp)
    (opt / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {name: {"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated"}
         for name in ("train", "test", "model")}))
    with read_only(channel), read_only(model):
        proc = run_train(opt)
    assert_ok(proc)
    m = metrics(opt)
    assert m["formats"] == {"train": "common_voice", "test": "common_voice"}
    assert "[data] channel train: common_voice, 48 utterances" in proc.stdout
    assert "[data] channel test: common_voice, 12 utterances" in proc.stdout
    assert "[data] channel train: FastFile mode" in proc.stdout
    assert "accepted and not used: _tuning_objective_metric=eval:cer, sagemaker_program=train, " \
           "sagemaker_region=us-east-1" in proc.stdout
    assert m["sagemaker_hyperparameters"]["_tuning_objective_metric"] == "eval:cer"
    assert "[model] unpacked model.tar.gz (1 entries)" in proc.stdout
    assert m["skipped_files"]["train"]["count"] == 0 and m["steps"] == 2 and m["cer"] is not None
    assert is_model_dir(model_files(opt))


def test_hostile_model_tar_gz_is_refused(tmp_path, synthetic_data):
    model = tmp_path / "model_channel"
    model.mkdir()
    with tarfile.open(model / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    opt = make_opt_ml(tmp_path / "opt", {"train": synthetic_data / "train", "model": model}, FAST)
    proc = run_train(opt)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert failure_first_line(opt).startswith("channel model: refusing to unpack model.tar.gz: member 'config.json' "
                                              "is a symbolic link to '/etc/passwd'")
    assert not (opt / "input" / "unpacked" / "model" / "config.json").exists()


def test_nemo_segments_and_an_audiofolder_test_channel(tmp_path, synthetic_data, micro):
    # NeMo: the training clips joined into 4 long recordings, each utterance a segment (offset + duration).
    nemo = tmp_path / "nemo"
    (nemo / "wavs").mkdir(parents=True)
    lines = []
    for k in range(4):
        parts, offset = [], 0.0
        for r in rows_of(synthetic_data / "train")[k::4]:
            x, rate = sf.read(synthetic_data / "train" / r["audio"], dtype="float32")
            lines.append({"audio_filepath": f"wavs/rec{k}.flac", "text": r["text"], "duration": len(x) / rate,
                          "offset": offset})
            parts.append(np.concatenate([x, np.zeros(rate // 4, np.float32)]))
            offset += len(parts[-1]) / rate
        sf.write(nemo / "wavs" / f"rec{k}.flac", np.concatenate(parts), rate)
    (nemo / "train_manifest.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    # AudioFolder: metadata.csv (file_name, transcription) in a folder named like the channel.
    folder = tmp_path / "af"
    (folder / "test" / "data").mkdir(parents=True)
    with (folder / "test" / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription", "speaker_id"])
        for r in rows_of(synthetic_data / "test"):
            shutil.copy(synthetic_data / "test" / r["audio"], folder / "test" / "data")
            w.writerow([f"data/{os.path.basename(r['audio'])}", r["text"], "7"])
    opt = make_opt_ml(tmp_path / "opt", {"train": nemo, "test": folder, "model": micro}, FAST)
    proc = run_train(opt)
    assert_ok(proc)
    m = metrics(opt)
    assert m["formats"] == {"train": "nemo", "test": "audiofolder"}
    assert "[data] channel train: nemo, 48 utterances" in proc.stdout
    assert "[data] channel test: audiofolder, 12 utterances" in proc.stdout
    assert m["train_audio_seconds"] == pytest.approx(sum(r["duration"] for r in lines), abs=0.01)
    assert m["cer"] is not None


def test_bom_crlf_quoted_csv_with_column_options_and_the_ctc_length_filter(tmp_path, synthetic_data, micro):
    split = tmp_path / "csv"
    (split / "wavs").mkdir(parents=True)
    rows = rows_of(synthetic_data / "train")
    for r in rows:
        shutil.copy(synthetic_data / "train" / r["audio"], split / "wavs")
    with (split / "manifest.csv").open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
        w.writerow(["speaker", "wav", "sentence"])
        for r in rows:
            w.writerow(["a, b", f"wavs/{os.path.basename(r['audio'])}", f'{r["text"]}, "quoted"'])
        # A few seconds of audio cannot carry 400 characters: CTC could not align them, so it is dropped up front.
        w.writerow(["c", f"wavs/{os.path.basename(rows[0]['audio'])}", "x" * 400])
    opt = make_opt_ml(tmp_path / "opt", {"train": split, "model": micro},
                      {**FAST, "audio_column": "wav", "text_column": "sentence", "test_split": "0.25"})
    proc = run_train(opt)
    assert_ok(proc)
    m = metrics(opt)
    assert m["formats"] == {"train": "manifest.csv"}
    assert "[data] channel train: manifest.csv, 49 utterances" in proc.stdout
    assert m["dropped"]["train"]["too_few_frames_for_transcript"] == 1
    assert "dropped 1 too_few_frames_for_transcript" in proc.stdout
    vocab = json.loads((opt / "model" / "vocab.json").read_text())
    assert '"' not in vocab and "," not in vocab and "x" in vocab  # quotes parsed, punctuation ignored
    assert m["cer"] is not None
