"""Query copies (store/derived.py) are a cache of the evidence: written after the receipt, at most a bounded
backlog of them queued, and a window read of a batch without its copy decodes the evidence (and keeps the copy)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from carvault.ingest import gateway as gateway_module
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch
from carvault.region import Region
from carvault.store.derived import DerivedCopies
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition", "Vehicle.Body.Lights.Brake.IsActive"]


def _upload(region: Region, vehicle: VehicleIdentity, batches: int) -> tuple[list[str], pa.Table]:
    """Accept ``batches`` 10-second batches through the gateway; their hashes and all their rows."""
    prev, hashes, tables = GENESIS_PREV, [], []
    for seq in range(1, batches + 1):
        table = drive_table(start_ms=BASE_MS + (seq - 1) * 10_000, seconds=10, paths=PATHS, seed=seq)
        blob = make_batch(vin=vehicle.vin, region=vehicle.region, seq=seq, prev=prev, table=table, key=vehicle.key)
        receipt = region.gateway.accept(blob, BATCH_MEDIA_TYPE)
        prev = receipt["batch_hash"]
        hashes.append(prev)
        tables.append(table)
    region.gateway._derived_pool.submit(lambda: None).result()  # the copies queued so far are written
    return hashes, pa.concat_tables(tables)


def _window(region: Region, vin: str, rows: pa.Table) -> pa.Table:
    signals = [region.catalogue[p] for p in PATHS]
    t = rows.column("t").cast(pa.int64())
    return region.telemetry.window(vin, t[0].as_py(), t[-1].as_py() + 1, signals)


def test_copies_are_written_after_the_receipt_and_read_back_equal(region: Region, vehicle: VehicleIdentity) -> None:
    hashes, rows = _upload(region, vehicle, 3)
    assert all(region.derived.path(vehicle.vin, h).exists() for h in hashes)
    assert region.gateway.derived_skipped == 0
    assert _window(region, vehicle.vin, rows).equals(rows)


def test_past_the_backlog_a_batch_gets_its_copy_from_its_first_read(
    region: Region, vehicle: VehicleIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "DERIVED_BACKLOG", 0)  # every batch finds the queue full
    hashes, rows = _upload(region, vehicle, 3)
    assert region.gateway.derived_skipped == 3
    assert not any(region.derived.path(vehicle.vin, h).exists() for h in hashes)
    # Read right after the upload: the evidence answers, and the copies are kept for the next read.
    assert _window(region, vehicle.vin, rows).equals(rows)
    assert all(region.derived.path(vehicle.vin, h).exists() for h in hashes)
    assert _window(region, vehicle.vin, rows).equals(rows)


def test_a_copy_is_whole_or_absent(tmp_path: Path) -> None:
    copies = DerivedCopies(tmp_path / "derived")
    table = drive_table(seconds=5, paths=PATHS)
    copies.write("VIN1", "a" * 64, table)  # the vehicle's folder is made by its first copy
    read = copies.read("VIN1", "a" * 64)
    assert read is not None and read.equals(table)
    (tmp_path / "derived" / "VIN2").write_text("not a folder")  # a write that cannot happen leaves nothing behind
    copies.write("VIN2", "b" * 64, table)
    assert copies.read("VIN2", "b" * 64) is None
    assert [p.name for p in (tmp_path / "derived").iterdir()] == ["VIN1", "VIN2"]
    assert [p.name for p in (tmp_path / "derived" / "VIN1").iterdir()] == ["a" * 64 + ".arrow"]
    assert copies.read("VIN1", "c" * 64) is None


def test_a_copy_written_after_its_batch_was_deleted_removes_itself(region: Region, vehicle: VehicleIdentity) -> None:
    """A queued copy (or a read racing a deletion) written once the batch's rows are gone leaves nothing behind."""
    hashes, rows = _upload(region, vehicle, 2)
    path = region.derived.path(vehicle.vin, hashes[0])
    assert path.exists()
    region.derived.write(vehicle.vin, "0" * 64, rows)  # a batch this region does not hold (any more)
    assert not region.derived.path(vehicle.vin, "0" * 64).exists()
    region.derived.write(vehicle.vin, hashes[0], rows)  # one it holds: kept
    assert path.exists()
