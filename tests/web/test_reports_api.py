"""The reports over a real server and the CLI: roles, bad input, the filed copy, the PDF, the public data sheet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pypdf
import pytest
from typer.testing import CliRunner

from carvault.cli import app as cli_app
from carvault.compliance.annual_report import verify_signature
from carvault.compliance.roles import Role
from carvault.region import Region
from tests.conftest import OwnerClient
from tests.factories import make_staff

pytestmark = pytest.mark.slow

PROFILE = {
    "operator_name": "Example Motors (China) Co., Ltd.",
    "security_lead": "Li Wei",
    "security_lead_contact": "security@example.cn",
    "rights_contact": "Privacy desk",
    "rights_contact_contact": "privacy@example.cn",
}
YEAR = 2026


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_roles_finalising_and_the_filed_copy(http: httpx.Client, region: Region, owner: OwnerClient) -> None:
    _, admin = make_staff(region, Role.REGION_ADMIN)
    _, auditor = make_staff(region, Role.AUDITOR)
    _, support = make_staff(region, Role.SUPPORT)
    url = f"/api/v1/admin/reports/annual/{YEAR}"

    assert http.get(url).status_code == 401
    r = http.get(url, headers=owner.headers)  # an owner's token is no staff session
    assert r.status_code == 401, r.text
    r = http.get(url, headers=_bearer(support))
    assert r.status_code == 403 and _code(r) == "role_forbidden"

    draft = http.get(url, headers=_bearer(auditor))
    assert draft.status_code == 200, draft.text
    body = draft.json()
    assert body["year"] == YEAR and body["region"] == region.name and body["finalised"] is None
    assert verify_signature(body, region.log.vkey)

    r = http.post(f"{url}/finalise", headers=_bearer(auditor))
    assert r.status_code == 403 and _code(r) == "role_forbidden"  # auditors read, never file
    filed = http.post(f"{url}/finalise", headers=_bearer(admin))
    assert filed.status_code == 201, filed.text
    assert filed.json()["finalised"]["by"].startswith("staff:region_admin:")
    again = http.post(f"{url}/finalise", headers=_bearer(admin))
    assert again.status_code == 409 and _code(again) == "report_already_finalised"

    make_staff(region, Role.DPO)  # a new record after filing
    assert http.get(url, headers=_bearer(auditor)).json() == filed.json()
    listed = http.get("/api/v1/admin/reports/annual", headers=_bearer(auditor)).json()
    assert [f["year"] for f in listed["filed"]] == [YEAR]
    if listed["due"]["year"] == YEAR:  # the reminder is about the current year
        assert listed["due"]["state"] == "filed" and not listed["due"]["remind"]


def test_bad_years_and_languages_are_refused(http: httpx.Client, region: Region) -> None:
    _, auditor = make_staff(region, Role.AUDITOR)
    h = _bearer(auditor)
    r = http.get("/api/v1/admin/reports/annual/1999", headers=h)
    assert r.status_code == 400 and _code(r) == "invalid_query"
    r = http.get("/api/v1/admin/reports/annual/3000.pdf", headers=h)
    assert r.status_code == 400 and _code(r) == "invalid_query"
    r = http.get(f"/api/v1/admin/reports/annual/{YEAR}.pdf", headers=h, params={"lang": "fr"})
    assert r.status_code == 422 and _code(r) == "validation_failed"
    assert http.get("/api/v1/admin/reports/annual/twenty", headers=h).status_code == 404
    assert http.get("/api/v1/health").status_code == 200  # still serving


def test_the_pdf_in_chinese_and_english(http: httpx.Client, region: Region) -> None:
    _, liaison = make_staff(region, Role.LIAISON)  # the authority liaison may read reports
    zh = http.get(f"/api/v1/admin/reports/annual/{YEAR}.pdf", headers=_bearer(liaison))
    assert zh.status_code == 200, zh.text
    assert zh.headers["content-type"] == "application/pdf"
    assert f"annual-report-{YEAR}-zh-CN.pdf" in zh.headers["content-disposition"]
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(zh.content)).pages)
    assert "汽车数据安全管理情况年度报告" in text and "本区域未记录" in text  # no operator profile yet
    en = http.get(f"/api/v1/admin/reports/annual/{YEAR}.pdf", headers=_bearer(liaison), params={"lang": "en"})
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(en.content)).pages)
    assert "Annual report on automotive data security management" in text


def test_the_operator_profile_is_validated_and_audited(http: httpx.Client, region: Region) -> None:
    _, admin = make_staff(region, Role.REGION_ADMIN)
    _, auditor = make_staff(region, Role.AUDITOR)
    url = "/api/v1/admin/reports/operator"
    assert http.get(url, headers=_bearer(auditor)).json() == {"profile": None}
    r = http.put(url, headers=_bearer(auditor), json=PROFILE)
    assert r.status_code == 403 and _code(r) == "role_forbidden"
    r = http.put(url, headers=_bearer(admin), json={k: v for k, v in PROFILE.items() if k != "rights_contact"})
    assert r.status_code == 422 and _code(r) == "validation_failed"
    r = http.put(url, headers=_bearer(admin), json={**PROFILE, "security_lead": " \n "})
    assert r.status_code == 422 and r.json()["error"]["field"] == "security_lead"
    r = http.put(url, headers=_bearer(admin), json={**PROFILE, "extra": 1})
    assert r.status_code == 422
    assert http.get(url, headers=_bearer(auditor)).json() == {"profile": None}  # nothing partial stored

    saved = http.put(url, headers=_bearer(admin), json=PROFILE)
    assert saved.status_code == 200, saved.text
    assert saved.json()["profile"]["security_lead"] == "Li Wei"
    report = http.get(f"/api/v1/admin/reports/annual/{YEAR}", headers=_bearer(auditor)).json()
    assert report["sections"]["operator"]["rights_contact"]["value"] == {
        "name": "Privacy desk",
        "contact": "privacy@example.cn",
    }
    (event,) = region.audit.list(None, action="report.profile")
    assert event.actor.startswith("staff:region_admin:")


def test_the_public_data_sheet_and_its_page(http: httpx.Client, region: Region) -> None:
    sheet = http.get("/api/v1/data-sheet")
    assert sheet.status_code == 200 and sheet.json() == region.data_sheet.json()
    en = http.get("/data-sheet", headers={"Accept-Language": "en"})
    assert en.status_code == 200 and "Vehicle data sheet" in en.text and "/api/v1/deletion-requests" in en.text
    zh = http.get("/data-sheet", headers={"Accept-Language": "zh-CN"})
    assert zh.status_code == 200 and "车辆数据说明" in zh.text and "驾驶" in zh.text
    login = http.get("/login")
    assert 'href="/data-sheet"' in login.text  # linked from every page's footer


def test_cli_annual_due_and_finalise(region: Region, tmp_path: Path) -> None:
    data = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    runner = CliRunner()
    pdf, out = tmp_path / "report.pdf", tmp_path / "report.json"
    r = runner.invoke(
        cli_app, ["admin", "reports", "annual", "--year", str(YEAR), "--pdf", str(pdf), "--json", str(out), *data]
    )
    assert r.exit_code == 0, r.output
    assert pdf.read_bytes().startswith(b"%PDF") and json.loads(out.read_text(encoding="utf-8"))["year"] == YEAR
    r = runner.invoke(cli_app, ["admin", "reports", "annual", "--year", "1999", *data])
    assert r.exit_code == 1 and "invalid_query" in r.output
    r = runner.invoke(
        cli_app, ["admin", "reports", "annual", "--year", str(YEAR), "--pdf", str(pdf), "--lang", "fr", *data]
    )
    assert r.exit_code == 2
    r = runner.invoke(cli_app, ["admin", "reports", "due", *data])
    assert r.exit_code in (0, 3) and "15 Dec" in r.output
    region.staff.create("dpo-ana", "a long enough password", "dpo")  # --as names a real member, checked
    r = runner.invoke(cli_app, ["admin", "reports", "finalise", "--year", str(YEAR), "--as", "dpo-ana", *data])
    assert r.exit_code == 0, r.output
    assert region.reports.report(YEAR)["finalised"]["by"] == "staff:dpo:dpo-ana"
    r = runner.invoke(cli_app, ["admin", "reports", "finalise", "--year", str(YEAR), *data])
    assert r.exit_code == 1 and "report_already_finalised" in r.output
