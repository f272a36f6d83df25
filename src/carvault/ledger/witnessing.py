"""The region side of witnessing: each new checkpoint goes to the configured witnesses in the background.

One thread per witness (C2SP tlog-witness ``add-checkpoint``), so a witness that is down or slow delays only
itself; nothing here is on a receipt's path. Each thread submits the newest published checkpoint with a
consistency proof from the size that witness last cosigned (learnt from a 409 answer when unknown), checks the
returned cosignature/v1 line against the witness's configured key, and records it. Once a tree size has the
quorum of cosignatures (at least one), the cosigned note is kept (``cosigned_checkpoints``) and published as
``log/checkpoint`` (carvault.ledger.tiles.publish_checkpoint). Failures back off exponentially up to 30 s.

Setting ``witnesses``: ``name=vkey@url`` entries separated by ``;`` (docs/witness.md).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from carvault.ledger.checkpoint import (
    VerifierKey,
    parse_checkpoint,
    parse_vkey,
    verify_cosignatures,
)
from carvault.ledger.merkle import VerificationError
from carvault.ledger.tiles import latest_checkpoint, publish_checkpoint
from carvault.store.blobs import BlobStore
from carvault.store.metadata import CosignedCheckpointRecord, Database, WitnessCosignatureRecord

__all__ = ["WitnessEndpoint", "WitnessStatus", "Witnessing", "parse_witnesses"]

_LOG = logging.getLogger("carvault.ledger.witnessing")
MAX_BACKOFF_S = 30.0
POLL_S = 5.0  # also look at the store: checkpoints published by another replica


@dataclass(frozen=True)
class WitnessEndpoint:
    """One configured witness: a label, its cosignature/v1 verifier key and its submission URL prefix."""

    label: str
    vkey: VerifierKey
    vkey_text: str
    url: str


def parse_witnesses(text: str) -> list[WitnessEndpoint]:
    """Parse the ``witnesses`` setting; ValueError naming the bad entry."""
    found: list[WitnessEndpoint] = []
    for entry in (e.strip() for e in (text or "").split(";")):
        if not entry:
            continue
        label, eq, rest = entry.partition("=")
        vkey_text, at, url = rest.partition("@")  # base64 never holds '@'
        if not eq or not at or not label.strip() or not url.startswith(("http://", "https://")):
            raise ValueError(f"witness entry {entry!r} is not 'name=vkey@http(s)://host:port'")
        try:
            vkey = parse_vkey(vkey_text.strip())
        except VerificationError as exc:
            raise ValueError(f"witness {label.strip()}: bad vkey ({exc})") from exc
        if vkey.signature_type != 0x04:
            raise ValueError(f"witness {label.strip()}: vkey is not a cosignature/v1 key (type 0x04)")
        if any(w.label == label.strip() or w.vkey.name == vkey.name for w in found):
            raise ValueError(f"witness {label.strip()} is configured twice")
        found.append(WitnessEndpoint(label.strip(), vkey, vkey_text.strip(), url.rstrip("/")))
    return found


class ProofSource(Protocol):
    """What witnessing needs of the log."""

    @property
    def size(self) -> int: ...

    def checkpoint(self, size: int | None = None) -> str: ...

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]: ...


@dataclass
class WitnessStatus:
    """What metrics show per witness: the size it last cosigned, when, and its failures since."""

    label: str
    cosigned_size: int = -1
    last_success_ms: int = 0
    last_error: str = ""
    failures: int = 0
    submissions: int = 0
    latencies_s: list[float] = field(default_factory=list)


class Witnessing:
    """Submits the region's checkpoints to its witnesses and keeps the cosigned ones."""

    def __init__(
        self,
        log: ProofSource,
        blobs: BlobStore,
        db: Database,
        witnesses: list[WitnessEndpoint],
        quorum: int,
        *,
        timeout_s: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if quorum < 0 or quorum > len(witnesses):
            raise ValueError(f"witness_quorum must be 0..{len(witnesses)} (the configured witnesses), got {quorum}")
        self.log = log
        self.blobs = blobs
        self.db = db
        self.witnesses = witnesses
        self.quorum = quorum
        self.needed = max(quorum, 1)
        self._timeout_s = timeout_s
        self._now = now
        self._cond = threading.Condition()
        self._target: str | None = None  # the newest log-signed note to witness
        self._target_size = -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._record_lock = threading.Lock()
        self.status = {w.label: WitnessStatus(w.label) for w in witnesses}
        self.cosigned_at: dict[int, float] = {}  # tree size -> monotonic time its quorum was reached (bench)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> Witnessing:
        """Start one thread per witness (none when no witness is configured)."""
        for w in self.witnesses:
            t = threading.Thread(target=self._run, args=(w,), name=f"witness-{w.label}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.witnesses:
            poller = threading.Thread(target=self._poll, name="witness-poll", daemon=True)
            poller.start()
            self._threads.append(poller)
        return self

    def close(self) -> None:
        """Stop the threads (a submission under way ends at its timeout)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 1)
        self._threads.clear()

    def notify(self, note: str) -> None:
        """A new checkpoint was published (TilePublisher.on_published): witness it soon. Returns at once."""
        try:
            size = parse_checkpoint(note).size
        except VerificationError:
            return
        with self._cond:
            if size > self._target_size:
                self._target, self._target_size = note, size
                self._cond.notify_all()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                note = latest_checkpoint(self.blobs)
                if note is not None:
                    size = parse_checkpoint(note).size
                    if size > self._target_size and size <= self.log.size:
                        self.notify(self.log.checkpoint(size))  # the log-signed note, without others' lines
            except Exception:  # the store is down: the next poll tries again
                _LOG.debug("polling the published checkpoint failed", exc_info=True)

    # -- one witness -----------------------------------------------------------------------------------------
    def _run(self, w: WitnessEndpoint) -> None:
        status = self.status[w.label]
        status.cosigned_size = self._known_size(w)
        backoff = 0.2
        with httpx.Client(timeout=self._timeout_s) as client:
            while not self._stop.is_set():
                with self._cond:
                    while not self._stop.is_set() and (
                        self._target is None or self._target_size <= status.cosigned_size
                    ):
                        self._cond.wait(1.0)
                    if self._stop.is_set():
                        return
                    note, size = self._target, self._target_size
                assert note is not None
                started = time.monotonic()
                try:
                    self._submit(client, w, status, note, size)
                except Exception as exc:  # down, slow, refusing: back off, then try the newest checkpoint again
                    status.failures += 1
                    status.last_error = str(exc)[:300] or type(exc).__name__
                    _LOG.warning("witness %s: %s", w.label, status.last_error)
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                backoff = 0.2
                status.latencies_s = [*status.latencies_s[-999:], time.monotonic() - started]

    def _known_size(self, w: WitnessEndpoint) -> int:
        with self.db.session() as s:
            size = s.scalar(
                select(func.max(WitnessCosignatureRecord.tree_size)).where(WitnessCosignatureRecord.witness == w.label)
            )
        return -1 if size is None else int(size)  # -1: unknown, ask with old 0 and learn from the 409

    def _submit(self, client: httpx.Client, w: WitnessEndpoint, status: WitnessStatus, note: str, size: int) -> None:
        old = max(status.cosigned_size, 0)
        for _ in range(3):  # a 409 tells the size the witness holds; retry from there
            if old > size:  # the witness saw a larger tree (another replica's): witness our newest instead
                if self.log.size < old:
                    raise RuntimeError(f"witness holds size {old}, larger than the log's {self.log.size}")
                size = self.log.size
                note = self.log.checkpoint(size)
            proof = self.log.consistency_proof(old, size) if 0 < old < size else []
            body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n" + note
            status.submissions += 1
            response = client.post(f"{w.url}/add-checkpoint", content=body.encode())
            if response.status_code == 409 and response.headers.get("content-type", "").startswith("text/x.tlog.size"):
                text = response.text.strip()
                if not text.isdigit() or int(text) == old:
                    raise RuntimeError(f"witness refused size {size}: conflict at its size {text} (split view?)")
                old = int(text)
                continue
            if response.status_code != 200:
                raise RuntimeError(f"witness answered {response.status_code}: {response.text.strip()[:200]}")
            self.accept(w.label, note, size, response.text)
            return
        raise RuntimeError("witness kept answering 409")

    def accept(self, label: str, note: str, size: int, answer: str) -> None:
        """Check a witness's answer for its cosignature of ``note`` (size ``size``) and record it; once the size has
        the quorum, keep and publish the cosigned note. RuntimeError when the answer holds no valid line.

        Idempotent across replicas: every replica of a region runs this, and two can record the same witness's
        cosignature of the same size at the same moment. Both rows are written with ``INSERT … ON CONFLICT``, so
        the loser of that race changes nothing and succeeds (it used to hit the duplicate key and heal only on the
        next retry); the kept cosigned note is replaced only by one with more cosignatures.
        """
        w = next(x for x in self.witnesses if x.label == label)
        status = self.status[label]
        lines = [line + "\n" for line in answer.splitlines() if line.startswith("\u2014 ")]
        mine = [line for line in lines if verify_cosignatures(note + line, [w.vkey])]
        if not mine:
            raise RuntimeError("the witness's answer holds no cosignature by its configured key")
        now_ms = int(self._now() * 1000)
        with self._record_lock, self.db.session() as s:
            cosigned = self._record(s, size, w.label, note, mine[0], now_ms)
        status.cosigned_size = max(status.cosigned_size, size)
        status.last_success_ms = now_ms
        status.last_error = ""
        if cosigned is not None:
            self.cosigned_at.setdefault(size, time.monotonic())
            try:
                publish_checkpoint(self.blobs, cosigned)
            except Exception:  # the store is down: the note is kept in the database; a later one is published
                _LOG.warning("publishing the cosigned checkpoint %d failed", size, exc_info=True)

    def _record(self, s: Session, size: int, label: str, note: str, line: str, now_ms: int) -> str | None:
        """Insert the line unless this witness's line for this size is there; keep the cosigned note when the size
        has the quorum (replacing a kept one only by one with more cosignatures). The cosigned note, or None."""
        insert_ = sqlite_insert if s.get_bind().dialect.name == "sqlite" else pg_insert
        lines_table = WitnessCosignatureRecord.__table__
        s.execute(
            insert_(lines_table)
            .values(tree_size=size, witness=label, line=line, created_ms=now_ms)
            .on_conflict_do_nothing(index_elements=[lines_table.c.tree_size, lines_table.c.witness])
        )
        lines_for_size = list(
            s.scalars(
                select(WitnessCosignatureRecord.line)
                .where(WitnessCosignatureRecord.tree_size == size)
                .order_by(WitnessCosignatureRecord.witness)
            )
        )
        if len(lines_for_size) < self.needed:
            return None
        cosigned = note + "".join(lines_for_size)
        notes = CosignedCheckpointRecord.__table__
        stmt = insert_(notes).values(tree_size=size, note=cosigned, cosignatures=len(lines_for_size), created_ms=now_ms)
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=[notes.c.tree_size],
                set_={"note": stmt.excluded.note, "cosignatures": stmt.excluded.cosignatures},
                where=notes.c.cosignatures < stmt.excluded.cosignatures,
            )
        )
        return cosigned

    # -- reads -----------------------------------------------------------------------------------------------
    def latest_cosigned(self) -> str | None:
        """The newest checkpoint note carrying the quorum of cosignatures, or None."""
        with self.db.session() as s:
            return s.scalar(
                select(CosignedCheckpointRecord.note).order_by(CosignedCheckpointRecord.tree_size.desc()).limit(1)
            )

    def cosigned_for(self, size: int) -> str | None:
        """The cosigned checkpoint note of exactly this tree size, or None."""
        with self.db.session() as s:
            record = s.get(CosignedCheckpointRecord, size)
            return None if record is None else record.note

    def cosigned_at_least(self, size: int) -> str | None:
        """The smallest cosigned checkpoint of at least this tree size (a consistency proof links the two)."""
        with self.db.session() as s:
            return s.scalar(
                select(CosignedCheckpointRecord.note)
                .where(CosignedCheckpointRecord.tree_size >= size)
                .order_by(CosignedCheckpointRecord.tree_size)
                .limit(1)
            )

    def lag(self) -> dict[str, int]:
        """Per witness: how many leaves the log is ahead of the size it last cosigned (metrics)."""
        size = self.log.size
        return {label: size - max(st.cosigned_size, 0) for label, st in self.status.items()}
