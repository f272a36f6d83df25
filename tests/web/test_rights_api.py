"""The rights desk over HTTP: owners file and follow requests, a DPO handles them, existing services carry them out."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from carvault.compliance.roles import Role
from carvault.region import Region
from carvault.store.metadata import BatchRecord, DeletionRequest, RightsRequest, now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, make_staff

pytestmark = pytest.mark.slow


def _with_data(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent) -> None:
    agent.record(drive_table(BASE_MS, seconds=120, paths=["Vehicle.Speed"]), batch_seconds=60)
    agent.upload_pending()
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code in (200, 201), r.text


def _dpo(region: Region) -> dict[str, str]:
    _, secret = make_staff(region, Role.DPO)
    return {"Authorization": f"Bearer {secret}"}


def test_deletion_request_is_carried_out_and_closed_by_the_dpo(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    r = http.post(
        "/api/v1/rights-requests",
        headers=owner.headers,
        json={"kind": "deletion", "vin": vehicle.vin, "details": "I sold the car"},
    )
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "received" and req["deadline_rule"] == "cn.deletion" and not req["overdue"]
    deletion_id = req["produced"]["deletion_request_id"]
    assert deletion_id is not None
    waiting = http.get("/api/v1/deletion-requests", headers=owner.headers).json()
    assert waiting[0]["status"] == "scheduled"  # the grace period first (the owner may still cancel)
    with region.db.session() as s:  # the grace period ends (its end moved to now), and the scheduler's turn comes
        s.get(DeletionRequest, deletion_id).due_ms = now_ms()
    assert region.deletions.run_due() == 1
    with region.db.session() as s:  # the deletion service erased the vehicle's batches
        assert s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == vehicle.vin)) == 0
    deletions = http.get("/api/v1/deletion-requests", headers=owner.headers).json()
    assert [d["id"] for d in deletions] == [deletion_id] and deletions[0]["status"] == "completed"

    dpo = _dpo(region)
    listed = http.get("/api/v1/admin/rights-requests", headers=dpo, params={"kind": "deletion"}).json()
    assert [x["id"] for x in listed["requests"]] == [req["id"]] and listed["counts"]["received"] == 1
    assert http.post(f"/api/v1/admin/rights-requests/{req['id']}/start", headers=dpo).status_code == 200
    done = http.post(
        f"/api/v1/admin/rights-requests/{req['id']}/complete",
        headers=dpo,
        json={"outcome": "All copies erased; the signed receipt is on your deletion page."},
    )
    assert done.status_code == 200, done.text
    seen = http.get(f"/api/v1/rights-requests/{req['id']}", headers=owner.headers).json()
    assert seen["status"] == "done" and seen["handler_role"] == "dpo" and "handler" not in seen
    assert seen["outcome"].startswith("All copies erased")


def test_portability_request_builds_a_bundle_the_recipient_fetches(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    r = http.post(
        "/api/v1/rights-requests",
        headers=owner.headers,
        json={
            "kind": "portability",
            "vin": vehicle.vin,
            "recipient": {"name": "NewCar Data", "legal_entity": "NewCar Data Ltd", "jurisdiction": "cn"},
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    once = body["portability"]
    assert body["produced"]["portability_bundle_id"] == once["fetch_url"].rsplit("/", 1)[1]
    zip_ = http.get(once["fetch_url"], headers={"Authorization": f"Bearer {once['token']}"})
    assert zip_.status_code == 200 and zip_.content[:2] == b"PK"
    # the secrets are shown once: never again in the request's view
    again = http.get(f"/api/v1/rights-requests/{body['id']}", headers=owner.headers).json()
    assert "portability" not in again and once["token"] not in str(again)


def test_access_request_prepares_an_export(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    _with_data(http, owner, vehicle, agent)
    r = http.post("/api/v1/rights-requests", headers=owner.headers, json={"kind": "access", "vin": vehicle.vin})
    assert r.status_code == 201, r.text
    job_id = r.json()["produced"]["export_job_id"]
    for _ in range(200):
        job = http.get(f"/api/v1/exports/{job_id}", headers=owner.headers).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "done"
    assert http.get(f"/api/v1/exports/{job_id}/download", headers=owner.headers).status_code == 200


def test_another_owner_sees_nothing_and_refusal_needs_a_reason(
    http: httpx.Client, owner: OwnerClient, region: Region
) -> None:
    r = http.post(
        "/api/v1/rights-requests", headers=owner.headers, json={"kind": "complaint", "details": "too many e-mails"}
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    other = make_owner(http)
    assert http.get(f"/api/v1/rights-requests/{rid}", headers=other.headers).status_code == 404
    assert http.post(f"/api/v1/rights-requests/{rid}/withdraw", headers=other.headers).status_code == 404
    assert http.get("/api/v1/rights-requests", headers=other.headers).json() == []

    dpo = _dpo(region)
    bad = http.post(f"/api/v1/admin/rights-requests/{rid}/refuse", headers=dpo, json={"reason": "  "})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"
    assert http.get(f"/api/v1/rights-requests/{rid}", headers=owner.headers).json()["status"] == "received"
    ok = http.post(
        f"/api/v1/admin/rights-requests/{rid}/refuse",
        headers=dpo,
        json={"reason": "Service e-mails are required by the contract; marketing e-mails are already off."},
    )
    assert ok.status_code == 200
    seen = http.get(f"/api/v1/rights-requests/{rid}", headers=owner.headers).json()
    assert seen["status"] == "refused" and seen["reason"].startswith("Service e-mails")


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "nonsense"},
        {"kind": "complaint"},
        {"kind": "portability", "vin": "X" * 17},
        {"kind": "complaint", "details": "x", "recipient": {"name": "a", "legal_entity": "b", "jurisdiction": "cn"}},
        {"kind": "access", "vin": "short"},
        {"kind": "next_of_kin", "details": "x", "subject_email": "a@example.com"},
    ],
)
def test_bad_requests_get_a_stable_error_and_store_nothing(
    http: httpx.Client, owner: OwnerClient, region: Region, body: dict[str, object]
) -> None:
    r = http.post("/api/v1/rights-requests", headers=owner.headers, json=body)
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["code"] in ("validation_failed", "not_found")
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(RightsRequest)) == 0


def test_owner_and_other_roles_are_kept_out_of_the_desk(http: httpx.Client, owner: OwnerClient, region: Region) -> None:
    r = http.post("/api/v1/rights-requests", headers=owner.headers, json={"kind": "explanation"})
    rid = r.json()["id"]
    assert http.get("/api/v1/admin/rights-requests", headers=owner.headers).status_code == 401
    _, support = make_staff(region, Role.SUPPORT)
    s_headers = {"Authorization": f"Bearer {support}"}
    assert http.get("/api/v1/admin/rights-requests", headers=s_headers).status_code == 200  # support may look
    refused = http.post(f"/api/v1/admin/rights-requests/{rid}/start", headers=s_headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_forbidden"


def test_dpo_opens_a_case_from_a_request_and_the_read_shows_in_the_owners_log(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    rid = http.post(
        "/api/v1/rights-requests",
        headers=owner.headers,
        json={"kind": "explanation", "vin": vehicle.vin, "details": "why does my trip show 200 km/h?"},
    ).json()["id"]
    dpo = _dpo(region)
    case_form = {
        "legal_basis": "answering the owner's request (PIPL Art. 48)",
        "ends_ms": int(time.time() * 1000) + 7 * 86_400_000,
    }
    early = http.post(f"/api/v1/admin/rights-requests/{rid}/case", headers=dpo, json=case_form)
    assert early.status_code == 409  # start the request first
    http.post(f"/api/v1/admin/rights-requests/{rid}/start", headers=dpo)
    r = http.post(f"/api/v1/admin/rights-requests/{rid}/case", headers=dpo, json=case_form)
    assert r.status_code == 201, r.text
    case = r.json()["case"]
    assert r.json()["request"]["case_id"] == case["id"] and case["kind"] == "rights_request"
    read = http.get(
        f"/api/v1/admin/cases/{case['id']}/vehicles/{vehicle.vin}/telemetry",
        headers=dpo,
        params={"start": BASE_MS, "end": BASE_MS + 120_000, "signals": "Vehicle.Speed"},
    )
    assert read.status_code == 200, read.text
    log = http.get("/api/v1/audit", headers=owner.headers).json()
    events = log["events"] if isinstance(log, dict) else log
    reads = [e for e in events if e["action"] == "telemetry.read" and e["actor"].startswith("staff:dpo:")]
    assert reads and str(case["id"]) in reads[0]["legal_basis"]


def test_incidents_and_records_over_http(http: httpx.Client, owner: OwnerClient, region: Region) -> None:
    _, admin_secret = make_staff(region, Role.REGION_ADMIN)
    _, auditor_secret = make_staff(region, Role.AUDITOR)
    admin = {"Authorization": f"Bearer {admin_secret}"}
    auditor = {"Authorization": f"Bearer {auditor_secret}"}
    parts = ("what", "cause", "harm", "measures", "actions", "contact")
    body: dict[str, Any] = {
        "title": "Misdirected e-mail",
        "detected_ms": BASE_MS,
        "owner_ids": [owner.owner_id],
        "content": {"en": {p: f"{p} en" for p in parts}},
    }
    assert http.post("/api/v1/admin/incidents", headers=auditor, json=body).status_code == 403
    r = http.post("/api/v1/admin/incidents", headers=admin, json=body)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    assert http.get(f"/api/v1/admin/incidents/{iid}/affected", headers=auditor).json()["owner_ids"] == [owner.owner_id]
    no_zh = http.post(f"/api/v1/admin/incidents/{iid}/notify-owners", headers=admin)
    assert no_zh.status_code == 422 and no_zh.json()["error"]["code"] == "validation_failed"
    fixed = {"content": {"en": body["content"]["en"], "zh-CN": {p: f"{p} 中文" for p in parts}}}
    assert http.patch(f"/api/v1/admin/incidents/{iid}", headers=admin, json=fixed).status_code == 200
    sent = http.post(f"/api/v1/admin/incidents/{iid}/notify-owners", headers=admin).json()
    assert sent["sent"] == 1 and sent["incident"]["status"] == "notified"
    assert http.get("/api/v1/notices", headers=owner.headers, params={"lang": "zh-CN"}).json()[0]["harm"] == "harm 中文"
    told = http.post(
        f"/api/v1/admin/incidents/{iid}/authority",
        headers=admin,
        json={"authority": "CAC", "reference": "R-1", "content": "report"},
    )
    assert told.json()["authority"]["reference"] == "R-1"

    assert http.post("/api/v1/admin/records/sync", headers=admin).json()["added"] > 0
    proc = {
        "key": "hosting",
        "name": "Hosting Co.",
        "purpose": "servers",
        "legal_basis": "contract H-1",
        "retention": "contract term",
        "jurisdiction": "cn",
    }
    assert http.post("/api/v1/admin/records/processors", headers=auditor, json=proc).status_code == 403
    rec = http.post("/api/v1/admin/records/processors", headers=admin, json=proc)
    assert rec.status_code == 201, rec.text
    gone = http.delete(f"/api/v1/admin/records/{rec.json()['id']}", headers=admin)
    assert gone.status_code == 403 and gone.json()["error"]["code"] == "record_retained"
    listed = http.get("/api/v1/admin/records", headers=auditor, params={"kind": "processor"}).json()
    assert [x["key"] for x in listed] == ["hosting"]


def test_next_of_kin_deletion_is_verified_then_carried_out_by_the_dpo(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)  # ``owner`` has died; a relative asks for the data to be deleted
    relative = make_owner(http)
    r = http.post(
        "/api/v1/rights-requests",
        headers=relative.headers,
        json={
            "kind": "next_of_kin",
            "details": "Please delete my late father's driving data.",
            "evidence": "death certificate 2026-0042; household register showing the relationship",
            "subject_email": owner.email.upper(),
        },
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert http.get(f"/api/v1/rights-requests/{rid}", headers=owner.headers).status_code == 404  # not the filer
    dpo = _dpo(region)
    assert http.get(f"/api/v1/admin/rights-requests/{rid}", headers=dpo).json()["owner_id"] == owner.owner_id
    http.post(f"/api/v1/admin/rights-requests/{rid}/start", headers=dpo)
    early = http.post(f"/api/v1/admin/rights-requests/{rid}/deletion", headers=dpo)
    assert early.status_code == 409  # evidence first
    with region.db.session() as s:
        kept = s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == vehicle.vin))
    assert kept is not None and kept > 0
    ok = http.post(f"/api/v1/admin/rights-requests/{rid}/verify", headers=dpo, json={"note": "registry checked"})
    assert ok.status_code == 200
    done = http.post(f"/api/v1/admin/rights-requests/{rid}/deletion", headers=dpo)
    assert done.status_code == 200, done.text
    assert done.json()["produced"]["deletion_request_id"] is not None
    assert http.post(f"/api/v1/admin/rights-requests/{rid}/deletion", headers=dpo).status_code == 409  # once
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == vehicle.vin)) == 0
    log = http.get("/api/v1/audit", headers=owner.headers, params={"action": "deletion.request"}).json()
    events = log["events"] if isinstance(log, dict) else log
    assert events and events[0]["actor"].startswith("staff:dpo:")  # not recorded as the owner's own request
    closed = http.post(
        f"/api/v1/admin/rights-requests/{rid}/complete", headers=dpo, json={"outcome": "Your father's data was erased."}
    )
    assert closed.status_code == 200
    seen = http.get(f"/api/v1/rights-requests/{rid}", headers=relative.headers).json()
    assert seen["status"] == "done" and seen["outcome"] == "Your father's data was erased."


def test_a_legal_hold_keeps_a_deletion_request_open_until_it_ends(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    hold = region.deletions.place_hold(vehicle.vin, "Shanghai court", "case 2026-17")
    r = http.post("/api/v1/rights-requests", headers=owner.headers, json={"kind": "deletion", "vin": vehicle.vin})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    with region.db.session() as s:  # the grace period ends (moved to now); the scheduler finds the hold
        s.get(DeletionRequest, r.json()["produced"]["deletion_request_id"]).due_ms = now_ms()
    assert region.deletions.run_due() == 0
    dpo = _dpo(region)
    http.post(f"/api/v1/admin/rights-requests/{rid}/start", headers=dpo)
    early = http.post(f"/api/v1/admin/rights-requests/{rid}/complete", headers=dpo, json={"outcome": "erased"})
    assert early.status_code == 409 and "held" in early.json()["error"]["message"]
    region.deletions.release_hold(hold.id)  # the waiting deletion proceeds
    done = http.post(f"/api/v1/admin/rights-requests/{rid}/complete", headers=dpo, json={"outcome": "erased"})
    assert done.status_code == 200, done.text
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == vehicle.vin)) == 0
