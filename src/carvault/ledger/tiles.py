"""The log published as C2SP ``tlog-tiles``: a checkpoint and hash tiles in the region's blob store.

https://c2sp.org/tlog-tiles serves a Merkle log as static files, so reads scale like static files:

- ``log/checkpoint`` — the latest signed checkpoint (C2SP ``tlog-checkpoint``, possibly cosigned by witnesses);
- ``log/tile/<L>/<N>`` — a *full* tile: the 256 consecutive Merkle tree hashes at tree height 8·L that cover
  leaves ``[N·256^(L+1), (N+1)·256^(L+1))``; immutable once written;
- ``log/tile/<L>/<N>.p/<W>`` — a *partial* tile of the ``W`` (1..255) hashes that exist at that level in a tree
  whose size a published checkpoint names.

``<N>`` is written in 3-digit groups, every group but the last prefixed with ``x`` (``1234067`` ->
``x001/x234/067``). Entry bundles (``tile/entries/…``) are not published: the log holds leaf hashes only, and
v1 leaves name the VIN in clear (docs/transparency-log.md, "What the tiles reveal").

Writing order makes a crash harmless: tiles first (their bytes depend only on the tree, so a rewrite by anyone
writes the same bytes), the checkpoint last, so a published checkpoint never names a tree whose tiles are
missing. ``TilePublisher`` runs off the append path: appends only wake it; it coalesces every append made
meanwhile into one publication, and on start (or ``repair``) re-creates tiles that are missing from the store.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from carvault.ledger.checkpoint import parse_checkpoint
from carvault.ledger.merkle import HASH_SIZE, VerificationError
from carvault.store.blobs import BlobNotFound, BlobStore

__all__ = [
    "CHECKPOINT_KEY",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TilePublisher",
    "latest_checkpoint",
    "parse_tile_path",
    "publish_checkpoint",
    "tile_path",
    "tiles_for",
]

PREFIX = "log/"
CHECKPOINT_KEY = "log/checkpoint"
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes per full tile
MAX_LEVEL = 63
_LOG = logging.getLogger("carvault.ledger.tiles")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")

_publish_lock = threading.Lock()  # one read-compare-write of log/checkpoint at a time within this process


def _checkpoint_size(note: str | bytes) -> int:
    return parse_checkpoint(note).size


def latest_checkpoint(blobs: BlobStore) -> str | None:
    """The checkpoint note published in ``blobs`` (``log/checkpoint``), or None before the first."""
    try:
        return blobs.get(CHECKPOINT_KEY).decode("utf-8")
    except BlobNotFound:
        return None


def publish_checkpoint(blobs: BlobStore, note: str, *, published: int | None = None) -> bool:
    """Write ``note`` as ``log/checkpoint`` unless the published one names a larger tree; True when written.

    A note of the same size replaces the published one (so a cosigned note replaces the log-signed note of its
    tree). The note must parse as a checkpoint; its signatures are the caller's business.

    ``published`` is the published tree size as the caller read it while holding the log's publishing lock (the
    tile publisher): no one can publish a larger tree meanwhile (a cosigned note is of a tree already published),
    so the store is not read again; the write still waits for any read-compare-write of this process to end.
    """
    size = _checkpoint_size(note)  # VerificationError on anything that is not a checkpoint
    with _publish_lock:
        if published is None:
            current = latest_checkpoint(blobs)
            if current is not None:
                try:
                    published = _checkpoint_size(current)
                except VerificationError:
                    _LOG.warning("replacing an unreadable published checkpoint")
        if published is not None and published > size:
            return False
        blobs.put(CHECKPOINT_KEY, note.encode("utf-8"))
    return True


def _encode_index(index: int) -> str:
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The tlog-tiles path (without prefix) of a hash tile, e.g. ``tile/0/x001/x234/067.p/8``."""
    if not 0 <= level <= MAX_LEVEL or index < 0 or not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"no tile at level {level}, index {index}, width {width}")
    path = f"tile/{level}/{_encode_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) of a tile path ``<L>/<N>[.p/<W>]`` (after ``tile/``); ValueError when malformed."""
    parts = path.split("/")
    width = TILE_WIDTH
    if len(parts) >= 3 and parts[-2].endswith(".p"):
        w = parts.pop()
        if not _DECIMAL.fullmatch(w) or not 1 <= int(w) < TILE_WIDTH:
            raise ValueError("partial tile width must be 1..255")
        width = int(w)
        parts[-1] = parts[-1][:-2]
    if len(parts) < 2 or not _DECIMAL.fullmatch(parts[0]) or int(parts[0]) > MAX_LEVEL:
        raise ValueError("tile level must be 0..63")
    groups = parts[1:]
    if not all(_GROUP.fullmatch(g) for g in groups[:-1]) or not _LAST.fullmatch(groups[-1]):
        raise ValueError("tile index must be 3-digit groups, all but the last prefixed with x")
    if len(groups) > 1 and groups[0] == "x000":
        raise ValueError("tile index has a leading zero group")
    index = int("".join(g.lstrip("x") for g in groups))
    return int(parts[0]), index, width


def tiles_for(size: int, since: int = 0) -> Iterator[tuple[int, int, int]]:
    """(level, index, width) of every tile a tree of ``size`` leaves has that a tree of ``since`` leaves lacks.

    Full tiles the old tree already had are skipped; partial tiles of the new size are always included.
    """
    level = 0
    while True:
        span = TILE_WIDTH**level  # leaves per hash at this level
        count, old_count = size // span, since // span  # hashes at this level in the new and old tree
        if count == 0:
            return
        for index in range(old_count // TILE_WIDTH, count // TILE_WIDTH):
            yield level, index, TILE_WIDTH
        if count % TILE_WIDTH:
            yield level, count // TILE_WIDTH, count % TILE_WIDTH
        level += 1


class TileSource(Protocol):
    """What publishing needs of a log: its size, stored subtree hashes and signed checkpoints."""

    @property
    def size(self) -> int: ...

    def subtree_hashes(self, level: int, first: int, count: int, *, committed: int | None = None) -> list[bytes]: ...

    def checkpoint(self, size: int | None = None) -> str: ...


def tile_bytes(log: TileSource, level: int, index: int, width: int, *, committed: int | None = None) -> bytes:
    """The bytes of a tile: hashes of the complete subtrees of height 8·level, ``width`` of them from the tile start.

    ``committed``: a size just read from the log, which the tile must lie within (else the log's size is read).
    """
    hashes = log.subtree_hashes(TILE_HEIGHT * level, index * TILE_WIDTH, width, committed=committed)
    data = b"".join(hashes)
    if len(data) != width * HASH_SIZE:
        raise ValueError(f"log returned {len(data)} bytes for tile {level}/{index} of width {width}")
    return data


def publish_tiles(blobs: BlobStore, log: TileSource, size: int, since: int = 0) -> int:
    """Write the tiles a tree of ``size`` leaves adds to one of ``since``; return how many were written.

    A partial tile whose full tile is now written is deleted (the spec allows it once the full tile exists).
    """
    written = 0
    for level, index, width in tiles_for(size, since):
        key = PREFIX + tile_path(level, index, width)
        blobs.put(key, tile_bytes(log, level, index, width, committed=size), durable=True)
        written += 1
        if width == TILE_WIDTH:
            blobs.delete_prefix(PREFIX + tile_path(level, index) + ".p/")
    return written


def missing_tiles(blobs: BlobStore, size: int) -> list[tuple[int, int, int]]:
    """The tiles a tree of ``size`` leaves needs (full tiles and its own partial tiles) that are not stored."""
    stored = set(blobs.list(PREFIX + "tile/"))
    return [t for t in tiles_for(size) if PREFIX + tile_path(*t) not in stored]


class TilePublisher:
    """Publishes the log's tiles and checkpoint in the background, coalescing appends made meanwhile.

    ``notify()`` is all an append does (no blob-store round trip on the acknowledged path). ``exclusive`` is
    an optional cross-process lock (the log backend's) so replicas do not publish interleaved checkpoints.
    """

    def __init__(
        self,
        log: TileSource,
        blobs: BlobStore,
        *,
        exclusive: Callable[[], AbstractContextManager[object]] | None = None,
        on_published: Callable[[str], None] | None = None,
        retry_s: float = 1.0,
        interval_s: float = 5.0,
        min_gap_s: float = 0.2,
    ) -> None:
        self.log = log
        self.blobs = blobs
        self._exclusive = exclusive or nullcontext
        self.on_published = on_published
        self._retry_s = retry_s
        self._interval_s = interval_s  # also look unprompted: another replica's appends, or one that died
        # At most one publication per gap: under steady uploads every group commit would otherwise publish a
        # checkpoint and its tiles (several blob-store writes), the largest blob-store cost per batch on object
        # storage. Receipts never wait for it; witnesses cosign within the gap plus their round trip.
        self._min_gap_s = min_gap_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._published = -1
        self._thread: threading.Thread | None = None
        self.errors = 0

    @property
    def published_size(self) -> int:
        """The tree size of the checkpoint this publisher last saw in the store (-1 before it looked)."""
        return self._published

    def start(self) -> TilePublisher:
        """Start the background thread; it first repairs the store, then publishes the current tree."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tile-publisher", daemon=True)
            self._thread.start()
            self._wake.set()
        return self

    def notify(self) -> None:
        """The log grew: publish soon (returns at once)."""
        self._wake.set()

    def _run(self) -> None:
        repaired = False
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                if not repaired:
                    self.repair()
                    repaired = True
                self.publish_once()
            except Exception:  # the store is down, say: keep the thread and try again
                self.errors += 1
                _LOG.exception("publishing the log's tiles failed; retrying")
                self._wake.set()
                self._stop.wait(self._retry_s)
            with self._idle:
                self._idle.notify_all()
            self._stop.wait(self._min_gap_s)

    def published_store_size(self) -> int:
        """The tree size of the checkpoint in the store (-1 when there is none or it is unreadable)."""
        note = latest_checkpoint(self.blobs)
        if note is None:
            return -1
        try:
            return _checkpoint_size(note)
        except VerificationError:
            _LOG.warning("the published checkpoint is unreadable; the next publication replaces it")
            return -1

    def repair(self) -> int:
        """Re-create every tile the published checkpoint's tree needs that the store lacks; return the count."""
        with self._exclusive():
            size = max(0, min(self.published_store_size(), self.log.size))  # the log's size read once, here
            missing = missing_tiles(self.blobs, size)
            for level, index, width in missing:
                data = tile_bytes(self.log, level, index, width, committed=size)
                self.blobs.put(PREFIX + tile_path(level, index, width), data)
        if missing:
            _LOG.warning("re-created %d missing log tiles", len(missing))
        return len(missing)

    def publish_once(self) -> int:
        """Publish tiles and a checkpoint for the log's current size if the store is behind; return that size."""
        fresh = None
        with self._exclusive():
            published = self.published_store_size()
            size = self.log.size
            if size > published:
                publish_tiles(self.blobs, self.log, size, max(published, 0))
                note = self.log.checkpoint(size)
                if publish_checkpoint(self.blobs, note, published=published):
                    fresh = note
                published = size
            self._published = published
        if fresh is not None and self.on_published is not None:
            self.on_published(fresh)  # outside the lock: it may talk to witnesses
        return published

    def wait_published(self, size: int, timeout: float = 10.0) -> bool:
        """Block until a checkpoint of at least ``size`` is published (tests, benches); False on timeout."""
        deadline = time.monotonic() + timeout
        self.notify()
        with self._idle:
            while self._published < size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
                if self._published < size:
                    self.notify()
        return True

    def close(self) -> None:
        """Stop the thread (publishing what is pending first, when the store answers)."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None
            try:
                self.publish_once()
            except Exception:  # the store or the log is gone: the next start repairs and publishes
                _LOG.warning("could not publish the log's last tiles on close", exc_info=True)
