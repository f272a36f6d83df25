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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update

from carvault.errors import (
    BrokenChain,
    CarVaultError,
    PayloadTooLarge,
    SeqConflict,
    Unavailable,
    UnknownVehicle,
    UnsupportedMediaType,
    WrongRegion,
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
    future: Future[dict[str, Any]] = field(default_factory=Future)


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
    ) -> None:
        self.settings = settings
        self.db = db
        self.segments = segments
        self.log = log
        self.catalogue = catalogue
        self.ca_pem = ca_pem
        self.derived = derived
        self._keys: dict[str, Ed25519PublicKey] = {}
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
        if h.region != self.settings.region:
            raise WrongRegion(
                f"vehicle {h.vin} belongs to region {h.region!r}; this gateway serves {self.settings.region!r} "
                "and stores nothing for other regions",
                home_region=h.region,
                endpoint=self.settings.endpoint_of(h.region),
            )
        env.verify(self.vehicle_key(h.vin))
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
        pending = _Pending(env, summary, table)
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
        """An identical re-send gets the original receipt; a different batch with that seq is refused."""
        if rec.batch_hash != env.batch_hash:
            raise SeqConflict(
                f"seq {rec.seq} of {rec.vin} was already accepted with different content",
                vin=rec.vin,
                seq=rec.seq,
                accepted_hash=rec.batch_hash,
            )
        log_index = rec.log_index if rec.log_index is not None else self._recover_log_index(rec)
        deadline = time.monotonic() + 10
        while log_index is None and time.monotonic() < deadline:
            # The first upload may still be in flight in some committer; wait for its log append.
            time.sleep(0.05)
            refreshed = self._existing(rec.vin, rec.seq)
            log_index = refreshed.log_index if refreshed else None
        if log_index is None:
            log_index = self._recover_log_index(rec)
        if log_index is None:
            log_index = self._log_records([rec])[0]
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
        h = env.header
        with self.db.session() as s:
            head = s.execute(select(Vehicle.last_seq, Vehicle.last_hash).where(Vehicle.vin == h.vin)).one()
        if h.seq != head.last_seq + 1:
            raise BrokenChain(
                f"batch seq {h.seq} does not follow the last accepted seq {head.last_seq}; "
                f"send seq {head.last_seq + 1} first",
                expected_seq=head.last_seq + 1,
                got_seq=h.seq,
            )
        if h.prev != head.last_hash:
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
                    if not p.future.done():
                        p.future.set_exception(e)
            except Exception as e:  # noqa: BLE001 - the committer must survive and report any failure
                err = Unavailable(f"batch could not be stored: {type(e).__name__}: {e}")
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(err)

    def _commit(self, group: list[_Pending]) -> None:
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
                    continue  # lost a race with another process; resolved below
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
            p.future.set_result(
                receipt_json(
                    region=self.settings.region,
                    vin=rec.vin,
                    seq=rec.seq,
                    batch_hash=rec.batch_hash,
                    log_index=idx,
                    received_ms=rec.received_ms,
                )
            )
        for p in group:
            if not p.future.done():
                # Another process advanced this vehicle's chain first: answer as a re-send would.
                try:
                    existing = self._existing(p.env.header.vin, p.env.header.seq)
                    if existing is not None:
                        p.future.set_result(self._replay(p.env, existing))
                    else:
                        self._check_chain(p.env)
                        raise BrokenChain("the vehicle's chain moved while this batch was being stored")
                except CarVaultError as e:
                    p.future.set_exception(e)

    def _recover_log_index(self, rec: BatchRecord, tail: int = RECOVERY_TAIL) -> int | None:
        """The batch's leaf index: found in the log's tail (its writer died before the index write), else appended."""
        return log_batches(
            self.db, self.log, self.settings.region, [rec], fence_dir=self.settings.data_dir, tail=tail
        )[0]

    def _log_records(self, records: list[BatchRecord]) -> list[int]:
        """Append the records' v2 leaves to the transparency log (exactly once) and store their indices."""
        return log_batches(self.db, self.log, self.settings.region, records, fence_dir=self.settings.data_dir)

    def close(self) -> None:
        """Stop the committer after the batches already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._derived_pool.shutdown(wait=True)
