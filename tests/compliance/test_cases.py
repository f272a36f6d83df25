"""Cases: the only way staff read an owner's data — who opens what, and every reason a read under a case is refused.

Service-level tests use a real region; the end-to-end test reads real uploaded telemetry through a real server and
finds the read in the owner's access log.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from carvault.access.staff import StaffPrincipal
from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.cli import app
from carvault.compliance.cases import case_state
from carvault.compliance.roles import Role
from carvault.compliance.sharing import NEVER_SHAREABLE
from carvault.errors import (
    CaseInactive,
    Conflict,
    CrossBorderTransfer,
    DataFrozen,
    NotFound,
    OutOfScope,
    RoleForbidden,
    ValidationFailed,
)
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import AuditEvent, Case, Vehicle, now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, make_staff, opt_in, vin_for
from tests.web.portal.test_portal_http import _login, _token

DAY = 86_400_000


@pytest.fixture
def owned(region: Region, tmp_path: Path) -> tuple[int, list[str]]:
    """An owner with two vehicles, and another owner's vehicle (vin_for(3))."""
    return _owned(region, tmp_path)


def _owned(region: Region, tmp_path: Path) -> tuple[int, list[str]]:
    owner = region.accounts.register("case-owner@example.com", "correct horse battery")
    other = region.accounts.register("someone-else@example.com", "correct horse battery")
    vins = []
    for n, who in ((1, owner.id), (2, owner.id), (3, other.id)):
        ident = provision(region, vin_for(n), tmp_path / "vehicles")
        region.vehicles.claim(who, ident.vin, ident.pairing_code)
        vins.append(ident.vin)
    return owner.id, vins


def _open(region: Region, staff: StaffPrincipal, vins: list[str], kind: str = "support_ticket", **kw: object) -> Case:
    fields: dict[str, object] = {
        "legal_basis": "the owner's request for help",
        "ends_ms": now_ms() + 7 * DAY,
        "reference": "T-1",
        "subject": "charging stops at 80 %",
    }
    fields.update(kw)
    return region.cases.open(staff, kind=kind, vins=vins, **fields)  # type: ignore[arg-type]


def test_support_reads_only_after_the_owner_approves(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    case = _open(region, support, vins[:1])
    assert case.owner_id == owner_id and case_state(case) == "awaiting_owner"
    with pytest.raises(CaseInactive):
        region.cases.access(support, case.id, vins[0])
    assert [c.id for c in region.cases.pending_for_owner(owner_id)] == [case.id]
    region.cases.decide(owner_id, case.id, approve=True)
    access = region.cases.access(support, case.id, vins[0])
    assert str(access.actor) == f"staff:support:{support.username}" and access.case_id == case.id
    assert access.legal_basis.startswith(f"case {case.id} (support_ticket):")
    assert not access.view.is_owner  # a scoped view: never-shareable categories stay out
    assert not {s.category for s in access.view.allowed()} & NEVER_SHAREABLE
    with pytest.raises(Conflict):
        region.cases.decide(owner_id, case.id, approve=False)  # decided once


def test_a_declined_ticket_reads_nothing(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    case = _open(region, support, vins[:1])
    with pytest.raises(NotFound):
        region.cases.decide(owner_id + 1, case.id, approve=True)  # not the owner's ticket
    region.cases.decide(owner_id, case.id, approve=False)
    with pytest.raises(CaseInactive, match="declined"):
        region.cases.access(support, case.id, vins[0])


def test_roles_open_and_read_only_their_kinds(region: Region, owned: tuple[int, list[str]]) -> None:
    _, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    liaison, _ = make_staff(region, Role.LIAISON)
    dpo, _ = make_staff(region, Role.DPO)
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    auditor, _ = make_staff(region, Role.AUDITOR)
    with pytest.raises(RoleForbidden):
        _open(region, support, vins[:1], "authority_order", authority="court", reference="X")
    for nobody in (admin, auditor):
        with pytest.raises(RoleForbidden):
            _open(region, nobody, vins[:1])
    order = _open(region, liaison, vins[:1], "authority_order", authority="Shanghai court", reference="(2026)1")
    assert case_state(order) == "open"  # no owner approval for an authority order
    assert region.cases.access(liaison, order.id, vins[0]).view.scope.precise_location  # type: ignore[union-attr]
    for other in (support, dpo, admin, auditor):  # nobody else reads under the liaison's case
        with pytest.raises(RoleForbidden):
            region.cases.access(other, order.id, vins[0])
    breach = _open(region, dpo, vins[:2], "breach_investigation")
    assert region.cases.access(dpo, breach.id, vins[1]).vin == vins[1]


def test_bad_cases_are_refused_and_nothing_is_stored(region: Region, owned: tuple[int, list[str]]) -> None:
    _, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    liaison, _ = make_staff(region, Role.LIAISON)
    bad = [
        ({"ends_ms": now_ms() + 91 * DAY}, ValidationFailed),
        ({"ends_ms": now_ms() - 1}, ValidationFailed),
        ({"legal_basis": "  "}, ValidationFailed),
        ({"subject": ""}, ValidationFailed),
        ({"vins": []}, ValidationFailed),
        ({"vins": [vins[0], vins[2]]}, ValidationFailed),  # two owners
        ({"vins": [vin_for(77)]}, NotFound),
        ({"kind": "fishing"}, ValidationFailed),
        ({"from_ms": BASE_MS, "to_ms": BASE_MS}, ValidationFailed),
    ]
    for change, error in bad:
        fields = {"vins": vins[:1], "kind": "support_ticket", **change}
        with pytest.raises(error):
            _open(region, support, **fields)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        _open(region, liaison, vins[:1], "authority_order", reference="")  # an order names authority and reference
    assert region.cases.list() == []


def test_reads_stop_when_the_case_ends_closes_or_does_not_cover(region: Region, owned: tuple[int, list[str]]) -> None:
    _, vins = owned
    dpo, _ = make_staff(region, Role.DPO)
    case = _open(region, dpo, vins[:1], "rights_request")
    with pytest.raises(OutOfScope):
        region.cases.access(dpo, case.id, vins[1])  # the owner's other car is not in the case
    with pytest.raises(OutOfScope):
        region.cases.access(dpo, case.id, vins[2])
    with pytest.raises(NotFound):
        region.cases.access(dpo, 999_999, vins[0])
    with region.db.session() as s:
        s.execute(update(Case).where(Case.id == case.id).values(ends_ms=now_ms() - 1))
    with pytest.raises(CaseInactive, match="ended"):
        region.cases.access(dpo, case.id, vins[0])
    case = _open(region, dpo, vins[:1], "rights_request")
    region.cases.close(dpo, case.id, "answered")
    with pytest.raises(CaseInactive, match="closed"):
        region.cases.access(dpo, case.id, vins[0])
    with pytest.raises(Conflict):
        region.cases.close(dpo, case.id)


def test_a_car_sold_after_the_case_opened_is_not_covered(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    dpo, _ = make_staff(region, Role.DPO)
    case = _open(region, dpo, vins[:1], "rights_request")
    with region.db.session() as s:
        s.execute(update(Vehicle).where(Vehicle.vin == vins[0]).values(owner_id=None))
    with pytest.raises(OutOfScope):
        region.cases.access(dpo, case.id, vins[0])
    assert owner_id


def test_frozen_data_is_not_served_under_a_case(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    dpo, _ = make_staff(region, Role.DPO)
    case = _open(region, dpo, vins[:1], "rights_request")
    region.deletions.place_hold(vins[0], "court", "pending litigation")
    region.deletions.request(owner_id, vins[0], "please delete", immediately=True)
    with pytest.raises(DataFrozen):
        region.cases.access(dpo, case.id, vins[0])


def test_staff_abroad_need_a_transfer_record(region: Region, owned: tuple[int, list[str]]) -> None:
    _, vins = owned
    dpo, _ = make_staff(region, Role.DPO, jurisdiction="eu")
    case = _open(region, dpo, vins[:1], "rights_request")
    with pytest.raises(CrossBorderTransfer):
        region.cases.access(dpo, case.id, vins[0])


def test_opening_and_closing_are_in_both_chains(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    case = _open(region, support, vins[:1])
    region.cases.decide(owner_id, case.id, approve=True)
    region.cases.close(support, case.id, "fixed")
    mine = [(e.action, e.actor) for e in reversed(region.audit.list(owner_id))]
    actor = f"staff:support:{support.username}"
    assert mine[-3:] == [("case.open", actor), ("case.approve", f"owner:{owner_id}"), ("case.close", actor)]
    with region.db.session() as s:
        regional = [e.action for e in s.query(AuditEvent).filter(AuditEvent.chain == "region")]
    assert {"case.open", "case.approve", "case.close"} <= set(regional)
    assert region.audit.verify_chain(owner_id) and region.audit.verify_chain(None)


@pytest.mark.slow
def test_a_read_under_a_case_is_the_owners_data_and_in_their_access_log(
    region: Region,
    http: httpx.Client,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
) -> None:
    opt_in(region, vehicle.vin)
    agent.record(drive_table(seconds=120), batch_seconds=60)
    assert len(agent.upload_pending()) == 2
    region.vehicles.claim(owner.owner_id, vehicle.vin, vehicle.pairing_code)
    support, secret = make_staff(region, Role.SUPPORT)
    staff = {"Authorization": f"Bearer {secret}"}
    r = http.post(
        "/api/v1/admin/cases",
        headers=staff,
        json={
            "kind": "support_ticket",
            "vins": [vehicle.vin],
            "legal_basis": "the owner's request for help",
            "subject": "speed reads zero",
            "reference": "T-42",
            "ends_ms": now_ms() + 3 * DAY,
        },
    )
    assert r.status_code == 201, r.text
    case_id = r.json()["id"]
    window = {"start": str(BASE_MS), "end": str(BASE_MS + 120_000), "signals": "Vehicle.Speed"}
    read = f"/api/v1/admin/cases/{case_id}/vehicles/{vehicle.vin}/telemetry"
    r = http.get(read, headers=staff, params=window)
    assert r.status_code == 403 and r.json()["error"]["code"] == "case_inactive"
    # The owner sees the ticket and approves it.
    tickets = http.get("/api/v1/support-tickets", headers=owner.headers).json()
    assert [t["id"] for t in tickets] == [case_id] and tickets[0]["state"] == "awaiting_owner"
    r = http.post(f"/api/v1/support-tickets/{case_id}/approve", headers=owner.headers)
    assert r.status_code == 200 and r.json()["state"] == "open"
    mine = http.get(f"/api/v1/vehicles/{vehicle.vin}/telemetry", headers=owner.headers, params=window)
    theirs = http.get(read, headers=staff, params=window)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json() == mine.json() and theirs.json()["rows"] > 0  # the same data, through the same code
    # Refused with a stable code: a driver-monitoring signal, a car not in the case, an owner token on the route.
    heart = {**window, "signals": "Vehicle.Driver.HeartRate"}
    r = http.get(read, headers=staff, params=heart)
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"
    r = http.get(f"/api/v1/admin/cases/{case_id}/vehicles/{vin_for(9)}/telemetry", headers=staff, params=window)
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"
    assert http.get(read, headers=owner.headers, params=window).status_code == 401
    log = http.get("/api/v1/audit", headers=owner.headers, params={"action": "telemetry.read"}).json()
    entries = log["events"] if isinstance(log, dict) else log
    staff_reads = [e for e in entries if e["actor"].startswith("staff:")]
    assert len(staff_reads) == 1
    e = staff_reads[0]
    assert e["actor"] == f"staff:support:{support.username}"
    assert e["legal_basis"] == f"case {case_id} (support_ticket): the owner's request for help"
    assert e["detail"]["case_id"] == case_id and e["detail"]["rows"] > 0
    assert json.dumps(e)  # the entry is plain JSON for the portal's access log page
    # The owner's "Who accessed my data" page names the staff member by role and the case, in both languages.
    _login(http, owner)
    page = http.get("/access").text
    assert f"Operator staff (Support) {support.username}" in page and f"under case {case_id}" in page
    zh = http.get("/access", headers={"Accept-Language": "zh-CN"}).text
    assert "运营方员工" in zh and f"依据案件 {case_id}" in zh


def test_the_command_line_opens_lists_and_closes_cases(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    liaison, _ = make_staff(region, Role.LIAISON)
    runner = CliRunner()
    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["admin", "cases", *args, *where], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    opened = json.loads(
        cli(
            "open", "authority_order", "--vin", vins[0], "--legal-basis", "court order", "--as", liaison.username,
            "--authority", "Pudong court", "--reference", "(2026)沪0115", "--days", "10", "--json",
        )
    )  # fmt: skip
    assert opened["state"] == "open" and opened["owner_id"] == owner_id
    assert opened["opened_by"] == f"staff:authority_liaison:{liaison.username}"
    assert 9 * DAY < opened["ends_ms"] - now_ms() <= 10 * DAY
    assert "role_forbidden" in cli("open", "support_ticket", "--vin", vins[0], "--legal-basis", "x",
                                   "--subject", "y", "--as", liaison.username, code=1)  # fmt: skip
    assert "validation_failed" in cli("open", "authority_order", "--vin", vins[0], "--legal-basis", "x",
                                      "--as", liaison.username, code=1)  # fmt: skip
    listed = json.loads(cli("list", "--json"))
    assert [c["id"] for c in listed] == [opened["id"]]
    assert str(opened["id"]) in cli("show", str(opened["id"]))
    closed = json.loads(cli("close", str(opened["id"]), "--as", liaison.username, "--outcome", "done", "--json"))
    assert closed["state"] == "closed" and closed["outcome"] == "done"
    assert json.loads(cli("list", "--state", "open", "--json")) == []


@pytest.mark.slow
def test_the_owner_approves_and_declines_on_the_support_page(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    region.vehicles.claim(owner.owner_id, vehicle.vin, vehicle.pairing_code)
    support, _ = make_staff(region, Role.SUPPORT)
    first = _open(region, support, [vehicle.vin], subject="the app shows no trips")
    second = _open(region, support, [vehicle.vin], subject="charging history looks wrong")
    _login(http, owner)
    html = http.get("/support").text
    assert "the app shows no trips" in html and "charging history looks wrong" in html
    assert f"staff:support:{support.username}" in html
    token = _token(html)
    r = http.post(f"/support/{first.id}", data={"csrf_token": token, "decision": "approve"})
    assert r.status_code == 303 and r.headers["location"] == "/support?notice=support_approved"
    r = http.post(f"/support/{second.id}", data={"csrf_token": token, "decision": "decline"})
    assert r.status_code == 303
    assert case_state(region.cases.get(first.id)) == "open"
    assert case_state(region.cases.get(second.id)) == "declined"
    assert region.cases.access(support, first.id, vehicle.vin).case_id == first.id
    # Deciding again, a forged decision, or no CSRF token: refused, nothing changes.
    assert http.post(f"/support/{first.id}", data={"csrf_token": token, "decision": "decline"}).status_code == 409
    assert http.post(f"/support/{first.id}", data={"csrf_token": token, "decision": "maybe"}).status_code == 400
    assert http.post(f"/support/{first.id}", data={"decision": "decline"}).status_code == 403
    assert case_state(region.cases.get(first.id)) == "open"
    # In Chinese too.
    zh = http.get("/support", headers={"Accept-Language": "zh-CN"})
    assert "客服工单" in zh.text and "以往工单" in zh.text


def test_listing_by_state_agrees_with_each_case_state(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    dpo, _ = make_staff(region, Role.DPO)
    waiting = _open(region, support, vins[:1])
    approved = _open(region, support, vins[:1])
    region.cases.decide(owner_id, approved.id, approve=True)
    declined = _open(region, support, vins[:1])
    region.cases.decide(owner_id, declined.id, approve=False)
    rights = _open(region, dpo, vins[:1], "rights_request")
    ended = _open(region, dpo, vins[:1], "rights_request")
    with region.db.session() as s:
        s.execute(update(Case).where(Case.id == ended.id).values(ends_ms=now_ms() - 1))
    closed = _open(region, dpo, vins[:1], "rights_request")
    region.cases.close(dpo, closed.id)
    expected = {
        "awaiting_owner": [waiting.id],
        "open": [rights.id, approved.id],
        "declined": [declined.id],
        "ended": [ended.id],
        "closed": [closed.id],
    }
    every = region.cases.list()
    for state, ids in expected.items():
        assert [c.id for c in region.cases.list(state=state)] == ids, state
        assert sorted(c.id for c in every if case_state(c) == state) == sorted(ids), state
    assert [c.id for c in region.cases.list(kind="rights_request", state="open")] == [rights.id]
    for bad in ({"state": "pending"}, {"kind": "fishing"}):
        with pytest.raises(ValidationFailed):
            region.cases.list(**bad)  # type: ignore[arg-type]


def test_concurrent_decisions_and_closings_count_once(region: Region, owned: tuple[int, list[str]]) -> None:
    owner_id, vins = owned
    support, _ = make_staff(region, Role.SUPPORT)
    case = _open(region, support, vins[:1])
    start = threading.Barrier(8)

    def decide(n: int) -> str:
        start.wait()
        try:
            region.cases.decide(owner_id, case.id, approve=n % 2 == 0)
            return "ok"
        except Conflict:
            return "conflict"

    def close(_: int) -> str:
        start.wait()
        try:
            region.cases.close(support, case.id)
            return "ok"
        except Conflict:
            return "conflict"

    for work, action in ((decide, ("case.approve", "case.decline")), (close, ("case.close",))):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        assert results.count("ok") == 1 and results.count("conflict") == 7, results
        recorded = [e for e in region.audit.list(owner_id) if e.action in action]
        assert len(recorded) == 1
    final = region.cases.get(case.id)
    assert (final.owner_approved_ms is None) != (final.owner_declined_ms is None) and final.closed_ms is not None


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_decisions_count_once_on_postgresql(settings: Settings, tmp_path: Path) -> None:
    with TemporaryPostgres(fsync=False) as pg, Region(settings.with_(database_url=pg.create_database("cases"))) as r:
        test_concurrent_decisions_and_closings_count_once(r, _owned(r, tmp_path))
