"""Parsed footers of payload parts (store/day_copies.py keeps up to 4,096 in memory for window reads) hold each
column's statistics — the smallest and largest latitude and longitude of a batch among them. When a part is erased
they must leave the process's memory too: at once when this process deletes the vehicle, at the next sweep when
another worker or replica erased it (a retention purge there)."""

from __future__ import annotations

import pyarrow as pa
from sqlalchemy import delete, select

from carvault.location import LAT
from carvault.region import Region
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in

DAY = 86_400_000


def _records(region: Region, vin: str) -> list[BatchRecord]:
    with region.db.session() as s:
        return list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin).order_by(BatchRecord.seq)))


def _remembered(region: Region, vin: str) -> set[str]:
    days = region.derived.days
    assert days is not None
    return {k for k in days._footers if k.startswith(f"copies/vin={vin}/")}


def test_footers_of_erased_parts_are_forgotten(region: Region, agent: VehicleAgent) -> None:
    vin = agent.identity.vin
    opt_in(region, vin)
    agent.record(drive_table(start_ms=BASE_MS, seconds=240, seed=3), batch_seconds=60)
    assert len(agent.upload_pending()) == 4
    assert sum(c.batches for c in region.telemetry.compact()) == 4
    recs = _records(region, vin)
    keys = {r.payload_key for r in recs}
    assert None not in keys
    window = region.telemetry.window(vin, BASE_MS - DAY, BASE_MS + DAY, [catalogue()[LAT]])
    assert window.num_rows and pa.compute.max(window.column(LAT)).as_py() is not None
    assert _remembered(region, vin) == keys  # the read kept every part's footer

    # Another worker's purge erased one batch and its part: this process forgets the footer at its next sweep.
    victim = recs[0]
    with region.db.session() as s:
        s.execute(delete(BatchRecord).where(BatchRecord.id == victim.id))
    assert victim.payload_key is not None
    region.blobs.delete(victim.payload_key)
    region.telemetry.compact()  # runs the sweep, as every replica's schedule does
    assert _remembered(region, vin) == keys - {victim.payload_key}

    # The owner's deletion in this process: every footer of the vehicle goes with its parts, at once.
    owner = region.accounts.register("owner-footers@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vin, agent.identity.pairing_code)
    req = region.deletions.request(owner.id, vin, "sold the car", immediately=True)
    assert region.deletions.process(req.id).status == "completed"
    assert _remembered(region, vin) == set()
