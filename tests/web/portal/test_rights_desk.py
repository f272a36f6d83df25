"""The rights desk end to end in Debian's Chromium: an owner files portability, deletion and complaint requests in the
portal, a DPO handles them through the operator API, and the owner reads the outcomes — in English and in Chinese.
Incident notices: the banner, the notice in the page's language, marked read."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from carvault.compliance.incidents import FIELDS
from carvault.compliance.roles import Role
from carvault.region import Region
from carvault.store.metadata import BatchRecord, DeletionRequest, now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, make_staff
from tests.web.portal.a11y import accessibility_problems
from tests.web.portal.conftest import login, screenshot
from tests.web.portal.test_sharing_pages import chromium  # noqa: F401  (the fixture: browser profiles on this server)

pytestmark = pytest.mark.slow


def _file(page: Any, kind: str, *, vin: str = "", details: str = "", confirm: bool = False) -> None:
    page.select_option("#kind", kind)
    page.select_option("#vin", vin)
    page.fill("#details", details)
    if confirm:
        page.check("#confirm")
    page.click("#rights-form button[type=submit]")


def _row(page: Any, kind: str) -> Any:
    return page.locator(f"li.rights-request[data-kind={kind}]")


def _dpo_handles(http: httpx.Client, region: Region, owner_id: int) -> None:
    _, secret = make_staff(region, Role.DPO)
    dpo = {"Authorization": f"Bearer {secret}"}
    listed = http.get("/api/v1/admin/rights-requests", headers=dpo, params={"owner_id": owner_id}).json()["requests"]
    by_kind = {r["kind"]: r["id"] for r in listed}
    assert set(by_kind) == {"portability", "deletion", "complaint"}
    for kind, outcome in (
        ("portability", "The copy was fetched by NewCar Data Ltd on the same day."),
        ("deletion", "All copies of this vehicle's data were erased; your receipt is on the deletion page."),
    ):
        assert http.post(f"/api/v1/admin/rights-requests/{by_kind[kind]}/start", headers=dpo).status_code == 200
        r = http.post(f"/api/v1/admin/rights-requests/{by_kind[kind]}/complete", headers=dpo, json={"outcome": outcome})
        assert r.status_code == 200, r.text
    r = http.post(
        f"/api/v1/admin/rights-requests/{by_kind['complaint']}/refuse",
        headers=dpo,
        json={"reason": "Service messages are part of the contract and cannot be switched off."},
    )
    assert r.status_code == 200, r.text


def test_owner_files_requests_a_dpo_answers_and_the_owner_reads_the_outcomes(
    chromium: Any,  # noqa: F811
    http: httpx.Client,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    region: Region,
) -> None:
    agent.record(drive_table(BASE_MS, seconds=120, paths=["Vehicle.Speed"]), batch_seconds=60)
    agent.upload_pending()
    claim = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=claim).status_code in (200, 201)

    page = chromium("en", "desktop")
    login(page, owner.email, owner.password)
    page.click("nav.mainnav >> text=My requests")
    page.wait_for_url(re.compile(r".*/requests$"))
    assert page.locator("h1").inner_text() == "My requests"
    assert accessibility_problems(page) == []

    # a transfer to another company: carried out at once, the one-time secrets shown on this answer only
    page.select_option("#kind", "portability")
    page.select_option("#vin", vehicle.vin)
    page.fill("#name", "NewCar Data")
    page.fill("#legal_entity", "NewCar Data Ltd")
    page.check("#confirm")
    page.click("#rights-form button[type=submit]")
    token = page.locator("#token").inner_text().strip()
    fetch_url = page.locator("#made code").first.inner_text().strip()
    assert http.get(fetch_url, headers={"Authorization": f"Bearer {token}"}).content[:2] == b"PK"

    # deletion needs the confirmation box, then the deletion service erases when its grace period ends (moved to
    # now here, as if 72 hours had passed; the in-process scheduler's turn is run_due)
    _file(page, "deletion", vin=vehicle.vin, details="I sold the car")
    assert "Please confirm" in page.locator(".flash-error").inner_text()
    _file(page, "deletion", vin=vehicle.vin, details="I sold the car", confirm=True)
    page.wait_for_url(re.compile(r".*/requests\?notice=rights_filed$"))
    with region.db.session() as s:
        waiting = s.scalars(select(DeletionRequest).where(DeletionRequest.status == "scheduled")).one()
        waiting.due_ms = now_ms()
    assert region.deletions.run_due() == 1
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == vehicle.vin)) == 0

    _file(page, "complaint", details="I keep getting service e-mails I did not ask for.")
    page.wait_for_url(re.compile(r".*notice=rights_filed$"))
    for kind in ("portability", "deletion", "complaint"):
        assert _row(page, kind).get_attribute("data-status") == "received"
    assert "answer due by" in _row(page, "complaint").inner_text()

    _dpo_handles(http, region, owner.owner_id)

    page.reload()
    deletion = _row(page, "deletion")
    assert deletion.get_attribute("data-status") == "done"
    text = deletion.inner_text()
    assert "All copies of this vehicle's data were erased" in text and "the data protection officer" in text
    assert deletion.locator("a[href='/deletion']").count() == 1
    complaint = _row(page, "complaint")
    assert complaint.get_attribute("data-status") == "refused"
    assert "Service messages are part of the contract" in complaint.locator(".reason").inner_text()
    assert accessibility_problems(page) == []
    screenshot(page, "rights-requests-en-desktop")
    assert page.js_errors == []

    # the same answers in Chinese, on a phone; a new request filed and withdrawn there
    zh = chromium("zh-CN", "phone")
    login(zh, owner.email, owner.password)
    zh.goto("/requests")
    assert zh.locator("h1").inner_text() == "我的请求"
    assert "已完成" in _row(zh, "deletion").inner_text() and "个人信息保护负责人" in _row(zh, "deletion").inner_text()
    assert "已拒绝" in _row(zh, "complaint").inner_text() and "拒绝理由" in _row(zh, "complaint").inner_text()
    assert "中国规定" in (_row(zh, "complaint").text_content() or "")  # where the deadline comes from, in Chinese
    _file(zh, "explanation", details="请说明我的行程数据如何被使用。")
    zh.wait_for_url(re.compile(r".*notice=rights_filed$"))
    assert "您的请求已受理" in zh.locator(".flash-ok[role=status]").inner_text()
    _row(zh, "explanation").locator("button").click()
    zh.wait_for_url(re.compile(r".*notice=rights_withdrawn$"))
    assert _row(zh, "explanation").get_attribute("data-status") == "withdrawn"
    assert "已撤回" in _row(zh, "explanation").inner_text()
    overflow = zh.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1 and accessibility_problems(zh) == []
    screenshot(zh, "rights-requests-zh-CN-phone")
    assert zh.js_errors == []


def test_incident_notice_banner_and_page_in_both_languages(
    chromium: Any,  # noqa: F811
    http: httpx.Client,
    owner: OwnerClient,
    region: Region,
) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    content = {
        "en": {f: f"The {f} in English." for f in FIELDS},
        "zh-CN": {f: f"中文的{f}。" for f in FIELDS},
    }
    inc = region.incidents.record(
        admin, title="Leaked support export", detected_ms=BASE_MS, content=content, owner_ids=[owner.owner_id]
    )
    page = chromium("en", "desktop")
    login(page, owner.email, owner.password)
    assert page.locator("#incident-banner").count() == 0  # nothing sent yet
    region.incidents.notify_owners(inc.id, admin)
    page.goto("/vehicles")
    assert "1 unread security notice" in page.locator("#incident-banner").inner_text()

    zh = chromium("zh-CN", "desktop")
    login(zh, owner.email, owner.password)
    zh.click("#incident-banner a")
    zh.wait_for_url(re.compile(r".*/notices$"))
    zh.click("li.incident-notice a")
    assert zh.locator(".notice-harm").inner_text() == "中文的harm。"
    assert "可能造成的危害" in zh.locator(".incident-notice-text").inner_text()
    assert accessibility_problems(zh) == []
    screenshot(zh, "incident-notice-zh-CN-desktop")

    page.goto("/notices")  # read in Chinese: read for the owner, in every language
    assert page.locator("#incident-banner").count() == 0
    assert page.locator("li.incident-notice").get_attribute("data-read") == "yes"
    page.click("li.incident-notice a")
    assert page.locator(".notice-what").inner_text() == "The what in English."
    assert page.js_errors == [] and zh.js_errors == []
