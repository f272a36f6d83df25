"""Segments: the exact bytes of accepted batches, durable in the blob store before acknowledgement.

Batches live under the ``segments/`` keys of the region's blob store; the metadata DB maps each batch to
(segment name, offset, length). How they get there depends on the backend:

- local (the embedded default, and the fastest durable path): each writer (one per gateway process) appends to
  segment files of its own, ``segments/<writer-id>-<n>.cvseg``, with one write and one fsync per group commit, so
  processes never interleave writes and need no lock; a file rolls over at ``segment_max_bytes``;
- object storage (S3): objects cannot be appended to, so each group commit is one immutable object,
  ``segments/<writer-id>-<n>.cvseg``, holding the group's envelopes one after another; the group is acknowledged
  only after the PUT succeeded, and reads are ranged GETs.

Either way a segment is a plain concatenation of batch envelopes (self-delimiting, see ``carvault.protocol``), a
failed write leaves nothing a reader could mistake for a batch, and bytes written but never indexed (a crash
between the write and the DB commit) are unreferenced and harmless. Erasing a batch zeroes its exact range, so
other batches' offsets never move (locally the range becomes a hole, ``fallocate`` PUNCH_HOLE, where the file
system can); on object storage the object is rewritten with the range zeroed, and deleted once nothing but zeros is
left in it.

Shared bytes (issue 12): once a batch's UTC day is closed, compaction (store/day_copies.py) moves the envelope's
payload — a Parquet file — out to its own blob, ``BatchRecord.payload_key``, the query copy of that batch. What the
segment keeps is the *skeleton*, the envelope without its payload: locally in place, the payload range punched out
(prefix · hole · signature, offsets unchanged); on object storage in an object of its own,
``segments/skel-<batch hash>.cvseg`` (prefix · signature), the row repointed to it. ``SegmentReader.envelope`` puts
the original envelope back together byte for byte whichever way it is stored; every reader of evidence goes
through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import struct
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from carvault.durable import fsync_dir
from carvault.errors import Unavailable
from carvault.protocol import MAGIC, SIGNATURE_LEN
from carvault.store.blobs import BlobNotFound, BlobStore

#: The key prefix of evidence in the blob store.
PREFIX = "segments/"
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_PARQUET = b"PAR1"  # a payload (a Parquet file, docs/protocol.md §2.2) starts and ends with it


class Located(Protocol):
    """Where a batch's bytes are: what the batch index row says (``BatchRecord`` and the read models built on it)."""

    segment: str
    offset: int
    length: int  # the whole envelope's length, wherever its payload is
    payload_key: str | None


def skeleton_name(batch_hash: str) -> str:
    """The segment (object storage) holding a compacted batch's skeleton: one name per batch, so replicas agree."""
    return f"skel-{batch_hash}.cvseg"


def is_skeleton(segment: str) -> bool:
    """Whether a segment is a compacted batch's skeleton object (``skeleton_name``), not a group of envelopes."""
    return segment.startswith("skel-")


def payload_range(prefix: bytes) -> tuple[int, int]:
    """(offset within the envelope, length) of the payload, from the envelope's first ``8 + H + 8`` bytes."""
    if len(prefix) < 16 or prefix[:4] != MAGIC:
        raise Unavailable("a stored batch does not start like an envelope")
    (hlen,) = struct.unpack_from(">I", prefix, 4)
    if len(prefix) < 16 + hlen:
        raise Unavailable("a stored batch's header is cut short")
    (plen,) = struct.unpack_from(">Q", prefix, 8 + hlen)
    return 16 + hlen, plen


def _libc_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _libc_fallocate()


def punch(fd: int, offset: int, length: int) -> None:
    """Make a range of an open file read as zeros, freeing its whole blocks (a hole) where the file system can.

    The file keeps its size and every other byte its offset; where holes are not supported, zeros are written.
    """
    if length <= 0:
        return
    if _FALLOCATE is not None and _FALLOCATE(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    os.pwrite(fd, bytes(length), offset)


def _folder(blobs: BlobStore) -> Path | None:
    """The local folder holding the segment files, or None when the store is not a folder on this machine."""
    path = blobs.local_path(PREFIX + "x")
    return path.parent if path is not None else None


def _writer_id(writer_id: str | None) -> str:
    """This writer's name in segment keys: host, process and a random part (a well-formed blob key part)."""
    host = "".join(c if c.isascii() and c.isalnum() or c in ".-" else "-" for c in os.uname().nodename)
    return writer_id or f"h{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def zero_ranges(path: Path, ranges: Sequence[tuple[int, int]]) -> int:
    """Make (offset, length) ranges of a file zeros in place (holes where possible), then fsync once; return the bytes.

    In place, so other batches' offsets never move. A file already gone counts nothing.
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return 0
    try:
        for offset, length in ranges:
            punch(fd, offset, length)
        os.fsync(fd)
    finally:
        os.close(fd)
    return sum(length for _, length in ranges)


class SegmentWriter:
    """Appends batches durably to this process's own segments (files locally, one object per group on S3)."""

    def __init__(self, blobs: BlobStore, max_bytes: int, writer_id: str | None = None) -> None:
        self.blobs = blobs
        folder = _folder(blobs)
        self.writer_id = _writer_id(writer_id)
        if folder is None:
            self._appender: _FileAppender | _ObjectAppender = _ObjectAppender(blobs, self.writer_id)
        else:
            self._appender = _FileAppender(folder, max_bytes, self.writer_id)

    @property
    def directory(self) -> Path | None:
        """The local folder of the segment files (None on object storage)."""
        return self._appender.directory

    def append_many(self, blobs: Sequence[bytes]) -> list[tuple[str, int, int]]:
        """Store blobs durably together; return (segment, offset, length) for each. Unavailable stores nothing."""
        return self._appender.append_many(blobs)

    def close(self) -> None:
        """Close the current segment file."""
        self._appender.close()


class _ObjectAppender:
    """One immutable object per group commit."""

    directory = None

    def __init__(self, blobs: BlobStore, writer_id: str) -> None:
        self.blobs = blobs
        self.writer_id = writer_id
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def append_many(self, blobs: Sequence[bytes]) -> list[tuple[str, int, int]]:
        """One PUT of the whole group; the locations only once it was acknowledged."""
        with self._lock:
            name = f"{self.writer_id}-{next(self._n):09d}.cvseg"
        locations, offset = [], 0
        for b in blobs:
            locations.append((name, offset, len(b)))
            offset += len(b)
        self.blobs.put(PREFIX + name, b"".join(blobs))  # Unavailable when not stored: nothing to undo
        return locations

    def close(self) -> None:
        """Nothing open between groups."""


class _FileAppender:
    """Appends to this process's own segment files: one write and one fsync per group."""

    def __init__(self, directory: Path, max_bytes: int, writer_id: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id
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
    """Reads batch bytes back by location, from any process; erases batches in place."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.directory = _folder(blobs)  # None on object storage
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check(name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise Unavailable(f"bad segment name {name!r}")

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            self._check(name)
            assert self.directory is not None
            with self._lock:
                fd = self._fds.get(name)
                if fd is None:
                    fd = os.open(self.directory / name, os.O_RDONLY)
                    self._fds[name] = fd
        return fd

    def read(self, segment: str, offset: int, length: int) -> bytes:
        """The exact bytes of one batch (a ``pread`` of the file, or a ranged GET)."""
        if self.directory is None:
            self._check(segment)
            try:
                return self.blobs.get_range(PREFIX + segment, offset, length)
            except BlobNotFound:
                raise Unavailable(f"segment {segment} is missing from the blob store") from None
        data = os.pread(self._fd(segment), length, offset)
        if len(data) != length:
            raise Unavailable(f"segment {segment} is shorter than its index says")
        return data

    def envelope(self, rec: Located) -> bytes:
        """The exact envelope of one batch as the car (or region) signed it, wherever its payload lives now.

        The one function that reads evidence: incident packages, portability bundles, verification, completeness,
        retention, frames and window reads all call it. Unavailable when the bytes cannot be read back whole.
        """
        if rec.payload_key is None:
            data = self.read(rec.segment, rec.offset, rec.length)
            start, plen = payload_range(data[: 16 + 65_536])
            if plen < 8 or data[start : start + 4] != _PARQUET or data[start + plen - 4 : start + plen] != _PARQUET:
                # Its payload was moved to its part (or the batch erased) after ``rec`` was read: never hand out
                # anything but the signed bytes.
                raise Unavailable(f"the batch in {rec.segment} moved while it was read; ask again")
            return data
        payload = self.payload(rec.payload_key)
        keep = rec.length - len(payload)  # the skeleton: prefix and signature
        if keep < 16 + SIGNATURE_LEN:
            raise Unavailable(f"payload {rec.payload_key} is longer than its batch")
        # The skeleton's layout follows from where it is, not from the backend reading it: segments move between
        # backends unchanged (``carvault copy-blobs``), so a segment file compacted in place may be read from S3
        # and a skeleton object from a folder.
        if is_skeleton(rec.segment):  # an object of its own: prefix · signature
            skeleton = self.read(rec.segment, rec.offset, keep)
            prefix, signature = skeleton[: keep - SIGNATURE_LEN], skeleton[keep - SIGNATURE_LEN :]
        else:  # compacted in place: prefix · reclaimed range · signature, offsets unchanged
            prefix = self.read(rec.segment, rec.offset, keep - SIGNATURE_LEN)
            signature = self.read(rec.segment, rec.offset + rec.length - SIGNATURE_LEN, SIGNATURE_LEN)
        start, plen = payload_range(prefix)
        if start != len(prefix) or plen != len(payload):
            raise Unavailable(f"the skeleton of the batch in {rec.segment} does not frame its payload")
        return b"".join((prefix, payload, signature))

    def payload(self, key: str) -> bytes:
        """The bytes of a payload part (a compacted batch's Parquet payload)."""
        try:
            return self.blobs.get(key)
        except BlobNotFound:
            raise Unavailable(f"payload {key} is missing from the blob store") from None

    def skeleton(self, rec: Located, envelope: bytes, batch_hash: str) -> tuple[str, int]:
        """Make the segment keep only the skeleton of ``envelope`` (its payload already durable in its part).

        Object storage: the skeleton is written to its own object (same name and bytes on every replica) and
        (segment, offset) of it returned for the row; locally nothing moves, the same place is returned and the
        payload range is reclaimed after the row names the part (``reclaim_range``).
        """
        if self.directory is not None:
            return rec.segment, rec.offset
        start, plen = payload_range(envelope[:65_600])
        name = skeleton_name(batch_hash)
        self.blobs.put(PREFIX + name, envelope[:start] + envelope[start + plen :])
        return name, 0

    def reclaim_range(self, rec: Located, envelope: bytes) -> tuple[str, int, int]:
        """The (segment, offset, length) to reclaim once a batch's row names its part instead of the old place."""
        if self.directory is not None:
            start, plen = payload_range(envelope[:65_600])
            return rec.segment, rec.offset + start, plen
        return rec.segment, rec.offset, rec.length

    def erase(self, segment: str, ranges: Sequence[tuple[int, int]]) -> int:
        """Overwrite (offset, length) ranges of one segment with zeros durably; return the bytes erased.

        Locally the file is zeroed in place and fsynced once (other batches' offsets never move); on object
        storage the object is rewritten with the ranges zeroed (conditionally, so concurrent erasures of other
        batches in it are never lost) and deleted once it holds nothing but zeros. A segment already gone
        counts nothing. OSError or Unavailable when the erasure could not be made durable.
        """
        self._check(segment)
        if self.directory is not None:
            return zero_ranges(self.directory / segment, ranges)
        update = getattr(self.blobs, "update", None)
        if update is None:
            raise Unavailable(f"the {self.blobs.kind} blob store cannot erase part of a segment")

        def zeroed(old: bytes) -> bytes | None:
            buf = bytearray(old)
            for offset, length in ranges:
                end = min(offset + length, len(buf))
                if offset < end:
                    buf[offset:end] = bytes(end - offset)
            return None if not buf.strip(b"\0") else bytes(buf)

        found = update(PREFIX + segment, zeroed)
        return sum(length for _, length in ranges) if found else 0

    def close(self) -> None:
        """Close every open segment file."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
