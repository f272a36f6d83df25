"""Segment files: the exact bytes of accepted batches, appended and fsynced before acknowledgement.

Each writer (one per gateway process) appends to segment files of its own, named
``<writer-id>-<n>.cvseg``, so processes never interleave writes and need no lock. A segment is a plain
concatenation of batch envelopes (self-delimiting, see ``carvault.protocol``); the metadata DB maps each
batch to (segment, offset, length). Bytes written but never indexed (a crash between the fsync and the
DB commit) are unreferenced and harmless.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from carvault.errors import Unavailable


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends batches to this process's own segment files."""

    def __init__(self, directory: Path, max_bytes: int, writer_id: str | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.max_bytes = max_bytes
        self._n = 0
        self._fd: int | None = None
        self._name = ""
        self._size = 0
        self._lock = threading.Lock()

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._n += 1
        self._name = f"{self.writer_id}-{self._n:06d}.cvseg"
        self._fd = os.open(self.directory / self._name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = os.fstat(self._fd).st_size
        fsync_dir(self.directory)  # the new file's name must survive a crash too

    def append_many(self, blobs: Sequence[bytes]) -> list[tuple[str, int, int]]:
        """Append blobs durably (one write, one fsync); return (segment, offset, length) for each."""
        with self._lock:
            if self._fd is None or self._size >= self.max_bytes:
                self._roll()
            assert self._fd is not None
            locations = []
            offset = self._size
            for b in blobs:
                locations.append((self._name, offset, len(b)))
                offset += len(b)
            data = b"".join(blobs)
            try:
                written = os.write(self._fd, data)
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                os.fsync(self._fd)
            except OSError as e:
                # Whatever reached the file is unreferenced; start a fresh segment so offsets stay exact.
                self._fd = None
                raise Unavailable(f"cannot write batch segment: {e.strerror}") from None
            self._size = offset
            return locations

    def close(self) -> None:
        """Close the current segment."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SegmentReader:
    """Reads batch bytes back by location, from any process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            if "/" in name or name.startswith("."):
                raise Unavailable(f"bad segment name {name!r}")
            with self._lock:
                fd = self._fds.get(name)
                if fd is None:
                    fd = os.open(self.directory / name, os.O_RDONLY)
                    self._fds[name] = fd
        return fd

    def read(self, segment: str, offset: int, length: int) -> bytes:
        """The exact bytes of one batch."""
        data = os.pread(self._fd(segment), length, offset)
        if len(data) != length:
            raise Unavailable(f"segment {segment} is shorter than its index says")
        return data

    def close(self) -> None:
        """Close every open segment."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
