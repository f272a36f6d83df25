"""Retention: each category's period (``signals.CATEGORIES[..].retention_days``) enforced by a purge.

The rule, decided in docs/retention.md:

- A batch is signed by the car as a whole, so it is erased as a whole: once the *longest* period among the
  categories it carries has run out after its last sample (``t1 + longest < now``), its evidence bytes are
  zeroed in place and fsynced, and its index row, query copy, events, camera frames and the incident packages
  and portability bundles holding it go too, exactly as a deletion erases. Its transparency-log leaf stays, so
  checkpoints, inclusion proofs of the other batches and consistency proofs still verify.
- Before that, a category whose own period has ended is *withheld*: reads serve no sample of it older than its
  cutoff (store/telemetry.py applies the cutoffs each run publishes), and the batch's query copy is dropped (the
  next read rebuilds it without the column). Its bytes stay inside the signed evidence until the batch expires.
- Vehicles under a legal hold are skipped (recorded with the hold's id) and purged by the first run after the
  hold is released.
- Each run is recorded in ``retention_runs`` with a record signed by the region's log key, and audited: the
  region chain for the run, each affected owner's chain for their vehicles. A dry run plans and counts the
  same, changes nothing and says so.
- One purge at a time across replicas (a lease row in the metadata DB). An erased batch's row is swapped for a
  ``retention_erasures`` row in one transaction before any byte is touched, so a run killed midway leaves
  work the next run finishes, and reads never meet half-erased bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from carvault.access.audit import STORAGE_LIMITATION, Actor, AuditAction, AuditLog
from carvault.access.charging import forget as forget_charging
from carvault.compliance.deletion import signed_record
from carvault.errors import CarVaultError, NotFound, RetentionRunning, Unavailable
from carvault.ingest.frames import FrameStore
from carvault.protocol import CAMERA, payload_view
from carvault.signals import CATEGORIES, Catalogue
from carvault.store.day_copies import PREFIX as COPIES
from carvault.store.day_copies import part_key
from carvault.store.derived import DerivedCopies
from carvault.store.metadata import (
    BatchRecord,
    BatchRefusal,
    Database,
    IncidentPackage,
    LegalHold,
    PortabilityBundle,
    RetentionErasure,
    RetentionLease,
    RetentionRun,
    RetentionWithheld,
    StatisticsDay,
    Vehicle,
    VehicleEvent,
    now_ms,
    rowcount,
)
from carvault.store.segments import PREFIX as SEGMENTS
from carvault.store.segments import SegmentReader, skeleton_name
from carvault.store.tables import ExportJob, FrameRecord

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
RECORD_CONTEXT = b"carvault-retention-record-v1\n"
LEASE_NAME = "purge"
LEASE_MS = 10 * 60_000  # a lease outliving its holder (a killed run) frees itself after this
CUTOFF_CACHE_S = 5.0  # how stale the read path's cutoffs may be (another replica's run shows within this)
SCHEDULER_ACTOR = Actor("system", "retention")
GROUP = 100  # batches per transaction and per fsync of a segment; the lease is renewed between groups
MAX_BATCHES_PER_RUN = 200_000  # bounds a run's memory and time; a larger backlog takes several runs
FRAME_COLUMNS = (CAMERA + "FrameHash",)  # the column that binds a stored frame to its batch
# A refusal row (``batch_refusals``: a car's refused uploads per code and hour) records when the car's uploads failed
# and why: a diagnostic record of the car, kept for that category's period after the later of the refused data's end
# and the last refusal (docs/retention.md).
REFUSALS_KEPT_AS = "diagnostics"


def period_ms(category: str) -> int:
    """A category's retention period in milliseconds (the one home of the days is ``signals.CATEGORIES``)."""
    return CATEGORIES[category].retention_days * DAY_MS


def cutoffs_at(now: int) -> dict[str, int]:
    """Per category, the time before which its samples are past their period at ``now``."""
    return {name: now - period_ms(name) for name in CATEGORIES}


def categories_of(catalogue: Catalogue, columns: Iterable[str]) -> frozenset[str]:
    """The categories of the signal columns a batch carries (``t`` and unknown names carry none)."""
    return frozenset(s.category for c in columns if (s := catalogue.get(c)) is not None)


def longest_ms(categories: Iterable[str]) -> int:
    """How long a batch carrying these categories is kept: the longest of their periods (all, if none known)."""
    return max((period_ms(c) for c in categories), default=max(period_ms(c) for c in CATEGORIES))


@dataclass(frozen=True)
class BatchAction:
    """One batch a plan touches: where it is, what it carries, and what the plan does with it."""

    batch_id: int
    vin: str
    seq: int
    batch_hash: str
    t0: int
    t1: int
    segment: str
    offset: int
    length: int
    categories: frozenset[str]
    withhold: frozenset[str] = frozenset()  # newly past their period (withheld batches only)
    hold_id: int | None = None  # skipped because of this legal hold
    payload_key: str | None = None  # its payload part, once its day is compacted (store/day_copies.py)


@dataclass
class Plan:
    """What a run at ``now_ms`` erases, withholds and skips."""

    now_ms: int
    cutoffs: dict[str, int]
    erase: list[BatchAction] = field(default_factory=list)
    withhold: list[BatchAction] = field(default_factory=list)
    held: list[BatchAction] = field(default_factory=list)
    more_due: bool = False  # the plan stopped at its limit: the next run goes on

    @property
    def size(self) -> int:
        """Batches planned, whatever the action."""
        return len(self.erase) + len(self.withhold) + len(self.held)

    def to_json(self) -> dict[str, Any]:
        """Counts of batches per action (what ``policy`` and a dry run's caller see before any byte is read)."""
        return {
            "now_ms": self.now_ms,
            "batches_to_erase": len(self.erase),
            "batches_to_withhold": len(self.withhold),
            "batches_held": len(self.held),
            "holds": sorted({a.hold_id for a in self.held if a.hold_id is not None}),
            "more_due": self.more_due,
        }


@dataclass
class Counts:
    """Per category figures of one run."""

    erased_batches: int = 0
    erased_samples: int = 0
    erased_bytes: int = 0  # the category's compressed column bytes inside the erased evidence
    withheld_batches: int = 0
    withheld_samples: int = 0
    withheld_bytes: int = 0  # compressed bytes of the withheld columns, still inside kept evidence
    held_batches: int = 0

    def to_json(self) -> dict[str, int]:
        """The figures as the purge record states them."""
        return dict(self.__dict__)


def column_figures(
    raw: bytes, wanted: Iterable[str] | None = None, copy: pa.Table | None = None
) -> dict[str, tuple[int, int]]:
    """Per column of a stored batch (``wanted`` ones only, if given): (non-null samples, compressed bytes).

    The bytes come from the Parquet footer. The samples come from the footer's null counts when the car wrote
    statistics, else from the query copy (Arrow keeps each column's null count: no decoding), else the column is
    decoded from the evidence.
    """
    pf = pq.ParquetFile(pa.BufferReader(payload_view(raw)))
    md = pf.metadata
    keep = set(wanted) if wanted is not None else None
    out: dict[str, list[int]] = {}
    undecided: set[str] = set()
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for i in range(rg.num_columns):
            col = rg.column(i)
            name = col.path_in_schema
            if keep is not None and name not in keep:
                continue
            figures = out.setdefault(name, [0, 0])
            figures[1] += col.total_compressed_size
            stats = col.statistics
            if stats is not None and stats.has_null_count:
                figures[0] += col.num_values - stats.null_count
            else:
                undecided.add(name)
    if copy is not None:
        for name in undecided & set(copy.column_names):
            column = copy.column(name)
            out[name][0] = len(column) - column.null_count
        undecided -= set(copy.column_names)
    if undecided:
        table = pf.read(columns=sorted(undecided), use_threads=False)
        for name in undecided:
            column = table.column(name)
            out[name][0] = len(column) - column.null_count
    return {name: (v[0], v[1]) for name, v in out.items()}


class Retention:
    """Plans and runs retention purges of one region, and publishes the cutoffs the read path applies."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        audit: AuditLog,
        *,
        segments: SegmentReader,
        derived: DerivedCopies,
        frames: FrameStore,
        data_dir: Path,
        region: str,
        log_key: Ed25519PrivateKey,
        log_vkey: str,
        interval_s: int = 3600,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.audit = audit
        self.segments = segments
        self.derived = derived
        self.frames = frames
        self.data_dir = data_dir
        self.region = region
        self.log_key = log_key
        self.log_vkey = log_vkey
        self.interval_s = interval_s
        self._cached: tuple[float, dict[str, int]] = (-1.0, {})
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ the read side
    def category_cutoffs(self) -> dict[str, int]:
        """Per category, the cutoff the latest real run published (empty before the first run)."""
        with self.db.session() as s:
            text = s.scalar(
                select(RetentionRun.cutoffs)
                .where(RetentionRun.dry_run.is_(False))
                .order_by(RetentionRun.id.desc())
                .limit(1)
            )
        return {k: int(v) for k, v in json.loads(text).items()} if text else {}

    def withheld(self) -> dict[str, int]:
        """Per signal path, the time before which its samples are withheld (cached for a few seconds)."""
        at, cached = self._cached
        if time.monotonic() - at < CUTOFF_CACHE_S:
            return cached
        cut = self.category_cutoffs()
        paths = {s.path: cut[s.category] for s in self.catalogue if s.category in cut}
        with self._cache_lock:
            self._cached = (time.monotonic(), paths)
        return paths

    def forget_cutoffs(self) -> None:
        """Drop the cached cutoffs (a run in this process publishes new ones)."""
        with self._cache_lock:
            self._cached = (-1.0, {})

    # ------------------------------------------------------------------ planning
    def _holds(self) -> dict[str, int]:
        """VIN → the id of a legal hold in force on it."""
        with self.db.session() as s:
            rows = s.execute(select(LegalHold.vin, LegalHold.id).where(LegalHold.released_ms.is_(None))).all()
        return {r.vin: r.id for r in rows}

    def plan(self, now: int | None = None, *, limit: int = MAX_BATCHES_PER_RUN) -> Plan:
        """What a run at ``now`` would do: batches to erase, to withhold, and skipped under a hold.

        Batches are grouped by their column set (few distinct sets), so each group's longest period and each
        category's cutoff are one indexed range query, not a scan in Python of every batch. At most ``limit``
        batches are planned (a backlog larger than that is worked through by the following runs: ``more_due``).
        """
        now = now_ms() if now is None else now
        plan = Plan(now, cutoffs_at(now))
        holds = self._holds()
        with self.db.session() as s:
            column_sets = list(s.scalars(select(BatchRecord.columns).distinct()))
        for columns in column_sets:
            if plan.size >= limit:
                plan.more_due = True
                break
            cats = categories_of(self.catalogue, columns.split(","))
            keep_until = now - longest_ms(cats)  # batches ending before this have outlived every category
            for row in self._rows(columns, BatchRecord.t1 < keep_until, limit=limit - plan.size):
                hold = holds.get(row.vin)
                action = self._action(row, cats, hold_id=hold)
                (plan.held if hold is not None else plan.erase).append(action)
            shorter = {c: plan.cutoffs[c] for c in cats if plan.cutoffs[c] > keep_until}
            if not shorter:
                continue
            full = json.dumps(sorted(shorter))
            rows = self._rows(
                columns,
                BatchRecord.t1 >= keep_until,
                BatchRecord.t1 < max(shorter.values()),
                # a batch already withholding every shorter category has nothing more to withhold until it expires
                or_(RetentionWithheld.categories.is_(None), RetentionWithheld.categories != full),
                withheld=True,
                limit=limit - plan.size,
            )
            for row in rows:
                marked = row.categories
                due = frozenset(c for c, cut in shorter.items() if row.t1 < cut)
                new = due - frozenset(json.loads(marked) if marked else ())
                if not new:
                    continue
                hold = holds.get(row.vin)
                action = self._action(row, cats, withhold=new, hold_id=hold)
                (plan.held if hold is not None else plan.withhold).append(action)
            if plan.size >= limit:
                plan.more_due = True
        return plan

    def _rows(self, columns: str, *where: Any, withheld: bool = False, limit: int) -> list[Any]:
        if limit <= 0:
            return []
        q = select(
            BatchRecord.id,
            BatchRecord.vin,
            BatchRecord.seq,
            BatchRecord.batch_hash,
            BatchRecord.t0,
            BatchRecord.t1,
            BatchRecord.segment,
            BatchRecord.offset,
            BatchRecord.length,
            BatchRecord.payload_key,
        ).where(BatchRecord.columns == columns, *where)
        if withheld:
            q = q.add_columns(RetentionWithheld.categories).outerjoin(
                RetentionWithheld, RetentionWithheld.batch_id == BatchRecord.id
            )
        with self.db.session() as s:
            rows = s.execute(q.order_by(BatchRecord.id).limit(limit)).all()
        return list(rows)

    @staticmethod
    def _action(
        row: Any, cats: frozenset[str], *, withhold: frozenset[str] = frozenset(), hold_id: int | None
    ) -> BatchAction:
        return BatchAction(
            batch_id=row.id,
            vin=row.vin,
            seq=row.seq,
            batch_hash=row.batch_hash,
            t0=row.t0,
            t1=row.t1,
            segment=row.segment,
            offset=row.offset,
            length=row.length,
            categories=cats,
            withhold=withhold,
            hold_id=hold_id,
            payload_key=row.payload_key,
        )

    # ------------------------------------------------------------------ the lease
    def _acquire(self, holder: str) -> None:
        """Take the one purge lease, or ``RetentionRunning`` when a live holder has it.

        Free means: no lease row, an expired one, or one whose holder was a process of this machine that no
        longer exists (a run killed here need not block the next one for the lease's whole term).
        """
        now = now_ms()
        with self.db.session() as s:
            current = s.get(RetentionLease, LEASE_NAME)
            taken = 0
            if current is not None and (current.expires_ms < now or _dead_here(current.holder)):
                taken = rowcount(  # only if nobody took it meanwhile
                    s.execute(
                        update(RetentionLease)
                        .where(RetentionLease.name == LEASE_NAME, RetentionLease.holder == current.holder)
                        .values(holder=holder, expires_ms=now + LEASE_MS)
                    )
                )
        if taken:
            return
        try:
            with self.db.session() as s:
                s.add(RetentionLease(name=LEASE_NAME, holder=holder, expires_ms=now + LEASE_MS))
        except IntegrityError:
            raise RetentionRunning("a retention purge is already running; try again when it has finished") from None

    def _renew(self, holder: str) -> None:
        with self.db.session() as s:
            s.execute(
                update(RetentionLease)
                .where(RetentionLease.name == LEASE_NAME, RetentionLease.holder == holder)
                .values(expires_ms=now_ms() + LEASE_MS)
            )

    def _release(self, holder: str) -> None:
        with self.db.session() as s:
            s.execute(delete(RetentionLease).where(RetentionLease.name == LEASE_NAME, RetentionLease.holder == holder))

    # ------------------------------------------------------------------ running
    def run(
        self,
        *,
        dry_run: bool = False,
        now: int | None = None,
        actor: Actor = SCHEDULER_ACTOR,
        progress: Callable[[int, int], None] | None = None,
        limit: int = MAX_BATCHES_PER_RUN,
    ) -> RetentionRun:
        """Plan and carry out a purge (or, dry, only count it); return its signed run record.

        ``RetentionRunning`` if another run holds the lease. ``progress(done, total)`` is called per group of
        batches. At most ``limit`` batches are planned; the record says ``more_due`` when more are waiting.
        """
        now = now_ms() if now is None else now
        holder = lease_holder()
        if not dry_run:
            self._acquire(holder)
            with self.db.session() as s:  # holding the lease, no other real run is alive: earlier ones were killed
                s.execute(
                    update(RetentionRun)
                    .where(RetentionRun.status == "running", RetentionRun.dry_run.is_(False))
                    .values(status="interrupted")
                )
        try:
            run = RetentionRun(
                started_ms=now_ms(),
                now_ms=now,
                dry_run=dry_run,
                actor=str(actor),
                status="running",
                cutoffs=json.dumps(cutoffs_at(now), sort_keys=True),
            )
            with self.db.session() as s:
                s.add(run)
            if not dry_run:
                self.forget_cutoffs()  # reads withhold by the new cutoffs from now on, before any copy changes
            try:
                return self._carry_out(run, holder, actor, progress, limit)
            except Exception as e:
                with self.db.session() as s:
                    s.execute(
                        update(RetentionRun)
                        .where(RetentionRun.id == run.id)
                        .values(status="failed", finished_ms=now_ms(), error=f"{type(e).__name__}: {e}"[:2000])
                    )
                raise
        finally:
            if not dry_run:
                self._release(holder)

    def _carry_out(
        self,
        run: RetentionRun,
        holder: str,
        actor: Actor,
        progress: Callable[[int, int], None] | None,
        limit: int,
    ) -> RetentionRun:
        """Finish earlier erasures, plan, erase and withhold group by group, then sign and store the record."""
        errors: list[dict[str, Any]] = []
        finished_earlier = 0 if run.dry_run else self._finish_pending(errors)
        plan = self.plan(run.now_ms, limit=limit)
        counts = {c: Counts() for c in CATEGORIES}
        per_vin: dict[str, dict[str, Any]] = {}
        totals = {"bytes_overwritten": 0, "query_copy_bytes_removed": 0, "frames_erased": 0, "packages_erased": 0}
        totals["export_files_removed"] = 0
        total = len(plan.erase) + len(plan.withhold)
        done = 0
        for chunk in _chunks(plan.erase):
            readable = self._measure(chunk, counts, errors, erased=True)
            if not run.dry_run:
                for a in self._erase_group(readable, run.id, totals, errors):
                    self._note(per_vin, a, "erased", a.categories)
            done += len(chunk)
            self._step(run, holder, progress, done, total)
        if plan.withhold and not run.dry_run:
            # Other processes cache the cutoffs for CUTOFF_CACHE_S: a copy one of them rebuilds from the evidence
            # before it sees the new cutoffs would keep the columns dropped here. Wait that long after publishing.
            time.sleep(max(0.0, CUTOFF_CACHE_S - (now_ms() - run.started_ms) / 1000))
        for chunk in _chunks(plan.withhold):
            readable = self._measure(chunk, counts, errors, erased=False)
            if not run.dry_run:
                for a in self._withhold_group(readable, totals, errors):
                    self._note(per_vin, a, "withheld", a.withhold)
            done += len(chunk)
            self._step(run, holder, progress, done, total)
        if not run.dry_run:
            self._drop_exports(per_vin, totals)
        totals["refusal_rows_erased"], totals["refusal_rows_held"] = self._purge_refusals(
            run.now_ms, dry_run=run.dry_run
        )
        for a in plan.held:
            for c in a.withhold or a.categories:
                counts[c].held_batches += 1
        summary = self._summary(plan, counts, per_vin, totals, errors, finished_earlier)
        run = self._sign(run, summary)
        self._audit(run, actor, summary, per_vin)
        return run

    @staticmethod
    def _summary(
        plan: Plan,
        counts: dict[str, Counts],
        per_vin: dict[str, dict[str, Any]],
        totals: dict[str, int],
        errors: list[dict[str, Any]],
        finished_earlier: int,
    ) -> dict[str, Any]:
        """The run's figures, per category and in total, as the purge record states them."""
        held: dict[str, set[int]] = {}
        for a in plan.held:
            held.setdefault(a.vin, set()).add(a.hold_id or 0)
        return {
            "categories": {
                c: {"retention_days": CATEGORIES[c].retention_days, "cutoff_ms": plan.cutoffs[c], **counts[c].to_json()}
                for c in CATEGORIES
            },
            "batches_erased": sum(1 for v in per_vin.values() for _ in v.get("erased_seqs", ())),
            "batches_withheld": sum(1 for v in per_vin.values() for _ in v.get("withheld_seqs", ())),
            "batches_planned": {"erase": len(plan.erase), "withhold": len(plan.withhold), "held": len(plan.held)},
            "more_due": plan.more_due,  # the backlog was larger than one run takes: the next run goes on
            "skipped_by_hold": [{"vin": v, "holds": sorted(h)} for v, h in sorted(held.items())],
            "vehicles_affected": len(per_vin),
            "finished_from_earlier_runs": finished_earlier,
            **totals,
            "errors": errors,
        }

    def _sign(self, run: RetentionRun, summary: dict[str, Any]) -> RetentionRun:
        """Sign the purge record with the region's log key and store it with the run, now done."""
        finished = now_ms()
        body = {
            "run_id": run.id,
            "region": self.region,
            "dry_run": run.dry_run,
            "actor": run.actor,
            "now_ms": run.now_ms,
            "started_ms": run.started_ms,
            "finished_ms": finished,
            "legal_basis": STORAGE_LIMITATION,
            **summary,
        }
        record = signed_record(body, RECORD_CONTEXT, self.log_key, self.log_vkey)
        with self.db.session() as s:
            row = s.get(RetentionRun, run.id)
            assert row is not None
            row.status, row.finished_ms = "done", finished
            row.summary, row.record = json.dumps(summary, sort_keys=True), json.dumps(record, sort_keys=True)
        return row

    def _measure(
        self, chunk: list[BatchAction], counts: dict[str, Counts], errors: list[dict[str, Any]], *, erased: bool
    ) -> list[BatchAction]:
        """Count each batch's samples and bytes per category from its footer; the batches that could be read."""
        readable = []
        for a in chunk:
            cats = a.categories if erased else a.withhold
            wanted = [s.path for s in self.catalogue if s.category in cats]
            try:
                raw = self.segments.envelope(a)
                figures = column_figures(raw, wanted, self.derived.read(a.vin, a.batch_hash))
            except (OSError, CarVaultError, pa.ArrowException) as e:
                errors.append(_error(a.vin, a.batch_id, e, a.seq))
                continue
            self._count(counts, figures, cats, erased=erased)
            readable.append(a)
        return readable

    def _step(
        self, run: RetentionRun, holder: str, progress: Callable[[int, int], None] | None, done: int, total: int
    ) -> None:
        """Report progress and keep the lease alive between groups."""
        if progress:
            progress(done, total)
        if not run.dry_run:
            self._renew(holder)

    def _count(
        self, counts: dict[str, Counts], figures: Mapping[str, tuple[int, int]], cats: Iterable[str], *, erased: bool
    ) -> None:
        """Add one batch's samples and bytes of ``cats`` to the run's per category figures."""
        wanted = set(cats)
        by_cat: dict[str, list[int]] = {c: [0, 0] for c in wanted}
        for name, (samples, size) in figures.items():
            sig = self.catalogue.get(name)
            if sig is None or sig.category not in wanted:
                continue
            by_cat[sig.category][0] += samples
            by_cat[sig.category][1] += size
        for c, (samples, size) in by_cat.items():
            k = counts[c]
            if erased:
                k.erased_batches, k.erased_samples, k.erased_bytes = (
                    k.erased_batches + 1,
                    k.erased_samples + samples,
                    k.erased_bytes + size,
                )
            else:
                k.withheld_batches, k.withheld_samples, k.withheld_bytes = (
                    k.withheld_batches + 1,
                    k.withheld_samples + samples,
                    k.withheld_bytes + size,
                )

    @staticmethod
    def _note(per_vin: dict[str, dict[str, Any]], a: BatchAction, what: str, cats: Iterable[str]) -> None:
        entry = per_vin.setdefault(a.vin, {})
        entry["span"] = (min(a.t0, entry.get("span", (a.t0, a.t1))[0]), max(a.t1, entry.get("span", (a.t0, a.t1))[1]))
        entry.setdefault(f"{what}_seqs", []).append(a.seq)
        entry.setdefault(f"{what}_categories", set()).update(cats)

    def _purge_refusals(self, now: int, *, dry_run: bool) -> tuple[int, int]:
        """Delete the refusal rows past their period (``REFUSALS_KEPT_AS``), except those of vehicles under a legal
        hold; (rows deleted, or due in a dry run; rows a hold kept). One statement: nothing of the evidence depends
        on them, and a run killed before it simply leaves them for the next."""
        cutoff = now - period_ms(REFUSALS_KEPT_AS)
        expired = and_(BatchRefusal.t1_max < cutoff, BatchRefusal.last_ms < cutoff)
        held_vins = sorted(self._holds())
        with self.db.session() as s:
            rows = s.execute(select(BatchRefusal.vin, func.count()).where(expired).group_by(BatchRefusal.vin)).all()
            per_vin = {str(vin): int(n) for vin, n in rows}
            held = sum(n for vin, n in per_vin.items() if vin in held_vins)
            due = sum(per_vin.values()) - held
            if dry_run or not due:
                return due, held
            result = s.execute(delete(BatchRefusal).where(expired, BatchRefusal.vin.not_in(held_vins)))
            return rowcount(result), held

    def _drop_exports(self, per_vin: dict[str, dict[str, Any]], totals: dict[str, int]) -> None:
        """Remove finished export files (kept a week) whose window overlaps a batch this run erased or withheld
        from: they were built before and hold what is now gone or withheld. The owner asks again; the new file
        is built by the new cutoffs."""
        if not per_vin:
            return
        with self.db.session() as s:
            rows = s.execute(
                select(ExportJob.vin, ExportJob.file_name, ExportJob.start_ms, ExportJob.end_ms).where(
                    ExportJob.vin.in_(list(per_vin)), ExportJob.file_name.is_not(None)
                )
            ).all()
        for vin, name, start, end in rows:
            lo, hi = per_vin[vin]["span"]
            if start <= hi and end >= lo and self.frames.blobs.delete(f"exports/{name}"):
                totals["export_files_removed"] += 1

    # ------------------------------------------------------------------ erasing
    def _erase_group(
        self, actions: list[BatchAction], run_id: int, totals: dict[str, int], errors: list[dict[str, Any]]
    ) -> list[BatchAction]:
        """Swap the batches' rows for erasure rows (one transaction), then erase; return the batches erased.

        A batch whose vehicle got a hold since the plan is left alone (the hold wins), as is one already gone (a
        deletion took it): nothing else of it is touched.
        """
        if not actions:
            return []
        swapped: list[BatchAction] = []
        with self.db.session() as s:
            held = set(
                s.scalars(
                    select(LegalHold.vin).where(
                        LegalHold.vin.in_({a.vin for a in actions}), LegalHold.released_ms.is_(None)
                    )
                )
            )
            wanted = {a.batch_id: a.batch_hash for a in actions if a.vin not in held}
            # Where each batch is now (a compaction since the plan may have moved its payload to its part and, on
            # object storage, its skeleton to an object of its own): read in the same transaction as the deletion.
            now_at = {
                r.id: r
                for r in (
                    s.execute(
                        select(BatchRecord.id, BatchRecord.segment, BatchRecord.offset, BatchRecord.length).where(
                            BatchRecord.id.in_(list(wanted))
                        )
                    ).all()
                    if wanted
                    else ()
                )
            }
            # By id AND hash: SQLite reuses the row id of a batch a deletion removed since the plan, and a batch
            # accepted meanwhile under that id must not lose its index row to this run.
            gone = set(
                s.scalars(
                    delete(BatchRecord)
                    .where(BatchRecord.id.in_(list(wanted)), BatchRecord.batch_hash.in_(list(wanted.values())))
                    .returning(BatchRecord.id)
                )
                if wanted
                else ()
            )
            swapped = [a for a in actions if a.batch_id in gone]
            by_vin: dict[str, list[BatchAction]] = {}
            for a in swapped:
                by_vin.setdefault(a.vin, []).append(a)
            # A batch's payload part (store/day_copies.py) is erased with it, by its one name: also a part a killed
            # compaction wrote before any row named it.
            files: dict[int, list[str]] = {a.batch_id: [part_key(a.vin, a.t0, a.batch_hash)] for a in swapped}
            if self.segments.directory is None:  # object storage: a killed compaction's unnamed skeleton object too
                for a in swapped:
                    if now_at[a.batch_id].segment != skeleton_name(a.batch_hash):
                        files[a.batch_id].append(SEGMENTS + skeleton_name(a.batch_hash))
            swapped = [
                replace(a, segment=at.segment, offset=at.offset, length=at.length)
                for a in swapped
                if (at := now_at[a.batch_id])
            ]
            for vin, group in by_vin.items():
                self._vehicle_copies(s, vin, group, files, totals)
                # Statistics summaries of the days these batches reached go with them (access/statistics.py).
                reach = max(a.t1 for a in group) + 600_000 + 1  # statistics.LEAD_MS: a day reads 10 min before it
                s.execute(delete(StatisticsDay).where(StatisticsDay.vin == vin, StatisticsDay.start_ms < reach))
            if swapped:
                s.execute(
                    delete(RetentionWithheld).where(RetentionWithheld.batch_id.in_([a.batch_id for a in swapped]))
                )
            s.add_all(
                RetentionErasure(
                    batch_id=a.batch_id,
                    run_id=run_id,
                    vin=a.vin,
                    batch_hash=a.batch_hash,
                    segment=a.segment,
                    offset=a.offset,
                    length=a.length,
                    files=json.dumps(files[a.batch_id]),
                )
                for a in swapped
            )
        done = self._finish([a.batch_id for a in swapped], totals, errors, seqs={a.batch_id: a.seq for a in swapped})
        return [a for a in swapped if a.batch_id in done]

    def _vehicle_copies(
        self, s: Any, vin: str, group: list[BatchAction], files: dict[int, list[str]], totals: dict[str, int]
    ) -> None:
        """In the caller's transaction: drop the rows of a vehicle's batches' frames, events and the incident
        packages over their spans, and name per batch the files holding a copy of its bytes (frame blobs,
        packages, portability bundles naming it), removed when the erasure finishes."""
        by_seq = {a.seq: a for a in group}
        seqs = list(by_seq)
        forget_charging(s, vin, min(a.t0 for a in group), max(a.t1 for a in group))  # derived charging sessions
        frames = s.execute(
            select(FrameRecord.seq, FrameRecord.sha256).where(FrameRecord.vin == vin, FrameRecord.seq.in_(seqs))
        ).all()
        for seq, sha in frames:
            files[by_seq[seq].batch_id].append(self.frames.blob_key(sha))
        totals["frames_erased"] += len(frames)
        s.execute(delete(FrameRecord).where(FrameRecord.vin == vin, FrameRecord.seq.in_(seqs)))
        s.execute(delete(VehicleEvent).where(VehicleEvent.vin == vin, VehicleEvent.batch_seq.in_(seqs)))
        lo, hi = min(a.t0 for a in group), max(a.t1 for a in group)
        packages = s.scalars(
            select(IncidentPackage).where(
                IncidentPackage.vin == vin, IncidentPackage.start_ms <= hi, IncidentPackage.end_ms > lo
            )
        ).all()
        for p in packages:
            over = [a for a in group if p.start_ms <= a.t1 and p.end_ms > a.t0]
            if over:
                files[over[0].batch_id].append(f"packages/{p.file_name}")
                totals["packages_erased"] += 1
                s.delete(p)
        by_hash = {a.batch_hash: a for a in group}
        for name, hashes in s.execute(
            select(PortabilityBundle.file_name, PortabilityBundle.batch_hashes).where(PortabilityBundle.vin == vin)
        ).all():
            held = [by_hash[h] for h in json.loads(hashes or "[]") if h in by_hash]
            if held:
                files[held[0].batch_id].append(f"portability/{name}")

    def _finish(
        self,
        batch_ids: list[int],
        totals: dict[str, int],
        errors: list[dict[str, Any]],
        *,
        seqs: Mapping[int, int] | None = None,
    ) -> set[int]:
        """Erase what erasure rows name, one fsync per segment, then drop the rows; return the batch ids finished.

        Idempotent (zeroing twice or unlinking a gone file is harmless): a segment that cannot be written leaves
        its rows for the next run, and its batches are listed in ``errors``.
        """
        if not batch_ids:
            return set()
        with self.db.session() as s:
            rows = list(s.scalars(select(RetentionErasure).where(RetentionErasure.batch_id.in_(batch_ids))))
        by_segment: dict[str, list[RetentionErasure]] = {}
        for e in rows:
            totals["query_copy_bytes_removed"] += self.derived.delete(e.vin, e.batch_hash)
            for name in json.loads(e.files):
                self._remove_copy(name)
            by_segment.setdefault(e.segment, []).append(e)
        finished: set[int] = set()
        for segment, group in by_segment.items():
            try:
                totals["bytes_overwritten"] += self.segments.erase(segment, [(e.offset, e.length) for e in group])
            except (OSError, Unavailable) as err:
                errors.extend(_error(e.vin, e.batch_id, err, (seqs or {}).get(e.batch_id)) for e in group)
                continue
            finished.update(e.batch_id for e in group)
        if finished:
            with self.db.session() as s:
                s.execute(delete(RetentionErasure).where(RetentionErasure.batch_id.in_(finished)))
        return finished

    def _remove_copy(self, name: str) -> None:
        """Remove a file holding erased bytes: frames, packages and payload parts from the blob store,
        portability bundles from the data folder."""
        if name.startswith("portability/"):
            (self.data_dir / name).unlink(missing_ok=True)
        elif name.startswith(f"{COPIES}/") and self.derived.days is not None:
            self.derived.days.remove_part(name)  # its cached download on object storage too
        else:
            self.frames.blobs.delete(name)

    def _finish_pending(self, errors: list[dict[str, Any]]) -> int:
        """Finish erasures a killed run left; return how many."""
        with self.db.session() as s:
            ids = list(s.scalars(select(RetentionErasure.batch_id).order_by(RetentionErasure.batch_id)))
        scratch = {"query_copy_bytes_removed": 0, "bytes_overwritten": 0}
        return sum(len(self._finish(chunk, scratch, errors)) for chunk in _chunks(ids))

    # ------------------------------------------------------------------ withholding
    def _withhold_group(
        self, actions: list[BatchAction], totals: dict[str, int], errors: list[dict[str, Any]]
    ) -> list[BatchAction]:
        """Mark the batches' newly expired categories (one transaction), then drop their query copies.

        Camera frames are not evidence (the signed batch holds only their hashes), so frames of a batch whose
        camera category has ended are erased outright. Incident packages and portability bundles already built
        keep the whole signed batch, as new ones do (docs/retention.md, "What stays").
        """
        if not actions:
            return []
        frames: list[str] = []
        with self.db.session() as s:
            # Only batches still indexed as planned (a deletion since the plan took the others; a mark for a gone
            # row id would fall to a batch that reuses it) and on no vehicle held since the plan (the hold wins:
            # withholding erases camera frames).
            held = set(
                s.scalars(
                    select(LegalHold.vin).where(
                        LegalHold.vin.in_({a.vin for a in actions}), LegalHold.released_ms.is_(None)
                    )
                )
            )
            live = set(
                s.scalars(
                    select(BatchRecord.id).where(
                        BatchRecord.id.in_([a.batch_id for a in actions]),
                        BatchRecord.batch_hash.in_([a.batch_hash for a in actions]),
                    )
                )
            )
            actions = [a for a in actions if a.batch_id in live and a.vin not in held]
            marks = {
                m.batch_id: m
                for m in s.scalars(
                    select(RetentionWithheld).where(RetentionWithheld.batch_id.in_([a.batch_id for a in actions]))
                )
            }
            for a in actions:
                mark = marks.get(a.batch_id)
                before = set(json.loads(mark.categories)) if mark else set()
                cats = json.dumps(sorted(before | a.withhold))
                forget_charging(s, a.vin, a.t0, a.t1)  # charging sessions derived from what is now withheld
                if mark is None:
                    s.add(RetentionWithheld(batch_id=a.batch_id, vin=a.vin, categories=cats))
                else:
                    mark.categories = cats
                if any((sig := self.catalogue.get(c)) and sig.category in a.withhold for c in FRAME_COLUMNS):
                    where = (FrameRecord.vin == a.vin, FrameRecord.seq == a.seq)
                    frames += s.scalars(select(FrameRecord.sha256).where(*where))
                    s.execute(delete(FrameRecord).where(*where))
        for h in frames:
            self.frames.blobs.delete(self.frames.blob_key(h))
        totals["frames_erased"] += len(frames)
        for a in actions:
            try:
                totals["query_copy_bytes_removed"] += self._drop_columns(a)
            except (OSError, pa.ArrowException) as e:  # the mark stands: reads withhold; the next read rebuilds
                errors.append(_error(a.vin, a.batch_id, e, a.seq))
        return actions

    def _drop_columns(self, a: BatchAction) -> int:
        """Remove a batch's query copy if it holds a withheld category's column; return the bytes freed.

        Removing is far cheaper than rewriting (an unlink against a read and a write of the whole copy), and old
        data is seldom read: the next read rebuilds the copy from the evidence, already without those columns.
        """
        copy = self.derived.read(a.vin, a.batch_hash)
        if copy is None:  # compacted (its part is evidence: reads withhold from it) or never read
            return self.derived.delete(a.vin, a.batch_hash)
        if not any((sig := self.catalogue.get(c)) and sig.category in a.withhold for c in copy.column_names):
            return 0
        del copy  # the memory map is closed before the file goes
        return self.derived.delete(a.vin, a.batch_hash)

    # ------------------------------------------------------------------ records
    def _audit(self, run: RetentionRun, actor: Actor, summary: dict[str, Any], per_vin: dict[str, Any]) -> None:
        """The run in the region chain; each affected vehicle in its owner's chain."""
        self.audit.record(
            owner_id=None,
            actor=actor,
            action=AuditAction.RETENTION_RUN,
            legal_basis=STORAGE_LIMITATION,
            detail={
                "run_id": run.id,
                "dry_run": run.dry_run,
                "batches_erased": summary["batches_erased"],
                "batches_withheld": summary["batches_withheld"],
                "vehicles_affected": summary["vehicles_affected"],
                "errors": len(summary["errors"]),
            },
        )
        if run.dry_run or not per_vin:
            return
        with self.db.session() as s:
            owners = dict(s.execute(select(Vehicle.vin, Vehicle.owner_id).where(Vehicle.vin.in_(list(per_vin)))).all())
        for vin, entry in sorted(per_vin.items()):
            erased, withheld = entry.get("erased_seqs", []), entry.get("withheld_seqs", [])
            self.audit.record(
                owner_id=owners.get(vin),
                vin=vin,
                actor=actor,
                action=AuditAction.RETENTION_PURGE,
                legal_basis=STORAGE_LIMITATION,
                detail={
                    "run_id": run.id,
                    "batches_erased": len(erased),
                    "erased_seqs": _ranges(erased),
                    "erased_categories": sorted(entry.get("erased_categories", ())),
                    "batches_withheld": len(withheld),
                    "withheld_categories": sorted(entry.get("withheld_categories", ())),
                },
            )

    def runs(self, limit: int = 50) -> list[RetentionRun]:
        """Recent runs, newest first."""
        with self.db.session() as s:
            return list(s.scalars(select(RetentionRun).order_by(RetentionRun.id.desc()).limit(max(1, min(limit, 500)))))

    def get(self, run_id: int) -> RetentionRun:
        """One run, or ``NotFound``."""
        with self.db.session() as s:
            run = s.get(RetentionRun, run_id)
        if run is None:
            raise NotFound(f"no retention run {run_id}", run_id=run_id)
        return run

    def policy(self, now: int | None = None, *, due: bool = False) -> dict[str, Any]:
        """The periods per category, the cutoffs in force, the last run and when the next one is due.

        With ``due``, also what a run now would do (``due_now``: a plan, so a scan of the index; the API and the
        CLI ask for it, a dashboard tile does not).
        """
        now = now_ms() if now is None else now
        with self.db.session() as s:
            last = s.scalar(
                select(RetentionRun)
                .where(RetentionRun.dry_run.is_(False), RetentionRun.status == "done")
                .order_by(RetentionRun.id.desc())
                .limit(1)
            )
        in_force = self.category_cutoffs()
        next_due = None
        if self.interval_s > 0:
            next_due = (last.finished_ms or last.started_ms) + self.interval_s * 1000 if last else now
        return {
            "region": self.region,
            "interval_s": self.interval_s,
            "scheduler": "on" if self.interval_s > 0 else "off",
            "last_run": run_json(last) if last else None,
            "next_due_ms": next_due,
            **({"due_now": self.plan(now).to_json()} if due else {}),  # batches only; no bytes read
            "categories": [
                {
                    "category": c.name,
                    "title": c.title,
                    "privacy": c.privacy.value,
                    "retention_days": c.retention_days,
                    "withheld_before_ms": in_force.get(c.name),
                    "signals": sum(1 for sig in self.catalogue if sig.category == c.name),
                }
                for c in CATEGORIES.values()
            ],
        }


def lease_holder(pid: int | None = None) -> str:
    """A lease holder's name: this machine, the process and a random part (``host:pid:random``)."""
    return f"{os.uname().nodename}:{os.getpid() if pid is None else pid}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str) -> bool:
    """Whether a lease holder names a process of this machine that has ended."""
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != os.uname().nodename or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _chunks(items: list[Any], size: int = GROUP) -> Iterator[list[Any]]:
    """``items`` in consecutive groups of ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error(vin: str, batch_id: int, e: BaseException, seq: int | None = None) -> dict[str, Any]:
    """One batch a run could not finish, as the purge record lists it."""
    return {"vin": vin, "batch_id": batch_id, "seq": seq, "error": f"{type(e).__name__}: {e}"[:300]}


def _ranges(seqs: list[int]) -> list[list[int]]:
    """Sorted sequence numbers as [first, last] runs (a vehicle's audit entry stays short)."""
    out: list[list[int]] = []
    for n in sorted(seqs):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def run_json(run: RetentionRun) -> dict[str, Any]:
    """A run as the API shows it: its figures and its signed record."""
    return {
        "id": run.id,
        "status": run.status,
        "dry_run": bool(run.dry_run),
        "actor": run.actor,
        "now_ms": run.now_ms,
        "started_ms": run.started_ms,
        "finished_ms": run.finished_ms,
        "summary": json.loads(run.summary or "{}"),
        "record": json.loads(run.record) if run.record else None,
        "error": run.error,
    }


class RetentionScheduler:
    """The in-process scheduler: a purge every ``interval_s`` seconds, in a worker thread (0 = off).

    Every replica runs one; the lease lets one purge at a time, and a replica finding it taken waits for its
    next turn. The first run comes one interval after start, not at start (a restart loop never purges in a loop).
    """

    def __init__(self, retention: Retention, interval_s: int, chores: tuple[Callable[[], object], ...] = ()) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self.chores = chores  # run before each purge, e.g. finishing deletions a killed process left pending
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (nothing when the interval is 0)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention-scheduler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for chore in self.chores:
                try:
                    await asyncio.to_thread(chore)
                except Exception:  # noqa: BLE001 - a failed chore must not stop the purges
                    log.exception("scheduled chore %s failed; the next interval tries again", chore)
            try:
                await asyncio.to_thread(self.retention.run)
            except RetentionRunning:
                continue  # another replica's turn
            except Exception:  # noqa: BLE001 - whatever failed, the loop must live to try again next interval
                log.exception("retention purge failed; the next interval tries again")

    async def stop(self) -> None:
        """Cancel the loop (a purge already in its thread finishes on its own; its lease expires if killed)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
