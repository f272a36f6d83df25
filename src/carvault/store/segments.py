"""Segment files: the exact bytes of accepted batches, appended and fsynced before acknowledgement.

Each writer (one per gateway process) appends to segment files of its own, named
``<writer-id>-<n>.cvseg``, so processes never interleave writes and need no lock. A segment is a plain
concatenation of batch envelopes (self-delimiting, see ``carvault.protocol``); the metadata DB maps each
batch to (segment, offset, length). Bytes written but never indexed (a crash between the fsync and the
DB commit) are unreferenced and harmless.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from carvault.durable import fsync_dir
from carvault.errors import Unavailable


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
        self._drop()
        self._n += 1
        name = f"{self.writer_id}-{self._n:06d}.cvseg"
        try:
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as e:
            raise Unavailable(f"cannot create batch segment: {e.strerror}") from None
        self._fd, self._name, self._size = fd, name, os.fstat(fd).st_size
        try:
            fsync_dir(self.directory)  # the new file's name must survive a crash too
        except OSError as e:
            self._drop()
            raise Unavailable(f"cannot create batch segment: {e.strerror}") from None

    def _drop(self) -> None:
        """Close the current segment, removing it if it holds nothing (a refused first write leaves no file)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        if self._size == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / self._name)

    def _write(self, data: bytes) -> None:
        """Write and fsync ``data``; on failure cut the segment back to its last good size, or drop it."""
        assert self._fd is not None
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as e:
            # Offsets must stay exact: cut off whatever reached the file (freeing it, too). A segment left empty
            # is removed, and if the cut fails this segment is closed and the next write starts a fresh one.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._size = -1  # unknown content: keep the file, never reuse it
            if self._size <= 0:
                self._drop()
            raise Unavailable(f"cannot write batch segment: {e.strerror}") from None

    def append_many(self, blobs: Sequence[bytes]) -> list[tuple[str, int, int]]:
        """Append blobs durably (one write, one fsync); return (segment, offset, length) for each."""
        with self._lock:
            if self._fd is None or self._size >= self.max_bytes:
                self._roll()
            locations = []
            offset = self._size
            for b in blobs:
                locations.append((self._name, offset, len(b)))
                offset += len(b)
            self._write(b"".join(blobs))
            self._size = offset
            return locations

    def close(self) -> None:
        """Close the current segment."""
        with self._lock:
            self._drop()


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
