"""Connected apps, personal tokens, the developer page and third-party reads in the access log: over HTTP, and in
Debian's Chromium (revoke in the browser, then the app's very next request is 401; the Chinese pages)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import SIZES, TIMEZONE, login, screenshot
from tests.web.test_grants_api import app_token, approved_app, bearer, claim

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def shared(http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity) -> Iterator[str]:
    """The owner's car shared with an approved insurer's app (which has read once); the app's access token."""
    claim(http, owner, vehicle)
    client_id = approved_app(region)
    secret = app_token(region, owner.owner_id, vehicle.vin, client_id)
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(secret)).status_code == 200
    yield secret


def portal_login(http: httpx.Client, server: BackgroundServer, o: OwnerClient) -> None:
    """Log the client in through the portal's form (session cookie)."""
    token = CSRF.search(http.get("/login").text)
    assert token
    r = http.post(
        "/login",
        data={"csrf_token": token[1], "email": o.email, "password": o.password, "next": "/sharing"},
        headers={"Origin": server.url},
    )
    assert r.status_code == 303, r.text


def test_pages_over_http_show_grants_and_refuse_forged_or_foreign_revokes(
    http: httpx.Client,
    server: BackgroundServer,
    region: Region,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    shared: str,
) -> None:
    assert http.get("/sharing").headers["location"] == "/login?next=/sharing"  # logged out
    assert http.get("/developers").status_code == 200  # public
    portal_login(http, server, owner)
    page = http.get("/sharing")
    assert page.status_code == 200
    for fact in ("Ping An Auto Insurance", "Ping An Auto Insurance Co., Ltd., processing data in CN"):
        assert fact in page.text
    assert "Usage-based insurance or claims" in page.text and "Battery and charging" in page.text
    assert "requests: 1" in page.text and vehicle.vin in page.text
    grant_id = re.search(r'data-grant="(\d+)"', page.text)
    assert grant_id
    # Without the form's CSRF token nothing is revoked.
    forged = http.post(f"/sharing/{grant_id[1]}/revoke", data={}, headers={"Origin": server.url})
    assert forged.status_code == 403
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(shared)).status_code == 200
    # Another owner's portal cannot revoke it either (404, exactly like a grant that does not exist).
    with httpx.Client(base_url=server.url) as stranger:
        portal_login(stranger, server, make_owner(stranger))
        token = CSRF.search(stranger.get("/sharing").text)
        assert token
        r = stranger.post(
            f"/sharing/{grant_id[1]}/revoke", data={"csrf_token": token[1]}, headers={"Origin": server.url}
        )
        assert r.status_code == 404 and "Ping An" not in r.text
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(shared)).status_code == 200

    # The access log names the app, the purpose and the legal basis of its read.
    log = http.get("/access")
    assert log.status_code == 200
    assert "App Ping An Auto Insurance" in log.text
    assert "Your consent to share with Ping An Auto Insurance for: Usage-based insurance or claims" in log.text

    # The owner sees when the operator has stopped an app they shared with.
    assert "app-status" not in http.get("/sharing").text
    (app,) = region.apps.list()
    region.apps.decide(app.client_id, "suspended", "test operator")
    assert "The operator has stopped this app" in http.get("/sharing").text


def test_token_form_refuses_what_cannot_be_shared_and_keeps_the_form(
    http: httpx.Client, server: BackgroundServer, region: Region, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    portal_login(http, server, owner)
    token = CSRF.search(http.get("/sharing").text)
    assert token
    form = {"csrf_token": token[1], "label": "my script", "vin": vehicle.vin, "expires": "2099-01-01"}
    cases = [
        ({**form, "paths": "Vehicle.Cabin"}, "never shared"),
        ({**form, "category": "powertrain"}, "at most 366 days"),
        ({**form, "label": "", "category": "powertrain"}, "Give the token a name"),
        ({**form, "expires": "2026-13-45", "category": "powertrain"}, "not a valid date"),
        ({k: v for k, v in form.items() if k != "vin"} | {"category": "powertrain"}, "at least one vehicle"),
        (form, "at least one kind of data"),
    ]
    for data, message in cases:
        r = http.post("/sharing/tokens", data=data, headers={"Origin": server.url})
        assert r.status_code == 400 and message in r.text, (data, r.text[-2000:])
        assert 'value="my script"' in r.text or not data["label"]
    assert region.grants.of_owner(owner.owner_id, include_ended=True) == []


@pytest.fixture
def chromium(browser: Any, server: BackgroundServer) -> Iterator[Any]:
    """A function making fresh browser profiles on this test's server, closed afterwards."""
    made: list[Any] = []

    def new(lang: str = "en", size: str = "desktop") -> Any:
        ctx = browser.new_context(
            base_url=server.url,
            viewport=SIZES[size],
            timezone_id=TIMEZONE,
            locale="zh-CN" if lang == "zh-CN" else "en-GB",
        )
        ctx.set_default_timeout(15_000)
        made.append(ctx)
        page = ctx.new_page()
        page.on("dialog", lambda d: d.accept())
        page.js_errors = []
        page.on("pageerror", lambda e: page.js_errors.append(str(e)))
        return page

    yield new
    for ctx in made:
        ctx.close()


@pytest.mark.slow
def test_revoke_in_chromium_then_the_apps_next_request_is_401(
    chromium: Any, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, shared: str
) -> None:
    page = chromium()
    login(page, owner.email, owner.password)
    page.click("nav.mainnav >> text=Connected apps")
    page.wait_for_url(re.compile(r".*/sharing$"))
    assert page.locator("h1").inner_text() == "Connected apps"
    grant = page.locator("li.grant[data-active=yes]")
    assert grant.count() == 1
    text = grant.inner_text()
    for fact in ("Ping An Auto Insurance", "Usage-based insurance or claims", "Battery and charging", "Technical"):
        assert fact in text, fact
    assert "Approximate area" in text and vehicle.vin in text
    assert accessibility_problems(page) == []
    screenshot(page, "sharing-en-desktop")

    grant.locator("button:has-text('Revoke')").click()
    page.wait_for_url(re.compile(r".*/sharing\?notice=grant_revoked$"))
    assert "Access revoked" in page.locator(".flash-ok").inner_text()
    r = http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(shared))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert page.locator("li.grant[data-active=yes]").count() == 0
    assert "revoked" in page.locator("li.grant[data-active=no]").inner_text()

    # A personal token: created in the form, shown once, reads only its scope, revoked in one step.
    page.fill("#label", "home dashboard")
    page.check("input[name=category][value=battery_charging]")
    page.click("button:has-text('Create token')")
    secret = page.locator("#token-secret").input_value()
    assert secret.startswith("cvt_")
    window = {"start": "2025-06-01T00:00:00Z", "end": "2025-06-02T00:00:00Z"}
    url = f"/api/v1/vehicles/{vehicle.vin}/telemetry"
    ok = http.get(url, headers=bearer(secret), params={**window, "signals": "Vehicle.Powertrain.TractionBattery"})
    assert ok.status_code == 200
    refused = http.get(url, headers=bearer(secret), params={**window, "signals": "Vehicle.Speed"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "out_of_scope"
    page.goto("/sharing")
    assert secret not in page.content()
    token_row = page.locator("li.grant[data-kind=pat][data-active=yes]")
    assert "home dashboard" in token_row.inner_text() and "The owner's own scripts and tools" in token_row.inner_text()
    token_row.locator("button:has-text('Revoke')").click()
    page.wait_for_url(re.compile(r".*notice=grant_revoked$"))
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(secret)).status_code == 401

    page.goto("/access")
    log = page.locator("table").inner_text()
    assert "App Ping An Auto Insurance" in log and "Your access token “home dashboard”" in log
    assert "Your consent to share with Ping An Auto Insurance for: Usage-based insurance or claims" in log
    assert page.js_errors == []


@pytest.mark.slow
def test_the_chinese_pages(chromium: Any, owner: OwnerClient, vehicle: VehicleIdentity, shared: str) -> None:
    page = chromium("zh-CN", "phone")
    login(page, owner.email, owner.password)
    page.goto("/sharing")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator("h1").inner_text() == "已连接的应用"
    text = page.locator("li.grant").inner_text()
    for fact in ("Ping An Auto Insurance", "按使用计费的保险或理赔", "技术", "大致区域", "撤销"):
        assert fact in text, fact
    assert accessibility_problems(page) == []
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    screenshot(page, "sharing-zh-CN-phone")
    page.goto("/access")
    assert "你同意与 Ping An Auto Insurance 共享，目的：按使用计费的保险或理赔" in page.locator("table").inner_text()
    page.goto("/developers")
    assert page.locator("h1").inner_text() == "开发者"
    assert "智能充电控制" in page.content() and accessibility_problems(page) == []
    screenshot(page, "developers-zh-CN-phone")
    assert page.js_errors == []


@pytest.mark.slow
def test_a_developer_signs_up_in_the_browser(chromium: Any, http: httpx.Client) -> None:
    page = chromium()
    page.goto("/developers")
    assert page.locator("h1").inner_text() == "For developers"
    assert accessibility_problems(page) == []
    page.fill("#name", "Volt Home Charging")
    page.fill("#legal_entity", "Volt Energy (Shanghai) Co., Ltd.")
    page.fill("#contact", "dev@volt.example.cn")
    page.check("input[name=purposes][value=charging]")
    page.fill("#redirect_uris", "http://volt.example.cn/cb")
    page.click("button:has-text('Register')")
    assert "Redirect URIs" in page.locator(".flash-error").inner_text()
    assert page.locator("#name").input_value() == "Volt Home Charging"
    page.fill("#redirect_uris", "https://volt.example.cn/cb")
    page.click("button:has-text('Register')")
    client_id = page.locator("#client-id").inner_text()
    assert page.locator("#client-secret").inner_text().startswith("cvs_")
    screenshot(page, "developers-registered-en-desktop")
    public = http.get(f"/api/v1/apps/{client_id}").json()
    assert public["status"] == "pending" and public["purposes"] == ["charging"] and public["jurisdiction"] == "cn"
    assert page.js_errors == []


def test_every_purpose_and_grant_kind_has_english_and_chinese_text() -> None:
    from carvault.access.grants import GRANT_KINDS
    from carvault.compliance.sharing import PURPOSES
    from carvault.web import i18n

    en, zh = i18n.messages("en"), i18n.messages("zh-CN")
    keys = [f"purpose.{p}" for p in PURPOSES] + [f"sharing.kind.{k}" for k in GRANT_KINDS]
    assert [k for k in keys if not en.get(k) or not zh.get(k) or en[k] == zh[k]] == []
