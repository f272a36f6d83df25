"""The operator's retention API and CLI over a real server: who may run and see purges, bad input, the lease."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from carvault.cli import app as cli_app
from carvault.compliance.retention import RECORD_CONTEXT
from carvault.compliance.roles import Role
from carvault.ledger.checkpoint import parse_vkey
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.store.metadata import RetentionRun
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, make_staff, vin_for

BODY = "Vehicle.LowVoltageBattery.CurrentVoltage"  # body: kept a year; BASE_MS lies more than a year back


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_purge_through_the_api_withholds_what_is_past_its_period(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    agent.record(drive_table(BASE_MS, seconds=120, paths=["Vehicle.Speed", BODY]), batch_seconds=60)
    agent.upload_pending()
    claim = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=claim).status_code == 201
    _, admin = make_staff(region, Role.REGION_ADMIN)

    dry = http.post("/api/v1/admin/retention/runs", headers=_bearer(admin), json={"dry_run": True})
    assert dry.status_code == 201, dry.text
    assert dry.json()["dry_run"] and dry.json()["summary"]["categories"]["body"]["withheld_batches"] == 2
    window: dict[str, str | int] = {"start": BASE_MS, "end": BASE_MS + 120_000, "signals": BODY}
    served = http.get(f"/api/v1/vehicles/{vehicle.vin}/telemetry", headers=owner.headers, params=window).json()
    assert any(v is not None for v in served["signals"][BODY])  # a dry run withholds nothing

    r = http.post("/api/v1/admin/retention/runs", headers=_bearer(admin), json={})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "done" and not run["dry_run"] and run["actor"].startswith("staff:region_admin:")
    assert run["summary"]["categories"]["body"]["withheld_batches"] == 2
    record = run["record"]
    body = {k: v for k, v in record.items() if k not in ("signature", "signed_by")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    parse_vkey(record["signed_by"]).public_key.verify(base64.b64decode(record["signature"]), RECORD_CONTEXT + canonical)
    served = http.get(f"/api/v1/vehicles/{vehicle.vin}/telemetry", headers=owner.headers, params=window).json()
    assert served["rows"] > 0 and set(served["signals"][BODY]) == {None}

    _, auditor = make_staff(region, Role.AUDITOR)
    listed = http.get("/api/v1/admin/retention/runs", headers=_bearer(auditor))
    assert listed.status_code == 200 and [x["id"] for x in listed.json()["runs"]] == [run["id"], dry.json()["id"]]
    one = http.get(f"/api/v1/admin/retention/runs/{run['id']}", headers=_bearer(auditor))
    assert one.status_code == 200 and one.json()["record"] == record
    policy = http.get("/api/v1/admin/retention/policy", headers=_bearer(auditor)).json()
    assert policy["last_run"]["id"] == run["id"] and policy["next_due_ms"] == run["finished_ms"] + 3600 * 1000
    assert policy["due_now"]["batches_to_withhold"] == 0 and policy["due_now"]["batches_to_erase"] == 0
    events = http.get("/api/v1/audit", headers=owner.headers).json()["events"]
    assert [e["actor"] for e in events if e["action"] == "retention.purge"] == [run["actor"]]


def test_roles_bad_input_and_one_run_at_a_time(http: httpx.Client, owner: OwnerClient, region: Region) -> None:
    _, auditor = make_staff(region, Role.AUDITOR)
    _, support = make_staff(region, Role.SUPPORT)
    _, dpo = make_staff(region, Role.DPO)
    refused = http.post("/api/v1/admin/retention/runs", headers=_bearer(auditor), json={"dry_run": True})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_forbidden"
    seen = http.get("/api/v1/admin/retention/runs", headers=_bearer(support))
    assert seen.status_code == 403 and seen.json()["error"]["code"] == "role_forbidden"
    as_owner = http.get("/api/v1/admin/retention/policy", headers=owner.headers)
    assert as_owner.status_code == 401
    assert http.get("/api/v1/admin/retention/policy").status_code == 401
    assert not region.retention.runs()  # nothing ran

    for body in ({"dry_run": "maybe"}, {"dry_run": True, "now_ms": 1}, [1]):
        r = http.post("/api/v1/admin/retention/runs", headers=_bearer(dpo), json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", (body, r.text)
    for path in ("/api/v1/admin/retention/runs/999", "/api/v1/admin/retention/runs/0"):
        r = http.get(path, headers=_bearer(dpo))
        assert r.status_code in (404, 422) and r.json()["error"]["code"] in ("not_found", "validation_failed")
    assert not region.retention.runs()  # bad input stored nothing

    region.retention._acquire("another-replica")  # noqa: SLF001 - a live purge elsewhere holds the lease
    busy = http.post("/api/v1/admin/retention/runs", headers=_bearer(dpo), json={"dry_run": False})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "retention_running"
    dry = http.post("/api/v1/admin/retention/runs", headers=_bearer(dpo), json={"dry_run": True})
    assert dry.status_code == 201  # a dry run changes nothing, so it needs no lease
    region.retention._release("another-replica")  # noqa: SLF001
    assert http.post("/api/v1/admin/retention/runs", headers=_bearer(dpo), json={"dry_run": False}).status_code == 201


def test_cli_runs_lists_and_shows_the_policy(region: Region) -> None:
    data = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    runner = CliRunner()
    region.staff.create("dpo-ana", "a long enough password", "dpo")  # --as names a real member, checked
    region.staff.create("sam-support", "a long enough password", "support")
    refused = runner.invoke(cli_app, ["admin", "retention", "run", "--dry-run", "--as", "sam-support", *data])
    assert refused.exit_code == 1 and "role_forbidden" in refused.output  # support runs no purge
    unknown = runner.invoke(cli_app, ["admin", "retention", "run", "--dry-run", "--as", "nobody", *data])
    assert unknown.exit_code == 1 and "not_found" in unknown.output  # a name is never recorded as given
    dry = runner.invoke(cli_app, ["admin", "retention", "run", "--dry-run", "--json", "--as", "dpo-ana", *data])
    assert dry.exit_code == 0, dry.output
    run = json.loads(dry.output)
    assert run["dry_run"] and run["actor"] == "staff:dpo:dpo-ana" and run["record"]["run_id"] == run["id"]
    real = runner.invoke(cli_app, ["admin", "retention", "run", *data])
    assert real.exit_code == 0 and "purge, done" in real.output, real.output
    listed = runner.invoke(cli_app, ["admin", "retention", "runs", "--json", *data])
    assert [x["dry_run"] for x in json.loads(listed.output)] == [False, True]
    policy = runner.invoke(cli_app, ["admin", "retention", "policy", *data])
    assert policy.exit_code == 0 and "driver_monitoring" in policy.output and "next due" in policy.output
    bad = runner.invoke(cli_app, ["admin", "retention", "run", "--as", " ", *data])
    assert bad.exit_code == 1  # an empty name names no staff member
    region.retention._acquire("another-replica")  # noqa: SLF001
    busy = runner.invoke(cli_app, ["admin", "retention", "run", *data])
    assert busy.exit_code == 1 and "retention_running" in busy.output


@pytest.mark.slow
def test_the_scheduler_purges_on_its_own(settings: Settings, tmp_path: Path) -> None:
    region = Region(settings.with_(retention_interval_s=1))
    try:
        identity = provision(region, vin_for(7), tmp_path / "vehicles")
        with BackgroundServer(region, port=settings.port) as server:
            agent = VehicleAgent(identity, tmp_path / "vehicles" / identity.vin, server.url)
            agent.record(drive_table(BASE_MS, seconds=60, paths=["Vehicle.Speed", BODY]), batch_seconds=60)
            agent.upload_pending()
            deadline, withheld = time.monotonic() + 30, list[RetentionRun]()
            while not withheld and time.monotonic() < deadline:  # runs every second; one after the upload counts
                time.sleep(0.2)
                withheld = [
                    r
                    for r in region.retention.runs()
                    if r.status == "done" and json.loads(r.summary)["categories"]["body"]["withheld_batches"] == 1
                ]
            assert withheld, [(r.id, r.status) for r in region.retention.runs()]
            assert withheld[0].actor == "system:retention" and not withheld[0].dry_run  # BASE_MS is over a year back
    finally:
        region.close()
