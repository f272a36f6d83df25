"""Query copies (store/derived.py) are a cache of the evidence: ingest writes none, and a window read of a batch
without its copy decodes the evidence (and keeps the copy for the next read)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

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
    return hashes, pa.concat_tables(tables)


def _window(region: Region, vin: str, rows: pa.Table) -> pa.Table:
    signals = [region.catalogue[p] for p in PATHS]
    t = rows.column("t").cast(pa.int64())
    return region.telemetry.window(vin, t[0].as_py(), t[-1].as_py() + 1, signals)


def test_ingest_writes_no_copy_and_the_first_read_makes_it(region: Region, vehicle: VehicleIdentity) -> None:
    hashes, rows = _upload(region, vehicle, 3)
    assert not any(region.derived.path(vehicle.vin, h).exists() for h in hashes)
    assert not (region.settings.data_dir / "derived" / vehicle.vin).exists()
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
    _window(region, vehicle.vin, rows)
    assert path.exists()
    region.derived.write(vehicle.vin, "0" * 64, rows)  # a batch this region does not hold (any more)
    assert not region.derived.path(vehicle.vin, "0" * 64).exists()
    region.derived.write(vehicle.vin, hashes[0], rows)  # one it holds: kept
    assert path.exists()
