"""The Live page over HTTP (who may see it, what it hands its script) and in Chromium: values published after
the page loaded appear without a reload, with their age, the offline notice, the position trail, in English and
Chinese."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from typing import Any

import httpx
import pytest

from carvault.ingest.live import LiveUpdate, LiveValue
from carvault.location import LAT, LON
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.store.metadata import now_ms
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import opt_in
from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import SIZES, TIMEZONE, login, screenshot

SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
DOOR = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
_seq = itertools.count(1)


def publish(region: Region, vin: str, values: dict[str, Any], t_ms: int | None = None) -> None:
    """One accepted live frame, injected as the car channel does."""
    t = t_ms or now_ms()
    update = LiveUpdate(vin, next(_seq), t, {p: LiveValue(p, t, v, now_ms()) for p, v in values.items()})
    # Playwright's sync API runs an event loop in this thread: publish from another one.
    worker = threading.Thread(target=asyncio.run, args=(region.live.publish_local(update),))
    worker.start()
    worker.join(10)


@pytest.fixture
def car(region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> str:
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code in (200, 201), r.text
    opt_in(region, vehicle.vin, "location", at_ms=now_ms() - 60_000)
    return vehicle.vin


def open_live(
    browser: Any, server: BackgroundServer, owner: OwnerClient, vin: str, lang: str = "en", size: str = "desktop"
) -> Any:
    locale = "zh-CN" if lang == "zh-CN" else "en-GB"
    ctx = browser.new_context(base_url=server.url, viewport=SIZES[size], timezone_id=TIMEZONE, locale=locale)
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    page.js_errors = []
    page.on("pageerror", lambda e: page.js_errors.append(str(e)))
    login(page, owner.email, owner.password)
    page.click(f'a[href="/vehicles/{vin}/live"]')  # linked from the vehicle list
    page.wait_for_url(f"**/vehicles/{vin}/live")
    return page


def tile(page: Any, name: str) -> Any:
    return page.locator(f'[data-tile="{name}"] [data-value]')


@pytest.mark.slow  # Chromium
def test_live_page_updates_without_reload(
    browser: Any, region: Region, server: BackgroundServer, owner: OwnerClient, car: str
) -> None:
    # The car last sent two minutes ago: the page says it is offline.
    old = now_ms() - 120_000
    publish(region, car, {SPEED: 12.0, SOC: 55.5, GEAR: 126, DOOR: False, LAT: 31.2304, LON: 121.4737}, t_ms=old)
    page = open_live(browser, server, owner, car)
    try:
        page.wait_for_selector("#live-status.flash-ok")
        assert "Live" in page.locator("h1").inner_text()
        assert page.locator('nav.tabs a[aria-current="page"]').inner_text() == "Live"
        page.wait_for_function("() => !document.getElementById('live-offline').hidden")
        assert "Car offline since" in page.locator("#live-offline").inner_text()
        page.wait_for_function("() => document.querySelector('[data-tile=\"speed\"] [data-value]').textContent !== '—'")
        assert tile(page, "speed").inner_text() == "12 km/h"
        assert tile(page, "gear").inner_text() == "P (park)"
        assert "min ago" in page.locator('[data-tile="speed"] [data-age]').inner_text()
        page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads

        # The car comes back: new values appear in place, the offline notice goes.
        publish(region, car, {SPEED: 88.4, DOOR: True, LAT: 31.2310, LON: 121.4745})
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"speed\"] [data-value]').textContent === '88 km/h'"
        )
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"door0\"] [data-value]').textContent === 'Open'"
        )
        assert page.locator("#live-offline").is_hidden()
        assert re.fullmatch(r"\d+ s ago", page.locator('[data-tile="speed"] [data-age]').inner_text())
        assert page.evaluate("() => window.sameDocument") is True
        # Two positions make a trail on the tile-free drawing; the owner sees exact coordinates.
        page.wait_for_function(
            "() => document.getElementById('live-trail-line').getAttribute('points').split(' ').length >= 2"
        )
        assert "31.231" in page.locator('[data-tile="position"] [data-value]').inner_text()
        assert accessibility_problems(page) == []
        screenshot(page, "live-en-desktop")

        # Stopping a category empties its tiles (the subscription ends with VISS's error) and the rest goes on.
        region.consents.decide(car, owner.owner_id, "body", enabled=False)
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"door0\"]').getAttribute('data-state') === 'unavailable'"
        )
        publish(region, car, {SPEED: 101.0})
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"speed\"] [data-value]').textContent === '101 km/h'"
        )
        assert page.js_errors == []
    finally:
        page.context.close()


@pytest.mark.slow  # Chromium
def test_live_page_in_chinese(
    browser: Any, region: Region, server: BackgroundServer, owner: OwnerClient, car: str
) -> None:
    publish(region, car, {SOC: 64.0, GEAR: 127})
    page = open_live(browser, server, owner, car, lang="zh-CN", size="phone")
    try:
        page.wait_for_selector("#live-status.flash-ok")
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert "实时" in page.locator("h1").inner_text()
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"gear\"] [data-value]').textContent === 'D（前进）'"
        )
        publish(region, car, {SOC: 65.5})
        page.wait_for_function(
            "() => document.querySelector('[data-tile=\"soc\"] [data-value]').textContent === '65.5 %'"
        )
        assert "前" in page.locator('[data-tile="soc"] [data-age]').inner_text()
        assert accessibility_problems(page) == []
        assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 1  # fits a phone
        screenshot(page, "live-zh-CN-phone")
        assert page.js_errors == []
    finally:
        page.context.close()


def test_live_page_is_the_owners_only(http: httpx.Client, owner: OwnerClient, car: str) -> None:
    r = http.get(f"/vehicles/{car}/live", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    http.cookies.set("carvault_session", owner.headers["Authorization"].removeprefix("Bearer "))
    r = http.get(f"/vehicles/{car}/live")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    found = re.search(r'<script type="application/json" id="live-config">(.*?)</script>', r.text, re.S)
    assert found is not None
    config = json.loads(found[1])
    assert config["endpoint"] == f"/api/v1/viss/{car}" and config["texts"]["offline_since"]
    assert {p for g in config["groups"] for p in g["paths"]} >= {LAT, LON, SPEED, SOC, GEAR, DOOR}
    assert "<script>" not in r.text  # no inline script: the CSP would block it
    stranger = make_owner(http)
    http.cookies.set("carvault_session", stranger.headers["Authorization"].removeprefix("Bearer "))
    assert http.get(f"/vehicles/{car}/live").status_code == 404
