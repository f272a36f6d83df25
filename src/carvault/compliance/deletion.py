"""The owner's right to deletion: off-vehicle copies erased within 10 working days, with a signed receipt.

What is erased: the exact batch bytes (overwritten with zeros in their segments and fsynced), the batch
index, recorded events, incident packages. What is kept, and why, is stated in the receipt: consent and
audit records (proof of lawful processing), the transparency-log leaves (hashes and the VIN only: the
log is append-only, and erasing a leaf would break every later proof). Data under a legal hold is not
erased: the request waits as ``held`` and the data is frozen (kept, not served) until the hold ends.

An owner's request waits a grace period first (setting ``deletion_grace_s``, 72 hours by default, well inside the
deadline) as ``scheduled``: until it ends the owner may cancel it (``cancelled``, recorded in the audit chain).
When it ends, ``resume`` (at start and every minute in-process: ``DeletionScheduler``) carries it out. An owner who
is sure may skip the grace period (``immediately``); so does staff carrying out a verified next-of-kin request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import bindparam, delete, func, select, update

from carvault.access.audit import LEGAL_OBLIGATION, OWNER_REQUEST, Actor
from carvault.access.charging import forget as forget_charging
from carvault.errors import Conflict, DataFrozen, DeletionNotCancellable, NotFound, ValidationFailed
from carvault.store.metadata import (
    BatchRecord,
    BatchRefusal,
    Database,
    DeletionRequest,
    IncidentPackage,
    LegalHold,
    PortabilityBundle,
    RetentionWithheld,
    StatisticsDay,
    Vehicle,
    VehicleEvent,
    now_ms,
    rowcount,
)
from carvault.store.segments import PREFIX as SEGMENTS
from carvault.store.segments import skeleton_name, zero_ranges
from carvault.store.tables import ExportJob

if TYPE_CHECKING:
    from carvault.region import Region

log = logging.getLogger(__name__)

# Whether any hold is in force on one vehicle (Deletions.check_served, on every read of its data).
_HOLD_IN_FORCE = select(LegalHold.id).where(LegalHold.vin == bindparam("vin"), LegalHold.released_ms.is_(None)).limit(1)
RECEIPT_CONTEXT = b"carvault-deletion-receipt-v1\n"


def frozen_vins(db: Database, vins: Iterable[str] | None = None) -> set[str]:
    """The vehicles (of ``vins``, or all) whose data is frozen: a legal hold in force on the vehicle while its
    owner's deletion request for it (or for all their data) waits on that hold.

    Frozen data is kept, not served: no read answers it (``Deletions.check_served``) and no fleet job reads it
    (``fleet.engines.dataset_of``). The one statement of the rule for both.
    """
    q = (
        select(LegalHold.vin)
        .distinct()
        .join(Vehicle, Vehicle.vin == LegalHold.vin)
        .join(
            DeletionRequest,
            (DeletionRequest.owner_id == Vehicle.owner_id)
            & (DeletionRequest.status == "held")
            & ((DeletionRequest.vin == LegalHold.vin) | DeletionRequest.vin.is_(None)),
        )
        .where(LegalHold.released_ms.is_(None))
    )
    if vins is not None:
        q = q.where(LegalHold.vin.in_(list(vins)))
    with db.connection() as conn:
        return set(conn.execute(q).scalars())


WORKING_DAYS = 10
RETAINED = [
    {"what": "consent and audit records", "why": "proof of lawful processing (PIPL art. 54; audit duty)"},
    {
        "what": "transparency-log leaves (VIN, batch hashes)",
        "why": "the log is append-only; removing a leaf would break every later inclusion proof",
    },
    {"what": "the vehicle registration and chain head", "why": "so the car can keep uploading if you wish"},
]


def add_working_days(start_ms: int, days: int, zone: dt.tzinfo = dt.UTC) -> int:
    """``days`` working days (Monday–Friday) after ``start_ms``, the days as the calendar of ``zone`` has them
    (public holidays are not modelled)."""
    d = dt.datetime.fromtimestamp(start_ms / 1000, zone)
    left = days
    while left:
        d += dt.timedelta(days=1)
        if d.weekday() < 5:
            left -= 1
    return int(d.timestamp() * 1000)


def overwrite(path: Path, offset: int, length: int) -> int:
    """Overwrite one batch's exact bytes with zeros in place and fsync; return the bytes erased.

    In place, so other writers' offsets in the same segment never move. A segment already gone counts nothing.
    """
    return overwrite_ranges(path, [(offset, length)])


def overwrite_ranges(path: Path, ranges: list[tuple[int, int]]) -> int:
    """Overwrite several (offset, length) ranges of one segment file with zeros, then fsync once; return the bytes."""
    return zero_ranges(path, ranges)


def signed_record(body: dict[str, Any], context: bytes, key: Ed25519PrivateKey, vkey: str) -> dict[str, Any]:
    """``body`` plus an Ed25519 signature by the region's log key over ``context`` + its canonical JSON."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "signature": base64.b64encode(key.sign(context + canonical)).decode(), "signed_by": vkey}


def request_json(r: DeletionRequest, holds: list[LegalHold]) -> dict[str, Any]:
    """A deletion request as the API shows it."""
    return {
        "id": r.id,
        "vin": r.vin,
        "status": r.status,
        "reason": r.reason,
        "requested_ms": r.requested_ms,
        "deadline_ms": r.deadline_ms,
        "completed_ms": r.completed_ms,
        "due_ms": r.due_ms,
        "cancelled_ms": r.cancelled_ms,
        "receipt": json.loads(r.receipt) if r.receipt else None,
        "holds": [{"vin": h.vin, "reason": h.reason, "authority": h.authority, "since_ms": h.since_ms} for h in holds],
    }


class Deletions:
    """Deletion requests and legal holds of one region."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.db = region.db

    # -------------------------------------------------------------- holds
    def active_holds(self, vins: list[str]) -> list[LegalHold]:
        """Holds in force on any of these vehicles."""
        with self.db.session() as s:
            return list(s.scalars(select(LegalHold).where(LegalHold.vin.in_(vins), LegalHold.released_ms.is_(None))))

    def holds(self, *, active: bool = True, limit: int = 500) -> list[LegalHold]:
        """The region's legal holds (only those in force, by default), newest first: the operator's view."""
        q = select(LegalHold).order_by(LegalHold.id.desc()).limit(limit)
        if active:
            q = q.where(LegalHold.released_ms.is_(None))
        with self.db.session() as s:
            return list(s.scalars(q))

    def place_hold(self, vin: str, authority: str, reason: str, *, by: Actor | None = None) -> LegalHold:
        """Freeze a vehicle's data against deletion (``by``: the staff member who records it for the authority)."""
        authority, reason = authority.strip(), reason.strip()
        if not authority or len(authority) > 200:
            raise ValidationFailed("name the authority ordering the hold (at most 200 characters)", field="authority")
        if not reason or len(reason) > 1000:
            raise ValidationFailed("give the case or reason of the hold (at most 1000 characters)", field="reason")
        with self.db.session() as s:
            v = s.get(Vehicle, vin)
            if v is None:
                raise NotFound(f"no vehicle {vin}")
            hold = LegalHold(vin=vin, authority=authority, reason=reason)
            s.add(hold)
        self.region.audit.record(
            owner_id=v.owner_id,
            vin=vin,
            actor=by or Actor("authority", authority),
            action="hold.place",
            legal_basis=LEGAL_OBLIGATION,
            detail={"reason": reason, "authority": authority, "hold_id": hold.id},
        )
        return hold

    def release_hold(self, hold_id: int, *, by: Actor | None = None) -> list[DeletionRequest]:
        """End a hold; waiting deletion requests then proceed (``by``: the staff member who records the release)."""
        with self.db.session() as s:
            hold = s.get(LegalHold, hold_id)
            if hold is None:
                raise NotFound(f"no legal hold {hold_id}")
            if hold.released_ms is not None:
                raise Conflict(f"legal hold {hold_id} was already released")
            hold.released_ms = now_ms()
            v = s.get(Vehicle, hold.vin)
            waiting = list(s.scalars(select(DeletionRequest).where(DeletionRequest.status == "held")))
        self.region.audit.record(
            owner_id=v.owner_id if v else None,
            vin=hold.vin,
            actor=by or Actor("authority", hold.authority),
            action="hold.release",
            legal_basis=LEGAL_OBLIGATION,
            detail={"hold_id": hold_id},
        )
        return [self.process(r.id) for r in waiting]

    def check_served(self, vin: str) -> None:
        """Refuse to serve data frozen by a hold after the owner asked for its deletion.

        Every read of a vehicle's data asks this first, and almost always no hold is in force: that answer is one
        Core statement on a plain connection (an ORM session cost about 0.5 ms a read, issue 12)."""
        with self.db.connection() as conn:
            held = conn.execute(_HOLD_IN_FORCE, {"vin": vin}).first()
        if held is None:
            return
        holds = self.active_holds([vin])
        if holds and frozen_vins(self.db, [vin]):  # a hold in force (not released since) that a request waits on
            h = holds[0]
            raise DataFrozen(
                f"this data is under a legal hold ({h.authority}: {h.reason}); it is kept, not served, "
                "and will be deleted when the hold ends",
                authority=h.authority,
            )

    # -------------------------------------------------------------- requests
    @property
    def grace_ms(self) -> int:
        """The grace period between an owner's request and its erasure (setting ``deletion_grace_s``)."""
        return self.region.settings.deletion_grace_s * 1000

    def request(
        self,
        owner_id: int,
        vin: str | None,
        reason: str,
        *,
        by: Actor | None = None,
        legal_basis: str = OWNER_REQUEST,
        immediately: bool = False,
    ) -> DeletionRequest:
        """Record a request (all my data, or one vehicle): scheduled for the end of the grace period, or, with
        ``immediately`` (the owner skipped it, or staff carry out a verified request), carried out now unless a
        hold stops it.

        ``by``: who asked when it is not the owner (a staff member carrying out a next-of-kin request, PIPL Art. 49).
        """
        if vin is not None:
            vin = self.region.vehicles.owned_one(owner_id, vin).vin
        now = now_ms()
        grace = 0 if immediately else self.grace_ms
        req = DeletionRequest(
            owner_id=owner_id,
            vin=vin,
            reason=reason[:1000],
            status="pending" if grace == 0 else "scheduled",
            requested_ms=now,
            deadline_ms=add_working_days(now, WORKING_DAYS),
            due_ms=now + grace,
        )
        with self.db.session() as s:
            s.add(req)
        self.region.audit.record(
            owner_id=owner_id,
            vin=vin,
            actor=by or Actor("owner", str(owner_id)),
            action="deletion.request",
            legal_basis=legal_basis,
            detail={
                "request_id": req.id,
                "deadline_ms": req.deadline_ms,
                "due_ms": req.due_ms,
                "grace_skipped": grace == 0,
            },
        )
        return self.process(req.id) if req.status == "pending" else req

    def cancel(self, owner_id: int, request_id: int) -> DeletionRequest:
        """The owner takes back a request still in its grace period; recorded in the audit chain.

        ``NotFound`` for another owner's request; ``DeletionNotCancellable`` once erasure has started or ended.
        """
        with self.db.session() as s:
            req = s.get(DeletionRequest, request_id)
            if req is None or req.owner_id != owner_id:
                raise NotFound("you have no deletion request with that number", request_id=request_id)
            # One conditional UPDATE: the scheduler claiming the request at the same moment wins or loses whole.
            claimed = s.execute(
                update(DeletionRequest)
                .where(DeletionRequest.id == request_id, DeletionRequest.status == "scheduled")
                .values(status="cancelled", cancelled_ms=now_ms())
            )
            status, vin, due = req.status, req.vin, req.due_ms
        if rowcount(claimed) != 1:
            raise DeletionNotCancellable(
                "this deletion request can no longer be cancelled: it is no longer waiting out its grace period",
                request_id=request_id,
                status=status,
            )
        self.region.audit.by_owner(
            owner_id, "deletion.cancel", vin=vin, detail={"request_id": request_id, "due_ms": due}
        )
        with self.db.session() as s:
            row = s.get(DeletionRequest, request_id)
            assert row is not None
            return row

    def run_due(self) -> int:
        """Carry out the scheduled requests whose grace period has ended; return how many completed."""
        now = now_ms()
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(DeletionRequest.id)
                    .where(DeletionRequest.status == "scheduled", DeletionRequest.due_ms <= now)
                    .order_by(DeletionRequest.id)
                )
            )
        finished = 0
        for i in ids:
            with self.db.session() as s:  # claimed by one conditional UPDATE: a cancel or another replica races it
                won = rowcount(
                    s.execute(
                        update(DeletionRequest)
                        .where(DeletionRequest.id == i, DeletionRequest.status == "scheduled")
                        .values(status="pending", due_ms=now_ms())
                    )
                )
            if won == 1 and self.process(i).status == "completed":
                finished += 1
        return finished

    def resume(self, min_age_ms: int = 60_000) -> int:
        """Carry out requests whose grace period has ended, and those a killed process left pending (recorded,
        perhaps half erased: bytes zeroed, rows still naming them); return how many were finished. Erasing again
        is harmless. Requests that started less than ``min_age_ms`` ago are left to the process carrying them out."""
        finished = self.run_due()
        started = func.coalesce(DeletionRequest.due_ms, DeletionRequest.requested_ms)
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(DeletionRequest.id)
                    .where(DeletionRequest.status == "pending", started < now_ms() - min_age_ms)
                    .order_by(DeletionRequest.id)
                )
            )
        return finished + sum(1 for i in ids if self.process(i).status == "completed")

    def _vins(self, req: DeletionRequest) -> list[str]:
        if req.vin is not None:
            return [req.vin]
        return [v.vin for v in self.region.vehicles.owned(req.owner_id)]

    def process(self, request_id: int) -> DeletionRequest:
        """Erase the request's data now, or mark it held; return the updated request."""
        with self.db.session() as s:
            req = s.get(DeletionRequest, request_id)
            assert req is not None
        if req.status in ("completed", "cancelled", "scheduled"):
            return req  # done, taken back, or still in its grace period (``run_due`` claims it when that ends)
        vins = self._vins(req)
        if self.active_holds(vins):
            with self.db.session() as s:
                s.get(DeletionRequest, request_id).status = "held"  # type: ignore[union-attr]
                req.status = "held"
            return req
        erased_bytes, batches, packages, events, frames = 0, 0, 0, 0, 0
        reader = self.region.segment_reader
        for vin in vins:
            with self.db.session() as s:
                recs = list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin)))
                pkgs = list(s.scalars(select(IncidentPackage).where(IncidentPackage.vin == vin)))
            for rec in recs:  # zeroed in place (local) or rewritten zeroed / deleted (object storage)
                erased_bytes += reader.erase(rec.segment, [(rec.offset, rec.length)])
            blobs = self.region.blobs
            for p in pkgs:
                blobs.delete(f"packages/{p.file_name}")
            with self.db.session() as s:  # portability bundles not yet fetched hold copies of the batches too
                bundles = list(s.scalars(select(PortabilityBundle.file_name).where(PortabilityBundle.vin == vin)))
            for name in bundles:
                (self.region.settings.data_dir / "portability" / name).unlink(missing_ok=True)
            with self.db.session() as s:  # finished exports (kept a week) are copies of the vehicle's telemetry too
                # Jobs still queued or running are cancelled first: a job's last step is a conditional UPDATE from
                # running to done, so one building now drops its file instead of storing a copy of erased data.
                s.execute(
                    update(ExportJob)
                    .where(ExportJob.vin == vin, ExportJob.status.in_(("queued", "running")))
                    .values(status="cancelled", error="the vehicle's data was deleted", finished_ms=now_ms())
                )
            with self.db.session() as s:
                exports = list(
                    s.scalars(select(ExportJob.file_name).where(ExportJob.vin == vin, ExportJob.file_name.is_not(None)))
                )
            for export in exports:
                blobs.delete(f"exports/{export}")
            self.region.derived.delete_vehicle(vin)
            frames += self.region.frames.delete_vehicle(vin)
            with self.db.session() as s:
                # A compaction since the first read moved a skeleton (object storage): erase it where it is now.
                erased = {(r.segment, r.offset) for r in recs}
                now_at = s.execute(
                    select(BatchRecord.segment, BatchRecord.offset, BatchRecord.length).where(BatchRecord.vin == vin)
                ).all()
                moved = [r for r in now_at if (r[0], r[1]) not in erased]
                batches += rowcount(s.execute(delete(BatchRecord).where(BatchRecord.vin == vin)))
                events += rowcount(s.execute(delete(VehicleEvent).where(VehicleEvent.vin == vin)))
                packages += rowcount(s.execute(delete(IncidentPackage).where(IncidentPackage.vin == vin)))
                s.execute(delete(RetentionWithheld).where(RetentionWithheld.vin == vin))  # marks of the gone batches
                forget_charging(s, vin)  # charging sessions derived from them (access/charging.py)
                s.execute(delete(StatisticsDay).where(StatisticsDay.vin == vin))  # summaries derived from them
                # Counters of refused uploads name their seqs and spans (when the car drove): they go too.
                s.execute(delete(BatchRefusal).where(BatchRefusal.vin == vin))
            for seg, off, n in moved:
                erased_bytes += reader.erase(seg, [(off, n)])
            if reader.directory is None:
                # Object storage: a compaction killed after writing a batch's skeleton object and before its row
                # named it left the object under its one name (prefix and signature of the batch): it goes too.
                for rec in recs:
                    if rec.kind == "telemetry" and rec.payload_key is None:
                        blobs.delete(SEGMENTS + skeleton_name(rec.batch_hash))
            # Again, now that the rows are gone: a copy written between the first sweep and the rows' deletion
            # (a queued write, a racing read, a compaction's part) found its batch still there and stayed; later
            # ones remove themselves (a compaction whose rows are gone removes the part it wrote).
            self.region.derived.delete_vehicle(vin)
        done = now_ms()
        body = {
            "request_id": req.id,
            "region": self.region.name,
            "vins": vins,
            "batches_erased": batches,
            "bytes_overwritten": erased_bytes,
            "events_erased": events,
            "packages_erased": packages,
            "frames_erased": frames,
            "requested_ms": req.requested_ms,
            "completed_ms": done,
            "deadline_ms": req.deadline_ms,
            "retained": RETAINED,
        }
        receipt = signed_record(body, RECEIPT_CONTEXT, self.region.log_key, self.region.log.vkey)
        with self.db.session() as s:
            row = s.get(DeletionRequest, request_id)
            assert row is not None
            row.status, row.completed_ms, row.receipt = "completed", done, json.dumps(receipt)
            req = row
        self.region.audit.record(
            owner_id=req.owner_id,
            vin=req.vin,
            actor=Actor("system", "deletion"),
            action="deletion.complete",
            legal_basis=OWNER_REQUEST,
            detail={"request_id": req.id, "batches_erased": batches},
        )
        return req

    def queue(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """The operator's deletion queue: every request not yet completed, nearest deadline first, with its owner
        and the holds that stop it."""
        with self.db.session() as s:
            reqs = list(
                s.scalars(
                    select(DeletionRequest)
                    .where(DeletionRequest.status.not_in(("completed", "cancelled")))
                    .order_by(DeletionRequest.deadline_ms, DeletionRequest.id)
                    .limit(limit)
                )
            )
        return [
            {**request_json(r, self.active_holds(self._vins(r)) if r.status == "held" else []), "owner_id": r.owner_id}
            for r in reqs
        ]

    def recent(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The last completed requests, newest first (what the queue recently carried out)."""
        with self.db.session() as s:
            reqs = list(
                s.scalars(
                    select(DeletionRequest)
                    .where(DeletionRequest.status == "completed")
                    .order_by(DeletionRequest.completed_ms.desc(), DeletionRequest.id.desc())
                    .limit(limit)
                )
            )
        return [{**request_json(r, []), "owner_id": r.owner_id} for r in reqs]

    def list(self, owner_id: int) -> list[dict[str, Any]]:
        """The owner's requests, newest first, with any holds that stop them."""
        with self.db.session() as s:
            reqs = list(
                s.scalars(
                    select(DeletionRequest)
                    .where(DeletionRequest.owner_id == owner_id)
                    .order_by(DeletionRequest.id.desc())
                )
            )
        return [request_json(r, self.active_holds(self._vins(r)) if r.status == "held" else []) for r in reqs]


class DeletionScheduler:
    """The in-process trigger: every ``interval_s`` seconds, carry out requests whose grace period has ended
    (``Deletions.resume``) in a worker thread. Every replica runs one; the claim is one conditional UPDATE."""

    def __init__(self, deletions: Deletions, interval_s: float = 60.0) -> None:
        self.deletions = deletions
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (nothing when the interval is 0)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="deletion-scheduler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.deletions.resume)
            except Exception:  # noqa: BLE001 - whatever failed, the loop must live to try again next interval
                log.exception("carrying out due deletions failed; the next interval tries again")

    async def stop(self) -> None:
        """Cancel the loop (a deletion already in its thread finishes on its own; ``resume`` heals a killed one)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
