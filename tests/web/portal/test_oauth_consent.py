"""The consent screen in Debian's Chromium: a real app (authlib's httpx client) sends the owner to it, the owner logs
in, narrows a signal and approves; the app then reads what was approved and is refused what was not. The Chinese
screen shows no English words outside names, paths and VINs; denying sends the app ``access_denied``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client

from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import new_context, screenshot
from tests.web.portal.world import PASSWORD, World

REDIRECT = "http://127.0.0.1:9/fleetwise/callback"  # answered by the browser context's route, never the network
SCOPE = "vss:Vehicle.Speed vss:Vehicle.Chassis.Brake vss:Vehicle.CurrentLocation history live"
NARROWED_AWAY = "Vehicle.Chassis.Brake.PedalPosition"
# Words a person reads, leaving out data (app names, signal paths, VINs, e-mail) marked translate="no".
VISIBLE_WORDS = """() => {
  const out = [];
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) { out.push(node.textContent); return; }
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    if (node.getAttribute('translate') === 'no' || ['SCRIPT', 'STYLE'].includes(node.tagName)) return;
    if (node.offsetParent === null && node.tagName !== 'BODY') return;
    node.childNodes.forEach(walk);
  };
  walk(document.querySelector('main'));
  return out.join(' ');
}"""

WIDER_THAN_SCREEN = """() => [...document.querySelectorAll('main *')]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .map((e) => e.tagName + '.' + e.className + ' ' + (e.textContent || '').slice(0, 40))"""


def fleet_app(world: World) -> OAuth2Client:
    """An approved fleet manager's app in this region, as its own OAuth client."""
    app, secret = world.region.apps.register(
        name="Fleetwise",
        legal_entity="Fleetwise Logistics (Shanghai) Co., Ltd.",
        jurisdiction="cn",
        contact="privacy@fleetwise.example",
        purposes=["fleet"],
        redirect_uris=[REDIRECT],
    )
    world.region.apps.decide(app.client_id, "approved", by="test")
    return OAuth2Client(
        client_id=app.client_id,
        client_secret=secret,
        scope=SCOPE,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        base_url=world.url,
        timeout=60,
    )


def to_consent(
    browser: Any, world: World, client: OAuth2Client, lang: str, size: str = "desktop"
) -> tuple[Any, Any, list[str], str, str]:
    """The app sends a fresh browser to the consent screen; the owner logs in on the way."""
    ctx = new_context(browser, world, size=size, lang=lang)
    arrived: list[str] = []

    def callback(route: Any) -> None:
        arrived.append(route.request.url)
        route.fulfill(status=200, content_type="text/plain", body="app callback")

    ctx.route(re.compile(re.escape(REDIRECT) + ".*"), callback)
    page = ctx.new_page()
    verifier = generate_token(48)
    uri, state = client.create_authorization_url("/oauth/authorize", code_verifier=verifier, purpose="fleet")
    page.goto(world.url + uri if uri.startswith("/") else uri)
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.fill("#email", world.email)
    page.fill("#password", PASSWORD)
    page.click(".auth-card button[type=submit]")
    page.wait_for_url(re.compile(r".*/oauth/authorize\?.*"))
    return ctx, page, arrived, verifier, state


def day_window(world: World) -> dict[str, int]:
    t = world.days[0].table.column("t").cast("int64")
    first = int(t[0].as_py())
    return {"start": first, "end": first + 600_000}


@pytest.mark.slow
def test_owner_narrows_and_approves_in_chromium_and_the_app_reads_only_that(browser: Any, world: World) -> None:
    client = fleet_app(world)
    ctx, page, arrived, verifier, state = to_consent(browser, world, client, "en")
    try:
        main = page.locator("main")
        assert "Fleetwise" in main.locator("h1").inner_text()
        text = main.inner_text()
        for fact in (
            "Fleetwise Logistics (Shanghai) Co., Ltd.",
            "China",
            "privacy@fleetwise.example",
            "Fleet management",
            "Driving dynamics",
            "Sensitive personal",
            "Approximate area only",
            "Erase the data when it is no longer needed",
        ):
            assert fact in text, fact
        assert accessibility_problems(page) == []
        page.uncheck(f'input[name="signal"][value="{NARROWED_AWAY}"]')
        page.uncheck('input[name="live"]')
        screenshot(page, "oauth-consent-en-desktop")
        page.click('button[name="decision"][value="approve"]')
        page.wait_for_url(re.compile(re.escape(REDIRECT) + r"\?.*"))
    finally:
        ctx.close()
    assert len(arrived) == 1
    query = parse_qs(urlsplit(arrived[0]).query)
    assert query["state"] == [state] and "code" in query

    token = client.fetch_token("/oauth/token", authorization_response=arrived[0], code_verifier=verifier)
    assert "live" not in token["scope"].split() and f"vss:{NARROWED_AWAY}" not in token["scope"]
    vin = world.cars[0].vin
    base = f"{world.url}/api/v1/vehicles/{vin}/telemetry"
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    ok = httpx.get(base, params={**day_window(world), "signals": "Vehicle.Speed"}, headers=auth, timeout=60)
    assert ok.status_code == 200 and ok.json()["rows"] > 0, ok.text
    refused = httpx.get(base, params={**day_window(world), "signals": NARROWED_AWAY}, headers=auth, timeout=60)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "out_of_scope"
    other_car = httpx.get(f"{world.url}/api/v1/vehicles/{world.cars[1].vin}", headers=auth, timeout=60)
    assert other_car.status_code == 403 and other_car.json()["error"]["code"] == "out_of_scope"


@pytest.mark.slow
def test_chinese_consent_screen_and_one_click_deny(browser: Any, world: World) -> None:
    client = fleet_app(world)
    ctx, page, arrived, _, state = to_consent(browser, world, client, "zh-CN", size="phone")
    try:
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        words = re.findall(r"[A-Za-z]{2,}", page.evaluate(VISIBLE_WORDS))
        assert words == [], words
        text = page.locator("main").inner_text()
        for fact in ("车队管理", "接收方的义务", "授权截止日期", "中国", "仅限大致区域", "敏感个人"):
            assert fact in text, fact
        assert accessibility_problems(page) == []
        screenshot(page, "oauth-consent-zh-CN-phone")
        wide = page.evaluate(WIDER_THAN_SCREEN)
        assert wide == []  # long signal paths wrap at their dots on a phone
        page.click('button[name="decision"][value="deny"]')
        page.wait_for_url(re.compile(re.escape(REDIRECT) + r"\?.*"))
    finally:
        ctx.close()
    query = parse_qs(urlsplit(arrived[0]).query)
    assert query["error"] == ["access_denied"] and query["state"] == [state] and "code" not in query


@pytest.mark.slow
def test_device_flow_in_chromium_on_a_phone(browser: Any, world: World) -> None:
    """A wallbox without a browser: the owner types its code on the phone, approves, and the wallbox polls its token."""
    app, _ = world.region.apps.register(
        name="Garage Wallbox",
        legal_entity="Wallbox Energy (Shenzhen) Co., Ltd.",
        jurisdiction="cn",
        contact="support@wallbox.example",
        purposes=["charging"],
        confidential=False,
    )
    world.region.apps.decide(app.client_id, "approved", by="test")
    scope = "vss:Vehicle.Powertrain.TractionBattery history"
    asked = {"client_id": app.client_id, "scope": scope, "purpose": "charging"}
    started = httpx.post(f"{world.url}/oauth/device_authorization", data=asked, timeout=60).json()
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": started["device_code"]}
    poll["client_id"] = app.client_id
    assert httpx.post(f"{world.url}/oauth/token", data=poll, timeout=60).json()["error"] == "authorization_pending"

    ctx = new_context(browser, world, size="phone")
    try:
        page = ctx.new_page()
        page.goto(started["verification_uri"])
        page.wait_for_url(re.compile(r".*/login\?next=.*"))
        page.fill("#email", world.email)
        page.fill("#password", PASSWORD)
        page.click(".auth-card button[type=submit]")
        page.wait_for_url(re.compile(r".*/device$"))
        page.fill("#user_code", started["user_code"].lower())
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r".*/device\?user_code=.*"))
        text = page.locator("main").inner_text()
        assert "Garage Wallbox" in text and "Smart charging control" in text and "Battery and charging" in text
        assert accessibility_problems(page) == []
        page.click('button[name="decision"][value="approve"]')
        page.wait_for_selector('[data-outcome="approved"]')
        screenshot(page, "oauth-device-approved-en-phone")
    finally:
        ctx.close()

    token = httpx.post(f"{world.url}/oauth/token", data=poll, timeout=60)
    assert token.status_code == 200, token.text
    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
    params = {**day_window(world), "signals": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"}
    vin = world.cars[0].vin
    soc = httpx.get(f"{world.url}/api/v1/vehicles/{vin}/telemetry", params=params, headers=auth, timeout=60)
    assert soc.status_code == 200 and soc.json()["rows"] > 0, soc.text
    speed = httpx.get(
        f"{world.url}/api/v1/vehicles/{vin}/telemetry", params={**params, "signals": "Vehicle.Speed"}, headers=auth
    )
    assert speed.status_code == 403 and speed.json()["error"]["code"] == "out_of_scope"
