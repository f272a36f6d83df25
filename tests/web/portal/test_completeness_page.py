"""The Completeness page in Chromium: a simulated day uploaded by the car agent, in English and Chinese, on desktop and
phone; its figures are the signed report's, the strip is also a table, the download verifies offline, axe finds
nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from carvault.verify.completeness import verify_report
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import TIMEZONE, login, new_context, screenshot
from tests.web.portal.world import DAY, World

TITLE = {"en": "Completeness", "zh-CN": "数据完整性"}
REASON = {"en": "Not sent by the car", "zh-CN": "车辆未发送"}


def _report(world: World, vin: str) -> dict[str, Any]:
    r = httpx.get(
        f"{world.url}/api/v1/vehicles/{vin}/completeness",
        params={"day": DAY.isoformat(), "tz": TIMEZONE},
        headers=world.auth,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_report_of_a_simulated_day(world: World) -> None:
    """The agent's day: every batch names the software version; figures add up; the report is fast enough."""
    vin = world.cars[0].vin
    started = time.perf_counter()
    report = _report(world, vin)
    assert time.perf_counter() - started < 5
    assert report["chain"]["batches"] > 0 and report["chain"]["missing_seqs"] == []
    assert all(b["software_version"] for b in report["batches"] if b["kind"] == "telemetry")
    assert len(report["drives"]) == len(world.days[0].drives)
    day = report["days"][0]
    assert abs(sum(day["gap_seconds"].values()) + day["seconds_with_data"] - day["seconds_elapsed"]) < 60
    assert verify_report(report, log_key=world.region.log.vkey).ok


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_completeness_page(browser: Any, world: World, lang: str, size: str) -> None:
    vin = world.cars[0].vin
    report = _report(world, vin)
    ctx = new_context(browser, world, size=size, lang=lang)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        login(page, world.email)
        page.goto(f"/vehicles/{vin}")
        page.click(f"nav.tabs a[href='/vehicles/{vin}/completeness']")
        page.wait_for_url(f"**/vehicles/{vin}/completeness")
        page.fill("#day", DAY.isoformat())
        page.click("form.toolbar button[type=submit]")
        page.wait_for_url(f"**/completeness?day={DAY.isoformat()}")
        errors.clear()  # what counts is this page (the pages before it are other tests' subject)
        assert page.locator("html").get_attribute("lang") == lang
        assert TITLE[lang] in page.locator("h1").inner_text()
        assert page.locator("nav.tabs a[aria-current=page]").get_attribute("href").endswith("/completeness")
        # The strip: 30 days, the chosen one marked, and the same figures as a table.
        assert page.locator("[data-testid=strip] li").count() == 30
        assert page.locator("[data-testid=strip] a[aria-current=date]").count() == 1
        page.locator("details.more summary").first.click()
        assert page.locator("[data-testid=calendar-table] tbody tr").count() == 30
        # The gaps and their reasons: as many rows as the report lists, the reasons in the page's language.
        rows = page.locator("[data-testid=gaps] tbody tr")
        assert rows.count() == len(report["gaps"]) > 0
        if any(g["reason"] == "not_sent" for g in report["gaps"]):
            assert REASON[lang] in page.locator("[data-testid=gaps]").inner_text()
        assert page.locator("[data-testid=figures]").inner_text().count(str(report["totals"]["batches"])) >= 1
        assert page.locator("[data-testid=drive]").count() == len(report["drives"])
        versions = {r["version"] for r in report["software"]}
        assert all(v in page.locator("[data-testid=software]").inner_text() for v in versions if v)
        assert report["signed_by"] in page.locator("[data-testid=verify-cmd]").inner_text()
        assert axe_violations(page) == []
        screenshot(page, f"completeness-{lang}-{size}")
        if size == "desktop":
            with page.expect_download() as info:
                page.locator("a[download]").click()
            downloaded = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
            assert verify_report(downloaded, log_key=world.region.log.vkey).ok
            assert downloaded["totals"] == report["totals"] and downloaded["gaps"] == report["gaps"]
        assert errors == [], errors
    finally:
        ctx.close()
