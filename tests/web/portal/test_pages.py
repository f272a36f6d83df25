"""Every portal page in a real browser: it loads for the owner (desktop and phone, English and Chinese, with
screenshots), passes basic accessibility checks, and is refused to anyone else."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.web.portal.a11y import accessibility_problems, tab_through
from tests.web.portal.conftest import api, login, new_context, screenshot
from tests.web.portal.world import World, register

pytestmark = pytest.mark.slow


def owner_pages(world: World) -> dict[str, str]:
    """Every page an owner has, by name, with real ids in the URLs."""
    vin = world.cars[0].vin
    tl = api(world, f"/api/v1/vehicles/{vin}/timeline").json()
    drive = tl["drives"][-1]
    events = api(world, f"/api/v1/vehicles/{vin}/events").json()
    packages = api(world, f"/api/v1/vehicles/{vin}/packages").json()
    if not packages:
        crash = next(e for e in events if e["kind"] == "crash")
        r = httpx.post(
            f"{world.url}/api/v1/vehicles/{vin}/packages",
            headers=world.auth,
            timeout=60,
            json={"event_time": crash["t_ms"], "event_kind": "crash", "minutes_before": 5},
        )
        assert r.status_code == 201, r.text
        packages = [r.json()]
    jobs = api(world, "/api/v1/exports", vin=vin).json()
    if not jobs:
        r = httpx.post(
            f"{world.url}/api/v1/exports", headers=world.auth, timeout=60, json={"vin": vin, "format": "gpx"}
        )
        jobs = [r.json()]
    return {
        "vehicles": "/vehicles",
        "timeline": f"/vehicles/{vin}",
        "drive": f"/vehicles/{vin}/drive?start={drive['start_ms']}&end={drive['end_ms']}",
        "downloads": f"/vehicles/{vin}/downloads",
        "download-job": f"/vehicles/{vin}/downloads/{jobs[0]['id']}",
        "packages": f"/vehicles/{vin}/packages",
        "package": f"/vehicles/{vin}/packages/{packages[0]['id']}",
        "consent": f"/vehicles/{vin}/consent",
        "diagnostics": f"/vehicles/{vin}/diagnostics",
        "access": "/access",
        "deletion": "/deletion",
        "support": "/support",
        "portability": "/portability",
        "account": "/account",
    }


H1 = {
    "en": {
        "vehicles": "My vehicles",
        "timeline": "Timeline",
        "drive": "Drive on",
        "downloads": "Downloads",
        "download-job": "Download #",
        "packages": "Incident packages",
        "package": "Incident package #",
        "consent": "Data and consent",
        "diagnostics": "Health and diagnostics",
        "access": "Who accessed my data",
        "deletion": "Delete my data",
        "support": "Support tickets",
        "portability": "Move my data",
        "account": "Account",
    },
    "zh-CN": {
        "vehicles": "我的车辆",
        "timeline": "时间线",
        "drive": "的行程",
        "downloads": "下载",
        "download-job": "下载 #",
        "packages": "事故数据包",
        "package": "事故数据包 #",
        "consent": "数据与授权",
        "diagnostics": "车况与诊断",
        "access": "谁访问了我的数据",
        "deletion": "删除我的数据",
        "support": "客服工单",
        "portability": "把我的数据转给另一家公司",
        "account": "账户",
    },
}


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_loads_for_the_owner(browser: Any, world: World, size: str, lang: str) -> None:
    pages = owner_pages(world)
    ctx = new_context(browser, world, size, lang)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        for name in ("login", "signup"):
            r = page.goto(f"/{name}")
            assert r.status == 200 and page.locator("html").get_attribute("lang") == lang
            assert accessibility_problems(page) == [], name
            screenshot(page, f"{name}-{lang}-{size}")
        login(page, world.email)
        for name, path in pages.items():
            r = page.goto(path)
            assert r is not None and r.status == 200, (name, path)
            page.wait_for_load_state("networkidle")
            assert page.locator("html").get_attribute("lang") == lang
            assert H1[lang][name] in page.locator("h1").inner_text(), name
            assert accessibility_problems(page) == [], name
            # Content is inside the phone's width: nothing forces sideways scrolling.
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (name, size, overflow)
            screenshot(page, f"{name}-{lang}-{size}")
        assert errors == []
    finally:
        ctx.close()


def test_pages_are_refused_to_strangers(browser: Any, world: World) -> None:
    pages = owner_pages(world)
    ctx = new_context(browser, world)
    page = ctx.new_page()
    try:
        # Logged out: every page sends you to the log-in page, and back after logging in.
        for path in pages.values():
            page.goto(path)
            assert re.search(r"/login\?next=", page.url), path
        page.goto(pages["consent"])
        page.fill("#email", world.email)
        page.fill("#password", "correct horse battery")
        page.click(".auth-card button[type=submit]")
        page.wait_for_url(re.compile(r".*/consent$"))
        ctx.clear_cookies()
        # Another owner: someone else's vehicle pages are 404, exactly like a VIN that does not exist.
        with httpx.Client(base_url=world.url) as http:
            register(http, "stranger@example.com")
        login(page, "stranger@example.com")
        assert page.locator(".vehicle-card").count() == 0
        for name, path in pages.items():
            r = page.goto(path)
            if name in ("vehicles", "access", "deletion", "portability", "account", "support"):
                assert r.status == 200  # their own (empty) pages
                assert world.cars[0].vin not in page.content(), name
            else:
                assert r.status == 404, (name, path)
                assert page.locator("h1").inner_text() == "Not found"
        nowhere = page.goto("/vehicles/LRWNOSUCHVIN00000")
        assert nowhere.status == 404
        screenshot(page, "not-found-en-desktop")
    finally:
        ctx.close()


def test_keyboard_reaches_the_main_controls(browser: Any, world: World) -> None:
    ctx = new_context(browser, world)
    page = ctx.new_page()
    try:
        page.goto("/login")
        focused = tab_through(page, 8)
        assert focused[0] == "#main"  # the skip link comes first
        assert "email" in focused and "password" in focused and "Log in" in focused
        page.keyboard.press("Shift+Tab")
        page.focus("#email")
        page.keyboard.type(world.email)
        page.keyboard.press("Tab")
        page.keyboard.type("correct horse battery")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*/vehicles$"))
        vin = world.cars[0].vin
        page.goto(f"/vehicles/{vin}")
        focused = tab_through(page, 45)  # skip link, top bar, nine nav entries, nine tabs, the day form, then drives
        assert "/vehicles" in focused and f"/vehicles/{vin}/downloads" in focused and "from" in focused
        assert any(f.startswith(f"/vehicles/{vin}/drive?") for f in focused)
        # Enter on a focused drive link opens the drive.
        page.focus(f"a[href^='/vehicles/{vin}/drive?']")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*/drive\?"))
        focused = tab_through(page, 80)
        assert "from" in focused and "to" in focused and any("/telemetry?" in f for f in focused), " | ".join(focused)
    finally:
        ctx.close()
