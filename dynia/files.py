"""Writing files so that a crash never leaves a half-written one: state, keys, zones, config."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    path: Path,
    data: bytes,
    mode: int,
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """``path`` holds ``data`` with ``mode`` completely, or keeps what it held before.

    Temp file in the same folder (created with the final mode, so a key is never readable by
    others), fsync, rename, fsync of the folder so the rename itself survives a power cut.
    ``before_rename`` may adjust the finished temp file (e.g. its mtime) just before it appears.
    Temp files are named ``.<name>.<random>.tmp``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
