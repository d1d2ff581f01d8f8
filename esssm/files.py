"""Atomic file writes: every file the project writes goes through here, so a crash, a full disk
or a failed check never leaves a half-written file where a good one stood."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> int:
    """Run write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file is in the same folder, so the rename never crosses filesystems (TMPDIR
    plays no part) and readers see the old file or the new one, never a mix. If `write` or the
    rename fails, the temporary file is removed and `path` is untouched. Returns the new size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; this name is unique per process.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path.stat().st_size


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` atomically (see atomic_write)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> int:
    """Write `text` (UTF-8) to `path` atomically (see atomic_write)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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
