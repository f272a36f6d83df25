"""The operator console in Chromium: log in with a TOTP code, read the dashboard, refuse a rights request with a
written reason, run a dry-run purge — in English and in Chinese, at desktop and phone width, with screenshots."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
import pytest

from carvault.compliance.incidents import FIELDS
from carvault.compliance.rights import Kind
from carvault.compliance.roles import Role, allows
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.store.metadata import now_ms
from carvault.web.views.console import SECTIONS
from tests.conftest import make_owner
from tests.factories import make_staff, vin_for
from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import new_context, screenshot

pytestmark = pytest.mark.slow
PASSWORD = "console password 1"


@dataclass
class ConsoleWorld:
    """A region on a real server with an owner, a car, rights requests and a few staff accounts."""

    region: Region
    server: BackgroundServer
    owner_headers: dict[str, str]
    owner_id: int
    totp: dict[str, str]  # username -> TOTP secret

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return self.server.url


@pytest.fixture(scope="module")
def cw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWorld]:
    folder = tmp_path_factory.mktemp("console")
    region = Region(Settings(data_dir=folder / "region", region="cn"))
    server = BackgroundServer(region).start()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        owner = make_owner(http)
        car = provision(region, vin_for(7), folder / "cars")
        r = http.post(
            "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": car.vin, "pairing_code": car.pairing_code}
        )
        assert r.status_code in (200, 201), r.text
    totp = {}
    staff = {
        "dpo.en": Role.DPO,
        "dpo.zh": Role.DPO,
        "dpo.pages": Role.DPO,
        "support.one": Role.SUPPORT,
        "admin.one": Role.REGION_ADMIN,
        "liaison.one": Role.LIAISON,
    }
    for name, role in staff.items():
        _, totp[name] = region.staff.create(name, PASSWORD, role, display_name=name)
    _records(region, car.vin)
    yield ConsoleWorld(region, server, owner.headers, owner.owner_id, totp)
    server.stop()
    region.close()


def _records(region: Region, vin: str) -> None:
    """Something on every page: a hold, a case, an incident, a transfer record and a dry purge."""
    dpo, _ = make_staff(region, Role.DPO)
    region.deletions.place_hold(vin, "Shenzhen court", "(2026) 1")
    region.cases.open(
        dpo, kind="rights_request", vins=[vin], legal_basis="PIPL Art. 45", ends_ms=now_ms() + 7 * 86_400_000
    )
    text = {f: f"{f} text" for f in FIELDS}
    region.incidents.record(dpo, title="Lost laptop", detected_ms=now_ms() - 60_000, content={"en": text}, vins=[vin])
    region.transfers.create(
        route="standard_contract",
        recipient_kind="entity",
        recipient="Example Insurance GmbH",
        recipient_jurisdiction="eu",
        purpose="claims",
        categories=["driving_dynamics"],
        max_persons=1000,
        from_ms=now_ms() - 86_400_000,
        to_ms=now_ms() + 300 * 86_400_000,
        approval_reference="SC-2026-1",
        by=dpo.actor,
    )
    region.retention.run(dry_run=True, actor=dpo.actor)


def _complaint(cw: ConsoleWorld, text: str) -> int:
    filed = cw.region.rights.file(cw.region.rights.check(cw.owner_id, Kind.COMPLAINT, details=text))
    return filed.id


def _log_in(page: Any, cw: ConsoleWorld, username: str) -> None:
    page.goto("/console")
    page.wait_for_url(re.compile(r".*/console/login\?next=/console$"))
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.fill("#code", pyotp.TOTP(cw.totp[username]).now())
    page.click(".auth-card button[type=submit]")
    page.wait_for_url(re.compile(r".*/console$"))


def _check(page: Any, name: str) -> None:
    problems = accessibility_problems(page)
    assert not problems, (name, problems)
    screenshot(page, name)


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_refuse_a_request_and_run_a_dry_purge(browser: Any, cw: ConsoleWorld, lang: str) -> None:
    zh = lang == "zh-CN"
    username = "dpo.zh" if zh else "dpo.en"
    request_id = _complaint(cw, "my data went to an insurer" if not zh else "我的数据被提供给了保险公司")
    ctx = new_context(browser, cw, lang=lang)  # type: ignore[arg-type]
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    try:
        # Log in: the language follows the browser; the TOTP code is the second factor.
        page.goto("/console/login")
        assert page.locator("html").get_attribute("lang") == lang
        assert page.locator("#code").get_attribute("autocomplete") == "one-time-code"
        _check(page, f"console-login-{lang}")
        page.fill("#username", username)
        page.fill("#password", PASSWORD)
        page.fill("#code", "000000")
        page.click(".auth-card button[type=submit]")
        page.wait_for_selector(".flash-error")  # a wrong code keeps you out
        assert page.url.endswith("/console/login")
        _log_in(page, cw, username)
        # The dashboard: tiles of the DPO's areas, the rights desk among them, and no staff management.
        assert page.locator("h1").inner_text() == ("总览" if zh else "Dashboard")
        tile = page.locator("[data-tile=rights]")
        assert tile.is_visible() and int(tile.locator(".figure dd").first.inner_text()) >= 1
        assert page.locator("nav [data-section=staff]").count() == 0
        assert page.locator("nav [data-section=retention]").is_visible()
        _check(page, f"console-dashboard-{lang}")
        # Rights desk: open the request, refuse it with a written reason.
        page.click("nav [data-section=rights]")
        page.click(f"tr[data-request='{request_id}'] a")
        page.wait_for_url(re.compile(rf".*/console/rights/{request_id}$"))
        reason = "该投诉不属于本公司处理范围" if zh else "Not a matter this company decides; see the insurer"
        page.fill("#refuse-reason", reason)
        page.click("#rights-refuse")
        page.wait_for_url(re.compile(rf".*/console/rights/{request_id}\?notice=rights_refused$"))
        assert page.locator("#rights-status").inner_text() == ("已拒绝" if zh else "Refused")
        assert page.locator("#rights-reason").inner_text() == reason
        _check(page, f"console-rights-refused-{lang}")
        # The owner sees the refusal and its reason; the handler is named by role only.
        r = httpx.get(f"{cw.url}/api/v1/rights-requests/{request_id}", headers=cw.owner_headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "refused" and r.json()["reason"] == reason
        assert r.json()["handler_role"] == "dpo" and username not in r.text
        # Retention: a dry run erases nothing and shows its signed record.
        batches_before = cw.region.retention.plan().to_json()
        page.click("nav [data-section=retention]")
        page.click("#retention-dry-run")
        page.wait_for_url(re.compile(r".*/console/retention/runs/\d+\?notice=retention_dry_run$"))
        assert page.locator(".flash-info").is_visible()
        assert page.locator("pre.code").inner_text().count('"dry_run": true') == 1
        assert cw.region.retention.plan().to_json()["batches_to_erase"] == batches_before["batches_to_erase"]
        _check(page, f"console-retention-dry-run-{lang}")
        # At phone width the nav wraps and the dashboard still reads.
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto("/console")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        _check(page, f"console-dashboard-phone-{lang}")
        # Log out: the session ends, the console asks for a log-in again.
        page.click(".logout-form button")
        page.wait_for_url(re.compile(r".*/console/login$"))
        page.goto("/console/rights")
        page.wait_for_url(re.compile(r".*/console/login\?next=/console/rights$"))
        assert not errors, errors
    finally:
        ctx.close()


def test_support_sees_only_its_areas_and_is_refused_elsewhere(browser: Any, cw: ConsoleWorld) -> None:
    ctx = new_context(browser, cw)  # type: ignore[arg-type]
    page = ctx.new_page()
    try:
        _log_in(page, cw, "support.one")
        nav = set(page.locator("nav [data-section]").evaluate_all("els => els.map(e => e.dataset.section)"))
        assert nav == {s.key for s in SECTIONS if s.permission is None or allows(Role.SUPPORT, s.permission)}
        assert "rights" in nav and "retention" not in nav and "staff" not in nav
        response = page.goto("/console/retention")
        assert response is not None and response.status == 403
        assert page.locator("h1").inner_text() == "Not allowed"
        _check(page, "console-forbidden-support")
        # The language switch keeps the page.
        page.goto("/console/rights")
        with page.expect_navigation():  # the switch submits itself and comes back to this page
            page.select_option("#lang-select", "zh-CN")
        page.wait_for_url(re.compile(r".*/console/rights(\?.*)?$"))
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert "权利请求" in page.locator("nav").inner_text()
    finally:
        ctx.close()


@pytest.mark.parametrize("username", ["admin.one", "dpo.pages", "liaison.one"])
def test_every_page_a_role_opens_passes_the_accessibility_checks(browser: Any, cw: ConsoleWorld, username: str) -> None:
    """Each nav area (and a detail page of each list) for three roles, in Chinese at phone width: accessible, and
    no wider than the phone."""
    _complaint(cw, "please explain")
    ctx = new_context(browser, cw, size="phone", lang="zh-CN")  # type: ignore[arg-type]
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    wide = "() => document.documentElement.scrollWidth <= window.innerWidth"
    try:
        _log_in(page, cw, username)
        links = page.locator("nav [data-section]").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        assert len(links) >= 5
        for href in links:
            response = page.goto(href)
            assert response is not None and response.status == 200, href
            problems = accessibility_problems(page)
            assert not problems, (username, href, problems)
            assert page.evaluate(wide), (username, href, "wider than a phone")
            detail = page.locator("table a[href^='/console/']").first
            if detail.count():
                target = detail.get_attribute("href")
                assert page.goto(target).status == 200, target
                assert not accessibility_problems(page), (username, target, accessibility_problems(page))
                assert page.evaluate(wide), (username, target, "wider than a phone")
        screenshot(page, f"console-phone-{username}")
        assert not errors, errors
    finally:
        ctx.close()
