"""Review of issue 11's retention purge: races between a plan and its run, and read paths the cutoffs must reach.

Each test here failed before the fix it names (see the report of the review).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from carvault.compliance.deletion import overwrite_ranges
from carvault.compliance.incidents import FIELDS
from carvault.compliance.retention import DAY_MS, period_ms
from carvault.compliance.rights import DEADLINES, Kind, rule_zone
from carvault.compliance.roles import Role
from carvault.errors import Conflict
from carvault.region import Region
from carvault.store.metadata import BatchRecord, DeletionRequest, RetentionErasure, RetentionWithheld, now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.camera import spool_frames, upload_frames
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, make_staff
from tests.ingest.test_frames import FACE_PHOTO, PLATE_PHOTO, consent_to_camera

SPEED = "Vehicle.Speed"  # driving_dynamics: 3 years
VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"  # body: 1 year
PATHS = [SPEED, VOLTAGE]
BODY_GONE = BASE_MS + period_ms("body") + 2 * DAY_MS
ALL_GONE = BASE_MS + period_ms("driving_dynamics") + 2 * DAY_MS
CAMERA_GONE = BASE_MS + period_ms("exterior_camera") + 2 * DAY_MS


def _claim(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> None:
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code == 201, r.text


def _records(region: Region, vin: str) -> list[BatchRecord]:
    with region.db.session() as s:
        return list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin).order_by(BatchRecord.seq)))


def _bytes_of(region: Region, rec: BatchRecord) -> bytes:
    with open(region.settings.data_dir / "segments" / rec.segment, "rb") as f:
        f.seek(rec.offset)
        return f.read(rec.length)


def test_a_batch_accepted_under_a_reused_row_id_survives_a_stale_plan(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: the purge swapped index rows by id alone; SQLite reuses the id of a row a deletion removed, so a batch
    accepted after a deletion that raced the run lost its index row (accepted data lost)."""
    agent.record(drive_table(BASE_MS, seconds=60, paths=PATHS), batch_seconds=60)
    agent.upload_pending()
    _claim(http, owner, vehicle)
    old = _records(region, vehicle.vin)
    plan = region.retention.plan(ALL_GONE)
    assert [a.batch_id for a in plan.erase] == [old[0].id]
    # Meanwhile the owner deletes everything and the car uploads a new batch, which gets the freed row id.
    assert region.deletions.request(owner.owner_id, vehicle.vin, "fresh start", immediately=True).status == "completed"
    agent.record(drive_table(BASE_MS + 3_600_000, seconds=60, paths=PATHS, seed=3), batch_seconds=60)
    agent.upload_pending()
    new = _records(region, vehicle.vin)
    assert len(new) == 1 and new[0].id == old[0].id and new[0].batch_hash != old[0].batch_hash
    kept = _bytes_of(region, new[0])

    totals = {"bytes_overwritten": 0, "query_copy_bytes_removed": 0, "frames_erased": 0, "packages_erased": 0}
    errors: list[dict] = []
    assert region.retention._erase_group(plan.erase, 0, totals, errors) == []
    assert errors == []
    assert [r.batch_hash for r in _records(region, vehicle.vin)] == [new[0].batch_hash]
    assert _bytes_of(region, new[0]) == kept
    with region.db.session() as s:
        assert list(s.scalars(select(RetentionErasure.batch_id))) == []


def test_withholding_marks_no_batch_deleted_or_held_since_the_plan(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: withholding re-checked neither holds nor whether the batch was still indexed: it marked gone rows (a
    mark a later batch reusing the id inherits) and changed a vehicle held since the plan (camera frames erased)."""
    agent.record(drive_table(BASE_MS, seconds=60, paths=PATHS), batch_seconds=60)
    agent.upload_pending()
    _claim(http, owner, vehicle)
    plan = region.retention.plan(BODY_GONE)
    assert len(plan.withhold) == 1
    totals = {"bytes_overwritten": 0, "query_copy_bytes_removed": 0, "frames_erased": 0, "packages_erased": 0}

    hold = region.deletions.place_hold(vehicle.vin, "Shenzhen Intermediate Court", "case (2026) 7")
    assert region.retention._withhold_group(plan.withhold, totals, []) == []
    region.deletions.release_hold(hold.id)
    assert region.deletions.request(owner.owner_id, vehicle.vin, "sold the car", immediately=True).status == "completed"
    assert region.retention._withhold_group(plan.withhold, totals, []) == []
    with region.db.session() as s:
        assert list(s.scalars(select(RetentionWithheld).where(RetentionWithheld.vin == vehicle.vin))) == []


def test_camera_frames_of_a_held_vehicle_are_not_served_past_their_period(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: the frame download route applied no cutoff, so frames a purge skipped under a legal hold were still
    served after the camera category's period (every other read path withholds them)."""
    consent_to_camera(region, vehicle, agent, owner)
    _, blobs = spool_frames(agent, [(BASE_MS, "FRONT", PLATE_PHOTO), (BASE_MS + 1000, "REAR", FACE_PHOTO)])
    agent.upload_pending()
    upload_frames(agent)
    _claim(http, owner, vehicle)
    digest = hashlib.sha256(blobs[0]).hexdigest()
    url = f"/api/v1/vehicles/{vehicle.vin}/frames/{digest}"
    assert http.get(url, headers=owner.headers).status_code == 200

    hold = region.deletions.place_hold(vehicle.vin, "Shenzhen Intermediate Court", "case (2026) 8")
    summary = json.loads(region.retention.run(now=CAMERA_GONE).summary)
    assert summary["frames_erased"] == 0 and summary["skipped_by_hold"][0]["holds"] == [hold.id]
    assert (region.frames.blob_path(digest)).exists()  # kept for the hold
    r = http.get(url, headers=owner.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_concurrent_decisions_on_a_rights_request_decide_once(region: Region) -> None:
    """Fix: a decision read the status and wrote the new one in two steps, so two handlers deciding at once (two
    tabs, two replicas) could both succeed or fail with a database error instead of a clear conflict."""
    owner_id = region.accounts.register("review-rights@example.com", "correct horse battery").id
    dpo, _ = make_staff(region, Role.DPO)
    r = region.rights.file(region.rights.check(owner_id, Kind.COMPLAINT, details="shared without asking"))
    region.rights.start(r.id, dpo)
    start = threading.Barrier(8)

    def decide(n: int) -> str:
        start.wait()
        try:
            if n % 2:
                region.rights.refuse(r.id, dpo, "not ours to decide")
            else:
                region.rights.complete(r.id, dpo, "answered in writing")
            return "ok"
        except Conflict:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decide, range(8)))
    assert results.count("ok") == 1 and results.count("conflict") == 7, results
    final = region.rights.get(r.id)
    assert final.status in ("done", "refused") and (final.outcome is None) != (final.reason is None)
    decided = [e for e in region.audit.list(owner_id) if e.action in ("rights.complete", "rights.refuse")]
    assert len(decided) == 1


def test_concurrent_notifications_tell_each_owner_once_and_answer_cleanly(region: Region) -> None:
    """Two handlers sending an incident's notices at once: each owner told once, no database error for anyone."""
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    owners = [region.accounts.register(f"review-inc-{n}@example.com", "correct horse battery").id for n in range(3)]
    content = {"en": {f: f"{f} en" for f in FIELDS}, "zh-CN": {f: f"{f}（中文）" for f in FIELDS}}
    inc = region.incidents.record(admin, title="review", detected_ms=BASE_MS, content=content, owner_ids=owners)
    start = threading.Barrier(6)

    def send(_: int) -> int:
        start.wait()
        return region.incidents.notify_owners(inc.id, admin)

    with ThreadPoolExecutor(6) as pool:
        told = list(pool.map(send, range(6)))
    assert sum(told) == 3, told
    for o in owners:
        assert len(region.incidents.notices(o)) == 1
        assert len([e for e in region.audit.list(o) if e.action == "incident.notify"]) == 1


def _finished_export(http: httpx.Client, owner: OwnerClient, vin: str, start: int, end: int) -> int:
    r = http.post("/api/v1/exports", headers=owner.headers, json={"vin": vin, "start": start, "end": end})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    for _ in range(200):
        job = http.get(f"/api/v1/exports/{job_id}", headers=owner.headers).json()
        if job["status"] == "done":
            return job_id
        time.sleep(0.05)
    raise AssertionError(f"export {job_id} did not finish: {job}")


def test_a_deletion_erases_the_vehicles_finished_exports(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: a completed deletion left the owner's finished export files (kept a week) on disk and downloadable."""
    agent.record(drive_table(BASE_MS, seconds=60, paths=PATHS), batch_seconds=60)
    agent.upload_pending()
    _claim(http, owner, vehicle)
    job_id = _finished_export(http, owner, vehicle.vin, BASE_MS, BASE_MS + 60_000)
    folder = region.settings.data_dir / "exports"
    assert http.get(f"/api/v1/exports/{job_id}/download", headers=owner.headers).status_code == 200
    assert [p for p in folder.iterdir() if p.is_file()]
    assert region.deletions.request(owner.owner_id, vehicle.vin, "sold the car", immediately=True).status == "completed"
    assert [p for p in folder.iterdir() if p.is_file()] == []
    r = http.get(f"/api/v1/exports/{job_id}/download", headers=owner.headers)
    assert r.status_code == 404, r.text


def test_a_purge_removes_finished_exports_holding_what_it_withheld(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: an export finished before a purge kept serving, for its week, samples the purge withheld or erased."""
    agent.record(drive_table(BASE_MS, seconds=60, paths=PATHS), batch_seconds=60)
    agent.record(drive_table(BASE_MS + 30 * DAY_MS, seconds=60, paths=PATHS, seed=1), batch_seconds=60)
    agent.upload_pending()
    _claim(http, owner, vehicle)
    old = _finished_export(http, owner, vehicle.vin, BASE_MS, BASE_MS + 60_000)
    young = _finished_export(http, owner, vehicle.vin, BASE_MS + 30 * DAY_MS, BASE_MS + 30 * DAY_MS + 60_000)
    summary = json.loads(region.retention.run(now=BODY_GONE + 13 * DAY_MS).summary)  # only the first batch's body
    assert summary["batches_withheld"] == 1 and summary["export_files_removed"] == 1
    assert http.get(f"/api/v1/exports/{old}/download", headers=owner.headers).status_code == 404
    assert http.get(f"/api/v1/exports/{young}/download", headers=owner.headers).status_code == 200
    # Asked again, the export leaves the withheld signal out.
    again = _finished_export(http, owner, vehicle.vin, BASE_MS, BASE_MS + 60_000)
    r = http.get(f"/api/v1/exports/{again}/download", headers=owner.headers)
    assert r.status_code == 200
    header, *lines = [line for line in r.text.strip().splitlines() if not line.startswith("#")]
    assert lines and SPEED in header, header
    if VOLTAGE in header.split(","):
        col = header.split(",").index(VOLTAGE)
        assert all(line.split(",")[col] == "" for line in lines)


def test_working_day_deadlines_count_on_the_calendar_of_the_laws_place(region: Region) -> None:
    """Fix: working days were counted on the UTC calendar, so a request received on a Saturday morning in China
    (still Friday in UTC) counted that Friday as its day of receipt: its deadline fell a day later than the law's."""
    saturday_cn = int(dt.datetime(2026, 12, 5, 2, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
    china = ZoneInfo("Asia/Shanghai")
    owner_id = region.accounts.register("review-deadline@example.com", "correct horse battery").id
    r = region.rights.file(region.rights.check(owner_id, Kind.EXPLANATION), now=saturday_cn)
    assert r.deadline_rule == "cn"
    due = dt.datetime.fromtimestamp(r.deadline_ms / 1000, china)
    # Received on a Saturday: Monday 7 December is the first working day, Friday 25 December the fifteenth.
    assert due.date() == dt.date(2026, 12, 25) and due.weekday() == 4
    # On the EU calendar a month still ends on the same day, counted in Brussels time.
    eu = DEADLINES["eu"].due(saturday_cn, rule_zone("eu"))
    assert dt.datetime.fromtimestamp(eu / 1000, ZoneInfo("Europe/Brussels")).date() == dt.date(2027, 1, 4)


def test_a_deletion_killed_midway_is_finished_when_the_region_starts_again(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    """Fix: a deletion killed after zeroing some bytes stayed ``pending`` for ever, its rows naming zeroed bytes;
    nothing carried it out again. ``Deletions.resume`` does (at start and before each scheduled purge)."""
    agent.record(drive_table(BASE_MS, seconds=120, paths=PATHS), batch_seconds=60)
    agent.upload_pending()
    _claim(http, owner, vehicle)
    recs = _records(region, vehicle.vin)
    # What a process killed inside ``process`` leaves: the request recorded, the first batch's bytes zeroed.
    with region.db.session() as s:
        req = DeletionRequest(
            owner_id=owner.owner_id,
            vin=vehicle.vin,
            reason="killed midway",
            status="pending",
            requested_ms=now_ms() - 120_000,
            deadline_ms=now_ms() + 10 * DAY_MS,
        )
        s.add(req)
    overwrite_ranges(region.settings.data_dir / "segments" / recs[0].segment, [(recs[0].offset, recs[0].length)])
    assert region.deletions.resume(min_age_ms=600_000) == 0  # as if in flight in another process: left to it
    assert len(_records(region, vehicle.vin)) == 2
    assert region.deletions.resume() == 1
    with region.db.session() as s:
        done = s.get(DeletionRequest, req.id)
        assert done is not None and done.status == "completed" and done.receipt
    assert _records(region, vehicle.vin) == []
    assert all(_bytes_of(region, r) == bytes(r.length) for r in recs)
    assert region.deletions.resume() == 0
