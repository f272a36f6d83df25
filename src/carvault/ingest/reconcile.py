"""Start-up reconciliation: every batch the database holds as accepted gets its log leaf, exactly once.

A process killed after committing a batch's row and before (or during) its log append leaves the row with
``log_index IS NULL``. On start-up the region gives each such batch, in acceptance order, the index of its
leaf: found in the log's tail if the append reached the disk before the crash, else appended now. Several
processes starting at once are safe: ``ledger.leaves.log_batches`` re-reads each row under the log-writer
fence and writes the index only where it is still NULL, so a batch another process logged meanwhile keeps
that process's leaf and gets no second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from carvault.ledger.leaves import RECOVERY_TAIL, Log, log_batches
from carvault.store.metadata import BatchRecord, Database

CHUNK = 512  # batches logged per append (one group commit each)


@dataclass(frozen=True)
class Reconciled:
    """What start-up reconciliation found and did."""

    unlogged: int
    indices: tuple[int, ...]


def unlogged_batches(db: Database) -> list[BatchRecord]:
    """Every accepted batch without a log index, in acceptance order."""
    with db.session() as s:
        return list(s.scalars(select(BatchRecord).where(BatchRecord.log_index.is_(None)).order_by(BatchRecord.id)))


def reconcile(db: Database, log: Log, region: str, data_dir: Path, tail: int = RECOVERY_TAIL) -> Reconciled:
    """Log every committed-but-unlogged batch exactly once (found in the log's tail, else appended)."""
    pending = unlogged_batches(db)
    indices: list[int] = []
    for start in range(0, len(pending), CHUNK):
        chunk = pending[start : start + CHUNK]
        indices += log_batches(db, log, region, chunk, fence_dir=data_dir, tail=tail)
    return Reconciled(unlogged=len(pending), indices=tuple(indices))
