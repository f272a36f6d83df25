"""The Charging page: over HTTP (who may see it, the tariff form and its refusals) and in Chromium in English and
Chinese at desktop and phone size: sessions, monthly totals, the power curve and battery-health charts with units
and several ticks (each also a data table), and no axe-core violations."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import make_owner
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import api, login, new_context, screenshot
from tests.web.portal.world import World

pytestmark = pytest.mark.slow

CHARTS = ("curve-time", "curve-soc", "health")
HEADING = {"en": "Charging", "zh-CN": "充电"}


def _url(world: World, car: int = 0) -> str:
    return f"/vehicles/{world.cars[car].vin}/charging"


def _log_in(http: httpx.Client, email: str, password: str = "correct horse battery") -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text)
    data = {"email": email, "password": password, **({"csrf_token": token.group(1)} if token else {})}
    r = http.post("/login", data=data, follow_redirects=False)
    assert r.status_code in (302, 303), r.text
    return token.group(1) if token else ""


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def test_page_over_http(world: World) -> None:
    vin = world.cars[0].vin
    sessions = api(world, f"/api/v1/vehicles/{vin}/charging").json()["sessions"]
    assert sessions
    with httpx.Client(base_url=world.url, timeout=60) as http:
        _log_in(http, world.email)
        page = http.get(_url(world))
        assert page.status_code == 200, page.text[:500]
        html = page.text
        assert f'href="/vehicles/{vin}/charging" aria-current="page"' in html
        for testid in ("sessions", "months", "curve-table", "health-table", "no-tariffs"):
            assert f'data-testid="{testid}"' in html, testid
        assert html.count("<tr data-start=") == len(sessions)
        assert "format=csv" in html and "UTC" in html
        # A tariff through the form: the sessions get a cost.
        form = {
            "csrf_token": _csrf(html),
            "name": "Public chargers",
            "place_id": "",
            "weekday": ["1", "2", "3", "4", "5", "6", "7"],
            "start": "00:00",
            "end": "00:00",
            "price_per_kwh": "1.2",
            "session_fee": "",
            "currency": "CNY",
        }
        r = http.post(f"{_url(world)}/tariffs", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("?notice=tariff_added#tariffs-h")
        html = http.get(_url(world) + "?notice=tariff_added").text
        assert "Tariff added" in html and 'data-testid="tariffs"' in html
        want = sessions[0]["energy_kwh"] * 1.2
        assert f"{want:,.2f} CNY" in html
        # The same minutes again: refused with the reason, nothing stored, the form kept.
        clash = http.post(f"{_url(world)}/tariffs", data={**form, "csrf_token": _csrf(html), "name": "Again"})
        assert clash.status_code == 422 and 'data-testid="tariff-error"' in clash.text
        assert "already covers" in clash.text and 'value="Again"' in clash.text
        bad = http.post(f"{_url(world)}/tariffs", data={**form, "csrf_token": _csrf(html), "price_per_kwh": "cheap"})
        assert bad.status_code == 422 and "price per kWh as a number" in bad.text
        tariffs = api(world, "/api/v1/tariffs").json()["tariffs"]
        assert [t["name"] for t in tariffs] == ["Public chargers"]
        r = http.post(
            f"{_url(world)}/tariffs/{tariffs[0]['id']}/delete", data={"csrf_token": _csrf(html)}, follow_redirects=True
        )
        assert r.status_code == 200 and "Tariff removed" in r.text
        assert api(world, "/api/v1/tariffs").json()["tariffs"] == []
        # No CSRF token: refused.
        assert http.post(f"{_url(world)}/tariffs", data={**form, "csrf_token": "x"}).status_code == 403
        assert http.get(_url(world) + "?session=123").status_code == 404
        assert http.get(_url(world)).status_code == 200  # and keeps serving
    with httpx.Client(base_url=world.url, timeout=60) as other:
        stranger = make_owner(other)
        _log_in(other, stranger.email)
        assert other.get(_url(world)).status_code == 404


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_page_in_chromium(browser: Any, world: World, lang: str, size: str) -> None:
    ctx = new_context(browser, world, size=size, lang=lang)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        login(page, world.email)
        page.goto(f"/vehicles/{world.cars[0].vin}")
        errors.clear()  # only this page's own errors count here
        page.click(f"nav.tabs a[href='{_url(world)}']")
        page.wait_for_url(f"**{_url(world)}")
        page.wait_for_load_state()
        assert page.locator("html").get_attribute("lang") == lang
        assert page.locator("h1").inner_text() == HEADING[lang]
        page.wait_for_selector("#chart-curve-time canvas")
        for cid in CHARTS:
            ticks = page.evaluate(
                "(id) => { const u = document.getElementById('chart-' + id).uplot;"
                " return [u.axes[0]._splits.length, u.axes[1]._splits.length, u.axes[0].label, u.axes[1].label,"
                " u.scales.x.min, u.scales.x.max, u.width, u.data[0].length]; }",
                cid,
            )
            assert ticks[0] > 1 and ticks[1] > 1, (cid, ticks[2:])
            assert re.search(r"\((min|%|kWh|kW)\)$", ticks[3]) and ticks[2], (cid, ticks)
        assert page.locator("[data-testid=sessions] tbody tr").count() >= 1
        page.locator("details.more summary").first.click()
        assert page.locator("[data-testid=curve-table] tbody tr").count() > 10
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (size, overflow)
        assert axe_violations(page) == []
        assert errors == []
        screenshot(page, f"charging-{lang}-{size}")
    finally:
        ctx.close()
