"""A deletion that lands while an export of the vehicle is being built leaves no copy of the erased data."""

from __future__ import annotations

from typing import BinaryIO

from carvault.access.jobs import ExportJobs
from carvault.region import Region
from carvault.store.tables import ExportJob
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table


def test_a_deletion_during_an_export_cancels_it_and_its_file_is_dropped(
    region: Region, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    """Fix: an export job finishing after the owner's deletion stored the erased data as a file kept for a week."""
    agent.record(drive_table(seconds=120, paths=["Vehicle.Speed"]), batch_seconds=60)
    agent.upload_pending()
    region.vehicles.claim(owner.owner_id, vehicle.vin, vehicle.pairing_code)
    jobs = ExportJobs(region, background=False)
    queued = jobs.create(owner.owner_id, vehicle.vin, start_ms=BASE_MS, end_ms=BASE_MS + 120_000, fmt="csv")
    running = jobs.create(owner.owner_id, vehicle.vin, start_ms=BASE_MS, end_ms=BASE_MS + 120_000, fmt="csv")
    build = jobs._build

    def build_then_delete(job: ExportJob, out: BinaryIO) -> int:
        rows = build(job, out)  # the data is read and written: the deletion lands before the job is recorded
        done = region.deletions.request(owner.owner_id, vehicle.vin, "sold the car", immediately=True)
        assert done.status == "completed"
        return rows

    jobs._build = build_then_delete  # type: ignore[method-assign]
    assert jobs.run(running.id) is False  # its final step found the job cancelled
    assert jobs.run(queued.id) is False  # a queued job is never started once the data is gone
    with region.db.session() as s:
        for job_id in (queued.id, running.id):
            job = s.get(ExportJob, job_id)
            assert job is not None and job.status == "cancelled" and job.file_name is None
    folder = region.settings.data_dir / "exports"
    assert not folder.exists() or [p for p in folder.iterdir() if p.is_file()] == []
