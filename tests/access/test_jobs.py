"""Export jobs: files equal to the API's answers, progress, leases across workers and processes."""

from __future__ import annotations

import io
import json
import multiprocessing
import time
import xml.etree.ElementTree as ET

import httpx
import pyarrow.parquet as pq
import pytest

from carvault.access.jobs import ExportJob, ExportJobs, _LeaseLost, chunks
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, opt_in

SECONDS = 600


@pytest.fixture
def claimed(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> OwnerClient:
    opt_in(region, vehicle.vin)  # the table carries location and biometrics: the gateway checks consent
    agent.record(drive_table(seconds=SECONDS), batch_seconds=120)
    agent.upload_pending()
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code == 201
    return owner


def _api(http: httpx.Client, o: OwnerClient, vin: str, **params: object) -> bytes:
    r = http.get(f"/api/v1/vehicles/{vin}/telemetry", headers=o.headers, params=params)
    assert r.status_code == 200, r.text
    return r.content


def _run(jobs: ExportJobs, job: ExportJob) -> ExportJob:
    assert jobs.run(job.id)
    done = jobs.get(job.owner_id, job.id)
    assert done.status == "done", done.error
    return done


def test_files_equal_the_api_answer_in_every_format(
    region: Region, http: httpx.Client, claimed: OwnerClient, vehicle: VehicleIdentity
) -> None:
    # Small chunks so the window spans several (with edges that cut through batches).
    jobs = ExportJobs(region, background=False, chunk_ms=70_000)
    start, end = BASE_MS + 15_000, BASE_MS + 500_000
    sigs = "Vehicle.Speed,Vehicle.ADAS,Vehicle.CurrentLocation"
    for fmt in ("csv", "json", "parquet"):
        job = _run(jobs, jobs.create(claimed.owner_id, vehicle.vin, start_ms=start, end_ms=end, fmt=fmt, signals=sigs))
        got = jobs.open_file(job).read_bytes()
        want = _api(http, claimed, vehicle.vin, start=start, end=end, signals=sigs, format=fmt)
        if fmt == "csv":
            assert got == want
        elif fmt == "json":
            assert json.loads(got) == json.loads(want)
        else:
            assert pq.read_table(io.BytesIO(got)).equals(pq.read_table(io.BytesIO(want)))
        assert job.rows == (end - start) // 100 and job.progress == 1.0 and job.size == len(got)
    # Resampled, the chunks' buckets line up with the API's.
    job = _run(
        jobs,
        jobs.create(
            claimed.owner_id,
            vehicle.vin,
            start_ms=start,
            end_ms=end,
            fmt="csv",
            signals="Vehicle.Speed",
            resample_ms=30_000,
        ),
    )
    assert jobs.open_file(job).read_bytes() == _api(
        http, claimed, vehicle.vin, start=start, end=end, signals="Vehicle.Speed", format="csv", resample="30s"
    )


def test_whole_history_gpx_and_audit(region: Region, claimed: OwnerClient, vehicle: VehicleIdentity) -> None:
    jobs = ExportJobs(region, background=False)
    job = _run(jobs, jobs.create(claimed.owner_id, vehicle.vin, start_ms=None, end_ms=None, fmt="gpx"))
    assert job.whole_history and job.start_ms <= BASE_MS < BASE_MS + SECONDS * 1000 <= job.end_ms
    assert job.rows == SECONDS
    root = ET.fromstring(jobs.open_file(job).read_bytes())
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    points = root.findall(".//g:trkpt", ns)
    assert len(points) == SECONDS and len(root.findall(".//g:trkseg", ns)) == 1
    assert points[0].find("g:time", ns).text == "2025-11-13T02:13:00.000Z"  # type: ignore[union-attr]
    actions = [e.action for e in region.audit.list(claimed.owner_id)]
    assert "telemetry.export" in actions


def test_one_worker_per_job_and_takeover_after_a_stalled_lease(
    region: Region, claimed: OwnerClient, vehicle: VehicleIdentity
) -> None:
    a = ExportJobs(region, background=False, lease_ms=60_000)
    b = ExportJobs(region, background=False)
    job = a.create(claimed.owner_id, vehicle.vin, start_ms=BASE_MS, end_ms=BASE_MS + 60_000, fmt="csv")
    assert a.claim(job.id) and not b.claim(job.id) and not b.run(job.id)
    assert b.claimable() == []
    # a stalls: its lease runs out, b takes over and finishes; a's late progress update is refused.
    with region.db.session() as s:
        s.get(ExportJob, job.id).lease_until_ms = now_ms() - 1  # type: ignore[union-attr]
    assert b.claimable() == [job.id] and b.run(job.id)
    with pytest.raises(_LeaseLost):
        a._heartbeat(job.id, 0.5, 10)
    assert a.get(claimed.owner_id, job.id).status == "done"


def test_cancel_progress_and_strangers(region: Region, claimed: OwnerClient, vehicle: VehicleIdentity) -> None:
    # A progress update after every chunk (heartbeat_s=0; by default at most one a second).
    jobs = ExportJobs(region, background=False, chunk_ms=60_000, heartbeat_s=0)
    job = jobs.create(claimed.owner_id, vehicle.vin, start_ms=BASE_MS, end_ms=BASE_MS + SECONDS * 1000, fmt="csv")
    seen: list[float] = []
    real = jobs._heartbeat

    def spy(job_id: int, progress: float, rows: int) -> None:
        seen.append(progress)
        real(job_id, progress, rows)
        if len(seen) == 3:
            jobs.cancel(claimed.owner_id, job_id)

    jobs._heartbeat = spy  # type: ignore[method-assign]
    assert not jobs.run(job.id)  # it noticed the cancel at its next update and stopped
    assert seen == sorted(seen) and len(seen) == 4 and 0 < seen[0] < seen[-1] < 1
    assert jobs.get(claimed.owner_id, job.id).status == "cancelled"
    assert not list((region.settings.data_dir / "exports").glob("*.part"))
    with pytest.raises(Exception, match="no such export"):
        jobs.get(claimed.owner_id + 999, job.id)


def test_chunks_keep_only_windows_with_data() -> None:
    assert chunks(0, 10, 4, [(0, 9)]) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(1, 10, 4, [(5, 6)]) == [(4, 8)]
    assert chunks(0, 100, 10, []) == []
    assert chunks(0, 100, 10, [(0, 5), (55, 64)]) == [(0, 10), (50, 60), (60, 70)]


def _other_process(settings: Settings, job_id: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Region(settings) as r:
        jobs = ExportJobs(r, background=False)
        out.put(jobs.run(job_id))


@pytest.mark.slow
def test_a_job_queued_by_one_process_is_run_by_another(
    region: Region, claimed: OwnerClient, vehicle: VehicleIdentity
) -> None:
    jobs = ExportJobs(region, background=False)
    job = jobs.create(claimed.owner_id, vehicle.vin, start_ms=None, end_ms=None, fmt="parquet")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_other_process, args=(region.settings, job.id, out))
    p.start()
    p.join(120)
    assert out.get(timeout=5) is True
    done = jobs.get(claimed.owner_id, job.id)
    assert done.status == "done" and done.worker != jobs.worker_id
    table = pq.read_table(jobs.open_file(done))
    assert table.num_rows == SECONDS * 10 and table.column("t")[0].value == BASE_MS


def test_background_worker_through_the_api(http: httpx.Client, claimed: OwnerClient, vehicle: VehicleIdentity) -> None:
    r = http.post(
        "/api/v1/exports",
        headers=claimed.headers,
        json={"vin": vehicle.vin, "format": "csv", "signals": "Vehicle.Speed"},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 30
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = http.get(f"/api/v1/exports/{job['id']}", headers=claimed.headers).json()
    assert job["status"] == "done" and job["download"]
    d = http.get(job["download"], headers=claimed.headers)
    assert d.status_code == 200 and d.headers["content-type"].startswith("text/csv")
    assert d.content == _api(
        http, claimed, vehicle.vin, start=job["start_ms"], end=job["end_ms"], signals="Vehicle.Speed", format="csv"
    )
    assert [j["id"] for j in http.get("/api/v1/exports", headers=claimed.headers).json()] == [job["id"]]
