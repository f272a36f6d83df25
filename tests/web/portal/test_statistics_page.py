"""The Statistics page: over HTTP (who may see it, bad windows) and in Chromium in English and Chinese, at desktop
and phone size: the month/year tables, the states bar with its legend and table, charts with units and several
ticks (each also a data table), and no axe-core violations."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.conftest import make_owner
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import api, login, new_context, screenshot
from tests.web.portal.world import DAY, World

pytestmark = pytest.mark.slow

CHARTS = ("eff-speed", "eff-temp", "eff-month", "tyres", "temps", "range")


def _url(world: World, car: int = 0) -> str:
    return f"/vehicles/{world.cars[car].vin}/statistics?from={DAY.isoformat()}&to={DAY.isoformat()}"


def _log_in(http: httpx.Client, email: str, password: str = "correct horse battery") -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text)
    data = {"email": email, "password": password, **({"csrf_token": token.group(1)} if token else {})}
    r = http.post("/login", data=data, follow_redirects=False)
    assert r.status_code in (302, 303), r.text


def test_page_over_http(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=60) as http:
        _log_in(http, world.email)
        page = http.get(_url(world))
        assert page.status_code == 200, page.text[:500]
        html = page.text
        assert 'data-testid="months"' in html and 'data-testid="states-bars"' in html
        assert f'href="/vehicles/{world.cars[0].vin}/statistics" aria-current="page"' in html
        for cid in CHARTS:
            assert f'data-testid="table-{cid}"' in html, cid
        # The same figures as the API.
        total = api(world, f"/api/v1/vehicles/{world.cars[0].vin}/statistics", granularity="month").json()["total"]
        assert f"<dd>{total['drives']}</dd>" in html or f">{total['drives']}</td>" in html
        bad = http.get(f"/vehicles/{world.cars[0].vin}/statistics?from=2026-01-10&to=2026-01-01")
        assert bad.status_code == 400
        too_long = http.get(f"/vehicles/{world.cars[0].vin}/statistics?from=2025-01-01&to=2026-01-01")
        assert too_long.status_code == 400
        assert http.get(_url(world)).status_code == 200  # and keeps serving
        # The days are kept now: the whole page (seven API reads, a year of months among them) is fast.
        # (Best of three: the machine is shared, and a neighbour's burst is not the page's time.)
        took = []
        for _ in range(3):
            began = time.perf_counter()
            assert http.get(f"/vehicles/{world.cars[0].vin}/statistics").status_code == 200
            took.append(time.perf_counter() - began)
        assert min(took) < 0.5, took
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
    try:
        login(page, world.email)
        r = page.goto(_url(world))
        assert r is not None and r.status == 200
        assert page.locator("html").get_attribute("lang") == lang
        page.wait_for_selector("#chart-eff-speed canvas")
        heading = page.locator("h1").inner_text()
        assert heading == ("统计" if lang == "zh-CN" else "Statistics"), heading
        # Charts: drawn, with unit labels and more than one tick on each axis.
        drawn = page.evaluate(
            "() => JSON.parse(document.getElementById('stats-data').textContent).charts.map(c => c.id)"
        )
        assert {"eff-speed", "eff-temp", "tyres", "temps", "range"} <= set(drawn), drawn
        for cid in drawn:
            ticks = page.evaluate(
                "(id) => { const u = document.getElementById('chart-' + id).uplot;"
                " return [u.axes[0]._splits.length, u.axes[1]._splits.length, u.axes[1].label]; }",
                cid,
            )
            assert ticks[0] > 1 and ticks[1] > 1, (cid, ticks)
            assert ticks[2], cid
        # The states bar: one row per day, coloured segments, a legend, and a table.
        assert page.locator("[data-testid=states-bars] rect").count() >= 4
        assert page.locator("[data-testid=states-legend] .legend-item").count() == 4
        assert page.locator("[data-testid=state-totals] tbody tr").count() == 4
        assert page.locator("[data-testid=months] tbody tr").count() >= 1
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (size, overflow)
        assert axe_violations(page) == []
        assert errors == []
        screenshot(page, f"statistics-{lang}-{size}")
    finally:
        ctx.close()
