"""The region transparency log: an append-only RFC 9162 Merkle tree persisted in a local directory.

Files (docs/transparency-log.md is the full description)::

    meta.json   format name and origin, written once when the directory is created
    nodes       every complete-subtree hash, 32 bytes each, in post-order
    size        the committed tree size: two checksummed 32-byte slots at offsets 0 and 4096
    lock        an empty file; ``fcntl.flock`` on it serialises appenders across processes

``nodes`` holds the hash of every complete aligned subtree (the leaf hashes at level 0 and every
interior node at level k covering leaves [j·2^k, (j+1)·2^k)) in *post-order*: each node follows its
right child. In that order a tree of n leaves is exactly the first 2n − popcount(n) records, so
appending is a strictly sequential write at the end of one file and the node (k, j) lives at record
``2m − popcount(m) + k`` with ``m = (j+1)·2^k − 1``. One file means one ``fdatasync`` per append
(level-per-file layouts pay one per level), and any proof or root reads O(log n) records.

Durability and crash safety: an append writes its records past the committed end, ``fdatasync``s
them, and only then writes the new size into the slot *not* holding the current size and
``fdatasync``s that. The size is acknowledged only after both. On open and before every append the
committed size is re-read under the lock and anything in ``nodes`` beyond it (a torn or unacknowledged
tail from a killed writer) is truncated; a torn slot write fails its checksum and the other slot,
which holds the previous committed size, wins. Committed records are never rewritten, so readers
need no lock: they read the committed size, then records below it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from carvault.durable import fsync_dir
from carvault.errors import CarVaultError, InvalidQuery
from carvault.ledger import merkle
from carvault.ledger.checkpoint import checkpoint_body, format_vkey, sign_checkpoint
from carvault.ledger.merkle import EMPTY_ROOT, HASH_SIZE, VerificationError

__all__ = ["FORMAT", "LogError", "MerkleLog", "TransparencyLog", "node_count", "node_position"]

FORMAT = "carvault-tlog-v1"
_SLOT = struct.Struct("<4sIQ16s")  # magic, format version, tree size, truncated SHA-256 of the first 16 bytes
_SLOT_MAGIC = b"CVTS"
_SLOT_VERSION = 1
# Separate 4 KiB pages, so a torn write of one slot can never damage the other.
_SLOT_OFFSETS = (0, 4096)
_SIZE_FILE_LEN = 8192
_CHECK_CHUNK_LEAVES = 1 << 16
_LOG = logging.getLogger("carvault.ledger.log")


class LogError(CarVaultError):
    """The log is misconfigured, its directory belongs to another log, or its files contradict each other."""

    code = "log_error"
    status = 500


def node_count(size: int) -> int:
    """How many records ``nodes`` holds for a tree of ``size`` leaves: 2·size − popcount(size)."""
    return 2 * size - size.bit_count()


def node_position(level: int, index: int) -> int:
    """The record number in ``nodes`` of the complete subtree (level, index)."""
    last_leaf = ((index + 1) << level) - 1
    return node_count(last_leaf) + level


def _pack_slot(size: int) -> bytes:
    head = struct.pack("<4sIQ", _SLOT_MAGIC, _SLOT_VERSION, size)
    return head + hashlib.sha256(head).digest()[:16]


def _unpack_slot(raw: bytes) -> int | None:
    if len(raw) != _SLOT.size:
        return None
    magic, version, size, check = _SLOT.unpack(raw)
    if magic != _SLOT_MAGIC or version != _SLOT_VERSION or hashlib.sha256(raw[:16]).digest()[:16] != check:
        return None
    return int(size)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _encode_appended(stack: list[tuple[int, bytes]], leaf_hashes: Sequence[bytes]) -> bytes:
    """The post-order records that follow a tree whose right-edge peaks are ``stack``; updates ``stack``."""
    sha256 = hashlib.sha256
    out: list[bytes] = []
    emit = out.append
    for h in leaf_hashes:
        emit(h)
        level = 0
        # A binary-counter carry: each completed pair becomes its parent, written right after it.
        while stack and stack[-1][0] == level:
            h = sha256(b"\x01" + stack.pop()[1] + h).digest()
            level += 1
            emit(h)
        stack.append((level, h))
    return b"".join(out)


class _Request:
    """One caller's pending append: its leaf hashes, then its first index or the error."""

    __slots__ = ("done", "error", "first", "hashes")

    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes = hashes
        self.first = -1
        self.done = False
        self.error: BaseException | None = None


class MerkleLog:
    """What every log backend shares: proofs, roots, checkpoints and tiles from stored complete-subtree hashes.

    A backend provides ``size`` (the committed leaf count), ``_node(level, index)`` (one stored hash),
    ``_nodes(coords)`` (many at once) and ``append``; everything else is computed here.
    """

    origin: str
    key_name: str
    _private_key: Ed25519PrivateKey
    _vkey: str

    def _configure(self, origin: str, private_key: Ed25519PrivateKey, key_name: str) -> None:
        self.origin = origin
        self.key_name = key_name
        self._private_key = private_key
        # Called (with no argument) after every committed append: the tile publisher's wake-up; must not block.
        self.listeners: list[Callable[[], None]] = []
        # Fail at construction, not at the first checkpoint, if the origin or key name is unusable.
        try:
            checkpoint_body(origin, 0, EMPTY_ROOT)
            self._vkey = format_vkey(key_name, private_key.public_key())
        except VerificationError as exc:
            raise LogError(
                f"invalid log configuration: {exc.message}",
                origin=origin,
                key_name=key_name,
            ) from exc

    @property
    def size(self) -> int:
        """The committed (acknowledged) number of leaves."""
        raise NotImplementedError

    def _appended(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a listener's trouble never fails an append that is committed
                _LOG.exception("log append listener failed")

    def _node(self, level: int, index: int) -> bytes:
        raise NotImplementedError

    def _nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        """Many stored hashes (level, index) at once; backends with round trips override this."""
        return [self._node(level, index) for level, index in coords]

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); O(log n) reads when ``start`` is aligned as RFC 9162's recursion makes it."""
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            if start % n == 0:
                return self._node(level, start >> level)
        k = 1 << ((n - 1).bit_length() - 1)
        return merkle.node_hash(self._mth(start, start + k), self._mth(start + k, end))

    @staticmethod
    def _peak_coords(size: int) -> list[tuple[int, int]]:
        coords = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                coords.append((level, start >> level))
                start += 1 << level
        return coords

    def _peaks(self, size: int) -> list[tuple[int, bytes]]:
        """The complete subtrees of a tree of ``size`` leaves, largest first, as (level, hash)."""
        coords = self._peak_coords(size)
        return [(level, h) for (level, _), h in zip(coords, self._nodes(coords), strict=True)]

    def _check_size(self, size: int | None, committed: int) -> int:
        if size is None:
            return committed
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= committed:
            raise InvalidQuery("tree size out of range", size=size, log_size=committed)
        return size

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The log's Ed25519 public key."""
        return self._private_key.public_key()

    @property
    def vkey(self) -> str:
        """The verifier key string that owners configure to check checkpoints."""
        return self._vkey

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: the committed size)."""
        return self._root(self._check_size(size, self.size))

    def _root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves, ``size`` already checked against the committed size."""
        if size == 0:
            return EMPTY_ROOT
        peaks = self._peaks(size)
        root = peaks[-1][1]
        for _, h in reversed(peaks[:-1]):
            root = merkle.node_hash(h, root)
        return root

    def leaf_hash(self, index: int) -> bytes:
        """The stored hash of leaf ``index``."""
        committed = self.size
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < committed:
            raise InvalidQuery("leaf index out of range", index=index, log_size=committed)
        return self._node(0, index)

    def subtree_hashes(self, level: int, first: int, count: int, *, committed: int | None = None) -> list[bytes]:
        """The stored hashes of ``count`` consecutive complete subtrees of height ``level`` from ``first``.

        Each must lie inside the committed tree (a tile's hashes); InvalidQuery otherwise. ``committed`` is a size
        the caller read from this log moments ago (a log only grows, so what lies inside it stays committed):
        given, the size is not read again (the tile publisher reads it once per publication, not once per tile).
        """
        within = self.size if committed is None else committed
        if level < 0 or first < 0 or count < 0 or (first + count) << level > within:
            raise InvalidQuery("subtrees outside the committed tree", level=level, first=first, count=count)
        return self._nodes([(level, first + i) for i in range(count)])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves (default: current)."""
        size = self._check_size(size, self.size)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            raise InvalidQuery("leaf index out of range", index=index, tree_size=size)
        return merkle.inclusion_proof(self._mth, index, size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of ``old`` leaves to ``new`` (default: current)."""
        new = self._check_size(new, self.size)
        if not isinstance(old, int) or isinstance(old, bool) or not 0 <= old <= new:
            raise InvalidQuery("old tree size out of range", old=old, new=new)
        return merkle.consistency_proof(self._mth, old, new)

    def checkpoint(self, size: int | None = None) -> str:
        """A signed C2SP checkpoint for ``size`` leaves (default: the current committed size)."""
        size = self._check_size(size, self.size)  # the committed size read once (a query on PostgreSQL)
        return sign_checkpoint(self.origin, size, self._root(size), self._private_key, self.key_name)


class TransparencyLog(MerkleLog):
    """One region's append-only Merkle log in ``directory``; safe for many threads and processes."""

    def __init__(
        self,
        directory: Path | str,
        origin: str,
        private_key: Ed25519PrivateKey,
        key_name: str,
    ) -> None:
        self.directory = Path(directory)
        self._configure(origin, private_key, key_name)
        # flock excludes other open files (other processes, other instances); threads share ours, so
        # appends within this object are serialised by _cond/_writing below.
        self._cond = threading.Condition()
        self._writing = False
        self._queue: list[_Request] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._nodes_fd = -1
        self._size_fd = -1
        try:
            with self._exclusive():
                self._open_files()
                self._truncate_tail(self._committed()[0])
        except BaseException:
            self.close()
            raise

    # -- files ---------------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open_files(self) -> None:
        meta_path = self.directory / "meta.json"
        nodes_path = self.directory / "nodes"
        size_path = self.directory / "size"
        fresh = not meta_path.exists()
        # Records are only written once meta.json exists, so without it any data means a damaged log,
        # never an interrupted initialisation: refuse rather than wipe it.
        has_records = nodes_path.exists() and nodes_path.stat().st_size > 0
        if fresh and (has_records or self._peek_size(size_path) > 0):
            raise LogError("log directory has data but no meta.json", directory=str(self.directory))
        self._nodes_fd = os.open(nodes_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._size_fd = os.open(size_path, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:
            # Initialise (or finish a crashed initialisation): empty tree in both slots, meta.json last,
            # so a directory with meta.json always has a valid size file.
            os.ftruncate(self._nodes_fd, 0)
            os.ftruncate(self._size_fd, _SIZE_FILE_LEN)
            for offset in _SLOT_OFFSETS:
                _pwrite_all(self._size_fd, _pack_slot(0), offset)
            os.fsync(self._size_fd)
            os.fsync(self._nodes_fd)
            meta = {"format": FORMAT, "origin": self.origin, "hash": "sha256", "layout": "post-order"}
            tmp = self.directory / "meta.json.tmp"
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, meta_path)
            fsync_dir(self.directory)
            return
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise LogError("unreadable meta.json", directory=str(self.directory)) from exc
        if meta.get("format") != FORMAT:
            raise LogError("unknown log format", expected=FORMAT, actual=meta.get("format"))
        if meta.get("origin") != self.origin:
            raise LogError(
                "log directory belongs to another origin",
                expected=self.origin,
                actual=meta.get("origin"),
            )

    @staticmethod
    def _peek_size(size_path: Path) -> int:
        try:
            raw = size_path.read_bytes()
        except OSError:
            return 0
        sizes = [_unpack_slot(raw[o : o + _SLOT.size]) for o in _SLOT_OFFSETS]
        return max((s for s in sizes if s is not None), default=0)

    def _committed(self) -> tuple[int, int]:
        """(committed size, slot holding it); valid without the lock because slots are checksummed."""
        best: tuple[int, int] | None = None
        for slot, offset in enumerate(_SLOT_OFFSETS):
            size = _unpack_slot(os.pread(self._size_fd, _SLOT.size, offset))
            if size is not None and (best is None or size > best[0]):
                best = (size, slot)
        if best is None:
            raise LogError("no valid committed size in the size file", directory=str(self.directory))
        return best

    def _truncate_tail(self, size: int) -> None:
        want = node_count(size) * HASH_SIZE
        have = os.fstat(self._nodes_fd).st_size
        if have < want:
            raise LogError("nodes file is shorter than the committed size", expected=want, actual=have)
        if have > want:
            # An unacknowledged (possibly torn) tail from a writer that died before committing.
            os.ftruncate(self._nodes_fd, want)

    def _commit(self, new_size: int, current_slot: int) -> None:
        """Make ``new_size`` the committed size (caller holds the lock and has synced the records)."""
        # The other slot: if this write tears, the current one still holds the previous size.
        _pwrite_all(self._size_fd, _pack_slot(new_size), _SLOT_OFFSETS[1 - current_slot])
        os.fdatasync(self._size_fd)

    def _node(self, level: int, index: int) -> bytes:
        raw = os.pread(self._nodes_fd, HASH_SIZE, node_position(level, index) * HASH_SIZE)
        if len(raw) != HASH_SIZE:
            raise LogError("node record missing", expected=(level, index), actual=len(raw))
        return raw

    # -- public API ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The committed (acknowledged) number of leaves, as seen by any process."""
        return self._committed()[0]

    def append(self, entries: Sequence[bytes | bytearray | memoryview]) -> int:
        """Append many leaves (their data, hashed here); durable on return; returns the first index."""
        sha256 = hashlib.sha256
        for e in entries:
            if not isinstance(e, bytes | bytearray | memoryview):
                raise TypeError(f"log entries must be bytes, not {type(e).__name__}")
        request = _Request([sha256(b"\x00" + bytes(e)).digest() for e in entries])
        # Group commit: one thread at a time writes; requests queued meanwhile are written together by
        # the next writer with one pair of syncs, and their threads just wait to be told their index.
        leader = False
        with self._cond:
            self._queue.append(request)
            while self._writing and not request.done:
                self._cond.wait()
            if not request.done:
                leader, self._writing = True, True
                group, self._queue = self._queue, []
        if leader:
            try:
                self._write_group(group)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        self._appended()
        return request.first

    def _write_group(self, group: list[_Request]) -> None:
        """Write queued requests as one append (caller is the sole writer); each gets its index or error."""
        try:
            with self._exclusive():
                size, slot = self._committed()
                # Another process may have appended (or died mid-append) since we last looked.
                self._truncate_tail(size)
                first = size
                for request in group:
                    request.first = first
                    first += len(request.hashes)
                if first > size:
                    stack = self._peaks(size)
                    records = _encode_appended(stack, [h for r in group for h in r.hashes])
                    _pwrite_all(self._nodes_fd, records, node_count(size) * HASH_SIZE)
                    os.fdatasync(self._nodes_fd)
                    # Only now may the new size become visible: it must never point at records not on disk.
                    self._commit(first, slot)
        except BaseException as exc:
            for request in group:
                request.error = exc
        finally:
            for request in group:
                request.done = True

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Exclusive (across this machine's processes) right to publish tiles and checkpoints of this log."""
        fd = os.open(self.directory / "publish.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_integrity(self) -> int:
        """Recompute every stored node from the stored leaf hashes; raise LogError on a mismatch.

        O(n) time, O(1) memory in the log size; returns the number of leaves checked.
        """
        size = self.size
        stack: list[tuple[int, bytes]] = []
        for start in range(0, size, _CHECK_CHUNK_LEAVES):
            end = min(size, start + _CHECK_CHUNK_LEAVES)
            first, last = node_count(start), node_count(end)
            stored = os.pread(self._nodes_fd, (last - first) * HASH_SIZE, first * HASH_SIZE)
            leaves = [
                stored[(node_count(i) - first) * HASH_SIZE : (node_count(i) - first + 1) * HASH_SIZE]
                for i in range(start, end)
            ]
            expected = _encode_appended(stack, leaves)
            if expected != stored:
                offsets = range(0, len(expected), HASH_SIZE)
                bad = next(o for o in offsets if expected[o : o + HASH_SIZE] != stored[o : o + HASH_SIZE])
                raise LogError("stored node does not match its children", record=first + bad // HASH_SIZE)
        root = stack[-1][1] if stack else EMPTY_ROOT
        for _, h in reversed(stack[:-1]):
            root = merkle.node_hash(h, root)
        if root != self.root(size):
            raise LogError("root does not match the stored nodes", size=size)
        return size

    def close(self) -> None:
        """Close the log's files; the object is unusable afterwards."""
        for name in ("_nodes_fd", "_size_fd", "_lock_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TransparencyLog({str(self.directory)!r}, origin={self.origin!r})"
