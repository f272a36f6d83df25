"""Cross-border transfers over a real server: a foreign app's reads through the gate, and the operator's API.

The app holds an OAuth token issued by the real authorization flow; the operator acts with staff bearer tokens
(``make_staff``). Counters near a legal threshold are seeded in the database; the counting itself runs on reads.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner
from websockets.sync.client import connect

from carvault.access.audit import Actor
from carvault.cli import app as cli_app
from carvault.compliance.roles import Role
from carvault.errors import CrossBorderTransfer
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.store.metadata import App, AuditEvent, TransferCounter, TransferRecord, now_ms
from tests.conftest import OwnerClient
from tests.factories import make_staff
from tests.web import test_oauth
from tests.web.test_oauth import WINDOW, approve, bearer, client_for, register_app
from tests.web.test_viss_ws import SOC, Client, publish, ws_url

pytestmark = pytest.mark.slow

browser, car, data = test_oauth.browser, test_oauth.car, test_oauth.data
DAY_MS = 86_400_000
SCOPE = "vss:Vehicle.Speed vss:Vehicle.CurrentLocation history"  # driving dynamics and (sensitive) location
CATEGORIES = ["driving_dynamics", "location"]


def staff(region: Region, role: Role) -> dict[str, str]:
    _, secret = make_staff(region, role)
    return bearer(secret)


def new_record(client_id: str, **change: Any) -> dict[str, Any]:
    return {
        "route": "standard_contract",
        "recipient_kind": "app",
        "recipient": client_id,
        "recipient_jurisdiction": "eu",
        "purpose": "usage-based insurance priced by the EU parent company",
        "categories": CATEGORIES,
        "max_persons": 20_000,
        "to_ms": now_ms() + 365 * DAY_MS,
        "approval_reference": "SC-filing 2026-117",
        **change,
    }


def read(http: httpx.Client, vin: str, token: str) -> httpx.Response:
    params: dict[str, str | int] = {**WINDOW, "signals": "Vehicle.Speed", "format": "json"}
    return http.get(f"/api/v1/vehicles/{vin}/telemetry", headers=bearer(token), params=params)


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def foreign_app_token(region: Region, server: BackgroundServer, browser: httpx.Client) -> tuple[str, str]:
    """An app approved while it processed data here, then found to process it in the EU: (client_id, token)."""
    app = register_app(region)
    token = approve(client_for(server, app, scope=SCOPE), browser)["access_token"]
    with region.db.session() as s:
        s.execute(update(App).where(App.client_id == app.client_id).values(jurisdiction="eu"))
    return app.client_id, token


def seed(region: Region, klass: str, persons: int) -> None:
    with region.db.session() as s:
        row = s.scalar(
            select(TransferCounter).where(
                TransferCounter.year == region.transfers.year(),
                TransferCounter.scope == "region",
                TransferCounter.klass == klass,
            )
        )
        if row is None:
            s.add(TransferCounter(year=region.transfers.year(), scope="region", klass=klass, persons=persons))
        else:
            row.persons = persons


def test_a_foreign_app_is_refused_without_a_record_admitted_with_one_and_stopped_by_suspension(
    region: Region,
    http: httpx.Client,
    server: BackgroundServer,
    browser: httpx.Client,
    owner: OwnerClient,
    data: str,
) -> None:
    client_id, token = foreign_app_token(region, server, browser)
    refused = read(http, data, token)
    assert refused.status_code == 403 and code(refused) == "cross_border_transfer", refused.text
    assert refused.json()["error"]["recipient_jurisdiction"] == "eu"
    dpo = staff(region, Role.DPO)
    # A record that leaves out the sensitive location data does not cover this grant.
    partial = http.post(
        "/api/v1/admin/transfers/records", headers=dpo, json=new_record(client_id, categories=["driving_dynamics"])
    )
    assert partial.status_code == 201, partial.text
    still = read(http, data, token)
    assert (
        still.status_code == 403
        and code(still) == "cross_border_transfer"
        and "location" in still.json()["error"]["message"]
    )

    made = http.post("/api/v1/admin/transfers/records", headers=dpo, json=new_record(client_id))
    assert made.status_code == 201, made.text
    rec = made.json()
    assert rec["status"] == "approved" and rec["created_by"].startswith("staff:dpo:")
    for _ in range(2):
        ok = read(http, data, token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["rows"] > 0

    auditor = staff(region, Role.AUDITOR)
    logged = http.get("/api/v1/admin/transfers/events", headers=auditor, params={"record_id": rec["id"]}).json()
    assert [(e["principal"], e["vin"], e["action"], e["sensitive"]) for e in logged["events"]] == [
        (f"app:{client_id}", data, "query", True)
    ] * 2
    counted = http.get("/api/v1/admin/transfers/counters", headers=auditor).json()
    assert counted["region"]["sensitive"]["persons"] == 1 and counted["region"]["personal"]["persons"] == 1
    shown = http.get(f"/api/v1/admin/transfers/records/{rec['id']}", headers=auditor).json()
    assert shown["counters"]["all"]["persons"] == 1 and shown["counters"]["all"]["limits"][0]["limit"] == 20_000

    # An export is a transfer when it is asked for and when it is downloaded; polling its status is not.
    job = http.post("/api/v1/exports", headers=bearer(token), json={"vin": data, **WINDOW, "format": "csv"})
    assert job.status_code == 202, job.text
    before = len(region.transfers.events(record_id=rec["id"]))
    for _ in range(3):
        assert http.get(f"/api/v1/exports/{job.json()['id']}", headers=bearer(token)).status_code == 200
    assert len(region.transfers.events(record_id=rec["id"])) == before == 3
    assert region.transfers.events(record_id=rec["id"])[0].action == "export"

    # The owner's access log names the read as a transfer abroad: the record, its route, the destination.
    events = http.get("/api/v1/audit", headers=owner.headers, params={"action": "telemetry.read"}).json()["events"]
    assert events[0]["actor"] == f"app:{client_id}"
    assert events[0]["detail"]["transfer"] == {
        "record_id": rec["id"],
        "route": "standard_contract",
        "destination": "eu",
        "recipient": client_id,
        "approval_reference": "SC-filing 2026-117",
    }
    page = browser.get("/access")
    assert page.status_code == 200 and f"transfer abroad to eu, record #{rec['id']} (standard contract)" in page.text

    # Suspension takes effect on the very next request (the partial record still covers none of it).
    support = staff(region, Role.SUPPORT)
    barred = http.post(f"/api/v1/admin/transfers/records/{rec['id']}/suspend", headers=support, json={"reason": "x"})
    assert barred.status_code == 403 and code(barred) == "role_forbidden"
    stop = http.post(
        f"/api/v1/admin/transfers/records/{rec['id']}/suspend", headers=dpo, json={"reason": "recipient breach"}
    )
    assert stop.status_code == 200 and stop.json()["status"] == "suspended"
    after = read(http, data, token)
    assert after.status_code == 403 and code(after) == "cross_border_transfer"
    again = http.post(f"/api/v1/admin/transfers/records/{rec['id']}/suspend", headers=dpo, json={"reason": "again"})
    assert again.status_code == 409

    # A new record admits again until its period ends; the end applies on the next request too.
    renewed = http.post("/api/v1/admin/transfers/records", headers=dpo, json=new_record(client_id)).json()
    assert read(http, data, token).status_code == 200
    with region.db.session() as s:
        s.execute(update(TransferRecord).where(TransferRecord.id == renewed["id"]).values(to_ms=now_ms() - 1))
    ended = read(http, data, token)
    assert ended.status_code == 403 and code(ended) == "cross_border_transfer" and "expired" in ended.text
    listed = http.get("/api/v1/admin/transfers/records", headers=auditor, params={"status": "expired"}).json()
    assert [r["id"] for r in listed["records"]] == [renewed["id"]]


def test_the_sensitive_trigger_warns_then_refuses_a_new_person_on_a_standard_contract(
    region: Region, http: httpx.Client, server: BackgroundServer, browser: httpx.Client, car: str
) -> None:
    client_id, token = foreign_app_token(region, server, browser)
    dpo = staff(region, Role.DPO)
    assert http.post("/api/v1/admin/transfers/records", headers=dpo, json=new_record(client_id)).status_code == 201
    seed(region, "sensitive", 9_999)  # this owner would be the 10,000th: only a security assessment covers that
    full = read(http, car, token)
    assert full.status_code == 403 and code(full) == "transfer_cap_reached", full.text
    assert full.json()["error"]["limit"] == 9_999
    seed(region, "sensitive", 7_999)
    assert read(http, car, token).status_code == 200  # the 8,000th: 80 % of 10,000
    counted = http.get("/api/v1/admin/transfers/counters", headers=dpo).json()
    assert counted["region"]["sensitive"]["persons"] == 8_000
    assert [(w["scope"], w["klass"], w["limit"], w["level"]) for w in counted["warnings"]] == [
        ("region", "sensitive", 10_000, "warning")
    ]
    with region.db.session() as s:
        warned = list(s.scalars(select(AuditEvent.detail).where(AuditEvent.action == "transfer.warning")))
    assert len(warned) == 1 and '"persons": 8000' in warned[0]


def test_the_operator_api_refuses_bad_input_and_wrong_callers(
    region: Region, http: httpx.Client, owner: OwnerClient
) -> None:
    dpo, auditor = staff(region, Role.DPO), staff(region, Role.AUDITOR)
    url = "/api/v1/admin/transfers/records"
    important = http.post(url, headers=dpo, json=new_record("c1", categories=["exterior_camera"]))
    assert important.status_code == 422 and important.json()["error"]["field"] == "route"
    for body in (
        new_record("c1", categories=["no_such"]),
        new_record("c1", recipient_jurisdiction="cn"),  # this region: nothing to record
        new_record("c1", route="handshake"),
        new_record("c1", max_persons=0),
        new_record("c1", to_ms=now_ms() - 1),
        {**new_record("c1"), "status": "approved"},  # unknown field
        {"route": "standard_contract"},
        [1, 2],
    ):
        r = http.post(url, headers=dpo, json=body)
        assert r.status_code == 422 and code(r) == "validation_failed", (body, r.text)
    assert http.get(url, headers=auditor).json()["records"] == []
    assert code(http.post(url, headers=auditor, json=new_record("c1"))) == "role_forbidden"
    assert http.get(url, headers=owner.headers).status_code == 401
    assert http.get(url).status_code == 401
    assert http.get(f"{url}/999", headers=auditor).status_code == 404
    assert http.get(f"{url}/0", headers=auditor).status_code == 422
    assert http.post(f"{url}/999/suspend", headers=dpo, json={"reason": "x"}).status_code == 404
    assert http.post(f"{url}/999/suspend", headers=dpo, json={"reason": ""}).status_code == 422
    assert http.get("/api/v1/admin/transfers/events", headers=auditor, params={"limit": 0}).status_code == 422
    assert http.get("/api/v1/admin/transfers/counters", headers=auditor, params={"year": "x"}).status_code == 422
    made = http.post(
        url, headers=dpo, json=new_record("c1", route="security_assessment", categories=["exterior_camera"])
    )
    assert made.status_code == 201, made.text
    assert http.get(url, headers=auditor).json()["records"][0]["categories"] == ["exterior_camera"]


def test_the_cli_adds_lists_shows_suspends_and_counts(region: Region) -> None:
    data = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    runner = CliRunner()
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=300)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(*categories: str, to: str = until) -> list[str]:
        return [
            "admin", "transfers", "add", "--route", "certification", "--recipient", "Acme Re GmbH",
            "--recipient-kind", "entity", "--jurisdiction", "EU", "--purpose", "reinsurance pricing",
            *(x for c in categories for x in ("--category", c)), "--max-persons", "500000",
            "--to", to, "--reference", "CERT-2026-9", "--as", "dpo-li", "--json", *data,
        ]  # fmt: skip

    region.staff.create("dpo-li", "a long enough password", "dpo")  # --as names a real member, checked
    made = runner.invoke(cli_app, add("driving_dynamics", "location"))
    assert made.exit_code == 0, made.output
    rec = json.loads(made.output)
    assert rec["recipient_jurisdiction"] == "eu" and rec["created_by"] == "staff:dpo:dpo-li"
    assert rec["categories"] == ["driving_dynamics", "location"] and rec["status"] == "approved"
    important = runner.invoke(cli_app, add("exterior_camera"))
    assert important.exit_code == 1, important.output
    assert "validation_failed" in important.output and "security assessment" in important.output
    bad_time = runner.invoke(cli_app, add("location", to="next week"))
    assert bad_time.exit_code == 2 and "invalid_query" in bad_time.output
    assert len(region.transfers.list()) == 1
    # The gate admits a read under it; show and counters see the person.
    (o,) = [region.accounts.register("cli-owner@example.com", "correct horse battery").id]
    region.transfers.check("entity", "Acme Re GmbH", "eu", owner_id=o, categories=["location"], action="export")
    shown = runner.invoke(cli_app, ["admin", "transfers", "show", str(rec["id"]), "--json", *data])
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["counters"]["sensitive"]["persons"] == 1 and [e["action"] for e in detail["events"]] == ["export"]
    table = runner.invoke(cli_app, ["admin", "transfers", "counters", *data])
    assert table.exit_code == 0 and "10,000" in table.output and "1,000,000" in table.output, table.output
    listed = runner.invoke(cli_app, ["admin", "transfers", "list", "--status", "approved", "--json", *data])
    assert listed.exit_code == 0 and [x["approval_reference"] for x in json.loads(listed.output)] == ["CERT-2026-9"]
    assert runner.invoke(cli_app, ["admin", "transfers", "list", *data]).exit_code == 0
    stop = runner.invoke(cli_app, ["admin", "transfers", "suspend", str(rec["id"]), "--reason", "audit", *data])
    assert stop.exit_code == 0 and "suspended" in stop.output
    again = runner.invoke(cli_app, ["admin", "transfers", "suspend", str(rec["id"]), "--reason", "audit", *data])
    assert again.exit_code == 1 and "conflict" in again.output
    assert runner.invoke(cli_app, ["admin", "transfers", "show", "999", *data]).exit_code == 1
    with pytest.raises(CrossBorderTransfer):
        region.transfers.check("entity", "Acme Re GmbH", "eu", owner_id=o, categories=["location"])


def test_a_live_stream_abroad_is_counted_once_and_ends_when_its_record_is_suspended(
    region: Region, server: BackgroundServer, owner: OwnerClient, car: str
) -> None:
    """Open subscriptions are re-checked twice a second: each re-check confirms the cover, none logs a transfer."""
    app = register_app(region, jurisdiction="eu", purposes=("charging",))
    charging = region.catalogue[SOC].category
    rec = add_direct(region, app.client_id, [charging])
    grant = region.grants.create(
        owner.owner_id, kind="app", client_id=app.client_id, vins=[car], signals=[SOC], purpose="charging", live=True
    )
    token, _ = region.accounts.issue(owner.owner_id, "access", grant_id=grant.id, client_id=app.client_id)
    publish(region, car, {SOC: 50.0})
    with connect(ws_url(server, car), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        c = Client(ws)
        r = c.request("subscribe", path=SOC, filter={"variant": "timebased", "parameter": {"period": "200"}})
        c.event(r["subscriptionId"])
        time.sleep(2)  # about four re-checks
        c.event(r["subscriptionId"])
        assert [e.action for e in region.transfers.events(record_id=rec.id)] == ["query"]
        region.transfers.suspend(rec.id, reason="recipient stopped filing", by=Actor("staff", "dpo:test"))
        deadline = time.monotonic() + 5
        while "error" not in (e := c.event(r["subscriptionId"])):
            assert time.monotonic() < deadline
        assert (e["error"]["number"], e["error"]["code"]) == ("403", "cross_border_transfer")
    assert len(region.transfers.events(record_id=rec.id)) == 1


def add_direct(region: Region, client_id: str, categories: list[str]) -> TransferRecord:
    return region.transfers.create(
        route="standard_contract",
        recipient_kind="app",
        recipient=client_id,
        recipient_jurisdiction="eu",
        purpose="smart charging run from the EU",
        categories=categories,
        max_persons=100,
        from_ms=now_ms() - 1000,
        to_ms=now_ms() + 30 * DAY_MS,
        approval_reference="SC-7",
        by=Actor("staff", "dpo:test"),
    )
