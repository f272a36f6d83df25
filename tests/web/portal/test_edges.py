"""Issue 13's behaviour edges as an owner sees them, in Debian's Chromium against a real server: the deletion grace
period with cancel and "delete now", car names, browser names, the window messages, the package page's exact
command and named gaps, stopping collection, CSV times said to be UTC, and the grouped access log — in English and
Chinese, on desktop and phone, each page without axe-core violations."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

from carvault.provisioning import provision
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import api, login, new_context, screenshot
from tests.web.portal.world import World, register

pytestmark = pytest.mark.slow
HOUR_MS = 3_600_000


def _fresh_owner(browser: Any, world: World, tmp_path: Path, email: str, vin: str, size: str, lang: str) -> Any:
    """A new owner with a new (empty) car paired, logged in in a new browser context; the page."""
    with httpx.Client(base_url=world.url) as http:
        _, token = register(http, email)
        car = provision(world.region, vin, tmp_path / "vehicles", model="Model Y")
        r = http.post(
            "/api/v1/vehicles/claim",
            headers={"Authorization": f"Bearer {token}"},
            json={"vin": car.vin, "pairing_code": car.pairing_code},
        )
        assert r.status_code == 201, r.text
    ctx = new_context(browser, world, size, lang)
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    login(page, email)
    return page


@pytest.mark.parametrize(("size", "lang"), [("desktop", "en"), ("phone", "zh-CN")])
def test_deletion_waits_can_be_cancelled_or_done_now(
    browser: Any, world: World, tmp_path: Path, size: str, lang: str
) -> None:
    vin = "LRWEDGE000000001" + ("0" if lang == "en" else "1")
    page = _fresh_owner(browser, world, tmp_path, f"grace-{lang}@example.com", vin, size, lang)
    try:
        page.goto("/deletion")
        rules = page.locator("#req-h + ul").inner_text()
        assert ("72 hours" in rules) if lang == "en" else ("72 小时" in rules)
        page.select_option("#scope", vin)
        page.check("input[name=confirm]")
        page.click("form[action='/deletion'] button[type=submit]")
        page.wait_for_url(re.compile(r".*/deletion\?notice=deletion_requested$"))
        row = page.locator("li.deletion").first
        assert row.get_attribute("data-status") == "scheduled"
        due = row.locator(".deletion-due").inner_text()
        assert ("will be deleted" in due) if lang == "en" else ("将于" in due and "删除" in due)
        assert "Model Y" in row.inner_text()  # the car by its name, not just its VIN
        assert axe_violations(page) == []
        screenshot(page, f"edges-deletion-scheduled-{lang}-{size}")
        row.locator("button[type=submit]").click()  # cancel it
        page.wait_for_url(re.compile(r".*/deletion\?notice=deletion_cancelled$"))
        assert page.locator("li.deletion").first.get_attribute("data-status") == "cancelled"
        assert page.locator(".flash-ok").count() == 1
        assert api_as(world, f"grace-{lang}@example.com", f"/api/v1/vehicles/{vin}").status_code == 200  # kept

        page.select_option("#scope", vin)
        page.check("input[name=confirm]")
        page.check("#immediately")  # delete now: skip the grace period
        page.click("form[action='/deletion'] button[type=submit]")
        page.wait_for_url(re.compile(r".*/deletion\?notice=deletion_done$"))
        assert page.locator("li.deletion").first.get_attribute("data-status") == "completed"
        assert page.locator("li.deletion").first.locator("details").count() == 1  # the receipt
        assert axe_violations(page) == []
        screenshot(page, f"edges-deletion-done-{lang}-{size}")
    finally:
        page.context.close()


def api_as(world: World, email: str, path: str) -> httpx.Response:
    """A GET as another owner (logged in through the API)."""
    with httpx.Client(base_url=world.url) as http:
        token = http.post("/api/v1/auth/login", json={"email": email, "password": "correct horse battery"})
        return http.get(path, headers={"Authorization": f"Bearer {token.json()['token']}"})


@pytest.mark.parametrize(("size", "lang"), [("desktop", "en"), ("phone", "zh-CN")])
def test_name_a_car_and_see_it_everywhere(browser: Any, world: World, tmp_path: Path, size: str, lang: str) -> None:
    vin = "LRWEDGE000000002" + ("0" if lang == "en" else "1")
    page = _fresh_owner(browser, world, tmp_path, f"namer-{lang}@example.com", vin, size, lang)
    try:
        page.goto("/vehicles")
        assert page.locator(".vehicle-name").first.inner_text() == "Model Y"  # the model until it is named
        page.fill(f"#name-{vin}", "家里的车")
        page.click(f"form[action='/vehicles/{vin}/name'] button[type=submit]")
        page.wait_for_url(re.compile(r".*/vehicles\?notice=vehicle_renamed$"))
        assert page.locator(".vehicle-name").first.inner_text() == "家里的车"
        assert axe_violations(page) == []
        screenshot(page, f"edges-car-named-{lang}-{size}")
        for path in (f"/vehicles/{vin}", f"/vehicles/{vin}/consent", "/deletion", "/access"):
            page.goto(path)
            assert "家里的车" in page.locator("main").inner_text(), path
        page.goto(f"/vehicles/{vin}/drive?start=1000&end=500")  # a window that ends before it starts
        message = page.locator("main").inner_text()
        assert ("ends before it starts" in message) if lang == "en" else ("结束早于开始" in message)
        assert "at most 24 hours" not in message and "最长 24 小时" not in message  # not the limit's message
        page.goto(f"/vehicles/{vin}/drive?start=0&end={25 * HOUR_MS}")
        assert "24" in page.locator("main").inner_text()  # too long: that one says the limit
    finally:
        page.context.close()


@pytest.mark.parametrize(("size", "lang"), [("desktop", "en"), ("phone", "zh-CN")])
def test_stop_collecting_is_confirmed_on_the_card(
    browser: Any, world: World, tmp_path: Path, size: str, lang: str
) -> None:
    vin = "LRWEDGE000000003" + ("0" if lang == "en" else "1")
    page = _fresh_owner(browser, world, tmp_path, f"stopper-{lang}@example.com", vin, size, lang)
    try:
        page.goto(f"/vehicles/{vin}/consent")
        card = page.locator("li.consent-card[data-status=collecting]").first
        category = card.get_attribute("data-category")
        card.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(rf".*/consent\?changed={category}&notice=consent_off#cat-{category}$"))
        card = page.locator(f"#cat-{category}")
        assert card.get_attribute("data-status") != "collecting"
        confirm = card.locator(".consent-changed").inner_text()
        assert ("no longer collected" in confirm) if lang == "en" else ("不再采集" in confirm)
        stopped = card.locator(".consent-stopped").inner_text()
        assert ("You stopped it on" in stopped) if lang == "en" else ("停止了采集" in stopped)
        assert page.locator(".flash-ok[role=status]").count() >= 1  # the page's own confirmation too
        text = page.locator("main").inner_text()
        assert not re.search(r"\b1 years\b|\b1 days\b", text)
        assert axe_violations(page) == []
        screenshot(page, f"edges-consent-stopped-{lang}-{size}")
    finally:
        page.context.close()


def test_sessions_access_log_and_csv_in_the_owners_words(browser: Any, world: World, tmp_path: Path) -> None:
    vin = "LRWEDGE0000000040"
    page = _fresh_owner(browser, world, tmp_path, "words@example.com", vin, "desktop", "en")
    try:
        page.goto("/account")
        names = page.locator(".cred-name").all_inner_texts()
        assert "Chrome on Linux" in names
        assert "httpx" in names  # the sign-up's own log-in, through the API
        raw = page.locator(".cred-name[title]", has_text="Chrome on Linux").first.get_attribute("title")
        assert raw.startswith("Mozilla/5.0") and "Chrome/" in raw  # the raw string stays, as the tooltip
        assert axe_violations(page) == []
        for _ in range(2):
            page.goto(f"/vehicles/{vin}")
        page.goto(f"/vehicles/{vin}/drive?start={10 * HOUR_MS}&end={10 * HOUR_MS + 60_000}")
        assert "UTC" in page.locator("#download-utc").inner_text()
        page.goto(f"/vehicles/{vin}/downloads")
        assert "t_utc" in page.locator("#download-utc").inner_text()
        page.goto("/access")
        rows = page.locator("tr.page-views")
        kinds = {r.locator(".action-tag").inner_text(): r.get_attribute("data-views") for r in rows.all()}
        assert kinds.get("Viewed the timeline") == "2" and kinds.get("Opened a drive") == "1", kinds
        table = page.locator("table").inner_text()
        assert "Viewed timeline" not in table
        login_row = page.locator("tr", has_text="Logged in").first
        assert "right of access" not in login_row.inner_text() and "service contract" in login_row.inner_text()
        assert axe_violations(page) == []
        screenshot(page, "edges-access-grouped-en-desktop")
    finally:
        page.context.close()


@pytest.mark.parametrize(("size", "lang"), [("desktop", "en"), ("phone", "zh-CN")])
def test_package_page_names_the_file_and_every_gap(browser: Any, world: World, size: str, lang: str) -> None:
    vin = world.cars[0].vin
    batches = api(world, f"/api/v1/vehicles/{vin}/batches").json()
    first = min(b["t0"] for b in (batches["batches"] if isinstance(batches, dict) else batches))
    r = httpx.post(  # a window reaching half an hour before the car's first batch: at least one gap
        f"{world.url}/api/v1/vehicles/{vin}/packages",
        headers=world.auth,
        json={"start": first - HOUR_MS // 2, "end": first + HOUR_MS // 2},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    pkg = r.json()
    ctx = new_context(browser, world, size, lang)
    page = ctx.new_page()
    try:
        login(page, world.email)
        page.goto(f"/vehicles/{vin}/packages/{pkg['id']}")
        command = page.locator("#verify-command").inner_text()
        assert "…" not in command
        words = shlex.split(command)
        assert words[:2] == ["carvault", "verify"] and words[3] == "--trust"
        with page.expect_download() as d:
            page.click(f"a[download='{words[2]}']")
        assert d.value.suggested_filename == words[2]  # the command names exactly the file the page downloads
        with page.expect_download() as t:
            page.click(f"a[download='{words[4]}']")
        assert t.value.suggested_filename == words[4]
        gaps = page.locator("tr.gap")
        assert gaps.count() >= 1
        first_gap = gaps.first.inner_text()
        assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", first_gap)  # named with its times
        heading = page.locator("#verdict-h").inner_text()
        assert ("complete" not in heading) if lang == "en" else ("完整" not in heading)  # it has gaps
        assert axe_violations(page) == []
        screenshot(page, f"edges-package-gaps-{lang}-{size}")
    finally:
        ctx.close()
