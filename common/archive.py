"""Unpacking tar archives (model.tar.gz) without letting them write outside their folder.

SageMaker hands a channel the S3 object it was given; the model.tar.gz of an earlier job arrives as that one
file. An archive is untrusted input: a member may be named `../x` or `/etc/x`, or be a symbolic or hard link
through which a later member writes elsewhere, or a device file. `unpack` refuses the whole archive when any
member is not a plain file or folder inside the target, before writing anything, then extracts with Python's
own "data" filter (tarfile.data_filter, Python >= 3.11.4) as a second guard.
"""
from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ArchiveError(ValueError):
    """The archive cannot be unpacked safely or at all; the message names the member and the reason."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ArchiveError(f"member {name!r} would be written outside the target folder")
    if member.issym() or member.islnk():
        raise ArchiveError(f"member {name!r} is a {'symbolic' if member.issym() else 'hard'} link to "
                           f"{member.linkname!r}; links are not accepted")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"member {name!r} is not a regular file or folder (device, FIFO or other special file)")


def unpack(archive: Path, target: Path) -> list[str]:
    """Extract `archive` (tar, optionally gzip/bz2/xz-compressed) into `target` (created if needed).

    Returns the member names. Raises ArchiveError, writing nothing, when a member is absolute, climbs out
    with `..`, is a link or a special file, or when the file is not a readable tar archive.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):  # the data filter's own refusal (should not pass our checks)
            raise ArchiveError(f"refused by tarfile's data filter: {exc}") from None
        raise ArchiveError(f"cannot read {archive.name} as a tar archive: {exc}") from None
    return [m.name for m in members]
