"""Console: the annual report (Several Provisions Art. 13–14) — the filing reminder, a year's figures with the
records each comes from, the PDF in Chinese and English, the signed JSON, finalising the year, the operator's
identity and contacts the report names, and the Data Act data sheet (compliance/annual_report.py, data_sheet.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import HTMLResponse, Response

from carvault.compliance import report_pdf
from carvault.compliance.annual_report import local_date
from carvault.compliance.operator_profile import FIELDS
from carvault.compliance.roles import Permission
from carvault.store.metadata import now_ms
from carvault.web.i18n import messages
from carvault.web.views.console_base import ConsoleError, ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("reports", "/console/reports", Permission.REPORTS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.REPORTS_MANAGE))]
Year = Annotated[int, Path(ge=1, le=9999)]
PDF_LANGUAGES = report_pdf.LANGUAGES


def tile(p: ConsolePage) -> Tile:
    """The annual report's due date, days left and whether this year is filed."""
    due = p.region.reports.due()
    level = {"overdue": "bad", "due": "warn"}.get(due["state"], "")
    figures = (
        Figure(p.t("console.reports.due_date"), due["due_date"], level),
        Figure(p.t("console.reports.state"), p.t(f"console.reports.state.{due['state']}"), level),
    )
    warnings = (due["message"].get(p.t.language, due["message"]["en"]),) if due["remind"] else ()
    return Tile(SECTION, figures, warnings)


def _year(p: ConsolePage) -> int:
    current = local_date(p.region.name, now_ms()).year
    raw = p.request.query_params.get("year", "")
    return int(raw) if raw.isascii() and raw.isdigit() and 2000 <= int(raw) <= current else current


def _overview(p: ConsolePage, year: int) -> dict[str, Any]:
    profile = p.region.operator_profile.get()
    return {
        "year": year,
        "report": p.region.reports.report(year),
        "due": p.region.reports.due(),
        "filed": p.region.reports.filings(),
        "profile": profile.to_json() if profile else None,
    }


async def _page(
    p: ConsolePage, year: int, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    data = await p.call(_overview, p, year)
    profile = data["profile"] or {}
    return p.render(
        "console_reports.html",
        status=status,
        title=p.t("console.nav.reports"),
        section=SECTION.key,
        sections=report_pdf.SECTIONS,
        pdf_languages=PDF_LANGUAGES,
        profile_fields=list(FIELDS),
        form=form if form is not None else {k: profile.get(k, "") for k in FIELDS},
        error=error,
        **data,
    )


@router.get("/console/reports")
async def reports(p: Viewer) -> Response:
    return await _page(p, _year(p))


@router.get("/console/reports/{year}.pdf")
async def pdf(year: Year, p: Viewer) -> Response:
    lang = p.request.query_params.get("lang", "zh-CN")
    if lang not in PDF_LANGUAGES:
        raise ConsoleError(400, p.t("console.reports.bad_language"))
    report = await p.call(p.region.reports.report, year)
    body = await p.call(report_pdf.render, report, messages(lang))
    name = f"carvault-{p.region.name}-annual-report-{year}-{lang}.pdf"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    return Response(body, media_type="application/pdf", headers=headers)


@router.get("/console/reports/{year}.json")
async def report_json(year: Year, p: Viewer) -> Response:
    report = await p.call(p.region.reports.report, year)
    name = f"carvault-{p.region.name}-annual-report-{year}.json"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    body = json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True)
    return Response(body, media_type="application/json", headers=headers)


@router.post("/console/reports/{year}/finalise")
async def finalise(year: Year, p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.reports.finalise, year, p.actor)
    if error:
        return await _page(p, year, status, error)
    return p.redirect(f"{SECTION.path}?year={year}", "report_finalised")


@router.post("/console/reports/operator")
async def save_profile(p: Manager) -> Response:
    form = await p.form()
    values = {k: form.get(k, "") for k in FIELDS}
    _, error, status = await p.attempt(p.region.operator_profile.save, values, p.actor)
    if error:
        return await _page(p, _year(p), status, error, values)
    return p.redirect(SECTION.path, "profile_saved")
