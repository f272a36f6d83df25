"""The completeness report: per day and per drive of a vehicle, what is missing and why, signed by the region.

Everything is computed from the region's own records, never from a guess: the hash chain (each stored batch's
``seq``, span and columns), the rows the batches hold, the transparency log (each batch's leaf index and hash), the
owner's consent history (compliance/consent.py), the refusals the gateway recorded for this car
(``BatchRefusal``, ingest/gateway.py), deletion requests, retention purges (their per-vehicle audit entries name the
erased seqs), retention withholding and legal holds. A stretch of time without rows (a *gap*, longer than
``GAP_MS``) gets one reason:

- ``not_sent`` — the chain is unbroken around it: the car sent nothing for that time (off, asleep, or nothing the
  owner lets it send); a stored batch whose span covers it but holds no rows for it says the same;
- ``refused`` — the car sent data for that time and the region refused it (the stable error code and counts);
- ``deleted`` — the batches are missing from the chain because the owner's deletion request erased them;
- ``retention_erased`` — missing because a retention purge erased them (its run and the erased seqs);
- ``missing_from_chain`` — seqs missing with no record that explains them (should never happen; shown if it does);
- ``not_yet_received`` — after the newest batch the region holds: still in the car, or never made;
- ``not_available`` — a grant holder's report only: data is missing, and why is the owner's own business. A grant
  holder learns that data is missing and when, never why when the why is the owner's private act: batches erased
  by the owner's deletion request (and, so that the neutral word does not single them out, seqs missing without a
  record) read ``not_available``; the owner's deletion requests, the software versions and the signals that
  appeared or vanished with an update are in the owner's report only.

Per category: periods with consent off (``consent_off``) and batches whose category is withheld by retention.
Per signal: samples present against samples expected (the catalogue rate times the seconds the car was sending and
the category collecting; on-change signals have no expected count). A legal hold in force freezes the data (kept,
not served): the report then counts from the batch index alone and reads no rows.

The report is signed with the region's log key exactly as deletion receipts and retention records are
(``compliance.deletion.signed_record``, context ``REPORT_CONTEXT``); verify/completeness.py checks it offline.
All times are milliseconds since the epoch, UTC; ``*_utc`` members spell them in ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, func, or_, select, true

from carvault.access.grants import Access
from carvault.access.trips import TIMELINE_SIGNALS, detect
from carvault.compliance.consent import COLLECTING, Policy, change_points
from carvault.compliance.deletion import signed_record
from carvault.compliance.retention import column_figures
from carvault.errors import InvalidQuery, LocationInMaskedPlace
from carvault.signals import CATEGORIES, Catalogue, Signal
from carvault.store.metadata import (
    AuditEvent,
    BatchRecord,
    BatchRefusal,
    Database,
    DeletionRequest,
    LegalHold,
    RetentionWithheld,
    Vehicle,
    now_ms,
)
from carvault.store.telemetry import TelemetryStore
from carvault.timezones import region_zone

REPORT_FORMAT = "carvault-completeness-report"
REPORT_VERSION = 1
REPORT_CONTEXT = b"carvault-completeness-report-v1\n"
DAY_MS = 86_400_000
GAP_MS = 60_000  # rows further apart than a minute: the car was not sending (trips.py's max_gap_s too)
DRIVE_GAP_MS = 2_000  # within a drive, periodic signals come at 1-10 Hz: two seconds without rows is a hole
MAX_DAYS = 7  # a detailed report covers at most a week; the calendar strip covers CALENDAR_DAYS from the index
CALENDAR_DAYS = 30
MAX_GAPS = 500  # per report; more are counted, not listed
# Refusals a grant holder's report leaves out: they say when the car was inside one of the owner's masked places.
OWNER_ONLY_REFUSALS = (LocationInMaskedPlace.code,)
TIMES_NOTE = "times are milliseconds since 1970-01-01 UTC; *_utc members are ISO 8601 in UTC"

FIRST_YEAR, LAST_YEAR = 2000, 9998  # batches start in 2000 (protocol §2.1); a day's end must still be a date
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_REPORT_MS = 253_370_678_400_000  # 9998-12-31T00:00:00Z

NOT_SENT = "not_sent"
REFUSED = "refused"
DELETED = "deleted"
RETENTION_ERASED = "retention_erased"
MISSING = "missing_from_chain"
NOT_YET_RECEIVED = "not_yet_received"
NOT_AVAILABLE = "not_available"
REASONS = (NOT_SENT, REFUSED, DELETED, RETENTION_ERASED, MISSING, NOT_YET_RECEIVED, NOT_AVAILABLE)
# What a grant holder's report says instead of a reason that is the owner's private act (and of the one reason
# that would then single it out by elimination).
GRANT_HOLDER_REASONS = {DELETED: NOT_AVAILABLE, MISSING: NOT_AVAILABLE}
CSV_FIELDS = ("scope", "start_utc", "end_utc", "seconds", "reason", "detail")


def utc(ms: int) -> str:
    """An instant in ISO 8601 UTC with milliseconds."""
    d = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def zone_of(name: str | None, region: str) -> tuple[str, dt.tzinfo]:
    """The zone days are cut in: ``name`` (IANA) if given, else the region's civil zone, else UTC."""
    if name:
        try:
            return name, ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidQuery(f"unknown time zone {name[:60]!r}; give an IANA name such as Asia/Shanghai") from None
    found = region_zone(region)
    return found if found else ("UTC", dt.UTC)


def day_window(day: str, zone: dt.tzinfo) -> tuple[int, int]:
    """``[start_ms, end_ms)`` of a civil date (YYYY-MM-DD, 2000 to 9998) in ``zone``."""
    try:
        d = dt.date.fromisoformat(day)
    except ValueError:
        raise InvalidQuery("day must be a date, YYYY-MM-DD", parameter="day") from None
    if not FIRST_YEAR <= d.year <= LAST_YEAR:
        raise InvalidQuery(f"day must lie in the years {FIRST_YEAR} to {LAST_YEAR}", parameter="day")
    start = dt.datetime.combine(d, dt.time(), zone)
    end = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def check_instant(ms: int, name: str) -> int:
    """An instant a report may name: within the years ``FIRST_YEAR`` to ``LAST_YEAR`` (UTC)."""
    if not EARLIEST_MS <= ms <= LATEST_REPORT_MS:
        raise InvalidQuery(f"{name} must lie in the years {FIRST_YEAR} to {LAST_YEAR}", parameter=name)
    return ms


def _days(start_ms: int, end_ms: int, zone: dt.tzinfo) -> list[tuple[str, int, int]]:
    """The civil days that ``[start_ms, end_ms)`` touches, each as (date, start, end) clipped to the window."""
    out: list[tuple[str, int, int]] = []
    d = dt.datetime.fromtimestamp(start_ms / 1000, zone).date()
    while True:
        lo, hi = day_window(d.isoformat(), zone)
        if lo >= end_ms:
            return out
        out.append((d.isoformat(), max(lo, start_ms), min(hi, end_ms)))
        d += dt.timedelta(days=1)


def _intervals_overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    """Milliseconds two half-open intervals share."""
    return max(0, min(a1, b1) - max(a0, b0))


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals, sorted."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out


def _seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """[[first, last], ...] of runs of consecutive seqs."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


@dataclass(frozen=True)
class _Batch:
    """What the report needs of one stored batch."""

    id: int
    seq: int
    kind: str
    t0: int
    t1: int
    batch_hash: str
    log_index: int | None
    leaf_hash: bytes | None
    samples: int
    columns: frozenset[str]
    software_version: str | None
    received_ms: int
    segment: str
    offset: int
    length: int
    payload_key: str | None  # where its payload is once compacted (store/day_copies.py)

    def to_json(self, owner: bool = True) -> dict[str, Any]:
        """The batch as the report lists it (what ``carvault verify completeness`` checks against the log); a grant
        holder's report leaves its software version out (``null``)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "t0": self.t0,
            "t1": self.t1,
            "batch_hash": self.batch_hash,
            "log_index": self.log_index,
            "leaf_hash": self.leaf_hash.hex() if self.leaf_hash else None,
            "samples": self.samples,
            "software_version": self.software_version if owner else None,
        }


_BATCH_COLUMNS = (
    BatchRecord.id,
    BatchRecord.seq,
    BatchRecord.kind,
    BatchRecord.t0,
    BatchRecord.t1,
    BatchRecord.batch_hash,
    BatchRecord.log_index,
    BatchRecord.leaf_hash,
    BatchRecord.samples,
    BatchRecord.columns,
    BatchRecord.software_version,
    BatchRecord.received_ms,
    BatchRecord.segment,
    BatchRecord.offset,
    BatchRecord.length,
    BatchRecord.payload_key,
)


def _batch(r: Any) -> _Batch:
    return _Batch(
        r.id,
        r.seq,
        r.kind,
        r.t0,
        r.t1,
        r.batch_hash,
        r.log_index,
        r.leaf_hash,
        r.samples,
        frozenset(c for c in r.columns.split(",") if c),
        r.software_version,
        r.received_ms,
        r.segment,
        r.offset,
        r.length,
        r.payload_key,
    )


class _Context:
    """The records one report is computed from, read once."""

    def __init__(self, service: Completeness, access: Access, start_ms: int, end_ms: int, now: int) -> None:
        self.vin = access.vin
        self.owner_id = access.vehicle.owner_id
        self.is_owner = access.view.is_owner
        self.start_ms, self.end_ms, self.now = start_ms, end_ms, now
        db = service.db
        with db.session() as s:
            self.head_seq = int(s.scalar(select(Vehicle.last_seq).where(Vehicle.vin == self.vin)) or 0)
            rows = s.execute(
                select(*_BATCH_COLUMNS)
                .where(BatchRecord.vin == self.vin, BatchRecord.t0 < end_ms, BatchRecord.t1 >= start_ms)
                .order_by(BatchRecord.seq)
            ).all()
            self.batches = [_batch(r) for r in rows]
            self.refusals = list(
                s.scalars(
                    select(BatchRefusal)
                    .where(BatchRefusal.vin == self.vin, BatchRefusal.t0_min < end_ms, BatchRefusal.t1_max >= start_ms)
                    .order_by(BatchRefusal.hour_ms, BatchRefusal.code)
                )
            )
            if not access.view.is_owner:  # when the car was at the owner's home is not a grant holder's to know
                self.refusals = [r for r in self.refusals if r.code not in OWNER_ONLY_REFUSALS]
            self.holds = list(
                s.scalars(
                    select(LegalHold)  # in force now (a hold freezes all of the vehicle's data), or during the window
                    .where(LegalHold.vin == self.vin)
                    .where(
                        or_(
                            LegalHold.released_ms.is_(None),
                            and_(LegalHold.since_ms < end_ms, LegalHold.released_ms >= start_ms),
                        )
                    )
                    .order_by(LegalHold.id)
                )
            )
            self.deletions = list(
                s.scalars(
                    select(DeletionRequest)
                    .where(DeletionRequest.owner_id == self.owner_id)
                    .where(or_(DeletionRequest.vin == self.vin, DeletionRequest.vin.is_(None)))
                    .order_by(DeletionRequest.id)
                )
            )
            purges = s.execute(
                select(AuditEvent.detail, AuditEvent.at_ms).where(
                    AuditEvent.vin == self.vin, AuditEvent.action == "retention.purge"
                )
            ).all()
            ids = [b.id for b in self.batches]
            withheld = s.execute(
                select(RetentionWithheld.batch_id, RetentionWithheld.categories).where(
                    RetentionWithheld.batch_id.in_(ids or [-1])
                )
            ).all()
        self.withheld = {int(r.batch_id): json.loads(r.categories) for r in withheld}
        self.purged: list[tuple[int, int, int, int]] = []  # (first seq, last seq, run id, at)
        for p in purges:
            detail = json.loads(p.detail)
            for lo, hi in detail.get("erased_seqs", []):
                self.purged.append((int(lo), int(hi), int(detail.get("run_id", 0)), int(p.at_ms)))
        self.frozen_now = any(h.released_ms is None for h in self.holds)
        self._neighbours: dict[tuple[str, int], _Batch | None] = {}

    def telemetry(self) -> list[_Batch]:
        """The stored telemetry batches overlapping the window."""
        return [b for b in self.batches if b.kind == "telemetry"]

    def neighbour(self, db: Database, before: bool, at_ms: int) -> _Batch | None:
        """The stored telemetry batch nearest before (ending by) or after (starting from) an instant, by seq."""
        key = ("b" if before else "a", at_ms)
        if key not in self._neighbours:
            q = select(*_BATCH_COLUMNS).where(BatchRecord.vin == self.vin, BatchRecord.kind == "telemetry")
            if before:
                q = q.where(BatchRecord.t1 <= at_ms).order_by(BatchRecord.seq.desc())
            else:
                q = q.where(BatchRecord.t0 >= at_ms).order_by(BatchRecord.seq)
            with db.session() as s:
                row = s.execute(q.limit(1)).first()
            self._neighbours[key] = _batch(row) if row is not None else None
        return self._neighbours[key]


class Completeness:
    """Builds and signs completeness reports (``region.completeness``)."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        telemetry: TelemetryStore,
        policy_of: Callable[[str], Policy],
        region: str,
        log_key: Ed25519PrivateKey,
        log_vkey: str,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.telemetry = telemetry
        self.policy_of = policy_of  # vin -> Policy (region.consents.policy): the consent history
        self.region = region
        self.log_key = log_key
        self.log_vkey = log_vkey

    # ------------------------------------------------------------------ window
    def window(
        self, *, day: str | None, start_ms: int | None, end_ms: int | None, tz: str | None
    ) -> tuple[int, int, str]:
        """The asked window: a civil day in ``tz`` (default the region's), or ``[start_ms, end_ms)`` up to a week."""
        zone_name, zone = zone_of(tz, self.region)
        if day is not None:
            if start_ms is not None or end_ms is not None:
                raise InvalidQuery("give either day or start_ms and end_ms, not both")
            lo, hi = day_window(day, zone)
            return lo, hi, zone_name
        if start_ms is None or end_ms is None:
            raise InvalidQuery("give day=YYYY-MM-DD, or both start_ms and end_ms")
        check_instant(start_ms, "start_ms")
        check_instant(end_ms, "end_ms")
        if end_ms <= start_ms:
            raise InvalidQuery("the window's end must be after its start", start_ms=start_ms, end_ms=end_ms)
        if end_ms - start_ms > MAX_DAYS * DAY_MS:
            raise InvalidQuery(f"a completeness report covers at most {MAX_DAYS} days", max_days=MAX_DAYS)
        return start_ms, end_ms, zone_name

    # ------------------------------------------------------------------ the report
    def report(
        self, access: Access, start_ms: int, end_ms: int, zone_name: str, now: int | None = None
    ) -> dict[str, Any]:
        """The signed report of ``access``'s vehicle over ``[start_ms, end_ms)``, days cut in ``zone_name``."""
        start_ms, end_ms = access.view.window(start_ms, end_ms)
        now = now_ms() if now is None else now
        zone = zone_of(zone_name, self.region)[1]
        ctx = _Context(self, access, start_ms, end_ms, now)
        signals = [s for s in access.view.allowed() if s.category in CATEGORIES]
        policy = self.policy_of(ctx.vin)
        times = self._row_times(ctx)
        gaps = self._gaps(ctx, times, start_ms, min(end_ms, max(now, start_ms)), GAP_MS, "window")
        drives = self._drives(ctx, access)
        owner = access.view.is_owner
        body: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "region": self.region,
            "vin": ctx.vin,
            "generated_ms": now,
            "generated_utc": utc(now),
            "times": TIMES_NOTE,
            "time_zone": zone_name,
            "window": {"start_ms": start_ms, "end_ms": end_ms, "start_utc": utc(start_ms), "end_utc": utc(end_ms)},
            "for": "owner" if access.view.is_owner else "grant",
            "frozen": ctx.frozen_now,
            "chain": self._chain(ctx),
            "totals": self._figures(ctx, times, start_ms, end_ms, gaps),
            "days": [
                {"date": d, **self._figures(ctx, times, lo, hi, gaps)} for d, lo, hi in _days(start_ms, end_ms, zone)
            ],
            "gaps": gaps[:MAX_GAPS],
            "gaps_listed": min(len(gaps), MAX_GAPS),
            "gaps_total": len(gaps),
            "drives": drives,
            "categories": self._categories(ctx, signals, policy, times),
            "refusals": [self._refusal_json(r) for r in ctx.refusals],
            "deletions": [self._deletion_json(r) for r in ctx.deletions if r.status == "completed"] if owner else [],
            "retention_purges": [
                {"first_seq": lo, "last_seq": hi, "run_id": run, "at_ms": at, "at_utc": utc(at)}
                for lo, hi, run, at in ctx.purged
            ],
            "holds": [self._hold_json(h, owner) for h in ctx.holds],
            "software": self.software(ctx.vin, start_ms, end_ms) if owner else [],
            "batches": [b.to_json(owner) for b in ctx.batches],
        }
        return signed_record(body, REPORT_CONTEXT, self.log_key, self.log_vkey)

    def _row_times(self, ctx: _Context) -> np.ndarray | None:
        """Sample times (ms, sorted) of every telemetry row in the window; None while a hold freezes the data."""
        if ctx.frozen_now:
            return None
        table = self.telemetry.window(ctx.vin, ctx.start_ms, ctx.end_ms, [])
        return np.unique(table.column("t").cast(pa.int64()).to_numpy())

    def _chain(self, ctx: _Context) -> dict[str, Any]:
        """The chain around the window: stored seqs, the head, and seqs missing between the window's batches."""
        seqs = [b.seq for b in ctx.batches]
        missing: list[int] = []
        if seqs:
            have = set(seqs)
            missing = [s for s in range(seqs[0], seqs[-1] + 1) if s not in have]
        return {
            "head_seq": ctx.head_seq,
            "first_seq": seqs[0] if seqs else None,
            "last_seq": seqs[-1] if seqs else None,
            "batches": len(seqs),
            "telemetry_batches": len(ctx.telemetry()),
            "missing_seqs": _seq_ranges(missing),
            "logged": sum(1 for b in ctx.batches if b.log_index is not None),
        }

    # ------------------------------------------------------------------ gaps and their reasons
    def _gaps(
        self, ctx: _Context, times: np.ndarray | None, lo: int, hi: int, threshold: int, scope: str
    ) -> list[dict[str, Any]]:
        """Stretches of ``[lo, hi)`` longer than ``threshold`` without rows, each with its reason."""
        if hi <= lo:
            return []
        if times is None:  # frozen: coverage from the batch spans alone
            spans = _merge((max(b.t0, lo), min(b.t1 + 1, hi)) for b in ctx.telemetry())
            holes, cursor = [], lo
            for a, b in spans:
                if a - cursor > threshold:
                    holes.append((cursor, a))
                cursor = max(cursor, b)
            if hi - cursor > threshold:
                holes.append((cursor, hi))
        else:
            t = times[(times >= lo) & (times < hi)]
            edges = np.concatenate(([lo - 1], t, [hi]))
            d = np.diff(edges)
            idx = np.flatnonzero(d > threshold)
            holes = [(int(edges[i]) + 1, int(edges[i + 1])) for i in idx.tolist()]
        return [self._classify(ctx, a, b, scope) for a, b in holes]

    def _classify(self, ctx: _Context, a: int, b: int, scope: str) -> dict[str, Any]:
        """The reason data is missing for ``[a, b)``."""
        gap: dict[str, Any] = {
            "scope": scope,
            "start_ms": a,
            "end_ms": b,
            "start_utc": utc(a),
            "end_utc": utc(b),
            "seconds": round((b - a) / 1000, 3),
        }
        refused = [r for r in ctx.refusals if r.t0_min < b and r.t1_max >= a]
        inside = [x for x in ctx.telemetry() if x.t0 <= a and x.t1 + 1 >= b]
        if inside:
            return {**gap, "reason": NOT_SENT, "detail": {"empty_in_batch": inside[0].seq}}
        before = ctx.neighbour(self.db, True, b)
        after = ctx.neighbour(self.db, False, a)
        lo_seq = before.seq + 1 if before is not None else 1
        hi_seq = after.seq - 1 if after is not None else ctx.head_seq
        detail: dict[str, Any] = {
            "batch_before": before.seq if before is not None else None,
            "batch_after": after.seq if after is not None else None,
        }
        stored = self._stored_between(ctx.vin, lo_seq, hi_seq)  # event and media batches sit in the chain too
        if hi_seq >= lo_seq and stored < hi_seq - lo_seq + 1:  # the car made batches here the region does not hold
            found = self._explain_missing(ctx, lo_seq, hi_seq, {**detail, "stored_in_range": stored})
            if not ctx.is_owner and found["reason"] in GRANT_HOLDER_REASONS:
                found = {
                    "reason": GRANT_HOLDER_REASONS[found["reason"]],
                    "detail": {k: v for k, v in found["detail"].items() if k != "deletion_requests"},
                }
            return {**gap, **found}
        if refused:
            return {
                **gap,
                "reason": REFUSED,
                "detail": {
                    **detail,
                    "codes": sorted({r.code for r in refused}),
                    "count": sum(r.count for r in refused),
                },
            }
        if after is None:
            return {**gap, "reason": NOT_YET_RECEIVED, "detail": detail}
        return {**gap, "reason": NOT_SENT, "detail": detail}

    def _stored_between(self, vin: str, lo: int, hi: int) -> int:
        """How many batches of any kind the region holds with ``lo <= seq <= hi``."""
        if hi < lo:
            return 0
        with self.db.session() as s:
            q = select(func.count()).where(BatchRecord.vin == vin, BatchRecord.seq >= lo, BatchRecord.seq <= hi)
            return int(s.scalar(q) or 0)

    def _explain_missing(self, ctx: _Context, lo: int, hi: int, detail: dict[str, Any]) -> dict[str, Any]:
        """Why seqs ``lo..hi`` are not stored: a retention purge, a deletion, or nothing on record."""
        detail = {**detail, "missing_seqs": [lo, hi]}
        runs = sorted({run for a, z, run, _ in ctx.purged if a <= hi and z >= lo})
        if runs:
            return {"reason": RETENTION_ERASED, "detail": {**detail, "retention_runs": runs}}
        done = [r for r in ctx.deletions if r.status == "completed"]
        if done:
            return {"reason": DELETED, "detail": {**detail, "deletion_requests": [r.id for r in done]}}
        return {"reason": MISSING, "detail": detail}

    # ------------------------------------------------------------------ figures
    def _figures(
        self, ctx: _Context, times: np.ndarray | None, lo: int, hi: int, gaps: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """Seconds, seconds with data, batches, samples and gap seconds by reason within ``[lo, hi)``."""
        batches = [b for b in ctx.telemetry() if b.t0 < hi and b.t1 >= lo]
        if times is None:
            spans = _merge((max(b.t0, lo), min(b.t1 + 1, hi)) for b in batches)
            covered = -(-sum(b - a for a, b in spans) // 1000)  # whole seconds the spans touch
        else:
            t = times[(times >= lo) & (times < hi)]
            covered = len(np.unique(t // 1000))
        by_reason: dict[str, float] = {}
        for g in gaps:
            share = _intervals_overlap(g["start_ms"], g["end_ms"], lo, hi)
            if share:
                by_reason[g["reason"]] = round(by_reason.get(g["reason"], 0) + share / 1000, 3)
        return {
            "start_ms": lo,
            "end_ms": hi,
            "seconds": max(0, hi - lo) // 1000,
            "seconds_elapsed": max(0, min(hi, ctx.now) - lo) // 1000,  # a day not over yet is judged up to now
            "seconds_with_data": int(covered),
            "batches": len(batches),
            "samples": sum(b.samples for b in batches),
            "gap_seconds": by_reason,
            "refusals": sum(r.count for r in ctx.refusals if r.t0_min < hi and r.t1_max >= lo),
            "frozen": ctx.frozen_now,
        }

    def _drives(self, ctx: _Context, access: Access) -> list[dict[str, Any]] | None:
        """Each drive in the window: holes longer than ``DRIVE_GAP_MS`` with reasons, and its signals' sample counts."""
        if ctx.frozen_now:
            return None
        wanted = [p for p in TIMELINE_SIGNALS if p in self.catalogue]
        allowed = {s.path for s in access.view.allowed()}
        signals = [self.catalogue[p] for p in wanted if p in allowed]
        table = self.telemetry.window(ctx.vin, ctx.start_ms, ctx.end_ms, signals)
        out = []
        times = table.column("t").cast(pa.int64()).to_numpy()
        for d in detect(table).drives:
            inside = (times >= d.start_ms) & (times <= d.end_ms)
            part = table.filter(pa.array(inside))
            seconds = max(1, (d.end_ms - d.start_ms) // 1000)
            per_signal = []
            for s in signals:
                col = part.column(s.path)
                present = len(col) - col.null_count
                expected = None if s.on_change else int(s.rate_hz * seconds)
                per_signal.append({"path": s.path, "rate_hz": s.rate_hz, "present": present, "expected": expected})
            holes = self._gaps(ctx, np.unique(times[inside]), d.start_ms, d.end_ms + 1, DRIVE_GAP_MS, "drive")
            out.append(
                {
                    "start_ms": d.start_ms,
                    "end_ms": d.end_ms,
                    "start_utc": utc(d.start_ms),
                    "end_utc": utc(d.end_ms),
                    "seconds": seconds,
                    "seconds_with_data": len(np.unique(times[inside] // 1000)),
                    "distance_m": round(d.distance_m, 1),
                    "gaps": holes,
                    "signals": per_signal,
                    "software_version": self._version_at(ctx, d.start_ms) if ctx.is_owner else None,
                }
            )
        return out

    @staticmethod
    def _version_at(ctx: _Context, at: int) -> str | None:
        found = [b for b in ctx.telemetry() if b.t0 <= at <= b.t1]
        return found[0].software_version if found else None

    def _categories(
        self, ctx: _Context, signals: list[Signal], policy: Policy, times: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Per category: consent-off periods, batches withheld by retention, and per signal present vs expected."""
        counts = self._signal_counts(ctx, {s.path for s in signals})
        out = []
        by_cat: dict[str, list[Signal]] = {}
        for s in signals:
            by_cat.setdefault(s.category, []).append(s)
        withheld_of = {b.seq: set(ctx.withheld.get(b.id, [])) for b in ctx.batches}
        for name, sigs in sorted(by_cat.items()):
            off = self._consent_off(policy, name, ctx.start_ms, ctx.end_ms)
            on_seconds = None
            if times is not None:
                mask = np.ones(len(times), dtype=bool)
                for a, b in off:
                    mask &= ~((times >= a) & (times < b))
                on_seconds = len(np.unique(times[mask] // 1000))
            rows: list[dict[str, Any]] = []
            for s in sigs:
                present = counts.get(s.path) if counts is not None else None
                expected = None if s.on_change or on_seconds is None else int(s.rate_hz * on_seconds)
                if present or expected:
                    rows.append(
                        {
                            "path": s.path,
                            "rate_hz": s.rate_hz,
                            "sampling": "on_change" if s.on_change else "periodic",
                            "present": present,
                            "expected": expected,
                        }
                    )
            out.append(
                {
                    "category": name,
                    "privacy": str(CATEGORIES[name].privacy),
                    "consent_off": [
                        {"start_ms": a, "end_ms": b, "start_utc": utc(a), "end_utc": utc(b), "seconds": (b - a) // 1000}
                        for a, b in off
                    ],
                    "seconds_collecting_with_data": on_seconds,
                    "withheld_batches": sorted(seq for seq, cats in withheld_of.items() if name in cats),
                    "present": sum(r["present"] or 0 for r in rows) if counts is not None else None,
                    "expected": sum(r["expected"] or 0 for r in rows if r["expected"] is not None)
                    if on_seconds is not None
                    else None,
                    "signals": rows,
                }
            )
        return out

    def _signal_counts(self, ctx: _Context, paths: set[str]) -> dict[str, int] | None:
        """Samples per signal in the window's telemetry batches (a batch crossing the edge counts whole)."""
        if ctx.frozen_now:
            return None
        out: dict[str, int] = {}
        for b in ctx.telemetry():
            wanted = [c for c in b.columns if c in paths]
            if not wanted:
                continue
            raw = self.telemetry.segments.envelope(b)
            for path, (samples, _) in column_figures(
                raw, wanted, self.telemetry.derived.read(ctx.vin, b.batch_hash)
            ).items():
                out[path] = out.get(path, 0) + samples
        return out

    @staticmethod
    def _consent_off(policy: Policy, category: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """Periods of ``[lo, hi)`` in which the owner's decisions kept ``category`` off."""
        cuts = [lo] + [c for c in change_points(policy, category) if lo < c < hi] + [hi]
        off = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if policy.status(category, a) != COLLECTING]
        return _merge(off)

    # ------------------------------------------------------------------ records as the report shows them
    @staticmethod
    def _refusal_json(r: BatchRefusal) -> dict[str, Any]:
        return {
            "code": r.code,
            "count": r.count,
            "hour_ms": r.hour_ms,
            "hour_utc": utc(r.hour_ms),
            "first_ms": r.first_ms,
            "last_ms": r.last_ms,
            "seqs": [r.seq_min, r.seq_max],
            "span": [r.t0_min, r.t1_max],
            "span_utc": [utc(r.t0_min), utc(r.t1_max)],
            "message": r.message,
        }

    @staticmethod
    def _deletion_json(r: DeletionRequest) -> dict[str, Any]:
        receipt = json.loads(r.receipt) if r.receipt else {}
        return {
            "request_id": r.id,
            "requested_ms": r.requested_ms,
            "completed_ms": r.completed_ms,
            "completed_utc": utc(r.completed_ms) if r.completed_ms else None,
            "batches_erased": receipt.get("batches_erased"),
            "receipt_signature": receipt.get("signature"),
        }

    @staticmethod
    def _hold_json(h: LegalHold, owner: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": h.id,
            "since_ms": h.since_ms,
            "since_utc": utc(h.since_ms),
            "released_ms": h.released_ms,
            "released_utc": utc(h.released_ms) if h.released_ms else None,
        }
        if owner:
            out["authority"] = h.authority
        return out

    # ------------------------------------------------------------------ software and calendar
    def software(self, vin: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Versions over the ``CALENDAR_DAYS`` before ``end_ms``: each run, and signals that appeared or vanished."""
        lo = end_ms - CALENDAR_DAYS * DAY_MS
        with self.db.session() as s:
            rows = s.execute(
                select(
                    BatchRecord.seq, BatchRecord.t0, BatchRecord.t1, BatchRecord.columns, BatchRecord.software_version
                )
                .where(BatchRecord.vin == vin, BatchRecord.kind == "telemetry")
                .where(BatchRecord.t0 < end_ms, BatchRecord.t1 >= lo)
                .order_by(BatchRecord.seq)
            ).all()
        runs: list[dict[str, Any]] = []
        cols: list[set[str]] = []
        for r in rows:
            if not runs or runs[-1]["version"] != r.software_version:
                runs.append({"version": r.software_version, "first_seq": r.seq, "from_ms": r.t0, "from_utc": utc(r.t0)})
                cols.append(set())
            runs[-1].update(last_seq=r.seq, to_ms=r.t1, to_utc=utc(r.t1))
            runs[-1]["batches"] = runs[-1].get("batches", 0) + 1
            cols[-1].update(c for c in r.columns.split(",") if c)
        for i, run in enumerate(runs):
            run["appeared"] = sorted(cols[i] - cols[i - 1]) if i else []
            run["vanished"] = sorted(cols[i - 1] - cols[i]) if i else []
        return runs

    def calendar(
        self, vin: str, end_ms: int, zone_name: str, days: int = CALENDAR_DAYS, *, owner: bool = True
    ) -> list[dict[str, Any]]:
        """Per day of the ``days`` before ``end_ms`` (in ``zone_name``): seconds covered by batch spans (index only).

        ``owner`` false (a grant holder's calendar): refusals only the owner may see are not counted."""
        zone = zone_of(zone_name, self.region)[1]
        lo = end_ms - days * DAY_MS
        with self.db.session() as s:
            spans = s.execute(
                select(BatchRecord.t0, BatchRecord.t1).where(
                    BatchRecord.vin == vin,
                    BatchRecord.kind == "telemetry",
                    BatchRecord.t0 < end_ms,
                    BatchRecord.t1 >= lo,
                )
            ).all()
            refusals = s.execute(
                select(BatchRefusal.t0_min, BatchRefusal.t1_max, BatchRefusal.count.label("n")).where(
                    BatchRefusal.vin == vin,
                    BatchRefusal.t0_min < end_ms,
                    BatchRefusal.t1_max >= lo,
                    true() if owner else BatchRefusal.code.not_in(OWNER_ONLY_REFUSALS),
                )
            ).all()
        merged = _merge((a, b + 1) for a, b in spans)
        out = []
        for date, a, b in _days(lo, end_ms, zone)[-days:]:
            covered = sum(_intervals_overlap(x, y, a, b) for x, y in merged)
            out.append(
                {
                    "date": date,
                    "start_ms": a,
                    "end_ms": b,
                    "covered_seconds": -(-covered // 1000),  # whole seconds the spans touch
                    "seconds": (b - a) // 1000,
                    "refusals": sum(int(r.n) for r in refusals if r.t0_min < b and r.t1_max >= a),
                }
            )
        return out


def gaps_csv(report: dict[str, Any]) -> str:
    """The report's gaps (window and drives) as CSV; times in UTC, as the first line says."""
    out = io.StringIO()
    out.write(f"# CarVault completeness report, vehicle {report['vin']}, region {report['region']}; times in UTC\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    rows = list(report.get("gaps", []))
    for d in report.get("drives") or []:
        rows += d.get("gaps", [])
    for g in sorted(rows, key=lambda g: (g["start_ms"], g["scope"])):
        w.writerow([g["scope"], g["start_utc"], g["end_utc"], g["seconds"], g["reason"], json.dumps(g["detail"])])
    return out.getvalue()
