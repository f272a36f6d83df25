"""A group commit advances its vehicles' chain heads together (ingest/gateway.py, issues 10 and 12): in one statement
for the group when every head is where the checks saw it, and vehicle by vehicle when another process moved one,
so that vehicle's batch is refused and the others are stored and logged as usual."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from carvault.errors import BrokenChain
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import BatchRecord, Vehicle
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, vin_for

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]


def _first_batch(v: VehicleIdentity) -> bytes:
    table = drive_table(start_ms=BASE_MS, seconds=10, paths=PATHS)
    return make_batch(vin=v.vin, region=v.region, seq=1, prev=GENESIS_PREV, table=table, key=v.key)


def _rows(region: Region) -> dict[str, int]:
    with region.db.session() as s:
        return {vin: n for vin, n in s.execute(select(BatchRecord.vin, func.count()).group_by(BatchRecord.vin))}


def _held_group(region: Region, cars: list[VehicleIdentity], before_commit: Any) -> list[Any]:
    """Check every car's first batch while the committer waits, run ``before_commit``, then commit them as one group."""
    gate, entered = threading.Event(), threading.Event()
    real = region.gateway._commit
    sizes: list[int] = []

    def held(group: list[Any]) -> None:
        entered.set()
        assert gate.wait(30)
        sizes.append(len(group))
        real(group)

    region.gateway._commit = held  # type: ignore[method-assign]
    plug = provision(region, vin_for(90), region.settings.data_dir / "plug")
    plugged = region.gateway.check(_first_batch(plug), BATCH_MEDIA_TYPE)
    assert entered.wait(20)  # the committer holds the plug's group; the cars' batches queue behind it
    pending = [region.gateway.check(_first_batch(v), BATCH_MEDIA_TYPE) for v in cars]
    before_commit()
    gate.set()
    plugged.future.result(30)  # type: ignore[union-attr]
    for p in pending:
        p.future.exception(30)  # type: ignore[union-attr]
    assert sizes == [1, len(cars)]  # the cars' batches were one group
    return pending


def test_one_group_moves_every_head(region: Region, tmp_path: Path) -> None:
    cars = [provision(region, vin_for(n), tmp_path / "cars") for n in (1, 2, 3)]
    size = region.log.size
    pending = _held_group(region, cars, lambda: None)
    receipts = [p.future.result() for p in pending]
    assert sorted(r["log_index"] for r in receipts) == [size + 1, size + 2, size + 3]
    with region.db.session() as s:
        query = select(Vehicle.vin, Vehicle.last_seq).where(Vehicle.vin.in_([v.vin for v in cars]))
        heads = {vin: seq for vin, seq in s.execute(query)}
    assert heads == {v.vin: 1 for v in cars}


def test_a_head_moved_by_another_process_refuses_only_its_batch(region: Region, tmp_path: Path) -> None:
    cars = [provision(region, vin_for(n), tmp_path / "cars") for n in (4, 5, 6)]
    moved = cars[1]
    elsewhere = "ab" * 32  # the hash of a seq-1 batch another gateway process accepted first

    def other_process() -> None:
        with region.db.session() as s:
            s.execute(update(Vehicle).where(Vehicle.vin == moved.vin).values(last_seq=1, last_hash=elsewhere))

    size = region.log.size
    pending = _held_group(region, cars, other_process)
    refused = pending[1].future.exception()
    assert isinstance(refused, BrokenChain)
    stored = [p.future.result() for i, p in enumerate(pending) if i != 1]
    assert sorted(r["log_index"] for r in stored) == [size + 1, size + 2]  # logged once each, nothing for the third
    assert region.log.size == size + 3  # the plug's leaf and the two cars'
    rows = _rows(region)
    assert rows.get(cars[0].vin) == 1 and rows.get(cars[2].vin) == 1 and moved.vin not in rows
    with region.db.session() as s:
        assert s.scalar(select(Vehicle.last_hash).where(Vehicle.vin == moved.vin)) == elsewhere  # left as it was


@pytest.mark.parametrize("count", [1, 2])
def test_a_lone_vehicle_group_moves_its_head_in_one_statement(region: Region, tmp_path: Path, count: int) -> None:
    """A group of one vehicle takes the per-vehicle statement directly (its row count is exact)."""
    cars = [provision(region, vin_for(10 + n), tmp_path / "cars") for n in range(count)]
    pending = _held_group(region, cars, lambda: None)
    assert all(p.future.result()["seq"] == 1 for p in pending)
