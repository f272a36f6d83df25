"""Decoded columns of payload parts kept in memory for window reads (store/day_copies.py, ``DECODED_BYTES``).

A window touching a part another read decoded a moment ago takes its columns from memory. The cache must never be a
way around erasure: a part no longer present is not answered from memory, and a removed part's columns leave the
process (at once here, at the next sweep when another worker or replica erased it). It stays within its bound.
"""

from __future__ import annotations

import pyarrow as pa
from sqlalchemy import delete, select

from carvault.location import LAT
from carvault.region import Region
from carvault.signals import catalogue
from carvault.store.day_copies import DayCopies
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in

DAY = 86_400_000
SPEED = "Vehicle.Speed"


def _compacted(region: Region, agent: VehicleAgent, batches: int = 4) -> tuple[DayCopies, list[BatchRecord]]:
    vin = agent.identity.vin
    opt_in(region, vin)
    agent.record(drive_table(start_ms=BASE_MS, seconds=60 * batches, seed=5), batch_seconds=60)
    assert len(agent.upload_pending()) == batches
    assert sum(c.batches for c in region.telemetry.compact()) == batches
    with region.db.session() as s:
        recs = list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin).order_by(BatchRecord.seq)))
    days = region.derived.days
    assert days is not None and all(r.payload_key for r in recs)
    return days, recs


def test_a_second_window_reads_the_same_values_from_memory(region: Region, agent: VehicleAgent) -> None:
    days, recs = _compacted(region, agent)
    vin, sigs = agent.identity.vin, [catalogue()[SPEED], catalogue()[LAT]]
    first = region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, sigs)
    assert set(days._decoded) == {r.payload_key for r in recs}
    # Memory answers now: the files' bytes could not be read again, yet the window is the same.
    for r in recs:
        assert r.payload_key is not None
        path = days.local(r.payload_key)
        assert path is not None
        held = path.read_bytes()
        path.write_bytes(b"not parquet" * 10)
        try:
            again = region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, sigs)
        finally:
            path.write_bytes(held)
        assert again.equals(first)
    # A narrower choice of columns is a selection of what memory holds; a wider one reads the part again.
    speed_only = region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, [catalogue()[SPEED]])
    assert speed_only.column(SPEED).equals(first.column(SPEED))


def test_a_part_gone_from_here_is_never_answered_from_memory(region: Region, agent: VehicleAgent) -> None:
    days, recs = _compacted(region, agent)
    vin = agent.identity.vin
    region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, [catalogue()[SPEED]])
    key = recs[0].payload_key
    assert key is not None and key in days._decoded
    region.blobs.delete(key)  # erased by another worker: this process still holds its columns
    assert days.read(key, [SPEED]) is None


def test_removed_parts_leave_memory(region: Region, agent: VehicleAgent) -> None:
    days, recs = _compacted(region, agent)
    vin = agent.identity.vin
    region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, [catalogue()[SPEED]])
    keys = {r.payload_key for r in recs}
    assert set(days._decoded) == keys

    # Another worker's purge erased one batch and its part: forgotten at this process's next sweep.
    victim = recs[0]
    with region.db.session() as s:
        s.execute(delete(BatchRecord).where(BatchRecord.id == victim.id))
    assert victim.payload_key is not None
    region.blobs.delete(victim.payload_key)
    days.sweep_cache()
    assert set(days._decoded) == keys - {victim.payload_key}

    days.remove_part(recs[1].payload_key or "")
    assert set(days._decoded) == keys - {victim.payload_key, recs[1].payload_key}

    days.drop_vehicle(vin)
    assert days._decoded == {} and days._decoded_size == 0


def test_memory_stays_within_its_bound(region: Region, agent: VehicleAgent) -> None:
    days, recs = _compacted(region, agent, batches=6)
    one = days.read(recs[0].payload_key or "", [SPEED])
    assert one is not None
    size = days._decoded[recs[0].payload_key or ""].get_total_buffer_size()
    days._forget(list(days._decoded))
    days.decoded_bytes = size * 8 // 2  # room for about two parts; one part is at most a quarter of it
    for r in recs:
        assert days.read(r.payload_key or "", [SPEED]) is not None
        assert days._decoded_size <= days.decoded_bytes
        assert days._decoded_size == sum(t.get_total_buffer_size() for t in days._decoded.values())
    assert list(days._decoded) == [r.payload_key for r in recs[-len(days._decoded) :]]  # the most recent stay
    assert 1 <= len(days._decoded) < len(recs)
    table = days.read(recs[-1].payload_key or "", [SPEED])
    assert isinstance(table, pa.Table) and table.column_names == ["t", SPEED]
