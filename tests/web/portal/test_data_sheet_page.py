"""The public data sheet page in Chromium: reachable from the footer without an account, in English and Chinese,
its figures the API's, its signal lists opening without scripts, accessible, and no script or CSP errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import new_context, screenshot
from tests.web.portal.world import World

pytestmark = pytest.mark.slow

TITLE = {"en": "Vehicle data sheet", "zh-CN": "车辆数据说明"}


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_data_sheet_page(browser: Any, world: World, lang: str) -> None:
    sheet = httpx.get(world.url + "/api/v1/data-sheet", timeout=60).json()
    ctx = new_context(browser, world, lang=lang)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto("/login")
        page.click("footer a[href='/data-sheet']")
        page.wait_for_url("**/data-sheet")
        assert page.locator("html").get_attribute("lang") == lang
        assert TITLE[lang] in page.locator("h1").inner_text()
        rows = page.locator("#categories > tbody > tr[id^='cat-']")
        assert rows.count() == len(sheet["categories"])
        speed = page.locator("#categories details").first
        assert not speed.locator("td.mono").first.is_visible()
        speed.locator("summary").click()
        first = sheet["categories"][0]["signals"][0]["path"]
        assert speed.locator("td.mono").first.inner_text() == first
        how = page.locator("#how").inner_text()
        assert all(route["path"] in how for route in sheet["access"])
        assert accessibility_problems(page) == []
        screenshot(page, f"data-sheet-{lang}")
        assert errors == []
    finally:
        ctx.close()
