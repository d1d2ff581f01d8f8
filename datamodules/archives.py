"""Archive extraction for every download (LRA release, Pathfinder, Speech Commands, CIFAR-10).

A downloaded archive is data, not instructions: each member is written below the destination
folder or not at all. A member is refused (UnsafeArchiveError, naming the archive and the
member, before anything of it is written) when its name is absolute or climbs out with "..",
when Python's "data" extraction filter refuses it, when it is not a regular file (links and
devices: the project's downloads hold only files and folders), or when its resolved target
lies outside the destination (a folder there that is a link elsewhere). Files are written
atomically, so an interrupted extraction leaves no half-written file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from esssm.files import atomic_write

# Maps a member's path (without a leading "./") to its path below the destination, or None to skip it.
Rename = Callable[[str], str | None]


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the destination folder, or is no plain file."""


def same_name(name: str) -> str:
    """The default Rename: every member keeps its own path."""
    return name


def checked_target(member: tarfile.TarInfo, name: str, destination: Path, source: str) -> Path:
    """destination/name, where `member` of the archive `source` is to be written as `name`;
    UnsafeArchiveError unless that is a plain file inside destination (see the module text)."""
    where = f"{source}: member {member.name!r}"
    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or ".." in parts:
        raise UnsafeArchiveError(f"{where} would be written to {name!r}, which is not a path inside {destination}")
    try:
        tarfile.data_filter(member.replace(name=name, deep=False), str(destination))
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(f"{where} is refused by the 'data' extraction filter: {error}") from None
    if not member.isfile():
        kind = f"a link to {member.linkname!r}" if member.issym() or member.islnk() else "a special file"
        raise UnsafeArchiveError(
            f"{where} is {kind}; the downloads hold only files and folders, so this archive is not the expected one"
        )
    target = destination / name
    if not target.resolve().is_relative_to(destination.resolve()):
        raise UnsafeArchiveError(f"{where} would be written to {target.resolve()}, outside {destination}")
    return target


def tar_files(
    archive: tarfile.TarFile, destination: Path, source: str, rename: Rename = same_name
) -> Iterator[tuple[Path, IO[bytes]]]:
    """(checked target, readable member) for each member that `rename` keeps, in archive order,
    so a streamed archive ("r|gz") is read once; folders are skipped (made as files need them)."""
    for member in archive:
        name = rename(member.name.removeprefix("./"))
        if name is None or member.isdir():
            continue
        target = checked_target(member, name, destination, source)
        yield target, archive.extractfile(member)


def write_member(target: Path, file: IO[bytes]) -> None:
    """Copy an archive member to `target` atomically, without an fsync (extract_tar syncs once)."""
    atomic_write(target, partial(_copy, file), sync=False)


def extract_tar(archive: tarfile.TarFile, destination: Path, source: str, rename: Rename = same_name) -> int:
    """Write the members `rename` keeps below destination (see `tar_files`); returns how many."""
    count = 0
    for target, file in tar_files(archive, destination, source, rename):
        write_member(target, file)
        count += 1
    os.sync()
    return count


def extract_tar_file(path: Path, destination: Path) -> int:
    """`extract_tar` of every member of the archive file at `path` (any compression tarfile reads)."""
    with tarfile.open(path) as archive:
        return extract_tar(archive, destination, str(path))


def _copy(file: IO[bytes], tmp: str) -> None:
    with open(tmp, "wb") as out:
        shutil.copyfileobj(file, out)
