"""Closed days' payload parts (store/day_copies.py): evidence and query copy share their bytes, on both blob backends.

After compaction every envelope reads back byte for byte (its hash is the batch hash), every window answers as
before, the segments keep only skeletons, deletion and purges take the parts with their batches, a compaction
killed between its steps is healed by the next one, and two compactions at once agree.
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.compliance.retention import DAY_MS, period_ms
from carvault.protocol import decode_envelope
from carvault.region import Region
from carvault.server import free_port
from carvault.settings import Settings
from carvault.signals import CATEGORIES, catalogue
from carvault.store.day_copies import PREFIX, day_of, part_key
from carvault.store.metadata import BatchRecord, PayloadReclaim
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in
from tests.s3server import S3_TEST_ENV, s3_bucket, s3_server  # noqa: F401 - the fixture

DAY = 86_400_000


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The region's settings on the local folder store, then on the moto S3 server (tests/s3server.py)."""
    port = free_port()
    base = Settings(
        data_dir=tmp_path / "region-cn", region="cn", port=port, region_endpoints={"cn": f"http://127.0.0.1:{port}"}
    )
    if request.param == "local":
        return base
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    s3 = request.getfixturevalue("s3_server")
    return base.with_(blob_store=s3_bucket(s3), s3_endpoint_url=s3.endpoint_url)


@pytest.fixture
def uploaded(region: Region, agent: VehicleAgent) -> VehicleAgent:
    opt_in(region, agent.identity.vin)
    # Driving on three UTC days: 23:58 to 00:03, and a day later.
    first = BASE_MS - BASE_MS % DAY + DAY - 120_000
    agent.record(drive_table(start_ms=first, seconds=300, seed=1), batch_seconds=60)
    agent.record(drive_table(start_ms=first + DAY + 3_600_000, seconds=300, seed=2), batch_seconds=60)
    assert len(agent.upload_pending()) == 10
    return agent


def _records(region: Region, vin: str | None = None) -> list[BatchRecord]:
    with region.db.session() as s:
        q = select(BatchRecord).order_by(BatchRecord.vin, BatchRecord.seq)
        return list(s.scalars(q.where(BatchRecord.vin == vin) if vin else q))


def _envelopes(region: Region) -> dict[str, bytes]:
    """Every batch's envelope as the one evidence reader answers it, checked against its hash."""
    out = {}
    for r in _records(region):
        raw = region.segment_reader.envelope(r)
        assert hashlib.sha256(raw).hexdigest() == r.batch_hash
        out[r.batch_hash] = raw
    return out


def _windows(region: Region, vin: str, n: int = 20) -> list[pa.Table]:
    cat = catalogue()
    paths = sorted({c for r in region.telemetry.batches(vin, 0, 2**62) for c in r.columns} - {"t"})
    rng = random.Random(7)
    out = []
    for _ in range(n):
        start = rng.randrange(BASE_MS - DAY, BASE_MS + 3 * DAY, 1000)
        length = rng.choice([60_000, 600_000, 1_800_000, 2 * DAY])
        chosen = rng.sample(paths, k=rng.randint(1, len(paths)))
        out.append(region.telemetry.window(vin, start, start + length, [cat.get(p) for p in chosen]))
    out.append(region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + 4 * DAY, [cat.get(p) for p in paths]))
    return out


def _same(a: list[pa.Table], b: list[pa.Table]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.equals(y)


def _parts(region: Region, vin: str) -> list[str]:
    return sorted(region.blobs.list(f"{PREFIX}/vin={vin}/"))


def _allocated(region: Region) -> int:
    """Bytes the segments occupy: allocated blocks locally, object sizes on S3."""
    folder = region.segment_reader.directory
    if folder is not None:
        return sum(p.stat().st_blocks * 512 for p in folder.glob("*.cvseg"))
    return sum(region.blobs.size(k) for k in region.blobs.list("segments/"))


def test_compaction_moves_payloads_and_keeps_every_byte_and_answer(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    before_env, before_win, before_bytes = _envelopes(region), _windows(region, vin), _allocated(region)
    # A store of an earlier release still holds re-encoded day files: they go when their day is compacted.
    old = f"{PREFIX}/vin={vin}/day={day_of(BASE_MS).isoformat()}/rate=10hz/part-0123.parquet"
    region.blobs.put(old, b"old layout")
    done = region.telemetry.compact()
    assert sum(c.batches for c in done) == 10 and len(done) == 3
    recs = _records(region, vin)
    assert all(r.payload_key == part_key(vin, r.t0, r.batch_hash) for r in recs)
    assert _parts(region, vin) == sorted(r.payload_key for r in recs)  # Hive layout, one part per batch
    assert old not in _parts(region, vin)
    for r in recs:  # the part IS the signed payload
        assert region.blobs.get(r.payload_key) == decode_envelope(before_env[r.batch_hash]).payload
    assert _envelopes(region) == before_env  # byte for byte, wherever the payload now lives
    _same(before_win, _windows(region, vin))
    saved = before_bytes - _allocated(region)
    assert saved >= 0.9 * sum(c.bytes for c in done)  # the payload ranges were reclaimed (holes / new objects)
    assert not list((region.settings.data_dir / "derived" / vin).glob("*.arrow"))  # per-batch copies gone
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PayloadReclaim)) == 0
    assert region.telemetry.compact() == []  # nothing left open: idempotent


def test_a_late_batch_joins_its_day_at_the_next_run(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    first = set(_parts(region, vin))
    late_start = BASE_MS - BASE_MS % DAY + DAY - 3_600_000
    uploaded.record(drive_table(start_ms=late_start - 3_600_000, seconds=120, seed=3), batch_seconds=60)
    uploaded.upload_pending()
    with_late = _windows(region, vin)
    again = region.telemetry.compact()
    assert [c.batches for c in again] == [2]
    assert first < set(_parts(region, vin))
    _same(with_late, _windows(region, vin))
    _envelopes(region)


def test_withholding_applies_to_parts_without_touching_them(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    parts = {k: region.blobs.get(k) for k in _parts(region, vin)}
    now = BASE_MS + period_ms("body") + 30 * DAY_MS
    region.retention.run(now=now)
    assert {k: region.blobs.get(k) for k in _parts(region, vin)} == parts  # evidence: unchanged
    cat = catalogue()
    body = [s for s in cat if s.category == "body"]
    paths = {c for r in region.telemetry.batches(vin, 0, 2**62) for c in r.columns}
    wanted = [s for s in body if s.path in paths]
    assert wanted
    table = region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + 3 * DAY, wanted)
    assert table.num_rows and all(table.column(s.path).null_count == table.num_rows for s in wanted)


def test_a_purge_and_a_deletion_take_the_parts_with_their_batches(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    region.telemetry.compact()
    before = {r.batch_hash: r.payload_key for r in _records(region, vin)}
    later = BASE_MS + max(period_ms(c) for c in CATEGORIES) + 30 * DAY_MS
    region.retention.run(now=later, limit=1)  # one batch erased, the rest of its day kept
    left = {r.batch_hash for r in _records(region, vin)}
    gone = set(before) - left
    assert gone and left
    assert set(_parts(region, vin)) == {before[h] for h in left}
    _envelopes(region)
    owner = region.accounts.register("owner-parts@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vin, uploaded.identity.pairing_code)
    req = region.deletions.request(owner.id, vin, "sold the car", immediately=True)
    assert region.deletions.process(req.id).status == "completed"
    assert _parts(region, vin) == [] and _records(region, vin) == []
    if region.segment_reader.directory is None:  # the skeleton objects went with their batches
        assert not [k for k in region.blobs.list("segments/") if "skel-" in k]


def test_a_compaction_killed_between_its_steps_is_healed(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    days = region.telemetry.days
    assert days is not None
    before_env, before_win = _envelopes(region), _windows(region, vin)
    batches = _records(region, vin)  # the steps take any batches (a run takes a day's)
    # Killed after step 1 (parts durable, no row names them yet): nothing changed for any reader.
    days.write_parts(batches[:2])
    assert _envelopes(region) == before_env
    # Killed after step 2 (rows name parts, old ranges queued, nothing reclaimed yet).
    ids = days.attach(days.write_parts(batches[2:]))
    assert ids and _envelopes(region) == before_env
    _same(before_win, _windows(region, vin))
    region.telemetry.compact()  # the next run finishes both
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PayloadReclaim)) == 0
        assert s.scalar(select(func.count()).where(BatchRecord.payload_key.is_(None))) == 0
    assert _envelopes(region) == before_env
    _same(before_win, _windows(region, vin))
    assert len(_parts(region, vin)) == 10


def test_two_compactions_at_once_agree(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    days = region.telemetry.days
    assert days is not None
    before_env, before_win = _envelopes(region), _windows(region, vin)
    day = day_of(min(r.t0 for r in _records(region, vin)))
    # A lists and writes; B compacts everything meanwhile; then A's rows change nothing and A removes nothing.
    stale = days.write_parts(days.day_batches(vin, day, open_only=True))
    region.telemetry.compact()
    assert days.attach(stale) == []
    assert len(_parts(region, vin)) == 10
    assert _envelopes(region) == before_env
    # And truly at once, in threads, on a fresh late day.
    late = BASE_MS - BASE_MS % DAY + 5 * DAY
    uploaded.record(drive_table(start_ms=late, seconds=300, seed=4), batch_seconds=60)
    uploaded.upload_pending()
    before_env = _envelopes(region)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(region.telemetry.compact())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _envelopes(region) == before_env
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PayloadReclaim)) == 0
    assert len(_parts(region, vin)) == 15
    _same(before_win, _windows(region, vin)[: len(before_win)])


def test_the_parts_are_a_hive_dataset_any_engine_reads(region: Region, uploaded: VehicleAgent) -> None:
    """Listed by the metadata DB (on S3 through this replica's download cache), read by DuckDB as one dataset."""
    from carvault.fleet.engines import DuckDBEngine, dataset_of

    vin = uploaded.identity.vin
    region.telemetry.compact()
    assert region.telemetry.days is not None
    data = dataset_of(region.db, region.telemetry.days, region.catalogue, region.telemetry.withheld())
    assert len(data.files) == 10 and all(f.is_relative_to(data.root) for f in data.files)
    with DuckDBEngine(data) as engine:
        rows = engine.sql("SELECT vin, day, count(*) AS n FROM telemetry GROUP BY vin, day ORDER BY day").to_pylist()
    days = sorted({day_of(r.t0).isoformat() for r in _records(region, vin)})
    assert [r["vin"] for r in rows] == [vin] * 3 and [str(r["day"]) for r in rows] == days
    with region.db.session() as s:
        assert sum(r["n"] for r in rows) == s.scalar(select(func.sum(BatchRecord.rows)).where(BatchRecord.vin == vin))


def test_an_unreadable_batch_stays_in_its_segment_and_stops_nothing(region: Region, uploaded: VehicleAgent) -> None:
    vin = uploaded.identity.vin
    recs = _records(region, vin)
    broken = recs[0]
    region.derived.discard(vin, broken.batch_hash)
    region.segment_reader.erase(broken.segment, [(broken.offset, broken.length)])
    done = region.telemetry.compact()
    assert sum(c.batches for c in done) == 9
    with region.db.session() as s:
        still = list(s.scalars(select(BatchRecord.batch_hash).where(BatchRecord.payload_key.is_(None))))
    assert still == [broken.batch_hash]


def test_a_batch_whose_bytes_no_longer_hash_is_never_moved(region: Region, uploaded: VehicleAgent) -> None:
    """A flipped bit inside a payload (bit rot, tampering) leaves the batch whole in its segment, for verify to
    report; the others move."""
    vin = uploaded.identity.vin
    recs = _records(region, vin)
    damaged = recs[1]
    path = region.segment_reader.directory
    if path is None:
        pytest.skip("flipping a byte in place needs the local segment files")
    with open(path / damaged.segment, "r+b") as f:
        at = damaged.offset + damaged.length // 2  # inside the payload
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    done = region.telemetry.compact()
    assert sum(c.batches for c in done) == len(recs) - 1
    with region.db.session() as s:
        still = list(s.scalars(select(BatchRecord.batch_hash).where(BatchRecord.payload_key.is_(None))))
    assert still == [damaged.batch_hash]
