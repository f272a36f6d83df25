"""The operator console over plain HTTP: log-in with a TOTP code, every console page × every role (a role opens only
its pages and sees only their nav entries; the others answer 403 with the console's error page), owners' sessions
never open it, CSRF on every form, and each area's actions going through the real services."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pyotp
import pytest
from fastapi.routing import APIRoute

from carvault.access.audit import AuditAction, event_json
from carvault.compliance.rights import Kind
from carvault.compliance.roles import Role, allows
from carvault.region import Region
from carvault.store.metadata import AuthorityOrder, LegalHold
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web import csrf
from carvault.web.app import create_app
from carvault.web.deps import STAFF_COOKIE
from carvault.web.views.console import SECTIONS, sections_markdown
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, make_staff, opt_in, vin_for
from tests.web.test_route_access import _routes as app_routes

PASSWORD = "operator password 1"
# Console routes reachable without a staff session (each says why); every other one needs console_with(...).
OPEN_ROUTES = {
    ("GET", "/console/login"): "the log-in form",
    ("POST", "/console/login"): "log-in: password and TOTP code",
    ("POST", "/console/logout"): "ends the browser's own staff session (CSRF-checked)",
    ("POST", "/console/language"): "the language switch (CSRF-checked)",
}


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def _console_routes(region: Region) -> list[tuple[str, str, Any]]:
    """(method, path, permission or "open") of every console route the app serves."""
    found = []
    for path, route in app_routes(create_app(region).routes):
        if not isinstance(route, APIRoute) or not path.startswith("/console"):
            continue
        guards = [d.call for d in route.dependant.dependencies if getattr(d.call, "console", False)]
        for method in route.methods or ():
            if guards:
                found.append((method, path, getattr(guards[0], "permission")))  # noqa: B009 (set by console_with)
            else:
                assert (method, path) in OPEN_ROUTES, f"{method} {path} has no console_with guard"
                found.append((method, path, "open"))
    return found


def _as(http: httpx.Client, secret: str) -> httpx.Client:
    http.cookies.clear()
    http.cookies.set(STAFF_COOKIE, secret)
    return http


def _fill(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", lambda m: "reset_totp" if m.group(0) == "{action}" else "999999", path)


@pytest.mark.slow  # argon2 per attempt, or a member per role
def test_log_in_needs_the_password_and_a_fresh_totp_code(region: Region, http: httpx.Client) -> None:
    _, totp = region.staff.create("li.na", PASSWORD, Role.DPO)
    r = http.get("/console/rights")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?next=/console/rights"
    page = http.get("/console/login")
    assert page.status_code == 200 and 'autocomplete="one-time-code"' in page.text
    token = _token(page.text)
    form = {"username": "li.na", "password": PASSWORD, "csrf_token": token, "next": "/console/rights"}
    code = pyotp.TOTP(totp).now()
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    r = http.post("/console/login", data={**form, "code": wrong})
    assert (
        r.status_code == 401
        and "Wrong username, password or code" in r.text
        and STAFF_COOKIE not in r.headers.get("set-cookie", "")
    )
    r = http.post("/console/login", data={**form, "password": "not the password", "code": code})
    assert r.status_code == 401
    r = http.post("/console/login", data={**form, "code": code})
    assert r.status_code == 303 and r.headers["location"] == "/console/rights", r.text
    cookie = r.headers["set-cookie"]
    assert f"{STAFF_COOKIE}=cvs_" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age" not in cookie.split(",")[0]  # a browser-session cookie; the server ends it after 30 idle min
    assert http.get("/console/rights").status_code == 200
    # The same code a second time is refused (a code is accepted once), even with the right password.
    other = httpx.Client(base_url=str(http.base_url))
    t2 = _token(other.get("/console/login").text)
    r = other.post("/console/login", data={**form, "csrf_token": t2, "code": code})
    assert r.status_code == 401
    # Log-out ends the session on the server, not only in this browser.
    secret = http.cookies[STAFF_COOKIE]
    r = http.post("/console/logout", data={"csrf_token": csrf.token_for(secret)})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert _as(http, secret).get("/console").status_code == 303


@pytest.mark.slow  # argon2 per attempt, or a member per role
def test_log_in_is_rate_limited(region: Region, http: httpx.Client) -> None:
    region.staff.create("wang.fang", PASSWORD, Role.SUPPORT)
    token = _token(http.get("/console/login").text)
    statuses = [
        http.post(
            "/console/login", data={"username": "wang.fang", "password": "guess", "code": "000000", "csrf_token": token}
        ).status_code
        for _ in range(12)
    ]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses


@pytest.mark.slow  # argon2 per attempt, or a member per role
def test_every_console_page_by_role(region: Region, http: httpx.Client) -> None:
    routes = _console_routes(region)
    gets = [(path, perm) for method, path, perm in routes if method == "GET" and perm != "open"]
    assert {s.path for s in SECTIONS} <= {path for path, _ in gets}  # every nav entry is a guarded page
    seen_forbidden = seen_allowed = 0
    for role in Role:
        _, secret = make_staff(region, role)
        _as(http, secret)
        nav = set(re.findall(r'data-section="([a-z_]+)"', http.get("/console").text))
        assert nav == {s.key for s in SECTIONS if s.permission is None or allows(role, s.permission)}, role
        for path, perm in gets:
            r = http.get(_fill(path))
            if perm is None or allows(role, perm):
                assert r.status_code in (200, 400, 404, 422), (role, path, r.status_code)
                seen_allowed += 1
            else:
                assert r.status_code == 403, (role, path, r.status_code)
                assert "<h1>Not allowed</h1>" in r.text and f"({perm.value})" in r.text  # the console's error page
                seen_forbidden += 1
        for method, path, perm in routes:
            if method != "POST" or perm == "open":
                continue
            r = http.post(_fill(path), data={"csrf_token": csrf.token_for(secret)})
            if perm is None or allows(role, perm):
                assert r.status_code != 403, (role, path, r.text[-400:])
            else:
                assert r.status_code == 403 and "Not allowed" in r.text, (role, path)
    assert seen_forbidden > 10 and seen_allowed > 10  # the walk saw both sides


def test_an_owner_never_opens_the_console(region: Region, http: httpx.Client) -> None:
    owner = make_owner(http)
    owner_token = owner.headers["Authorization"].removeprefix("Bearer ")
    for cookies in ({STAFF_COOKIE: owner_token}, {"carvault_session": owner_token}):
        http.cookies.clear()
        for name, value in cookies.items():
            http.cookies.set(name, value)
        r = http.get("/console")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), cookies
    http.cookies.clear()
    r = http.get("/console/rights", headers=owner.headers)
    assert r.status_code == 303
    # Nor does an owner's password log in to the console.
    token = _token(http.get("/console/login").text)
    r = http.post(
        "/console/login",
        data={"username": owner.email, "password": owner.password, "code": "123456", "csrf_token": token},
    )
    assert r.status_code == 401


def test_console_forms_need_this_sessions_token(region: Region, http: httpx.Client) -> None:
    _, secret = make_staff(region, Role.LIAISON)
    _, other = make_staff(region, Role.LIAISON)
    _as(http, secret)
    form = {"vin": "LRWTEST0000000001", "authority": "court", "reason": "case 1"}
    assert http.post("/console/holds", data=form).status_code == 403
    assert http.post("/console/holds", data={**form, "csrf_token": csrf.token_for(other)}).status_code == 403
    r = http.post(
        "/console/holds",
        data={**form, "csrf_token": csrf.token_for(secret)},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    with region.db.session() as s:
        assert s.query(LegalHold).count() == 0  # nothing stored by a refused form


def test_holds_placed_and_released_name_the_staff_member(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    r = http.post(
        "/api/v1/vehicles/claim", json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}, headers=owner.headers
    )
    assert r.status_code in (200, 201), r.text
    liaison, secret = make_staff(region, Role.LIAISON)
    _as(http, secret)
    token = csrf.token_for(secret)
    r = http.post("/console/holds", data={"vin": vehicle.vin, "authority": "", "reason": "x", "csrf_token": token})
    assert r.status_code == 422 and "authority" in r.text  # the service's validation_failed
    r = http.post("/console/holds", data={"vin": "SHORT", "authority": "court", "reason": "x", "csrf_token": token})
    assert r.status_code == 400 and "17 characters" in r.text
    form = {"vin": vehicle.vin.lower(), "authority": "Shenzhen court", "reason": "(2026) 123", "csrf_token": token}
    r = http.post("/console/holds", data=form)
    assert r.status_code == 303 and r.headers["location"] == "/console/holds?notice=hold_placed"
    page = http.get("/console/holds").text
    assert vehicle.vin in page and "Shenzhen court" in page
    hold = region.deletions.holds()[0]
    r = http.post(f"/console/holds/{hold.id}/release", data={"csrf_token": token})
    assert r.status_code == 303 and not region.deletions.holds()
    r = http.post(f"/console/holds/{hold.id}/release", data={"csrf_token": token})
    assert r.status_code == 409  # released once only
    log = [event_json(e) for e in region.audit.list(owner.owner_id)]
    placed = [e for e in log if e["action"] == AuditAction.HOLD_PLACE]
    released = [e for e in log if e["action"] == AuditAction.HOLD_RELEASE]
    assert placed and released
    assert placed[0]["actor"] == f"staff:authority_liaison:{liaison.username}"
    assert placed[0]["detail"]["authority"] == "Shenzhen court"


def test_an_order_with_a_bad_window_stores_nothing(
    region: Region, http: httpx.Client, vehicle: VehicleIdentity
) -> None:
    _, secret = make_staff(region, Role.LIAISON)
    _as(http, secret)
    form = {
        "authority": "Zhengzhou market supervision",
        "reference": "(2026) 7",
        "legal_basis": "Product Quality Law",
        "vin": vehicle.vin,
        "start": "2026-11-20T10:00:00",
        "end": "2026-11-22T10:00:00",
        "csrf_token": csrf.token_for(secret),
    }
    r = http.post("/console/orders", data=form)
    assert r.status_code == 400 and "24 hours" in r.text
    r = http.post("/console/orders", data={**form, "end": "not a time"})
    assert r.status_code == 400
    with region.db.session() as s:
        assert s.query(AuthorityOrder).count() == 0


def test_rights_request_refused_with_a_reason(region: Region, http: httpx.Client, owner: OwnerClient) -> None:
    filed = region.rights.file(region.rights.check(owner.owner_id, Kind.COMPLAINT, details="my data was shared"))
    dpo, secret = make_staff(region, Role.DPO)
    _, support = make_staff(region, Role.SUPPORT)
    _as(http, support)
    assert http.get(f"/console/rights/{filed.id}").status_code == 200  # support sees requests...
    r = http.post(f"/console/rights/{filed.id}/refuse", data={"reason": "no", "csrf_token": csrf.token_for(support)})
    assert r.status_code == 403  # ...but does not decide them
    _as(http, secret)
    listing = http.get("/console/rights").text
    assert f'data-request="{filed.id}"' in listing
    token = csrf.token_for(secret)
    r = http.post(f"/console/rights/{filed.id}/refuse", data={"reason": "  ", "csrf_token": token})
    assert r.status_code == 422 and "reason is required" in r.text
    assert region.rights.get(filed.id).status == "received"
    r = http.post(f"/console/rights/{filed.id}/refuse", data={"reason": "Not ours to decide", "csrf_token": token})
    assert r.status_code == 303
    done = region.rights.get(filed.id)
    assert done.status == "refused" and done.reason == "Not ours to decide" and done.handler_role == "dpo"
    assert http.get("/console/rights/999999").status_code == 404
    r = http.get("/console/rights/0")  # refused by the route's own validation: still the console's page
    assert r.status_code == 400 and "<h1>This cannot be done</h1>" in r.text
    assert http.get("/api/v1/rights-requests/0", headers=owner.headers).json()["error"]["code"] == "validation_failed"


def test_apps_decided_in_the_console_are_recorded(region: Region, http: httpx.Client) -> None:
    app, _ = region.apps.register(
        name="Fleet", legal_entity="Fleet Ltd", jurisdiction="cn", contact="dev@fleet.example", purposes=["insurance"]
    )
    dpo, secret = make_staff(region, Role.DPO)
    _as(http, secret)
    assert app.client_id in http.get("/console/apps").text
    token = csrf.token_for(secret)
    r = http.post(f"/console/apps/{app.client_id}/decide", data={"status": "pending", "csrf_token": token})
    assert r.status_code == 400
    r = http.post(
        f"/console/apps/{app.client_id}/decide", data={"status": "approved", "reason": "ok", "csrf_token": token}
    )
    assert r.status_code == 303 and region.apps.get(app.client_id).status == "approved"
    region_chain = region.audit.list(None, action=AuditAction.APP_DECIDE)  # type: ignore[arg-type]  # None: region
    entry = event_json(region_chain[0])
    assert entry["actor"] == f"staff:dpo:{dpo.username}" and entry["detail"]["previous"] == "pending"
    r = http.post("/console/apps/app_nothing/decide", data={"status": "approved", "csrf_token": token})
    assert r.status_code == 404


def test_admin_creates_a_member_who_logs_in_with_the_secret_shown_once(region: Region, http: httpx.Client) -> None:
    _, secret = make_staff(region, Role.REGION_ADMIN)
    _as(http, secret)
    token = csrf.token_for(secret)
    form = {
        "username": "zhao.lei",
        "display_name": "Zhao Lei",
        "role": "auditor",
        "jurisdiction": "",
        "password": PASSWORD,
        "password_confirm": PASSWORD,
        "csrf_token": token,
    }
    r = http.post("/console/staff", data={**form, "password_confirm": "other"})
    assert r.status_code == 400
    r = http.post("/console/staff", data=form)
    assert r.status_code == 201
    totp = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
    assert totp and "otpauth://totp/" in r.text
    assert totp.group(1) not in http.get("/console/staff").text  # shown once
    r = http.post("/console/staff", data=form)
    assert r.status_code == 409  # the username is taken
    browser = httpx.Client(base_url=str(http.base_url))
    t = _token(browser.get("/console/login").text)
    r = browser.post(
        "/console/login",
        data={"username": "zhao.lei", "password": PASSWORD, "code": pyotp.TOTP(totp.group(1)).now(), "csrf_token": t},
    )
    assert r.status_code == 303
    nav = set(re.findall(r'data-section="([a-z_]+)"', browser.get("/console").text))
    assert "staff" not in nav and "rights" in nav  # an auditor sees records, not staff management


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_console_pages_in_both_languages(region: Region, http: httpx.Client, lang: str) -> None:
    _, secret = make_staff(region, Role.REGION_ADMIN)
    _as(http, secret)
    r = http.post(
        "/console/language", data={"lang": lang, "next": "/console/staff", "csrf_token": csrf.token_for(secret)}
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/staff"
    page = http.get("/console").text
    assert f'<html lang="{lang}">' in page
    assert ("总览" in page) == (lang == "zh-CN") and ("Dashboard" in page) == (lang == "en")
    r = http.post("/console/language", data={"lang": "xx", "csrf_token": csrf.token_for(secret)})
    assert r.status_code == 400
    r = http.post(
        "/console/language", data={"lang": "en", "next": "https://evil.example/", "csrf_token": csrf.token_for(secret)}
    )
    assert r.headers["location"] == "/console"


def test_the_console_table_in_the_docs_is_the_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    assert "\n## Console\n" in doc and sections_markdown() in doc
    # Every area's page and forms are in it, each with the permission its routes really need.
    assert "| cases | `/console/cases` | `cases.view` | `cases.open`, `case.read` |" in sections_markdown()


def _claimed(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> None:
    r = http.post(
        "/api/v1/vehicles/claim", json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}, headers=owner.headers
    )
    assert r.status_code in (200, 201), r.text


def test_a_case_read_lands_in_the_owners_access_log(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    _claimed(http, owner, vehicle)
    dpo, secret = make_staff(region, Role.DPO)
    _as(http, secret)
    token = csrf.token_for(secret)
    form = {
        "kind": "rights_request",
        "vins": vehicle.vin,
        "legal_basis": "PIPL Art. 45",
        "ends": "",
        "csrf_token": token,
    }
    assert http.post("/console/cases", data=form).status_code == 400  # an end date is required
    r = http.post("/console/cases", data={**form, "kind": "support_ticket", "ends": "2099-01-01"})
    assert r.status_code == 403  # a DPO does not open support tickets (roles.CASE_KINDS)
    ends = time.strftime("%Y-%m-%d", time.localtime(time.time() + 20 * 86_400))
    r = http.post("/console/cases", data={**form, "ends": ends})
    assert r.status_code == 303, r.text
    case_id = int(r.headers["location"].split("/")[-1].split("?")[0])
    window = {"vin": vehicle.vin, "start": "2026-11-01T00:00:00", "end": "2026-11-01T01:00:00", "format": "csv"}
    r = http.get(f"/console/cases/{case_id}/read", params=window)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    reads = [event_json(e) for e in region.audit.list(owner.owner_id, action=AuditAction.TELEMETRY_READ)]
    assert reads and reads[0]["actor"] == f"staff:dpo:{dpo.username}" and f"case {case_id}" in reads[0]["legal_basis"]
    assert http.get(f"/console/cases/{case_id}/read", params={**window, "vin": vin_for(99)}).status_code == 403
    _, support = make_staff(region, Role.SUPPORT)
    _as(http, support)
    assert http.get(f"/console/cases/{case_id}/read", params=window).status_code == 403  # not a support case
    _as(http, secret)
    r = http.post(f"/console/cases/{case_id}/close", data={"outcome": "answered", "csrf_token": token})
    assert r.status_code == 303
    r = http.get(f"/console/cases/{case_id}/read", params=window)
    assert r.status_code == 403 and "closed" in r.text  # case_inactive: nothing is read under a closed case


def test_retention_dry_run_and_purge_from_the_console(region: Region, http: httpx.Client) -> None:
    _, auditor = make_staff(region, Role.AUDITOR)
    _as(http, auditor)
    assert http.get("/console/retention").status_code == 200  # the auditor sees the policy and runs...
    assert (
        http.post("/console/retention/run", data={"dry_run": "1", "csrf_token": csrf.token_for(auditor)}).status_code
        == 403
    )
    admin, secret = make_staff(region, Role.REGION_ADMIN)
    _as(http, secret)
    r = http.post("/console/retention/run", data={"dry_run": "1", "csrf_token": csrf.token_for(secret)})
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=retention_dry_run")
    run = region.retention.runs(1)[0]
    assert run.dry_run and run.status == "done" and run.actor == f"staff:region_admin:{admin.username}"
    page = http.get(r.headers["location"].split("?")[0]).text
    assert '"dry_run": true' in page and '"signature"' in page
    r = http.post("/console/retention/run", data={"dry_run": "0", "csrf_token": csrf.token_for(secret)})
    assert r.status_code == 303 and not region.retention.runs(1)[0].dry_run


def test_transfer_records_from_the_console(region: Region, http: httpx.Client) -> None:
    _, secret = make_staff(region, Role.DPO)
    _as(http, secret)
    form = {
        "route": "standard_contract",
        "recipient_kind": "entity",
        "recipient": "Example Insurance GmbH",
        "recipient_jurisdiction": "eu",
        "purpose": "claims handling",
        "categories": ["driving_dynamics", "exterior_camera"],
        "max_persons": "500",
        "from": time.strftime("%Y-%m-%d"),
        "to": time.strftime("%Y-%m-%d", time.localtime(time.time() + 200 * 86_400)),
        "approval_reference": "SC-2026-7",
        "csrf_token": csrf.token_for(secret),
    }
    r = http.post("/console/transfers", data=form)
    assert r.status_code == 422 and "security assessment" in r.text  # important data never leaves without one
    assert not region.transfers.list()
    assert http.post("/console/transfers", data={**form, "max_persons": "many"}).status_code == 400
    r = http.post("/console/transfers", data={**form, "categories": ["driving_dynamics"]})
    assert r.status_code == 303
    record = region.transfers.list()[0]
    assert record.recipient == "Example Insurance GmbH" and record.max_persons == 500
    assert "SC-2026-7" in http.get("/console/transfers").text
    r = http.post(
        f"/console/transfers/{record.id}/suspend", data={"reason": "contract ended", "csrf_token": form["csrf_token"]}
    )
    assert r.status_code == 303 and region.transfers.get(record.id).status == "suspended"


def test_an_incident_is_told_only_with_its_chinese_text(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    _claimed(http, owner, vehicle)
    _, secret = make_staff(region, Role.DPO)
    _as(http, secret)
    token = csrf.token_for(secret)
    english = {f"en_{f}": f"{f} in English" for f in ("what", "cause", "harm", "measures", "actions", "contact")}
    form = {"title": "Lost laptop", "detected": "2026-11-30T09:00:00", "vins": vehicle.vin, "csrf_token": token}
    r = http.post("/console/incidents", data={**form, **english})
    assert r.status_code == 303, r.text
    incident_id = int(r.headers["location"].split("/")[-1].split("?")[0])
    page = http.get(f"/console/incidents/{incident_id}").text
    assert 'id="incident-affected">1<' in page  # the vehicle's owner, computed from the records
    r = http.post(f"/console/incidents/{incident_id}/notify", data={"csrf_token": token})
    assert r.status_code == 422 and not region.incidents.notices(owner.owner_id)  # no Chinese text yet
    chinese = {f"zh_{f}": f"中文的{f}" for f in ("what", "cause", "harm", "measures", "actions", "contact")}
    r = http.post(
        f"/console/incidents/{incident_id}/text",
        data={"title": "Lost laptop", **english, **chinese, "csrf_token": token},
    )
    assert r.status_code == 303
    r = http.post(f"/console/incidents/{incident_id}/notify", data={"csrf_token": token})
    assert r.status_code == 303 and len(region.incidents.notices(owner.owner_id)) == 1


def test_annual_report_from_the_console(region: Region, http: httpx.Client) -> None:
    _, liaison = make_staff(region, Role.LIAISON)
    _as(http, liaison)
    year = region.reports.due()["year"]
    assert http.get("/console/reports").status_code == 200  # the liaison reads reports...
    r = http.post(f"/console/reports/{year}/finalise", data={"csrf_token": csrf.token_for(liaison)})
    assert r.status_code == 403  # ...and does not file them
    admin, secret = make_staff(region, Role.REGION_ADMIN)
    _as(http, secret)
    token = csrf.token_for(secret)
    page = http.get("/console/reports").text
    assert 'data-figure="scale.vehicles_registered"' in page and "source" in page.lower()
    r = http.get(f"/console/reports/{year}.json")
    assert r.status_code == 200 and r.json()["year"] == year and r.json()["signature"]["alg"] == "Ed25519"
    profile = {
        "operator_name": "CarVault Ltd",
        "security_lead": "Li Na",
        "security_lead_contact": "security@carvault.example",
        "rights_contact": "Rights desk",
        "rights_contact_contact": "rights@carvault.example",
    }
    assert (
        http.post("/console/reports/operator", data={**profile, "rights_contact": "", "csrf_token": token}).status_code
        == 422
    )
    assert http.post("/console/reports/operator", data={**profile, "csrf_token": token}).status_code == 303
    r = http.post(f"/console/reports/{year}/finalise", data={"csrf_token": token})
    assert r.status_code == 303 and region.reports.filing(year) is not None
    assert http.post(f"/console/reports/{year}/finalise", data={"csrf_token": token}).status_code == 409
    assert http.get(f"/console/reports/{year}.pdf", params={"lang": "xx"}).status_code == 400


def test_every_message_the_console_builds_exists_in_both_languages() -> None:
    """Keys put together at run time (``'console.nav.' ~ key`` ...) are not seen by the catalogue test."""
    from carvault.access.apps import APP_STATUSES
    from carvault.compliance import incidents, records, rights, transfers
    from carvault.compliance.cases import KINDS as CASE_KINDS
    from carvault.web.i18n import messages
    from carvault.web.views import console_cases
    from carvault.web.views.console_base import NOTICES

    keys = (
        [f"console.nav.{s.key}" for s in SECTIONS]
        + [f"console.role.{r.value}" for r in Role]
        + [f"console.notice.{n}" for n in NOTICES]
        + [f"console.rights.kind.{k.value}" for k in rights.Kind]
        + [f"console.rights.status.{s.value}" for s in rights.Status]
        + [f"console.cases.kind.{k}" for k in CASE_KINDS]
        + [f"console.cases.state.{s}" for s in console_cases.STATES]
        + [f"console.retention.status.{s}" for s in ("running", "done", "failed")]
        + [f"console.transfers.route.{r.value}" for r in transfers.Route]
        + [f"console.transfers.kind.{k.value}" for k in transfers.RecipientKind]
        + [f"console.transfers.status.{s.value}" for s in transfers.RecordStatus]
        + [f"console.transfers.do.{a.value}" for a in transfers.TransferAction]
        + [f"console.transfers.level.{v}" for v in ("ok", "warning", "reached")]
        + [f"console.transfers.klass.{k.value}" for k in transfers.Klass]
        + [f"console.transfers.limit.{t}" for t in transfers.THRESHOLDS]
        + ["console.transfers.limit.approved_scale"]  # warning_marks names a record's scale so
        + [
            f"console.incidents.status.{s}"
            for s in (incidents.Status.OPEN, incidents.Status.NOTIFIED, incidents.Status.CLOSED)
        ]
        + [f"console.incidents.part.{f}" for f in incidents.FIELDS]
        + [f"console.records.kind.{k}" for k in records.KINDS]
        + [f"console.reports.state.{s}" for s in ("not_yet", "due", "overdue", "filed")]
        + [f"console.apps.status.{s}" for s in APP_STATUSES]
        + [f"console.apps.do.{s}" for s in APP_STATUSES if s != "pending"]
    )
    for language in ("en", "zh-CN"):
        missing = [k for k in keys if k not in messages(language)]
        assert not missing, (language, missing)


def test_an_order_releases_the_window_to_the_owner(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    _claimed(http, owner, vehicle)
    opt_in(region, vehicle.vin)
    agent.record(drive_table(seconds=60), batch_seconds=60)
    assert len(agent.upload_pending()) == 1
    liaison, secret = make_staff(region, Role.LIAISON)
    _as(http, secret)
    shanghai = ZoneInfo("Asia/Shanghai")  # the region's display time zone (no browser zone cookie here)
    at = datetime.fromtimestamp(BASE_MS / 1000, shanghai)
    form = {
        "authority": "Zhengzhou market supervision",
        "reference": "(2026) 7",
        "legal_basis": "Product Quality Law",
        "vin": vehicle.vin,
        "start": at.strftime("%Y-%m-%dT%H:%M:%S"),
        "end": (at + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S"),
        "csrf_token": csrf.token_for(secret),
    }
    r = http.post("/console/orders", data=form)
    assert r.status_code == 303, r.text
    with region.db.session() as s:
        order = s.query(AuthorityOrder).one()
    assert (order.start_ms, order.end_ms) == (BASE_MS, BASE_MS + 60_000)
    page = http.get("/console/orders").text
    assert f'data-order="{order.id}"' in page and "1 batch, " in page  # counts read "1 batch", never "1 batches"
    packages = http.get(f"/api/v1/vehicles/{vehicle.vin}/packages", headers=owner.headers).json()
    assert any(p.get("order_id") == order.id for p in packages), packages  # the owner has the package
    log = [event_json(e) for e in region.audit.list(owner.owner_id, action=AuditAction.ORDER_RELEASE)]
    assert log[0]["actor"] == f"staff:authority_liaison:{liaison.username}"
    assert log[0]["detail"]["authority"] == "Zhengzhou market supervision"


def test_a_refusal_reads_in_chinese_with_the_services_detail(
    region: Region, http: httpx.Client, owner: OwnerClient
) -> None:
    filed = region.rights.file(region.rights.check(owner.owner_id, Kind.COMPLAINT, details="too many e-mails"))
    _, secret = make_staff(region, Role.DPO)
    _as(http, secret)
    http.cookies.set("carvault_lang", "zh-CN")
    r = http.post(f"/console/rights/{filed.id}/refuse", data={"reason": "", "csrf_token": csrf.token_for(secret)})
    assert r.status_code == 422
    assert "输入不符合要求（reason is required）" in r.text  # the code's Chinese text, then the service's words
    http.cookies.set("carvault_lang", "en")
    r = http.post(f"/console/rights/{filed.id}/refuse", data={"reason": "", "csrf_token": csrf.token_for(secret)})
    assert ">reason is required<" in r.text and "输入" not in r.text
