"""The gateway: verifies an uploaded batch, makes it durable, logs it, and answers with a receipt.

Checks run in the request thread (they are CPU work that needs no lock). Accepted batches then go
to a *group committer*: one thread that takes every batch waiting, writes them all to the segment
with a single fsync, advances each vehicle's chain head in one DB transaction, appends the group to
the transparency log, and only then releases the receipts. Concurrency across processes is safe
because the chain head advances with a conditional UPDATE (``WHERE last_seq = seq - 1``).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import and_, or_, select, update

from carvault.compliance.consent import Policy, check_batch, ignition_summary
from carvault.compliance.residency import RegionDirectory, Residency
from carvault.errors import (
    BrokenChain,
    CarVaultError,
    PayloadTooLarge,
    SeqConflict,
    Unavailable,
    UnknownVehicle,
    UnsupportedMediaType,
)
from carvault.ingest.validation import PayloadSummary, validate_payload
from carvault.ledger.leaves import RECOVERY_TAIL, log_batches
from carvault.pki import CertificateError, vehicle_key_from_certificate
from carvault.protocol import BATCH_MEDIA_TYPE, Envelope, decode_envelope, receipt_json
from carvault.settings import Settings
from carvault.signals import Catalogue
from carvault.store.derived import DerivedCopies
from carvault.store.metadata import BatchRecord, Database, Vehicle, VehicleEvent, now_ms, rowcount
from carvault.store.segments import SegmentWriter

REPLAY_WAIT_MS = 2000  # a re-send waits this long after the original's commit for its leaf index


class AppendOnlyLog(Protocol):
    """What the gateway needs of the transparency log."""

    @property
    def size(self) -> int: ...

    def append(self, entries: list[bytes]) -> int: ...

    def leaf_hash(self, index: int) -> bytes: ...


@dataclass
class _Pending:
    env: Envelope
    summary: PayloadSummary
    table: pa.Table
    ignition: tuple[int, int] | None = None  # (highest IgnitionCycle, time of its last sample) in the batch
    future: Future[dict[str, Any]] = field(default_factory=Future)


def _answer(
    future: Future[dict[str, Any]], receipt: dict[str, Any] | None = None, *, error: BaseException | None = None
) -> None:
    """Answer a pending upload once; a later answer (two threads settling one batch) is dropped."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(receipt or {})
    except InvalidStateError:
        pass


def _answer_as_resend(future: Future[dict[str, Any]], original: Future[dict[str, Any]]) -> None:
    """A copy of a batch in the same group: the original's receipt with ``duplicate: true``, or its refusal."""
    error = original.exception()
    if error is not None:
        _answer(future, error=error)
    else:
        _answer(future, {**original.result(), "duplicate": True})


class Gateway:
    """Region gateway for vehicle uploads (protocol v1)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        segments: SegmentWriter,
        log: AppendOnlyLog,
        catalogue: Catalogue,
        ca_pem: str,
        derived: DerivedCopies | None = None,
        *,
        policy_of: Callable[[str], Policy] | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.segments = segments
        self.log = log
        self.catalogue = catalogue
        self.ca_pem = ca_pem
        self.derived = derived
        self._keys: dict[str, Ed25519PublicKey] = {}
        # The owner's decisions, read afresh for every batch so that a stop counts from the very next one (and
        # in every worker process); without a source, no decision is on record and only the defaults allow.
        self.policy_of: Callable[[str], Policy] = policy_of or (lambda vin: Policy(vin, ()))
        self.residency = residency or Residency.of_database(
            db, settings.region, settings.region_endpoints, RegionDirectory.of_setting(settings.region_directory)
        )
        self._derived_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="derived-copies")
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-committer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ checks
    def accept(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        """Check and store one batch; return its receipt, or raise the reason it was refused."""
        checked = self.check(body, content_type)
        if isinstance(checked, dict):
            return checked
        return self.committed(checked, checked.future.result(timeout=120))

    def committed(self, pending: _Pending, receipt: dict[str, Any]) -> dict[str, Any]:
        """After the receipt: queue the query-optimised copy (never the evidence) off the request path."""
        if self.derived is not None and not receipt["duplicate"] and pending.env.header.kind == "telemetry":
            self._derived_pool.submit(self.derived.write, pending.env.header.vin, receipt["batch_hash"], pending.table)
        return receipt

    def check(self, body: bytes, content_type: str | None) -> dict[str, Any] | _Pending:
        """Every check of a batch (CPU work, no lock); a replay's receipt, or the batch queued for commit."""
        media = (content_type or "").split(";")[0].strip().lower()
        if media != BATCH_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"batches are sent as {BATCH_MEDIA_TYPE}, not {media or 'nothing'}", expected=BATCH_MEDIA_TYPE
            )
        if len(body) > self.settings.max_batch_bytes:
            raise PayloadTooLarge(
                f"batch is {len(body)} bytes; the limit is {self.settings.max_batch_bytes}",
                limit=self.settings.max_batch_bytes,
            )
        env = decode_envelope(body)
        h = env.header
        # Residency from the registrations (this region's vehicles, the region directory), never the header.
        self.residency.admit(h.vin)
        env.verify(self.vehicle_key(h.vin))
        self.residency.check_claim(h.vin, h.region)
        existing = self._existing(h.vin, h.seq)
        if existing is not None:
            return self._replay(env, existing)
        self._check_chain(env)
        table = env.table()
        summary = validate_payload(
            h,
            table,
            self.catalogue,
            now_ms=now_ms(),
            max_future_skew_ms=self.settings.max_future_skew_s * 1000,
            max_rows=self.settings.max_batch_rows,
        )
        # The owner's consent, applied here again with the car's own rule module: the car's filtering is not proof.
        # The vehicle's last accepted ignition counter lets a rise between batches count as a new cycle.
        with self.db.session() as s:
            previous = s.execute(
                select(Vehicle.ignition_cycle, Vehicle.ignition_seen_ms).where(Vehicle.vin == h.vin)
            ).one()
        check_batch(
            self.policy_of(h.vin),
            table,
            self.catalogue,
            kind=h.kind,
            previous=(previous.ignition_cycle, previous.ignition_seen_ms),
        )
        pending = _Pending(env, summary, table, ignition_summary(table))
        self._queue.put(pending)
        return pending

    def vehicle_key(self, vin: str) -> Ed25519PublicKey:
        """The vehicle's certified public key (cached), or ``UnknownVehicle``."""
        key = self._keys.get(vin)
        if key is None:
            with self.db.session() as s:
                row = s.execute(select(Vehicle.public_key, Vehicle.certificate_pem).where(Vehicle.vin == vin)).first()
            if row is None:
                raise UnknownVehicle(f"vehicle {vin} is not provisioned in region {self.settings.region}", vin=vin)
            key = Ed25519PublicKey.from_public_bytes(row.public_key)
            if row.certificate_pem:
                try:
                    certified = vehicle_key_from_certificate(row.certificate_pem, self.ca_pem, vin)
                except CertificateError as e:
                    raise UnknownVehicle(
                        f"vehicle {vin} has no valid certificate from this region's CA: {e}", vin=vin
                    ) from None
                if certified.public_bytes_raw() != row.public_key:
                    raise UnknownVehicle(f"vehicle {vin}'s certificate does not match its registered key", vin=vin)
            self._keys[vin] = key
        return key

    def _existing(self, vin: str, seq: int) -> BatchRecord | None:
        with self.db.session() as s:
            return s.scalar(select(BatchRecord).where(BatchRecord.vin == vin, BatchRecord.seq == seq))

    def _replay(self, env: Envelope, rec: BatchRecord) -> dict[str, Any]:
        """An identical re-send gets the original receipt (``duplicate: true``); different content is refused.

        The receipt is read from the batch's row, so every re-send gets the same ``log_index`` and
        ``received_ms`` however it raced the original. If the row has no leaf index yet, the original's
        committer (in this or another process) is between its DB commit and its log append: wait a moment
        for it, then log the batch through the exactly-once path, which finds the original's leaf or
        appends the only one (docs/protocol.md §3.4).
        """
        if rec.batch_hash != env.batch_hash:
            raise SeqConflict(
                f"seq {rec.seq} of {rec.vin} was already accepted with different content",
                vin=rec.vin,
                seq=rec.seq,
                accepted_hash=rec.batch_hash,
            )
        log_index = rec.log_index
        if log_index is None:
            # Only a fresh row is worth waiting for; an old unlogged one lost its writer (a crash).
            deadline = time.monotonic() + max(0, REPLAY_WAIT_MS - (now_ms() - rec.received_ms)) / 1000
            while log_index is None and time.monotonic() < deadline:
                time.sleep(0.02)
                refreshed = self._existing(rec.vin, rec.seq)
                log_index = refreshed.log_index if refreshed is not None else None
        if log_index is None:
            try:
                log_index = self._recover_log_index(rec)
            except LookupError:
                raise Unavailable(f"seq {rec.seq} of {rec.vin} is being removed; try again later") from None
        if log_index is None:
            raise Unavailable(f"seq {rec.seq} of {rec.vin} is stored but not yet logged; re-send the same bytes")
        return receipt_json(
            region=self.settings.region,
            vin=rec.vin,
            seq=rec.seq,
            batch_hash=rec.batch_hash,
            log_index=log_index,
            received_ms=rec.received_ms,
            duplicate=True,
        )

    def _check_chain(self, env: Envelope) -> None:
        """Raise ``BrokenChain`` unless the batch continues its vehicle's chain (or ``SeqConflict``, see below).

        A batch whose seq is already accepted *with these very bytes* passes: it is a re-send that raced
        the original past ``_existing`` (the original committed in between). The committer then answers it
        with the original's receipt and stores nothing, exactly as if ``_existing`` had seen the row.
        """
        h = env.header
        with self.db.session() as s:
            head = s.execute(select(Vehicle.last_seq, Vehicle.last_hash).where(Vehicle.vin == h.vin)).one()
        if h.seq == head.last_seq + 1 and h.prev == head.last_hash:
            return
        if h.seq <= head.last_seq:
            rec = self._existing(h.vin, h.seq)
            if rec is not None and rec.batch_hash == env.batch_hash:
                return
            if rec is not None:
                raise SeqConflict(
                    f"seq {rec.seq} of {rec.vin} was already accepted with different content",
                    vin=rec.vin,
                    seq=rec.seq,
                    accepted_hash=rec.batch_hash,
                )
        if h.seq != head.last_seq + 1:
            raise BrokenChain(
                f"batch seq {h.seq} does not follow the last accepted seq {head.last_seq}; "
                f"send seq {head.last_seq + 1} first",
                expected_seq=head.last_seq + 1,
                got_seq=h.seq,
            )
        raise BrokenChain(
            f"batch prev hash does not match the hash of accepted batch {head.last_seq}",
            expected_prev=head.last_hash,
            got_prev=h.prev,
        )

    # ------------------------------------------------------------------ group commit
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < 512:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            try:
                self._commit(group)
            except CarVaultError as e:
                for p in group:
                    _answer(p.future, error=e)
            except Exception as e:  # noqa: BLE001 - the committer must survive and report any failure
                err = Unavailable(f"batch could not be stored: {type(e).__name__}: {e}")
                for p in group:
                    _answer(p.future, error=err)

    def _commit(self, group: list[_Pending]) -> None:
        """Store a group: one segment write and fsync, one DB transaction, one log append, then the receipts.

        Identical batches (same hash) are stored once: the first of them in the group is committed and the
        others get its receipt as re-sends; a batch already accepted before the group (a re-send that raced
        its original through the checks) is answered from its row without writing anything.
        """
        firsts: dict[str, _Pending] = {}
        for p in group:
            first = firsts.setdefault(p.env.batch_hash, p)
            if first is not p:
                first.future.add_done_callback(partial(_answer_as_resend, p.future))
        with self.db.session() as s:
            done = {
                r.batch_hash: r for r in s.scalars(select(BatchRecord).where(BatchRecord.batch_hash.in_(list(firsts))))
            }
        for h, rec in done.items():
            self._settle_replay(firsts[h], rec)
        self._store([p for h, p in firsts.items() if h not in done])

    def _settle_replay(self, p: _Pending, rec: BatchRecord) -> None:
        """Answer a queued batch that turned out to be accepted already, as a re-send is answered.

        A row without its leaf index yet (another process is logging it) is waited for off the committer
        thread, so one slow log append elsewhere never holds up this process's group commit.
        """

        def settle() -> None:
            try:
                _answer(p.future, self._replay(p.env, rec))
            except CarVaultError as e:
                _answer(p.future, error=e)
            except Exception as e:  # noqa: BLE001 - always answer the request
                _answer(p.future, error=Unavailable(f"batch could not be stored: {type(e).__name__}: {e}"))

        if rec.log_index is not None or rec.batch_hash != p.env.batch_hash:
            settle()
        else:
            threading.Thread(target=settle, name="replay-settle", daemon=True).start()

    def _store(self, group: list[_Pending]) -> None:
        if not group:
            return
        locations = self.segments.append_many([p.env.raw for p in group])
        received = now_ms()
        accepted: list[tuple[_Pending, BatchRecord]] = []
        with self.db.session() as s:
            for p, (segment, offset, length) in zip(group, locations, strict=True):
                h = p.env.header
                moved = rowcount(
                    s.execute(
                        update(Vehicle)
                        .where(Vehicle.vin == h.vin, Vehicle.last_seq == h.seq - 1, Vehicle.last_hash == h.prev)
                        .values(last_seq=h.seq, last_hash=p.env.batch_hash)
                    )
                )
                if moved != 1:
                    continue  # lost a race (another process, or a different batch with this seq); resolved below
                if p.ignition is not None:
                    # Same transaction as the chain head; only forward (a lower counter proves nothing).
                    cycle, seen = p.ignition
                    s.execute(
                        update(Vehicle)
                        .where(
                            Vehicle.vin == h.vin,
                            or_(
                                Vehicle.ignition_cycle.is_(None),
                                Vehicle.ignition_cycle < cycle,
                                and_(
                                    Vehicle.ignition_cycle == cycle,
                                    or_(Vehicle.ignition_seen_ms.is_(None), Vehicle.ignition_seen_ms < seen),
                                ),
                            ),
                        )
                        .values(ignition_cycle=cycle, ignition_seen_ms=seen)
                    )
                rec = BatchRecord(
                    vin=h.vin,
                    seq=h.seq,
                    kind=h.kind,
                    batch_hash=p.env.batch_hash,
                    prev_hash=h.prev,
                    t0=h.t0,
                    t1=h.t1,
                    rows=p.summary.rows,
                    samples=p.summary.samples,
                    columns=",".join(p.summary.columns),
                    segment=segment,
                    offset=offset,
                    length=length,
                    log_index=None,
                    received_ms=received,
                )
                s.add(rec)
                if p.summary.event is not None:
                    ev = p.summary.event
                    s.add(
                        VehicleEvent(
                            vin=h.vin,
                            kind=ev["kind"],
                            t_ms=ev["trigger_ms"],
                            batch_seq=h.seq,
                            legal_basis=ev["legal_basis"],
                            detail=json.dumps(
                                {k: v for k, v in ev.items() if k not in ("kind", "trigger_ms", "legal_basis")}
                            ),
                        )
                    )
                accepted.append((p, rec))
        indices = self._log_records([rec for _, rec in accepted]) if accepted else []
        for (p, rec), idx in zip(accepted, indices, strict=True):
            _answer(
                p.future,
                receipt_json(
                    region=self.settings.region,
                    vin=rec.vin,
                    seq=rec.seq,
                    batch_hash=rec.batch_hash,
                    log_index=idx,
                    received_ms=rec.received_ms,
                ),
            )
        for p in group:
            if not p.future.done():
                # Another process advanced this vehicle's chain first (or another batch took this seq in the
                # group): answer as a re-send of what was accepted would be answered.
                try:
                    existing = self._existing(p.env.header.vin, p.env.header.seq)
                    if existing is None:
                        self._check_chain(p.env)
                        raise BrokenChain("the vehicle's chain moved while this batch was being stored")
                except CarVaultError as e:
                    _answer(p.future, error=e)
                    continue
                self._settle_replay(p, existing)

    def _recover_log_index(self, rec: BatchRecord, tail: int = RECOVERY_TAIL) -> int | None:
        """The batch's leaf index: found in the log's tail (its writer died before the index write), else appended."""
        return log_batches(self.db, self.log, self.settings.region, [rec], fence_dir=self.settings.data_dir, tail=tail)[
            0
        ]

    def _log_records(self, records: list[BatchRecord]) -> list[int]:
        """Append the records' v2 leaves to the transparency log (exactly once) and store their indices."""
        return log_batches(self.db, self.log, self.settings.region, records, fence_dir=self.settings.data_dir)

    def close(self) -> None:
        """Stop the committer after the batches already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._derived_pool.shutdown(wait=True)
