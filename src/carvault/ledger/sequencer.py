"""The log on PostgreSQL: appends sequenced across replicas by an advisory lock, no file locks anywhere.

The file log (``ledger/log.py``) serialises appenders with ``flock``, which network file systems do not honour, so
several machines cannot share it. With ``log_backend = postgres`` the log lives in the region's PostgreSQL
metadata database instead, in the same post-order numbering as the file log's ``nodes``::

    carvault_tlog_state  one row per log: origin, committed size
    carvault_tlog_nodes  (position, hash): every complete-subtree hash; node (k, j) is at
                         2m − popcount(m) + k with m = (j+1)·2^k − 1

An append is one transaction: ``pg_advisory_xact_lock`` (appends of every replica queue on it), read the
committed size, read the O(log n) right-edge peaks, ``COPY`` the new records, raise the size, commit. PostgreSQL
makes the transaction all or nothing, so an appender killed at any point leaves either the old tree or the new
one, never a torn tail, and nothing is acknowledged before the commit returned. The lock is released with the
transaction (or the dead client's connection), so the next replica's append proceeds at once; there is no
sequencer to elect or to fail over.

Exactly once per batch (``ledger.leaves.log_batches``): ``fence()`` is a *session* advisory lock held on one
connection from re-reading the batch rows to writing their indices, and an append made inside the fence runs
on that very connection, so it fails if the connection (and with it the fence) was lost. A writer killed
between its commit and the index update leaves a leaf whose row has no index; the next fence holder finds the
leaf in the log's tail (``RECOVERY_TAIL``) rather than appending a second one.

Readers (proofs, checkpoints, tiles) work from any replica: committed rows never change, so a read of the size
followed by reads of nodes below it needs no lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url

from carvault.errors import Unavailable
from carvault.ledger.log import (
    LogError,
    MerkleLog,
    TransparencyLog,
    _encode_appended,
    _Request,
    node_count,
    node_position,
)
from carvault.ledger.merkle import HASH_SIZE

__all__ = ["PostgresLog", "log_of", "postgres_conninfo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS carvault_tlog_state (
    origin TEXT PRIMARY KEY,
    size BIGINT NOT NULL CHECK (size >= 0)
);
CREATE TABLE IF NOT EXISTS carvault_tlog_nodes (
    origin TEXT NOT NULL,
    position BIGINT NOT NULL,
    hash BYTEA NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (origin, position)
);
"""
_POOL_MAX = 8


def postgres_conninfo(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL; ValueError for any other database."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"log_backend=postgres needs a PostgreSQL database_url, not {url.get_backend_name()!r}")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _lock_key(origin: str, purpose: str) -> int:
    """A signed 64-bit advisory-lock key for one purpose of one log (stable across processes)."""
    digest = hashlib.sha256(f"carvault-tlog\n{purpose}\n{origin}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLog(MerkleLog):
    """One region's append-only Merkle log in PostgreSQL; safe for many threads, processes and machines."""

    def __init__(self, database_url: str, origin: str, private_key: Ed25519PrivateKey, key_name: str) -> None:
        import psycopg  # noqa: PLC0415 — only deployments on PostgreSQL need the driver loaded

        self._psycopg = psycopg
        self._configure(origin, private_key, key_name)
        self.conninfo = postgres_conninfo(database_url)
        self._append_key = _lock_key(origin, "append")
        self._fence_key = _lock_key(origin, "fence")
        self._publish_key = _lock_key(origin, "publish")
        self._pool: list[Any] = []
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .fenced: the connection holding the fence in this thread
        self._cond = threading.Condition()
        self._writing = False
        self._queue: list[_Request] = []
        self._closed = False
        # (size, right-edge peaks) after this process's last committed append: the next one needs no reads.
        self._tail: tuple[int, tuple[tuple[int, bytes], ...]] | None = None
        self._tail_lock = threading.Lock()
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._append_key,))
            conn.execute(_SCHEMA)
            conn.execute(
                "INSERT INTO carvault_tlog_state (origin, size) VALUES (%s, 0) ON CONFLICT (origin) DO NOTHING",
                (origin,),
            )

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise Unavailable(f"the log's PostgreSQL database is unavailable: {exc}") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled autocommit connection; a broken one is dropped instead of returned."""
        if self._closed:
            raise LogError("the log is closed")
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None or conn.closed:
            conn = self._connect()
        ok = False
        try:
            yield conn
            ok = True
        except self._psycopg.OperationalError as exc:
            raise Unavailable(f"the log's PostgreSQL database is unavailable: {exc}") from None
        finally:
            if ok and not conn.closed and not conn.info.transaction_status and not self._closed:
                with self._pool_lock:
                    if len(self._pool) < _POOL_MAX:
                        self._pool.append(conn)
                        conn = None
            if conn is not None:
                conn.close()

    # -- reads ---------------------------------------------------------------------------------

    def _size_on(self, conn: Any) -> int:
        row = conn.execute("SELECT size FROM carvault_tlog_state WHERE origin = %s", (self.origin,)).fetchone()
        if row is None:
            raise LogError("the log's state row is missing", origin=self.origin)
        return int(row[0])

    @property
    def size(self) -> int:
        """The committed (acknowledged) number of leaves, as every replica sees it."""
        with self._connection() as conn:
            return self._size_on(conn)

    def _fetch(self, conn: Any, positions: list[int]) -> dict[int, bytes]:
        rows = conn.execute(
            "SELECT position, hash FROM carvault_tlog_nodes WHERE origin = %s AND position = ANY(%s)",
            (self.origin, positions),
        ).fetchall()
        return {int(p): bytes(h) for p, h in rows}

    def _nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        positions = [node_position(level, index) for level, index in coords]
        if not positions:
            return []
        with self._connection() as conn:
            found = self._fetch(conn, positions)
        missing = [c for c, p in zip(coords, positions, strict=True) if p not in found]
        if missing:
            raise LogError("node record missing", expected=missing[0])
        return [found[p] for p in positions]

    def _node(self, level: int, index: int) -> bytes:
        return self._nodes([(level, index)])[0]

    # -- appends -------------------------------------------------------------------------------

    @contextmanager
    def _session_lock(self, key: int) -> Iterator[Any]:
        """Hold a session advisory lock on a pooled connection; on any failure the connection is closed instead
        of returned, and closing a session releases its locks."""
        with self._connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            yield conn
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextmanager
    def fence(self) -> Iterator[None]:
        """Hold the log-writer fence (a session advisory lock: exclusive across every replica) for the block."""
        if getattr(self._local, "fenced", None) is not None:
            raise LogError("the log fence is not re-entrant")
        with self._session_lock(self._fence_key) as conn:
            self._local.fenced = conn
            try:
                yield
            finally:
                self._local.fenced = None

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Exclusive right (across replicas) to publish this log's tiles and checkpoints."""
        with self._session_lock(self._publish_key):
            yield

    def append(self, entries: Sequence[bytes | bytearray | memoryview]) -> int:
        """Append many leaves (their data, hashed here); committed on return; returns the first index."""
        for e in entries:
            if not isinstance(e, bytes | bytearray | memoryview):
                raise TypeError(f"log entries must be bytes, not {type(e).__name__}")
        hashes = [hashlib.sha256(b"\x00" + bytes(e)).digest() for e in entries]
        fenced = getattr(self._local, "fenced", None)
        if fenced is not None:
            # Inside the fence: append on the fence's own connection, so a lost fence fails the append.
            first = self._write(fenced, hashes)
            self._appended()
            return first
        request = _Request(hashes)
        leader = False
        with self._cond:  # group commit among this process's threads, as in the file log
            self._queue.append(request)
            while self._writing and not request.done:
                self._cond.wait()
            if not request.done:
                leader, self._writing = True, True
                group, self._queue = self._queue, []
        if leader:
            try:
                with self._connection() as conn:
                    first = self._write(conn, [h for r in group for h in r.hashes])
                for r in group:
                    r.first, first = first, first + len(r.hashes)
            except BaseException as exc:
                for r in group:
                    r.error = exc
            finally:
                with self._cond:
                    for r in group:
                        r.done = True
                    self._writing = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        self._appended()
        return request.first

    def _write(self, conn: Any, hashes: list[bytes]) -> int:
        """Append ``hashes`` in one transaction; returns the first new index.

        When this process made the last append, it knows the log's size and right-edge peaks, so the append is
        one statement (``_write_after``); else, or when another appender came first, the locked transaction.
        """
        with self._tail_lock:
            tail = self._tail
        if tail is not None and hashes:
            first = self._write_after(conn, tail, hashes)
            if first is not None:
                return first
        return self._write_locked(conn, hashes)

    def _keep_tail(self, size: int, stack: list[tuple[int, bytes]]) -> None:
        """Remember the log's size and peaks after an append this process committed (the newest one known)."""
        with self._tail_lock:
            if self._tail is None or self._tail[0] <= size:
                self._tail = (size, tuple(stack))

    def _write_after(
        self, conn: Any, tail: tuple[int, tuple[tuple[int, bytes], ...]], hashes: list[bytes]
    ) -> int | None:
        """Append on top of the tree this process last saw, in one round trip; None if the log has moved since.

        One statement raises the size only if it is still the one expected and inserts the new records only if it
        did: PostgreSQL runs it all or nothing, and a concurrent appender's row lock makes it wait and then see the
        new size (READ COMMITTED re-checks the condition), so a stale view inserts nothing.
        """
        size, peaks = tail
        stack = list(peaks)
        records = _encode_appended(stack, hashes)
        count = len(records) // HASH_SIZE
        base = node_count(size)
        try:
            cur = conn.execute(
                "WITH moved AS (UPDATE carvault_tlog_state SET size = %s WHERE origin = %s AND size = %s "
                "RETURNING origin) INSERT INTO carvault_tlog_nodes (origin, position, hash) "
                "SELECT moved.origin, n.position, n.hash FROM moved, "
                "unnest(%s::bigint[], %s::bytea[]) AS n(position, hash)",
                (
                    size + len(hashes),
                    self.origin,
                    size,
                    list(range(base, base + count)),
                    [records[n * HASH_SIZE : (n + 1) * HASH_SIZE] for n in range(count)],
                ),
            )
        except self._psycopg.OperationalError as exc:
            raise Unavailable(f"the log's PostgreSQL database is unavailable: {exc}") from None
        if cur.rowcount != count:
            return None
        self._keep_tail(size + len(hashes), stack)
        return size

    def _write_locked(self, conn: Any, hashes: list[bytes]) -> int:
        """One transaction under the append lock reading the size and peaks, then appending ``hashes``."""
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._append_key,))
                row = conn.execute(
                    "SELECT size FROM carvault_tlog_state WHERE origin = %s FOR UPDATE", (self.origin,)
                ).fetchone()
                if row is None:
                    raise LogError("the log's state row is missing", origin=self.origin)
                size = int(row[0])
                if not hashes:
                    return size
                coords = self._peak_coords(size)
                found = self._fetch(conn, [node_position(level, index) for level, index in coords])
                stack = [(level, found[node_position(level, index)]) for level, index in coords]
                records = _encode_appended(stack, hashes)
                base = node_count(size)
                with (
                    conn.cursor() as cur,
                    cur.copy("COPY carvault_tlog_nodes (origin, position, hash) FROM STDIN") as copy,
                ):
                    for n in range(len(records) // HASH_SIZE):
                        copy.write_row((self.origin, base + n, records[n * HASH_SIZE : (n + 1) * HASH_SIZE]))
                conn.execute(
                    "UPDATE carvault_tlog_state SET size = %s WHERE origin = %s", (size + len(hashes), self.origin)
                )
            self._keep_tail(size + len(hashes), stack)  # committed: the next append of this process needs no reads
            return size
        except self._psycopg.OperationalError as exc:
            raise Unavailable(f"the log's PostgreSQL database is unavailable: {exc}") from None

    # -- upkeep --------------------------------------------------------------------------------

    def check_integrity(self) -> int:
        """Recompute every stored node from the stored leaf hashes; raise LogError on a mismatch."""
        size = self.size
        stack: list[tuple[int, bytes]] = []
        chunk = 1 << 14
        with self._connection() as conn:
            for start in range(0, size, chunk):
                end = min(size, start + chunk)
                first, last = node_count(start), node_count(end)
                rows = conn.execute(
                    "SELECT position, hash FROM carvault_tlog_nodes WHERE origin = %s AND position >= %s "
                    "AND position < %s ORDER BY position",
                    (self.origin, first, last),
                ).fetchall()
                if len(rows) != last - first:
                    raise LogError("node records missing", expected=last - first, actual=len(rows))
                stored = b"".join(bytes(h) for _, h in rows)
                leaves = [
                    stored[(node_count(i) - first) * HASH_SIZE : (node_count(i) - first + 1) * HASH_SIZE]
                    for i in range(start, end)
                ]
                if _encode_appended(stack, leaves) != stored:
                    raise LogError("stored node does not match its children", chunk=start)
            extra = conn.execute(
                "SELECT count(*) FROM carvault_tlog_nodes WHERE origin = %s AND position >= %s",
                (self.origin, node_count(size)),
            ).fetchone()[0]
        if extra:
            raise LogError("node records beyond the committed size", count=int(extra))
        return size

    def close(self) -> None:
        """Close pooled connections; the object is unusable afterwards."""
        self._closed = True
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def __enter__(self) -> PostgresLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresLog(origin={self.origin!r})"


def log_of(
    backend: str, directory: Path, database_url: str, origin: str, private_key: Ed25519PrivateKey, key_name: str
) -> MerkleLog:
    """The region's log on the backend the ``log_backend`` setting names (``file`` or ``postgres``)."""
    if backend == "postgres":
        return PostgresLog(database_url, origin, private_key, key_name)
    if backend == "file":
        return TransparencyLog(directory, origin, private_key, key_name)
    raise ValueError(f"log_backend must be 'file' or 'postgres', got {backend!r}")
