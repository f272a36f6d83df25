"""Telemetry reads: a vehicle's time window, assembled from the batches that cover it.

The batch index (metadata DB) says which batches overlap the window; only those batches' bytes are
read, and of each Parquet payload only the requested columns are decoded (in parallel: pyarrow
releases the GIL while decoding).

Samples past their category's retention period are withheld here, the one place every read of telemetry
passes (windows, exports, timeline, route): ``withheld`` names, per signal path, the time before which its
samples are no longer served (compliance/retention.py); a per-batch copy rebuilt from the evidence leaves out the
columns a whole batch has outlived. Batches of compacted days are read from their payload parts (store/day_copies.py),
only the columns asked for; the parts are evidence too, so withholding is applied to what is read from them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import bindparam, select

from carvault.errors import InvalidQuery, Unavailable
from carvault.protocol import TIME_TYPE, payload_view, read_payload
from carvault.signals import Signal
from carvault.store.day_copies import PREFIX as COPIES
from carvault.store.day_copies import Compacted, DayCopies
from carvault.store.derived import DerivedCopies
from carvault.store.metadata import BatchRecord, Database
from carvault.store.segments import SegmentReader
from carvault.windows import check_window

log = logging.getLogger(__name__)

MAX_WINDOW_MS = 400 * 24 * 3600 * 1000
MS_PER_DAY = 86_400_000


_BATCH_REF_COLUMNS = (
    BatchRecord.seq,
    BatchRecord.t0,
    BatchRecord.t1,
    BatchRecord.segment,
    BatchRecord.offset,
    BatchRecord.length,
    BatchRecord.columns,
    BatchRecord.batch_hash,
    BatchRecord.attested_by,
    BatchRecord.payload_key,
)
# Built once: the overlap test of ``TelemetryStore.batches`` (inclusive at both ends), of one kind or of all.
_BATCHES = (
    select(*_BATCH_REF_COLUMNS)
    .where(
        BatchRecord.vin == bindparam("vin"),
        BatchRecord.t0 <= bindparam("end"),
        BatchRecord.t1 >= bindparam("start"),
    )
    .order_by(BatchRecord.seq)
)
_BATCHES_OF_KIND = _BATCHES.where(BatchRecord.kind == bindparam("kind"))


@dataclass(frozen=True)
class BatchRef:
    """Where one batch's bytes are and what it covers."""

    seq: int
    t0: int
    t1: int
    segment: str
    offset: int
    length: int
    columns: frozenset[str]
    batch_hash: str
    attested_by: str | None = None  # the region that attests a batch it built (docs/protocol.md §9); None: car-signed
    payload_key: str | None = None  # its payload part once its day is compacted (store/day_copies.py)


class TelemetryStore:
    """Reads windows of telemetry for one vehicle."""

    def __init__(
        self,
        db: Database,
        segments: SegmentReader,
        derived: DerivedCopies,
        threads: int = 4,
        *,
        withheld: Callable[[], Mapping[str, int]] | None = None,
        days: DayCopies | None = None,
    ) -> None:
        self.db = db
        self.segments = segments
        self.derived = derived
        self.withheld = withheld
        self.days = days  # the payload parts of closed days (issue 12); None reads every batch from its envelope
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="telemetry-read")

    def batches(self, vin: str, start_ms: int, end_ms: int, kind: str | None = "telemetry") -> list[BatchRef]:
        """Batches of ``vin`` whose span overlaps [start_ms, end_ms], in seq order.

        Every window read starts here, so it is one prepared Core statement on a plain connection: an ORM session
        and a freshly built statement cost about as much as the part reads of a short window (issue 12).
        """
        q = _BATCHES_OF_KIND if kind is not None else _BATCHES
        with self.db.connection() as conn:
            rows = conn.execute(q, {"vin": vin, "start": start_ms, "end": end_ms, "kind": kind}).all()
        return [
            BatchRef(seq, t0, t1, segment, offset, length, frozenset(columns.split(",")), h, attested, key)
            for seq, t0, t1, segment, offset, length, columns, h, attested, key in rows
        ]

    def window(self, vin: str, start_ms: int, end_ms: int, signals: list[Signal]) -> pa.Table:
        """All samples of ``signals`` with start_ms <= t < end_ms, sorted by t, one column per signal."""
        check_window(start_ms, end_ms, MAX_WINDOW_MS, what="a window", instead="; use a bulk export for more")
        refs = self.batches(vin, start_ms, end_ms - 1)
        wanted = [s.path for s in signals]
        schema = pa.schema(
            [pa.field("t", TIME_TYPE, nullable=False)] + [pa.field(s.path, s.arrow_type) for s in signals]
        )
        if not refs:
            return schema.empty_table()
        cutoffs = self.withheld() if self.withheld is not None else {}

        def load(ref: BatchRef) -> pa.Table:
            part = None
            if ref.payload_key is not None and self.days is not None:  # a compacted day: the part's columns only
                part = self.days.read(ref.payload_key, [p for p in wanted if p in ref.columns])
            if part is None:
                try:
                    copy = self.batch_table(vin, ref, cutoffs)
                except (Unavailable, pa.ArrowException):
                    moved = self._moved(vin, ref)  # compacted meanwhile: its payload left the segment
                    if moved is None:
                        raise
                    return load(moved)
                have = set(copy.column_names)
                part = copy.select(["t"] + [p for p in wanted if p in ref.columns and p in have])
            # Rows of a batch are strictly increasing in t: cut the window with a zero-copy slice.
            t = part.column("t").cast(pa.int64()).to_numpy()
            a, b = np.searchsorted(t, [start_ms, end_ms])
            part = part.slice(int(a), int(b - a))
            return withhold(part, cutoffs) if cutoffs else part

        # Decoding (a part's columns, or an envelope without a per-batch copy) releases the GIL: two or more such
        # batches are read in parallel; memory-mapped per-batch copies cost less than handing them to a thread.
        slow = sum(1 for r in refs if r.payload_key is not None or not self.derived.path(vin, r.batch_hash).exists())
        parts = list(self._pool.map(load, refs)) if slow > 1 else [load(r) for r in refs]
        table = pa.concat_tables(parts, promote_options="default")
        if len(parts) > 1 and not _is_sorted(table):
            table = table.sort_by("t")
        # ``column_names`` builds a new list (a Python object per field) on every access: read it once.
        have = dict(zip(table.column_names, table.columns, strict=True))
        columns = [have[f.name] if f.name in have else pa.nulls(table.num_rows, f.type) for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)

    def scan(self, vin: str, start_ms: int, end_ms: int, signals: list[Signal]) -> Iterator[pa.Table]:
        """The samples of [start_ms, end_ms) as consecutive tables with ``window``'s schema, each at most a UTC day.

        In time order, non-overlapping, withholding applied, together exactly what ``window`` over the whole span
        would answer (without its length limit): what a vehicle-year export streams.
        """
        check_window(start_ms, end_ms, what="a scan")  # now, not at the first next()
        return self._scan(vin, start_ms, end_ms, signals)

    def _scan(self, vin: str, start_ms: int, end_ms: int, signals: list[Signal]) -> Iterator[pa.Table]:
        """Day by day, the next day read (its parts decoded) in a thread while the caller handles this one."""
        held = self.batches(vin, start_ms, end_ms - 1)
        touched: set[int] = set()
        for r in held:
            touched.update(range(max(start_ms, r.t0) // MS_PER_DAY, min(end_ms - 1, r.t1) // MS_PER_DAY + 1))
        days = sorted(touched)
        spans = []
        for d in days:  # only days some batch touches: a year of a car that drove on 40 days reads 40 windows
            lo, hi = max(start_ms, d * MS_PER_DAY), min(end_ms, (d + 1) * MS_PER_DAY)
            if lo < hi:
                spans.append((lo, hi))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="telemetry-scan") as ahead:
            pending = ahead.submit(self.window, vin, *spans[0], signals) if spans else None
            for i in range(len(spans)):
                assert pending is not None
                table = pending.result()
                pending = ahead.submit(self.window, vin, *spans[i + 1], signals) if i + 1 < len(spans) else None
                if table.num_rows:
                    yield table

    def _moved(self, vin: str, ref: BatchRef) -> BatchRef | None:
        """The batch's reference again if a compaction moved its payload into a part since ``ref`` was read."""
        if ref.payload_key is not None:
            return None
        with self.db.session() as s:
            row = s.execute(
                select(BatchRecord.segment, BatchRecord.offset, BatchRecord.payload_key).where(
                    BatchRecord.vin == vin, BatchRecord.batch_hash == ref.batch_hash
                )
            ).one_or_none()
        if row is None or row.payload_key is None:
            return None
        return replace(ref, segment=row.segment, offset=row.offset, payload_key=row.payload_key)

    def batch_table(self, vin: str, ref: BatchRef, cutoffs: Mapping[str, int]) -> pa.Table:
        """One batch's whole table: its per-batch copy, else decoded from the evidence (and the copy kept)."""
        copy = self.derived.read(vin, ref.batch_hash)
        if copy is None:  # no derived copy yet: decode the evidence once and keep the copy
            raw = self.segments.envelope(ref)
            copy = read_payload(payload_view(raw))
            outlived = [c for c in copy.column_names if cutoffs.get(c, 0) > ref.t1]
            if outlived:  # the copy never holds what the whole batch has outlived
                copy = copy.drop_columns(outlived)
            self.derived.write(vin, ref.batch_hash, copy)
        return copy

    def compact(
        self, now: int | None = None, limit: int = 1000, progress: Callable[[int, int], None] | None = None
    ) -> list[Compacted]:
        """Move the payloads of every closed day into their parts (store/day_copies.py); oldest days first.

        First the ranges a killed run left queued are reclaimed; then per day the parts are written and the rows
        name them; the old ranges of the whole run are reclaimed together at the end (on object storage one rewrite
        per group object, not one per vehicle-day). The per-batch derived copies of those batches go: their reads
        take the part's columns now. Several replicas may run this at once (deterministic names, conditional rows).
        ``progress(done, total)`` is told before each vehicle-day and once all are done (the command line's bar).
        """
        if self.days is None:
            return []
        now = now if now is not None else int(time.time() * 1000)
        self.days.sweep_cache()  # this replica's downloads of parts erased anywhere (object storage)
        self.days.reclaim()  # what a killed run left
        done, queued = [], []
        days = self.days.open_days(now, limit)
        for number, (vin, day) in enumerate(days, start=1):
            if progress is not None:
                progress(number - 1, len(days))
            try:
                moved = self.days.write_parts(self.days.day_batches(vin, day, open_only=True))
                queued += self.days.attach(moved)
            except (OSError, Unavailable, pa.ArrowException):  # one unreadable day stops no other day
                log.exception("compaction of %s on %s failed; it stays in its segments and is tried again", vin, day)
                continue
            self.days.blobs.delete_prefix(f"{COPIES}/vin={vin}/day={day.isoformat()}/rate=")  # earlier releases
            for m in moved:
                self.derived.discard(vin, m.batch_hash)
            if moved:
                done.append(Compacted(vin, day, len(moved), sum(m.size for m in moved)))
        self.days.reclaim(queued)
        if progress is not None:
            progress(len(days), len(days))
        return done


def withhold(table: pa.Table, cutoffs: Mapping[str, int]) -> pa.Table:
    """``table`` with the values of each column before its cutoff time made null."""
    if table.num_rows == 0:
        return table
    t = table.column("t").cast(pa.int64())
    first = pc.min(t).as_py()
    for i, name in enumerate(table.column_names):
        cut = cutoffs.get(name)
        if name == "t" or cut is None or cut <= first:
            continue
        kept = pc.greater_equal(t, pa.scalar(cut, pa.int64()))
        col = table.column(i)
        table = table.set_column(i, table.field(i), pc.if_else(kept, col, pa.nulls(len(col), col.type)))
    return table


def _is_sorted(table: pa.Table) -> bool:
    t = table.column("t").cast(pa.int64()).combine_chunks()
    if len(t) < 2:
        return True
    return bool(pc.min(pc.subtract(t[1:], t[:-1])).as_py() > 0)


def resample(table: pa.Table, interval_ms: int) -> pa.Table:
    """Downsample to one row per interval: mean of numbers, any-true of booleans, last of strings."""
    if interval_ms <= 0:
        raise InvalidQuery("resampling interval must be positive")
    if table.num_rows == 0:
        return table
    t = table.column("t").cast(pa.int64())
    bucket = pc.multiply(pc.divide(t, interval_ms), interval_ms)  # integer division floors for t >= 0
    work = table.drop_columns(["t"]).append_column("bucket", bucket)
    aggs = []
    for f in table.schema:
        if f.name == "t":
            continue
        if pa.types.is_boolean(f.type):
            aggs.append((f.name, "max"))
        elif pa.types.is_string(f.type):
            aggs.append((f.name, "last"))
        else:
            aggs.append((f.name, "mean"))
    grouped = work.group_by("bucket", use_threads=False).aggregate(aggs).sort_by("bucket")
    out = [grouped.column("bucket").cast(TIME_TYPE)]
    fields = [pa.field("t", TIME_TYPE, nullable=False)]
    for name, fn in aggs:
        col = grouped.column(f"{name}_{fn}")
        out.append(col)
        fields.append(pa.field(name, col.type))
    return pa.Table.from_arrays(out, schema=pa.schema(fields))
