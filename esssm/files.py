"""Atomic file writes: every file the project writes goes through here, so a crash, a full disk
or a failed check never leaves a half-written file where a good one stood.

Checkpoints and exports also get a sha256 sidecar (`<file>.sha256`, `sha256sum` format) that
loaders compare against, so a file damaged after it was written is refused, not evaluated.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".sha256"


class ChecksumError(ValueError):
    """A file does not match the sha256 recorded beside it."""


def atomic_write(
    path: str | Path,
    write: Callable[[str], Any],
    check: Callable[[str], Any] | None = None,
    checksum: bool = False,
    sync: bool = True,
) -> int:
    """Run write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file is in the same folder, so the rename never crosses filesystems (TMPDIR
    plays no part) and readers see the old file or the new one, never a mix. `check(tmp)` runs
    on the finished temporary file before the rename: if it raises, `path` keeps its old
    content. checksum=True also writes `path`.sha256 (its temporary file is complete before
    either rename). If anything fails, the temporary files are removed, `path` is untouched and
    the error names `path`. sync=False skips the fsyncs, for many small files that the caller
    makes durable with one os.sync() before writing the index that lists them. Returns the new size.
    """
    path = Path(path)
    # Not mkstemp: its 0600 mode would survive the rename; these names are unique per process.
    tmp = _temporary_name(path)
    sidecar_tmp = _temporary_name(sidecar_path(path)) if checksum else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
        except RuntimeError as error:  # torch.save's C++ writer reports a full disk this way
            raise RuntimeError(f"could not write {path}: {error}{_low_space_note(path.parent)}") from error
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        if sidecar_tmp is not None:
            _write_synced(sidecar_tmp, sidecar_text(tmp, path.name))
        os.replace(tmp, path)
        if sidecar_tmp is not None:
            os.replace(sidecar_tmp, sidecar_path(path))
    except OSError as error:
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error
    finally:
        for name in (tmp, sidecar_tmp):
            if name is not None and os.path.exists(name):
                os.unlink(name)
    if sync:
        _fsync_dir(path.parent)
    return path.stat().st_size


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` atomically (see atomic_write)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> int:
    """Write `text` (UTF-8) to `path` atomically (see atomic_write)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sidecar_path(path: str | Path) -> Path:
    """Where the sha256 of `path` is kept: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_text(path: str | Path, name: str) -> str:
    """`sha256sum` line for the file at `path`, recorded under `name`."""
    return f"{file_sha256(path)}  {name}\n"


def verify_checksum(path: str | Path) -> str | None:
    """Compare `path` with its sidecar; returns the sha256, or None when there is no sidecar.

    Raises ChecksumError naming the file when the bytes differ from what was written.
    """
    path, sidecar = Path(path), sidecar_path(path)
    if not sidecar.is_file():
        return None
    recorded = sidecar.read_text().split()
    actual = file_sha256(path)
    if not recorded or recorded[0] != actual:
        raise ChecksumError(
            f"{path} fails its checksum: sha256 {actual} differs from {recorded[:1]} recorded in {sidecar} "
            "when it was written, so the file was damaged or replaced since; restore it from a copy "
            "(or delete the .sha256 file only if you know the new content is right)"
        )
    return actual


def remove_with_sidecar(path: str | Path) -> None:
    """Delete a file and its sha256 sidecar (missing ones are fine)."""
    for name in (Path(path), sidecar_path(path)):
        name.unlink(missing_ok=True)


def _low_space_note(folder: Path, low: int = 64 * 2**20) -> str:
    """A hint for write errors that do not say "no space" themselves (torch.save's writer)."""
    free = shutil.disk_usage(folder).free
    return f" (only {free / 2**20:.2f} MiB free there: is the disk full?)" if free < low else ""


def _temporary_name(path: Path) -> str:
    return str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))


def _write_synced(name: str, text: str) -> None:
    with open(name, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write `rows` (dicts sharing the first row's keys) as a CSV with a header, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
