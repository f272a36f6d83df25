"""Compact query copies: one vehicle's day of telemetry as compressed Parquet, the 10 Hz and slower signals apart.

Derived from the evidence, never the evidence (issue 12). Each closed day of a vehicle (the batches whose first
sample falls on that UTC day) is compacted into two Parquet files in the blob store, Hive-style so any engine reads
them as one partitioned dataset::

    copies/vin=<VIN>/day=<YYYY-MM-DD>/rate=10hz/part-<digest>.parquet   t + every signal sampled at 10 Hz or faster
    copies/vin=<VIN>/day=<YYYY-MM-DD>/rate=1hz/part-<digest>.parquet    t + the slower signals, rows with any value

``digest`` names the exact set of batches inside (a hash of their sorted batch hashes), so compacting the same day
twice — two replicas at once, or a retry — writes the same key with the same bytes. Each batch row records the copy
that holds it (``batches.copy_key``); a batch without one (its day still open, arrived late, or its copy dropped) is
read from its per-batch copy (store/derived.py) or its evidence until the next compaction.

Size: zstd with dictionary encoding for columns with few distinct values (quantised sensors, flags, enumerations),
byte-stream-split for the rest of the floating-point ones, delta encoding for time; row groups of 30 minutes of
10 Hz rows, so a 30-minute window decodes one or two row groups of the columns asked for. docs/benchmarks.md has the
bytes per sample and the window times.

Dropping: deleting a batch's copy drops its whole day copy (and clears ``copy_key`` of the day's batches), the
vehicle's deletion drops everything under ``copies/vin=<VIN>/``; the next compaction rebuilds from the evidence
what is still stored, with the values retention withholds already removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select, update
from sqlalchemy.orm import aliased

from carvault.signals import Catalogue
from carvault.store.blobs import BlobNotFound, BlobStore
from carvault.store.metadata import BatchRecord, Database, rowcount

log = logging.getLogger(__name__)

PREFIX = "copies"
RATES = ("10hz", "1hz")  # the files of one copy
FAST_HZ = 10  # signals sampled at least this often go to the rate=10hz file
ROW_GROUP_FAST = 18_000  # 30 minutes of 10 Hz rows
ROW_GROUP_SLOW = 3_600  # an hour of 1 Hz rows
DICTIONARY_RATIO = 0.05  # a float column with fewer distinct values than this share of its values gets a dictionary
CLOSED_AFTER_MS = 3_600_000  # a UTC day is compacted once it ended this long ago (late batches are recompacted)
_METADATA_CACHE = 256  # parsed Parquet footers kept in memory (a window reads the footer, then row groups)
MS_PER_DAY = 86_400_000


def day_of(t_ms: int) -> dt.date:
    """The UTC day of a time."""
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).date()


def copy_key(vin: str, day: dt.date, batch_hashes: Iterable[str], withheld: Iterable[str] = ()) -> str:
    """The copy's name (without the rate part): ``vin=<VIN>/day=<day>/part-<digest>``.

    ``withheld`` names what retention withheld from it (column and cutoff): the same batches compacted again after a
    withholding get a new name, so no replica's cached download of the old bytes is ever read as the new copy.
    """
    digest = hashlib.sha256("\n".join([*sorted(batch_hashes), *sorted(withheld)]).encode()).hexdigest()[:24]
    return f"vin={vin}/day={day.isoformat()}/part-{digest}"


def key_of(name: str) -> str:
    """The copy's name from one of its files' blob keys (the inverse of ``file_key``)."""
    folder, _, part = name.removeprefix(f"{PREFIX}/").rpartition("/")
    return f"{folder.rpartition('/')[0]}/{part.removesuffix('.parquet')}"


def file_key(key: str, rate: str) -> str:
    """The blob key of one rate's file of a copy."""
    folder, _, part = key.rpartition("/")
    return f"{PREFIX}/{folder}/rate={rate}/{part}.parquet"


@dataclass(frozen=True)
class Compacted:
    """What one compaction wrote."""

    vin: str
    day: dt.date
    key: str
    batches: int
    rows: int
    bytes: int


def encode(table: pa.Table, row_group: int, level: int = 9) -> bytes:
    """The table as compact Parquet: encodings chosen per column from its values (see the module docstring)."""
    dictionary, split = [], []
    for f in table.schema:
        if f.name == "t":
            continue
        if not pa.types.is_floating(f.type):
            dictionary.append(f.name)
            continue
        col = table.column(f.name)
        present = len(col) - col.null_count
        if present and pc.count_distinct(col).as_py() < present * DICTIONARY_RATIO:
            dictionary.append(f.name)
        else:
            split.append(f.name)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=level,
        use_dictionary=dictionary or False,
        use_byte_stream_split=split or False,
        column_encoding={"t": "DELTA_BINARY_PACKED"},
        write_statistics=["t"],
        row_group_size=row_group,
        store_schema=True,
    )
    return sink.getvalue()


class DayCopies:
    """The compact copies of a region: written by compaction, read by window reads, dropped with their batches."""

    def __init__(self, db: Database, blobs: BlobStore, catalogue: Catalogue, cache_dir: Path) -> None:
        self.db = db
        self.blobs = blobs
        self.catalogue = catalogue
        self.cache_dir = cache_dir  # object storage: files fetched once and read locally (a cache, never the truth)
        self._footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ layout
    def rate_of(self, path: str) -> str:
        """Which file a signal's column goes to."""
        sig = self.catalogue.get(path)
        return "10hz" if sig is not None and sig.rate_hz >= FAST_HZ else "1hz"

    def _local(self, key: str) -> Path | None:
        """A local file holding the blob (the blob itself on the local store; a cached download on S3)."""
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

    def _file(self, key: str) -> tuple[pq.ParquetFile, pq.FileMetaData] | None:
        path = self._local(key)
        if path is None:
            return None
        with self._lock:
            meta = self._footers.get(key)
            if meta is not None:
                self._footers.move_to_end(key)
        try:
            f = pq.ParquetFile(str(path), memory_map=True, metadata=meta)
        except (OSError, pa.ArrowInvalid):
            return None
        if meta is None:
            with self._lock:
                self._footers[key] = f.metadata
                while len(self._footers) > _METADATA_CACHE:
                    self._footers.popitem(last=False)
        return f, f.metadata

    # ------------------------------------------------------------------ reading
    def read(self, key: str, start_ms: int, end_ms: int, wanted: Sequence[str]) -> pa.Table | None:
        """Rows of the copy with start_ms <= t < end_ms: ``t`` and the ``wanted`` columns the copy has.

        None when the copy's files are missing or unreadable (the caller falls back to per-batch copies).
        """
        fast = self._file(file_key(key, "10hz"))
        if fast is None:
            return None
        fast_wanted = [p for p in wanted if self.rate_of(p) == "10hz"]
        slow_wanted = [p for p in wanted if self.rate_of(p) != "10hz"]
        try:
            table = _rows(fast[0], fast[1], start_ms, end_ms, fast_wanted)
            if slow_wanted:
                slow = self._file(file_key(key, "1hz"))
                if slow is None:
                    return None
                part = _rows(slow[0], slow[1], start_ms, end_ms, slow_wanted)
                table = _merge(table, part)
        except (OSError, pa.ArrowException):  # damaged pages under an intact footer: the batches answer instead
            log.warning("compact copy %s is unreadable; dropped, the next compaction rebuilds it", key, exc_info=True)
            self.drop(key)
            return None
        return table

    # ------------------------------------------------------------------ writing
    def write(
        self,
        vin: str,
        day: dt.date,
        refs: Sequence[tuple[int, str]],
        table: pa.Table,
        replaces: Collection[str] = (),
        withheld: Iterable[str] = (),
    ) -> Compacted | None:
        """Store the day's table (all columns, sorted by t) as the copy of the batches ``refs`` (id, hash).

        The rows name the copy only if ``refs`` are still exactly the day's batches and each row still names no
        copy or one of ``replaces`` (what it named when this compaction listed the day): in one statement, so a
        compaction that listed the day before a batch arrived or went (a late batch, a purge, another replica's
        newer compaction) attaches nothing, and a day's batches never name two copies holding the same rows.
        Otherwise None, and the files are removed again unless a batch names them.
        """
        key = copy_key(vin, day, [h for _, h in refs], withheld)
        fast_cols = ["t"] + [c for c in table.column_names if c != "t" and self.rate_of(c) == "10hz"]
        slow_cols = [c for c in table.column_names if c != "t" and self.rate_of(c) != "10hz"]
        fast = table.select(fast_cols)
        slow = table.select(["t", *slow_cols])
        if slow_cols:
            any_value = pc.is_valid(slow.column(1))
            for c in slow_cols[1:]:
                any_value = pc.or_(any_value, pc.is_valid(slow.column(c)))
            slow = slow.filter(any_value)
        written = 0
        for rate, part, group in (("10hz", fast, ROW_GROUP_FAST), ("1hz", slow, ROW_GROUP_SLOW)):
            data = encode(part, group)
            self.blobs.put(file_key(key, rate), data, durable=False)  # derived: rebuilt from the evidence if lost
            written += len(data)
        ids = [i for i, _ in refs]
        start = _day_start(day)
        other = aliased(BatchRecord)
        others = (
            select(other.id)
            .where(
                other.vin == vin,
                other.kind == "telemetry",
                other.t0 >= start,
                other.t0 < start + MS_PER_DAY,
                other.id.not_in(ids),
            )
            .exists()
        )
        with self.db.session() as s:
            moved = rowcount(
                s.execute(
                    update(BatchRecord)
                    .where(BatchRecord.id.in_(ids), BatchRecord.vin == vin, ~others)
                    .where(BatchRecord.copy_key.is_(None) | BatchRecord.copy_key.in_([*replaces, key]))
                    .values(copy_key=key)
                )
            )
            if moved == len(ids):
                s.commit()
            else:  # a batch went, came or was compacted by a newer listing: nothing attached
                s.rollback()
        if moved != len(ids):
            if not self._batches_in(key):
                self._remove(key)
            return None
        return Compacted(vin, day, key, len(refs), table.num_rows, written)

    def _batches_in(self, key: str) -> int:
        with self.db.session() as s:
            return len(s.scalars(select(BatchRecord.id).where(BatchRecord.copy_key == key)).all())

    # ------------------------------------------------------------------ dropping
    def _remove(self, key: str) -> int:
        return sum(self.remove_file(file_key(key, rate)) for rate in RATES)

    def remove_file(self, name: str) -> int:
        """Remove one file of a copy (its blob, its cached download, its parsed footer); bytes freed."""
        freed = self.blobs.delete(name)
        (self.cache_dir / name).unlink(missing_ok=True)
        with self._lock:
            self._footers.pop(name, None)
        return freed

    def sweep_cache(self) -> int:
        """Remove cached downloads of copies no batch names any more (dropped, replaced or erased by another
        replica: their blobs are gone, this replica's downloads must go too); files removed.

        Every replica runs this with its compaction, so erased data leaves every replica's disk within an interval.
        """
        root = self.cache_dir / PREFIX
        if not root.exists():
            return 0
        files = [p for p in root.rglob("*.parquet") if not p.name.startswith(".")]
        by_key: dict[str, list[Path]] = {}
        for p in files:
            by_key.setdefault(key_of(p.relative_to(self.cache_dir).as_posix()), []).append(p)
        keys = list(by_key)
        named: set[str] = set()
        with self.db.session() as s:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                found = s.scalars(select(BatchRecord.copy_key).where(BatchRecord.copy_key.in_(chunk)))
                named.update(k for k in found if k is not None)
        removed = 0
        for key, paths in by_key.items():
            if key in named:
                continue
            for p in paths:
                p.unlink(missing_ok=True)
                with self._lock:
                    self._footers.pop(p.relative_to(self.cache_dir).as_posix(), None)
                removed += 1
        return removed

    def drop(self, key: str) -> int:
        """Remove one copy; its batches go back to per-batch reads until the next compaction. Bytes freed."""
        with self.db.session() as s:
            s.execute(update(BatchRecord).where(BatchRecord.copy_key == key).values(copy_key=None))
            s.commit()
        return self._remove(key)

    def drop_batch(self, vin: str, batch_hash: str) -> int:
        """Remove the copy holding one batch (the whole day's copy); bytes freed."""
        with self.db.session() as s:
            key = s.scalar(
                select(BatchRecord.copy_key).where(BatchRecord.vin == vin, BatchRecord.batch_hash == batch_hash)
            )
        return self.drop(key) if key else 0

    def drop_vehicle(self, vin: str) -> int:
        """Remove every copy of a vehicle (its deletion); bytes freed."""
        freed = self.blobs.delete_prefix(f"{PREFIX}/vin={vin}/")
        for folder in (self.cache_dir / PREFIX / f"vin={vin}",):
            if folder.exists():
                for p in folder.rglob("*.parquet"):
                    p.unlink(missing_ok=True)
        with self._lock:
            for k in [k for k in self._footers if k.startswith(f"{PREFIX}/vin={vin}/")]:
                del self._footers[k]
        with self.db.session() as s:
            s.execute(update(BatchRecord).where(BatchRecord.vin == vin).values(copy_key=None))
            s.commit()
        return freed

    # ------------------------------------------------------------------ compaction
    def open_days(self, now_ms: int, limit: int = 1000) -> list[tuple[str, dt.date]]:
        """(vin, day) pairs of closed days holding batches without a compact copy, oldest first."""
        cutoff = now_ms - CLOSED_AFTER_MS
        with self.db.session() as s:
            rows = s.execute(
                select(BatchRecord.vin, BatchRecord.t0)
                .where(BatchRecord.copy_key.is_(None), BatchRecord.kind == "telemetry", BatchRecord.t0 < cutoff)
                .order_by(BatchRecord.t0)
                .limit(limit * 50)
            ).all()
        seen: dict[tuple[str, dt.date], None] = {}
        for vin, t0 in rows:
            day = day_of(t0)
            end = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000) + MS_PER_DAY
            if end <= cutoff:
                seen.setdefault((vin, day), None)
        return list(seen)[:limit]

    def day_batches(self, vin: str, day: dt.date) -> list[BatchRecord]:
        """The telemetry batches whose first sample is on ``day`` (UTC), in chain order."""
        start = _day_start(day)
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(BatchRecord)
                    .where(
                        BatchRecord.vin == vin,
                        BatchRecord.kind == "telemetry",
                        BatchRecord.t0 >= start,
                        BatchRecord.t0 < start + MS_PER_DAY,
                    )
                    .order_by(BatchRecord.seq)
                )
            )

    def compact(
        self,
        vin: str,
        day: dt.date,
        load: Callable[[BatchRecord], pa.Table],
        cutoffs: Mapping[str, int] | None = None,
    ) -> Compacted | None:
        """Compact one vehicle's day: every batch of it (``load`` gives its full table), then the old copy dropped."""
        batches = self.day_batches(vin, day)
        if not batches:
            return None
        old = {b.copy_key for b in batches if b.copy_key}
        parts = [load(b) for b in batches]
        table = pa.concat_tables(parts, promote_options="default")
        if table.num_rows and not _sorted(table):
            table = table.sort_by("t")
        withheld: list[str] = []
        if cutoffs:
            from carvault.store.telemetry import withhold

            table = withhold(table, cutoffs)
            start = _day_start(day)
            # Every cutoff reaching into the day (a column the batches outlived is not in the table at all).
            withheld = [f"{c}<{min(cut, start + MS_PER_DAY)}" for c, cut in cutoffs.items() if cut > start]
        refs = [(b.id, b.batch_hash) for b in batches]
        done = self.write(vin, day, refs, table, replaces=old, withheld=withheld)
        for key in old - ({done.key} if done else set()):
            if not self._batches_in(key):  # a copy still named (this compaction attached nothing) stays
                self._remove(key)
        return done


class Compactor:
    """The in-process schedule: compaction of closed days every ``interval_s`` seconds in a worker thread (0 = off).

    Every replica may run one: a day's copy has one name for one set of batches, so replicas racing on a day write
    the same bytes. ``carvault compact`` runs it once from the command line (e.g. from cron when this is off).
    """

    def __init__(self, compact: Callable[[], object], interval_s: int) -> None:
        self.compact = compact
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (nothing when the interval is 0)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="copy-compactor")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.compact)
            except Exception:  # noqa: BLE001 - the loop must live to try again next interval
                log.exception("compaction of query copies failed; the next interval tries again")

    async def stop(self) -> None:
        """Cancel the loop (a compaction already running finishes in its thread)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


def _rows(f: pq.ParquetFile, meta: pq.FileMetaData, start_ms: int, end_ms: int, wanted: Sequence[str]) -> pa.Table:
    """t and ``wanted`` (those the file has) of the row groups that can hold [start_ms, end_ms), cut to it."""
    names = set(meta.schema.names)
    columns = ["t", *[p for p in wanted if p in names]]
    groups = []
    t_index = meta.schema.names.index("t")
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(t_index).statistics
        if stats is None or not stats.has_min_max:
            groups.append(i)
            continue
        lo, hi = _ms(stats.min), _ms(stats.max)
        if hi >= start_ms and lo < end_ms:
            groups.append(i)
    if not groups:
        return f.schema_arrow.empty_table().select(columns)
    table = f.read_row_groups(groups, columns=columns, use_threads=len(groups) > 1)
    t = table.column("t").cast(pa.int64()).to_numpy()
    a, b = np.searchsorted(t, [start_ms, end_ms])
    return table.slice(int(a), int(b - a))


def _day_start(day: dt.date) -> int:
    """Milliseconds of a UTC day's midnight."""
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)


def _ms(value: object) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(value)  # type: ignore[call-overload]


def _merge(fast: pa.Table, slow: pa.Table) -> pa.Table:
    """The slow file's values put on the fast file's rows (every row's t is in the fast file)."""
    if slow.num_columns == 1 or fast.num_rows == 0:
        return fast
    tf = fast.column("t").cast(pa.int64()).to_numpy()
    ts = slow.column("t").cast(pa.int64()).to_numpy()
    pos = np.searchsorted(tf, ts)
    ok = (pos < len(tf)) & (tf[np.minimum(pos, len(tf) - 1)] == ts)
    if not ok.all():  # a slow row without its fast row (should not happen): keep what lines up
        pos, slow = pos[ok], slow.filter(pa.array(ok))
    take = np.full(len(tf), -1, dtype=np.int64)
    take[pos] = np.arange(len(pos))
    indices = pa.array(take, mask=take < 0)
    for name in slow.column_names[1:]:
        fast = fast.append_column(slow.schema.field(name), slow.column(name).take(indices))
    return fast


def _sorted(table: pa.Table) -> bool:
    t = table.column("t").cast(pa.int64()).to_numpy()
    return bool(len(t) < 2 or (np.diff(t) > 0).all())
