"""The witness's persistent state: its name, the logs it witnesses and the latest tree it cosigned for each.

One SQLite file. The check of a submission's old size against the recorded size and the update to the new
tree happen in one ``BEGIN IMMEDIATE`` transaction, so two concurrent submissions can never roll the
recorded tree back (C2SP tlog-witness, the race described under add-checkpoint).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carvault.ledger.checkpoint import VerifierKey, parse_vkey
from carvault.ledger.merkle import VerificationError

__all__ = ["KnownLog", "WitnessState", "WitnessStateError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS witness_config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS witnessed_log (
    origin TEXT PRIMARY KEY,
    vkey TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    root BLOB,
    updated_ms INTEGER NOT NULL DEFAULT 0
);
"""


class WitnessStateError(ValueError):
    """A configuration request the state refuses (bad vkey, unknown log, missing name)."""


@dataclass(frozen=True)
class KnownLog:
    """A log this witness cosigns: its origin, its checkpoint key and the latest tree cosigned (size 0: none)."""

    origin: str
    vkey: VerifierKey
    vkey_text: str
    size: int
    root: bytes | None


class WitnessState:
    """The SQLite file ``witness.db`` in the witness's folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get_config(self, key: str) -> str | None:
        """A configuration value (``name``), or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM witness_config WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_config(self, key: str, value: str) -> None:
        """Set a configuration value."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO witness_config (key, value) VALUES (?, ?)", (key, value))

    def add_log(self, vkey_text: str, origin: str | None = None) -> KnownLog:
        """Witness the log whose checkpoints ``vkey_text`` signs (origin defaults to the key name)."""
        try:
            key = parse_vkey(vkey_text.strip())
        except VerificationError as exc:
            raise WitnessStateError(f"not a log verifier key: {exc}") from exc
        if key.signature_type != 0x01:
            raise WitnessStateError("a log's checkpoint key must be an Ed25519 note key (type 0x01)")
        origin = origin or key.name
        if not origin or "\n" in origin:
            raise WitnessStateError("origin must be one non-empty line")
        with self._lock:
            row = self._db.execute("SELECT vkey FROM witnessed_log WHERE origin = ?", (origin,)).fetchone()
            if row and row[0] != vkey_text.strip():
                raise WitnessStateError(f"log {origin} is already witnessed with another key")
            if not row:
                self._db.execute("INSERT INTO witnessed_log (origin, vkey) VALUES (?, ?)", (origin, vkey_text.strip()))
        found = self.log(origin)
        assert found is not None
        return found

    def log(self, origin: str) -> KnownLog | None:
        """The known log with this origin, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT origin, vkey, size, root FROM witnessed_log WHERE origin = ?", (origin,)
            ).fetchone()
        if row is None:
            return None
        return KnownLog(row[0], parse_vkey(row[1]), row[1], int(row[2]), bytes(row[3]) if row[3] else None)

    def logs(self) -> list[KnownLog]:
        """Every witnessed log."""
        with self._lock:
            origins = [r[0] for r in self._db.execute("SELECT origin FROM witnessed_log ORDER BY origin")]
        return [log for o in origins if (log := self.log(o)) is not None]

    def advance(
        self, origin: str, decide: Callable[[int, bytes | None], bool], size: int, root: bytes, now_ms: int
    ) -> None:
        """Atomically: read the recorded tree, let ``decide(size, root)`` check the submission (it raises to
        refuse), then record the new tree if it is larger. The tree never moves back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT size, root FROM witnessed_log WHERE origin = ?", (origin,)).fetchone()
                if row is None:
                    raise WitnessStateError(f"unknown log {origin}")
                if decide(int(row[0]), bytes(row[1]) if row[1] else None) and size >= int(row[0]):
                    self._db.execute(
                        "UPDATE witnessed_log SET size = ?, root = ?, updated_ms = ? WHERE origin = ?",
                        (size, root, now_ms, origin),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
