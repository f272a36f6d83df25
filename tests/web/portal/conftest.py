"""Fixtures of the portal tests: one region filled with real data (shared), and Debian's Chromium via Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.portal.world import PASSWORD, World, build

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
TIMEZONE = "Asia/Shanghai"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build(tmp_path_factory.mktemp("portal"))
    yield w
    w.server.stop()
    w.region.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install-system-deps.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_context(browser: Any, world: World, size: str = "desktop", lang: str = "en") -> Any:
    """A fresh browser profile (no cookies) at a screen size, in a language and the owner's time zone."""
    ctx = browser.new_context(
        base_url=world.url,
        viewport=SIZES[size],
        timezone_id=TIMEZONE,
        locale="zh-CN" if lang == "zh-CN" else "en-GB",
        accept_downloads=True,
    )
    ctx.set_default_timeout(15_000)
    return ctx


@pytest.fixture
def context(browser: Any, world: World) -> Iterator[Any]:
    ctx = new_context(browser, world)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    p.js_errors = errors  # checked by tests that care
    return p


def login(page: Any, email: str, password: str = PASSWORD) -> None:
    """Log in through the form."""
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click(".auth-card button[type=submit]")
    page.wait_for_url(re.compile(r".*/vehicles$"))


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.evaluate("() => window.scrollTo(0, 0)")  # the sticky header belongs at the top of a full-page shot
    page.screenshot(path=str(path), full_page=True)
    return path


def api(world: World, path: str, **params: Any) -> httpx.Response:
    """The owner's own API answer (bearer token), to compare pages and files against."""
    return httpx.get(world.url + path, headers=world.auth, params=params, timeout=60)
