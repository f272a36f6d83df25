"""Crash-safe file writing shared by the car's spool, the segment store and the log (no other dependencies)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write a file so that it is complete or absent after a crash (temporary name, fsync, rename, fsync folder).

    The temporary name is unique per process and thread, so writers racing for the same path never share one;
    on any error it is removed and the error raised.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_exclusively(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` (durable, ``mode``) unless it exists; False if another process won the race.

    For keys made on first use by whichever process starts first: the file appears whole or not at all
    (written under a unique temporary name, then hard-linked into place, which fails if the name is taken).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True
