"""The `model` channel as users fill it: a save_pretrained folder, one folder inside, or an earlier job's
model.tar.gz (unpacked once; hostile archives refused before anything is written)."""
from __future__ import annotations

import io
import tarfile

import pytest

from common.archive import ArchiveError, unpack
from train import model_channel
from train.failure import TrainingError


def model_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def tar_of(path, members):
    """members: (name, bytes | None for a folder | ("sym"|"hard"|"fifo", target))."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, tuple):
                kind, target = content
                info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def test_a_save_pretrained_folder_or_one_folder_inside_is_used_as_is(tmp_path):
    direct = model_files(tmp_path / "a")
    assert model_channel.resolve(direct, tmp_path / "u", log=lambda _: None) == direct
    nested = model_files(tmp_path / "b" / "my-model")
    assert model_channel.resolve(tmp_path / "b", tmp_path / "u", log=lambda _: None) == nested


def test_model_tar_gz_is_unpacked_once(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    tar_of(channel / "model.tar.gz", [("config.json", b"{}"), ("model.safetensors", b"w"), ("vocab.json", b"{}")])
    seen = []
    target = tmp_path / "unpacked" / "model"
    assert model_channel.resolve(channel, target, log=seen.append) == target
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == \
        ["config.json", "model.safetensors", "vocab.json"]
    (target / "config.json").write_text('{"kept": true}')
    assert model_channel.resolve(channel, target, log=seen.append) == target  # reused, not unpacked again
    assert (target / "config.json").read_text() == '{"kept": true}' and len(seen) == 1


def test_tar_with_a_top_folder(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    tar_of(channel / "model.tar.gz", [("export/", None), ("export/config.json", b"{}")])
    assert model_channel.resolve(channel, tmp_path / "u", log=lambda _: None) == tmp_path / "u" / "export"


@pytest.mark.parametrize("members,problem", [
    ([("../evil.txt", b"x")], "outside the target"),
    ([("/etc/evil.txt", b"x")], "outside the target"),
    ([("a/../../evil.txt", b"x")], "outside the target"),
    ([("config.json", ("sym", "/etc/passwd"))], "symbolic link"),
    ([("dir", ("sym", "/tmp")), ("dir/x", b"x")], "symbolic link"),
    ([("config.json", b"{}"), ("copy.json", ("hard", "config.json"))], "hard link"),
    ([("pipe", ("fifo", ""))], "not a regular file"),
])
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, members, problem):
    archive = tar_of(tmp_path / "model.tar.gz", [("ok.txt", b"fine"), *members])
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match=problem):
        unpack(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_hostile_model_channel_fails_the_job_with_the_reason(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    tar_of(channel / "model.tar.gz", [("config.json", ("sym", "/etc/passwd"))])
    with pytest.raises(TrainingError, match=r"^channel model: refusing to unpack model.tar.gz: member 'config.json' "
                                            r"is a symbolic link"):
        model_channel.resolve(channel, tmp_path / "u", log=lambda _: None)
    assert not (tmp_path / "u").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(ArchiveError, match="cannot read model.tar.gz as a tar archive"):
        unpack(tmp_path / "model.tar.gz", tmp_path / "out")
