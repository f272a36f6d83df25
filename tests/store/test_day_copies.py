"""Compact per-day query copies (store/day_copies.py): same answers as the batches, small, engine-readable, dropped
with their batches and rebuilt from the evidence."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.region import Region
from carvault.signals import catalogue
from carvault.store.day_copies import PREFIX, day_of
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in

DAY = 86_400_000


@pytest.fixture
def uploaded(region: Region, agent: VehicleAgent) -> VehicleAgent:
    opt_in(region, agent.identity.vin)
    # Driving on three UTC days: 23:58 to 00:03, and a day later.
    first = BASE_MS - BASE_MS % DAY + DAY - 120_000
    agent.record(drive_table(start_ms=first, seconds=300, seed=1), batch_seconds=60)
    agent.record(drive_table(start_ms=first + DAY + 3_600_000, seconds=300, seed=2), batch_seconds=60)
    assert len(agent.upload_pending()) == 10
    return agent


def _windows(region: Region, vin: str, n: int = 25) -> list[pa.Table]:
    cat = catalogue()
    paths = sorted({c for r in region.telemetry.batches(vin, 0, 2**62) for c in r.columns} - {"t"})
    rng = random.Random(7)
    out = []
    for _ in range(n):
        start = rng.randrange(BASE_MS - DAY, BASE_MS + 3 * DAY, 1000)
        length = rng.choice([60_000, 600_000, 1_800_000, 2 * DAY])
        chosen = rng.sample(paths, k=rng.randint(1, len(paths)))
        out.append(region.telemetry.window(vin, start, start + length, [cat.get(p) for p in chosen]))
    everything = [cat.get(p) for p in paths]
    out.append(region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + 4 * DAY, everything))
    return out


def _copy_files(region: Region, vin: str) -> list[str]:
    return sorted(region.blobs.list(f"{PREFIX}/vin={vin}/"))


def test_compaction_keeps_every_answer_and_removes_per_batch_copies(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    before = _windows(region, vin)
    assert sum(t.num_rows for t in before) > 0
    per_day: dict = {}
    for r in region.telemetry.batches(vin, 0, 2**62):
        per_day[day_of(r.t0)] = per_day.get(day_of(r.t0), 0) + 1
    done = region.telemetry.compact()
    assert {c.day: c.batches for c in done} == per_day and len(per_day) == 3 and all(c.vin == vin for c in done)
    files = _copy_files(region, vin)
    assert len(files) == 6 and all("/rate=10hz/" in f or "/rate=1hz/" in f for f in files)
    assert {f.split("/")[2] for f in files} == {f"day={c.day.isoformat()}" for c in done}
    with region.db.session() as s:
        assert s.scalar(select(func.count()).where(BatchRecord.copy_key.is_(None))) == 0
    assert not list((region.settings.data_dir / "derived" / vin).glob("*.arrow"))  # per-batch copies gone
    after = _windows(region, vin)
    for a, b in zip(before, after, strict=True):
        assert a.equals(b)
    assert region.telemetry.compact() == []  # nothing left open: compaction is idempotent


def test_a_late_batch_is_read_alone_then_recompacted(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    first = region.telemetry.compact()
    day_one = min(c.day for c in first)
    old_files = [f for f in _copy_files(region, vin) if f"day={day_one}" in f]
    # The car uploads more of the first day later (it was offline).
    late_start = BASE_MS - BASE_MS % DAY + DAY - 3_600_000
    uploaded.record(drive_table(start_ms=late_start - 3_600_000, seconds=120, seed=3), batch_seconds=60)
    uploaded.upload_pending()
    with_late = _windows(region, vin)
    again = region.telemetry.compact()
    assert [c.day for c in again] == [day_one]
    new_files = [f for f in _copy_files(region, vin) if f"day={day_one}" in f]
    assert not set(old_files) & set(new_files)  # the old copy was replaced
    for a, b in zip(with_late, _windows(region, vin), strict=True):
        assert a.equals(b)


def test_dropping_a_batch_copy_or_files_falls_back_to_the_evidence(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    before = _windows(region, vin)
    region.telemetry.compact()
    some = region.telemetry.batches(vin, 0, 2**62)[0]
    freed = region.derived.delete(vin, some.batch_hash)  # retention drops a batch's copies this way
    assert freed > 0
    with region.db.session() as s:
        open_rows = s.scalar(select(func.count()).where(BatchRecord.copy_key.is_(None)))
    same_day = [r for r in region.telemetry.batches(vin, 0, 2**62) if day_of(r.t0) == day_of(some.t0)]
    assert open_rows == len(same_day)  # the whole day went back to per-batch reads
    for a, b in zip(before, _windows(region, vin), strict=True):
        assert a.equals(b)
    # A copy file lost behind the region's back: reads fall back too.
    region.telemetry.compact()
    for f in _copy_files(region, vin):
        region.blobs.delete(f)
    for a, b in zip(before, _windows(region, vin), strict=True):
        assert a.equals(b)


def test_vehicle_deletion_removes_every_copy(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    assert _copy_files(region, vin)
    region.derived.delete_vehicle(vin)
    assert _copy_files(region, vin) == []


def test_the_copies_are_a_hive_dataset_any_engine_reads(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    root = region.blobs.local_path(PREFIX)
    assert root is not None
    con = duckdb.connect()
    rows = con.execute(
        "SELECT vin, day, count(*) AS n FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
        " GROUP BY vin, day ORDER BY day",
        [f"{root}/*/*/rate=10hz/*.parquet"],
    ).fetchall()
    days = sorted({day_of(r.t0).isoformat() for r in region.telemetry.batches(vin, 0, 2**62)})
    assert [r[0] for r in rows] == [vin] * 3 and [str(r[1]) for r in rows] == days
    total_rows = sum(r[2] for r in rows)
    with region.db.session() as s:
        assert total_rows == s.scalar(select(func.sum(BatchRecord.rows)).where(BatchRecord.vin == vin))


def _per_batch(region: Region, vin: str) -> list[pa.Table]:
    """The same windows read batch by batch (no compact copies): what the copies must answer."""
    days, region.telemetry.days = region.telemetry.days, None
    try:
        return _windows(region, vin)
    finally:
        region.telemetry.days = days


def test_a_purged_batch_takes_its_day_copy_with_it(region: Region, uploaded: VehicleAgent) -> None:
    from carvault.compliance.retention import DAY_MS, period_ms
    from carvault.signals import CATEGORIES

    vin = uploaded.identity.vin
    region.telemetry.compact()
    with region.db.session() as s:
        before = {r.batch_hash: (r.t0, r.t1, r.copy_key) for r in s.scalars(select(BatchRecord))}
    later = BASE_MS + max(period_ms(c) for c in CATEGORIES) + 30 * DAY_MS
    for _ in range(12):  # one batch per run: days end up partly purged
        region.retention.run(now=later, limit=1)
        with region.db.session() as s:
            left = set(s.scalars(select(BatchRecord.batch_hash)))
        gone = set(before) - left
        if gone:
            break
    assert gone and left
    gone_days = {day_of(before[h][0]).isoformat() for h in gone}
    gone_keys = {before[h][2] for h in gone}
    files = _copy_files(region, vin)
    assert not [f for f in files if any(k and k.split("/part-")[1] in f for k in gone_keys)]  # erased with it
    with region.db.session() as s:
        assert not s.scalars(select(BatchRecord).where(BatchRecord.copy_key.in_(gone_keys))).all()
    assert gone_days
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)
    region.telemetry.compact()  # the day is compacted again from what is still stored
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)


def test_a_stale_compaction_racing_a_newer_one_changes_nothing(region: Region, uploaded: VehicleAgent) -> None:
    """Compaction A lists day one's batches; a late batch of that day arrives and compaction B compacts the whole
    day; then A finishes. A's copy (without the late batch) must not take over B's batches: no duplicated rows, no
    copy file that no batch names (it would outlive its batches' erasure)."""
    _stale_race(region, uploaded)


def _stale_race(region: Region, uploaded: VehicleAgent) -> None:
    from carvault.store.telemetry import BatchRef

    vin = uploaded.identity.vin
    days = region.telemetry.days
    assert days is not None
    day_one = min(day_of(r.t0) for r in region.telemetry.batches(vin, 0, 2**62))
    raced: list[object] = []

    def load(rec: BatchRecord) -> pa.Table:
        if not raced:  # B runs while A is loading
            late = BASE_MS - BASE_MS % DAY + DAY - 3_600_000
            uploaded.record(drive_table(start_ms=late - 3_600_000, seconds=120, seed=3), batch_seconds=60)
            uploaded.upload_pending()
            raced.extend(region.telemetry.compact())
        ref = BatchRef(rec.seq, rec.t0, rec.t1, rec.segment, rec.offset, rec.length, frozenset(), rec.batch_hash)
        return region.telemetry.batch_table(vin, ref, {})

    stale = days.compact(vin, day_one, load)
    assert day_one in {c.day for c in raced}  # type: ignore[attr-defined]
    assert stale is None  # A's set of batches is no longer the day's: it attaches nothing
    with region.db.session() as s:
        keys = {r.copy_key for r in s.scalars(select(BatchRecord).where(BatchRecord.vin == vin))}
    assert None not in keys
    named = {days_file.split("/part-")[1].removesuffix(".parquet") for days_file in _copy_files(region, vin)}
    assert named == {k.split("/part-")[1] for k in keys if k}  # no orphan copy
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)


@pytest.mark.slow
def test_the_race_and_a_purge_on_postgres(tmp_path) -> None:  # noqa: ANN001
    """The same on a PostgreSQL metadata DB (its UPDATE re-checks a row another compaction changed meanwhile)."""
    from carvault.bench.pg_cluster import TemporaryPostgres
    from carvault.compliance.retention import DAY_MS, period_ms
    from carvault.provisioning import provision
    from carvault.server import BackgroundServer
    from carvault.settings import Settings
    from carvault.signals import CATEGORIES
    from tests.factories import vin_for

    with TemporaryPostgres(fsync=False) as pg:
        settings = Settings(data_dir=tmp_path / "cn", region="cn", database_url=pg.create_database("region_cn"))
        region = Region(settings)
        try:
            car = provision(region, vin_for(4), tmp_path / "vehicles")
            opt_in(region, car.vin)
            with BackgroundServer(region) as server:
                agent = VehicleAgent(car, tmp_path / "vehicles" / car.vin, server.url)
                first = BASE_MS - BASE_MS % DAY + DAY - 120_000
                agent.record(drive_table(start_ms=first, seconds=300, seed=1), batch_seconds=60)
                agent.record(drive_table(start_ms=first + DAY + 3_600_000, seconds=300, seed=2), batch_seconds=60)
                agent.upload_pending()
                _stale_race(region, agent)
            with region.db.session() as s:
                before = dict(s.execute(select(BatchRecord.batch_hash, BatchRecord.copy_key)).all())
            region.retention.run(now=BASE_MS + max(period_ms(c) for c in CATEGORIES) + 30 * DAY_MS, limit=1)
            with region.db.session() as s:
                left = set(s.scalars(select(BatchRecord.batch_hash)))
            erased = {before[h].split("/part-")[1] for h in set(before) - left}
            assert erased and left  # one batch purged, the rest of its day kept
            assert not [f for f in _copy_files(region, car.vin) if any(k in f for k in erased)]
            for a, b in zip(_per_batch(region, car.vin), _windows(region, car.vin), strict=True):
                assert a.equals(b)
        finally:
            region.close()


def test_withheld_values_leave_the_day_copies(region: Region, uploaded: VehicleAgent) -> None:
    import pyarrow.parquet as pq

    from carvault.compliance.retention import DAY_MS, period_ms
    from carvault.signals import CATEGORIES

    vin = uploaded.identity.vin
    region.telemetry.compact()
    with region.db.session() as s:
        unwithheld = set(s.scalars(select(BatchRecord.copy_key)))
    cat = catalogue()
    now = BASE_MS + period_ms("body") + 30 * DAY_MS
    expired = {c for c in CATEGORIES if period_ms(c) < now - BASE_MS - 10 * DAY_MS}
    assert "body" in expired and "driving_dynamics" not in expired
    region.retention.run(now=now)

    def withheld_values() -> dict[str, int]:
        found: dict[str, int] = {}
        for name in _copy_files(region, vin):
            path = region.blobs.local_path(name)
            assert path is not None
            table = pq.read_table(path)
            for c in table.column_names:
                sig = cat.get(c)
                if c != "t" and sig is not None and sig.category in expired:
                    found[name + ":" + c] = len(table.column(c)) - table.column(c).null_count
        return {k: v for k, v in found.items() if v}

    assert withheld_values() == {}  # no file keeps what retention withholds
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)
    region.telemetry.compact()  # rebuilt without them, under new names (no replica's download is read as them)
    assert withheld_values() == {} and _copy_files(region, vin)
    with region.db.session() as s:
        assert not unwithheld & set(s.scalars(select(BatchRecord.copy_key)))
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)


def test_a_day_that_cannot_be_read_does_not_stop_the_others(region: Region, uploaded: VehicleAgent) -> None:
    """A batch whose evidence reads as zeros (a deletion erasing it while compaction runs, or damage) fails its own
    day only: the other days are compacted in the same run, and that day is tried again next time."""
    vin = uploaded.identity.vin
    refs = region.telemetry.batches(vin, 0, 2**62)
    first_day = min(day_of(r.t0) for r in refs)
    broken = next(r for r in refs if day_of(r.t0) == first_day)
    region.derived.discard(vin, broken.batch_hash)
    region.segment_reader.erase(broken.segment, [(broken.offset, broken.length)])
    done = region.telemetry.compact()
    assert {c.day for c in done} == {day_of(r.t0) for r in refs} - {first_day}
    with region.db.session() as s:
        still_open = {day_of(t0) for t0 in s.scalars(select(BatchRecord.t0).where(BatchRecord.copy_key.is_(None)))}
    assert still_open == {first_day}


def test_a_damaged_copy_file_falls_back_to_the_batches(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    for name in _copy_files(region, vin):  # the pages damaged, the footer intact: opening works, decoding fails
        path = region.blobs.local_path(name)
        assert path is not None
        data = bytearray(path.read_bytes())
        size = int.from_bytes(data[-8:-4], "little")  # footer length
        for i in range(8, len(data) - size - 8, 7):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)
    assert _copy_files(region, vin) == []  # dropped: rebuilt by the next compaction
    assert len(region.telemetry.compact()) == 3
    for a, b in zip(_per_batch(region, vin), _windows(region, vin), strict=True):
        assert a.equals(b)
