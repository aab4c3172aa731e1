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
    Temp files are named ``.<name>.<random>.tmp``. Missing folders above ``path`` are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = write_temp(path, data, mode)
    try:
        if before_rename is not None:
            before_rename(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    commit_temp(temp, path)


def write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` completely (fsynced) into a temp file beside ``path``, not yet renamed.

    Split from the rename so that a caller can do every write that may fail (a full disk) before
    it changes anything, then finish with renames only. Nothing is left behind on failure.
    ``path``'s folder must exist: the state file may be a link into a folder that is not mounted
    now, and creating that folder would start a second, empty state where the real one belongs.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Path(temp)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode`` and write ``data`` completely."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow a 0600 key or a 0644 config
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written; a short write is not an error, ENOSPC is."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def commit_temp(temp: Path, path: Path) -> None:
    """Rename a finished ``write_temp`` file over ``path`` and make the rename durable."""
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
