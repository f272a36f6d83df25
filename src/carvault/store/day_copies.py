"""Query copies of closed days that *are* the evidence's payloads: each batch's Parquet payload as its own part.

A batch envelope is ``prefix · payload · signature`` and its payload is already a compressed Parquet file (the
car's). Once a vehicle's UTC day is closed, compaction moves every telemetry batch's payload, byte for byte, into a
standalone object of the blob store, Hive-style so any engine reads them as one partitioned dataset::

    copies/vin=<VIN>/day=<YYYY-MM-DD>/part-<batch hash>.parquet     (day = UTC day of the batch's first sample)

and the segment keeps only the batch's skeleton (store/segments.py). The same bytes serve as evidence (put back
together by ``SegmentReader.envelope``, byte-exact, so signatures, hashes and log leaves still verify) and as the
query copy (window reads and fleet jobs read the part's columns directly). Open days keep the per-batch derived
copies (store/derived.py); the old re-encoded ``rate=10hz|1hz`` day files of earlier releases are dropped when their
day is compacted.

The steps, each idempotent so a re-run heals a killed one, and deterministic so two replicas compacting the same
day at once agree:

1. the part is written durably (same key, same bytes on every replica); on object storage the skeleton too, as
   ``segments/skel-<batch hash>.cvseg``;
2. one transaction sets ``payload_key`` (and on object storage repoints segment/offset to the skeleton) with a
   conditional UPDATE per batch (still uncompacted, still at its old place) and queues the old range in
   ``payload_reclaims``; a batch whose UPDATE found nothing (another replica won, or it was deleted) queues nothing;
3. the queued ranges are reclaimed — a hole punched locally (offsets never move), the range zeroed on object
   storage (an object left holding only zeros is deleted) — and their rows removed. Every run starts by finishing
   the rows a killed run left.

Parts written for batches that were deleted meanwhile are removed again unless a row names them. Deletion and
retention remove a batch's part with the batch; withholding (retention) never touches a part — it is evidence —
reads and fleet jobs apply the cutoffs instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, select, update

from carvault.errors import Unavailable
from carvault.store.blobs import BlobNotFound, BlobStore
from carvault.store.metadata import BatchRecord, Database, PayloadReclaim, rowcount
from carvault.store.segments import PREFIX as SEGMENTS
from carvault.store.segments import SegmentReader, payload_range

log = logging.getLogger(__name__)

PREFIX = "copies"
CLOSED_AFTER_MS = 3_600_000  # a UTC day is compacted once it ended this long ago (late batches join at the next run)
MS_PER_DAY = 86_400_000
_FOOTERS = 4096  # parsed part footers kept in memory (about 10 KB each)
# Decoded columns of recently read parts kept in memory, per process: a part's zstd pages cost about 2 ms of CPU to
# decode for every window that touches it, and the windows people read overlap (a day's chart, then a zoom into it;
# an app polling the last minutes). About 1 MB per 5-minute part of 40 signals.
DECODED_BYTES = 64 << 20
_OLD_LAYOUT = "rate="  # the re-encoded day files of earlier releases: copies/vin=/day=/rate=10hz|1hz/


def day_of(t_ms: int) -> dt.date:
    """The UTC day of a time."""
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).date()


def part_key(vin: str, t0: int, batch_hash: str) -> str:
    """The blob key of a batch's payload part (the day of its first sample)."""
    return f"{PREFIX}/vin={vin}/day={day_of(t0).isoformat()}/part-{batch_hash}.parquet"


@dataclass(frozen=True)
class Compacted:
    """What one compaction of a vehicle's day moved."""

    vin: str
    day: dt.date
    batches: int
    bytes: int  # payload bytes now in parts (and reclaimed from the segments)


@dataclass(frozen=True)
class _Moved:
    """One batch whose part is durable (step 1), ready for its row to name it (step 2)."""

    id: int
    batch_hash: str
    old_segment: str
    old_offset: int
    key: str
    segment: str
    offset: int
    reclaim: tuple[str, int, int]
    size: int


class DayCopies:
    """The payload parts of a region: written by compaction, read by window reads and fleet jobs, removed with
    their batches."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        segments: SegmentReader,
        cache_dir: Path,
        *,
        decoded_bytes: int = DECODED_BYTES,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.segments = segments
        self.cache_dir = cache_dir  # object storage: parts fetched once and read locally (a cache, never the truth)
        # Parsed footers of recently read parts (a part never changes under its name: its batch hash is in it), each
        # with its columns' indices by name.
        self._footers: OrderedDict[str, tuple[pq.FileMetaData, dict[str, int]]] = OrderedDict()
        # Decoded columns of recently read parts (least recently used first), within ``decoded_bytes`` in all. Only
        # consulted once the part is known to be present here, and forgotten with it: never a way around erasure.
        self._decoded: OrderedDict[str, pa.Table] = OrderedDict()
        self._decoded_size = 0
        self.decoded_bytes = decoded_bytes
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading
    def local(self, key: str) -> Path | None:
        """A local file holding the part (the blob itself on the local store; a cached download on S3)."""
        path = self.blobs.local_path(key)
        if path is not None:
            return path if path.exists() else None
        cached = self.cache_dir / key
        if not cached.exists():
            try:
                data = self.blobs.get(key)
            except BlobNotFound:
                return None
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        return cached

    def local_root(self) -> Path:
        """The local folder the parts are read from as a Hive dataset (the store's, or the download cache's)."""
        path = self.blobs.local_path(PREFIX)
        return path if path is not None else self.cache_dir / PREFIX

    def read(self, key: str, columns: Sequence[str]) -> pa.Table | None:
        """``t`` and ``columns`` (those the part has) of one part; None when it cannot be read (the caller then
        reads the whole envelope, which says precisely what is wrong).

        Recently decoded columns come from memory, but only while the part is still here (``local``): a part erased
        by another worker or replica is never answered from this process's memory.
        """
        path = self.local(key)
        if path is None:
            return None
        with self._lock:
            known = self._footers.get(key)
            if known is not None:
                self._footers.move_to_end(key)
                want = ["t", *[c for c in columns if c in known[1] and c != "t"]]
                held = self._decoded.get(key)
                if held is not None and set(want).issubset(held.schema.names):  # names built once, not per column
                    self._decoded.move_to_end(key)
                    return held.select(want)
        try:
            # Arrow's Parquet reader itself, the columns named by index: ``ParquetFile`` maps every column's path in
            # Python for each file it opens, per part of every window (as in ``protocol.envelope.decode_payload``).
            reader = pq.ParquetReader()
            reader.open(pa.memory_map(str(path)), metadata=known[0] if known else None, pre_buffer=False)
            if known is None:
                known = (reader.metadata, _column_indices(reader.metadata))
                with self._lock:
                    self._footers[key] = known
                    while len(self._footers) > _FOOTERS:
                        self._footers.popitem(last=False)
            index = known[1]
            want = ["t", *[c for c in columns if c in index and c != "t"]]
            with self._lock:
                held = self._decoded.get(key)
            also = [c for c in held.schema.names if c not in want] if held is not None else []
            table = reader.read_all(column_indices=[index[c] for c in want + also], use_threads=False)
        except (OSError, KeyError, pa.ArrowException):
            log.warning("payload part %s is unreadable here", key, exc_info=True)
            return None
        self._keep(key, table)
        return table.select(want)

    def _keep(self, key: str, table: pa.Table) -> None:
        """Remember a part's decoded columns, evicting the least recently used beyond ``decoded_bytes``."""
        size = table.get_total_buffer_size()
        if size > self.decoded_bytes // 4:  # one huge part would push out everything else
            return
        with self._lock:
            old = self._decoded.pop(key, None)
            if old is not None:
                self._decoded_size -= old.get_total_buffer_size()
            self._decoded[key] = table
            self._decoded_size += size
            while self._decoded_size > self.decoded_bytes:
                _, gone = self._decoded.popitem(last=False)
                self._decoded_size -= gone.get_total_buffer_size()

    def _forget(self, keys: Sequence[str]) -> None:
        """Drop what this process remembers of these parts: parsed footers (they hold column statistics) and
        decoded columns. Called whenever a part is removed, here or (by the sweep) anywhere else."""
        with self._lock:
            for key in keys:
                self._footers.pop(key, None)
                gone = self._decoded.pop(key, None)
                if gone is not None:
                    self._decoded_size -= gone.get_total_buffer_size()

    # ------------------------------------------------------------------ compaction
    def open_days(self, now_ms: int, limit: int = 1000) -> list[tuple[str, dt.date]]:
        """(vin, day) pairs of closed days holding telemetry batches whose payload is still in a segment."""
        cutoff = now_ms - CLOSED_AFTER_MS
        with self.db.session() as s:
            rows = s.execute(
                select(BatchRecord.vin, BatchRecord.t0)
                .where(BatchRecord.payload_key.is_(None), BatchRecord.kind == "telemetry", BatchRecord.t0 < cutoff)
                .order_by(BatchRecord.t0)
                .limit(limit * 50)
            ).all()
        seen: dict[tuple[str, dt.date], None] = {}
        for vin, t0 in rows:
            day = day_of(t0)
            if _day_start(day) + MS_PER_DAY <= cutoff:
                seen.setdefault((vin, day), None)
        return list(seen)[:limit]

    def day_batches(self, vin: str, day: dt.date, *, open_only: bool = False) -> list[BatchRecord]:
        """The telemetry batches whose first sample is on ``day`` (UTC), in chain order."""
        start = _day_start(day)
        q = select(BatchRecord).where(
            BatchRecord.vin == vin,
            BatchRecord.kind == "telemetry",
            BatchRecord.t0 >= start,
            BatchRecord.t0 < start + MS_PER_DAY,
        )
        if open_only:
            q = q.where(BatchRecord.payload_key.is_(None))
        with self.db.session() as s:
            return list(s.scalars(q.order_by(BatchRecord.seq)))

    def compact(self, vin: str, day: dt.date) -> Compacted | None:
        """Move the payloads of one vehicle's closed day into parts (the three steps of the module docstring)."""
        batches = self.day_batches(vin, day, open_only=True)
        moved = self.write_parts(batches)
        reclaims = self.attach(moved)
        self.reclaim(reclaims)
        self.blobs.delete_prefix(f"{PREFIX}/vin={vin}/day={day.isoformat()}/{_OLD_LAYOUT}")  # earlier layout
        if not moved:
            return None
        return Compacted(vin, day, len(moved), sum(m.size for m in moved))

    def write_parts(self, batches: Sequence[BatchRecord]) -> list[_Moved]:
        """Step 1: each batch's payload durably as its part (and, on object storage, its skeleton object)."""
        moved = []
        for rec in batches:
            try:
                envelope = self.segments.envelope(rec)
                if hashlib.sha256(envelope).hexdigest() != rec.batch_hash:  # never restructure damaged evidence
                    raise Unavailable("its bytes no longer hash to its batch hash")
                start, plen = payload_range(envelope[: 16 + 65_536])
            except (OSError, Unavailable) as e:  # being erased, or damaged: it stays where it is, tried next run
                log.warning("batch %s of %s stays in its segment: %s", rec.seq, rec.vin, e)
                continue
            key = part_key(rec.vin, rec.t0, rec.batch_hash)
            self.blobs.put(key, envelope[start : start + plen])  # durable before any row names it
            segment, offset = self.segments.skeleton(rec, envelope, rec.batch_hash)
            reclaim = self.segments.reclaim_range(rec, envelope)
            moved.append(_Moved(rec.id, rec.batch_hash, rec.segment, rec.offset, key, segment, offset, reclaim, plen))
        return moved

    def attach(self, moved: Sequence[_Moved]) -> list[int]:
        """Step 2: the rows name their parts, the old ranges queued for reclaiming; the queue rows' ids.

        One conditional UPDATE per batch in one transaction: a row already compacted (another replica) or gone (a
        deletion or purge) is left alone and queues nothing; what this run wrote for it is removed unless named.
        """
        if not moved:
            return []
        lost: list[_Moved] = []
        queued: list[PayloadReclaim] = []
        with self.db.session() as s:
            for m in moved:
                done = rowcount(
                    s.execute(
                        update(BatchRecord)
                        .where(
                            BatchRecord.id == m.id,
                            BatchRecord.batch_hash == m.batch_hash,
                            BatchRecord.payload_key.is_(None),
                            BatchRecord.segment == m.old_segment,
                            BatchRecord.offset == m.old_offset,
                        )
                        .values(payload_key=m.key, segment=m.segment, offset=m.offset)
                    )
                )
                if done == 1:
                    queued.append(PayloadReclaim(segment=m.reclaim[0], offset=m.reclaim[1], length=m.reclaim[2]))
                else:
                    lost.append(m)
            s.add_all(queued)
            s.flush()
            ids = [q.id for q in queued]
        for m in lost:
            self._forget_unnamed(m)
        return ids

    def _forget_unnamed(self, m: _Moved) -> None:
        """Remove a part (and skeleton object) this run wrote for a batch no row names with it."""
        with self.db.session() as s:
            named = s.scalar(select(BatchRecord.id).where(BatchRecord.payload_key == m.key).limit(1))
        if named is None:
            self.remove_part(m.key)
            if m.segment != m.old_segment:
                self.blobs.delete(SEGMENTS + m.segment)

    def reclaim(self, ids: Sequence[int] | None = None) -> int:
        """Step 3: reclaim queued ranges (all of them when ``ids`` is None: what killed runs left); bytes freed.

        A range that cannot be reclaimed now stays queued for the next run.
        """
        with self.db.session() as s:
            q = select(PayloadReclaim)
            if ids is not None:
                if not ids:
                    return 0
                q = q.where(PayloadReclaim.id.in_(list(ids)))
            rows = [(r.id, r.segment, r.offset, r.length) for r in s.scalars(q.order_by(PayloadReclaim.id))]
        by_segment: dict[str, list[tuple[int, int, int]]] = {}
        for i, segment, offset, length in rows:
            by_segment.setdefault(segment, []).append((i, offset, length))
        freed, done = 0, []
        for segment, group in by_segment.items():
            try:
                freed += self.segments.erase(segment, [(o, n) for _, o, n in group])
            except (OSError, Unavailable) as e:  # stays queued
                log.warning("reclaiming %d ranges of %s failed (%s); the next run retries", len(group), segment, e)
                continue
            done += [i for i, _, _ in group]
        if done:
            with self.db.session() as s:
                s.execute(delete(PayloadReclaim).where(PayloadReclaim.id.in_(done)))
        return freed

    # ------------------------------------------------------------------ removing
    def remove_part(self, key: str) -> int:
        """Remove one part (its blob, any cached download, its parsed footer); bytes freed."""
        freed = self.blobs.delete(key)
        (self.cache_dir / key).unlink(missing_ok=True)
        self._forget([key])
        return freed

    def remove_batch(self, vin: str, t0: int, batch_hash: str) -> int:
        """Remove a batch's part by its deterministic name (also one a killed compaction left unnamed); bytes."""
        return self.remove_part(part_key(vin, t0, batch_hash))

    def drop_vehicle(self, vin: str) -> int:
        """Remove every part of a vehicle (its deletion, after its batches' skeletons are erased); bytes freed."""
        prefix = f"{PREFIX}/vin={vin}/"
        freed = self.blobs.delete_prefix(prefix)
        folder = self.cache_dir / PREFIX / f"vin={vin}"
        if folder.exists():
            for p in folder.rglob("*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
        with self._lock:  # parsed footers hold the parts' column statistics (min/max positions): they go too
            remembered = [k for k in {*self._footers, *self._decoded} if k.startswith(prefix)]
        self._forget(remembered)
        return freed

    def sweep_cache(self) -> int:
        """Remove cached downloads of parts no batch names any more (erased or deleted through another replica or
        worker), and their parsed footers (which hold column statistics) and decoded columns; files removed. Every
        replica runs this each minute, so erased data leaves every disk and every process's memory."""
        root = self.cache_dir / PREFIX
        files = (
            {p.relative_to(self.cache_dir).as_posix(): p for p in root.rglob("*.parquet") if p.name[0] != "."}
            if root.exists()
            else {}
        )
        with self._lock:
            remembered = list({*self._footers, *self._decoded})
        keys = sorted(set(files) | set(remembered))
        named: set[str] = set()
        with self.db.session() as s:
            for i in range(0, len(keys), 500):
                found = s.scalars(select(BatchRecord.payload_key).where(BatchRecord.payload_key.in_(keys[i : i + 500])))
                named.update(k for k in found if k is not None)
        self._forget([k for k in remembered if k not in named])
        gone = [p for k, p in files.items() if k not in named]
        for p in gone:
            p.unlink(missing_ok=True)
        return len(gone)


#: How often each replica drops its cached downloads of parts that no batch names any more (erased elsewhere).
SWEEP_S = 60.0


class Compactor:
    """The in-process schedule: compaction of closed days every ``interval_s`` seconds in a worker thread (0 = off).

    Every replica may run one: parts and skeletons have one name per batch and the rows change conditionally, so
    replicas racing on a day agree. ``carvault compact`` runs it once from the command line (e.g. from cron).
    """

    def __init__(
        self,
        compact: Callable[[], object],
        interval_s: int,
        *,
        sweep: Callable[[], object] | None = None,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.compact = compact
        self.interval_s = interval_s
        # This replica's downloads of parts erased through another replica go within ``sweep_s``, whatever the
        # compaction interval (off, or hours, where compaction runs from cron): erased data leaves every disk soon.
        self.sweep = sweep
        self.sweep_s = sweep_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the loops on the running event loop (compaction: nothing when the interval is 0)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        if self.interval_s > 0:
            self._tasks.append(loop.create_task(self._loop(self.interval_s, self.compact), name="copy-compactor"))
        if self.sweep is not None and self.sweep_s > 0:
            self._tasks.append(loop.create_task(self._loop(self.sweep_s, self.sweep), name="copy-cache-sweeper"))

    @staticmethod
    async def _loop(every_s: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(work)
            except Exception:  # noqa: BLE001 - the loop must live to try again next interval
                log.exception("%s failed; the next interval tries again", getattr(work, "__name__", "compaction"))

    async def stop(self) -> None:
        """Cancel the loops (a compaction already running finishes in its thread)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


def _column_indices(md: pq.FileMetaData) -> dict[str, int]:
    """A part's columns by name, as the indices Arrow's reader takes (a payload is flat: one column per field).

    A file whose schema is not flat (it could only come from outside a payload's checks) gets no names, so
    ``read`` answers it as unreadable and the caller falls back to the envelope, which says what is wrong.
    """
    schema = md.schema.to_arrow_schema()
    if md.num_columns != len(schema):
        return {}
    return {name: i for i, name in enumerate(schema.names)}


def _day_start(day: dt.date) -> int:
    """Milliseconds of a UTC day's midnight."""
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
