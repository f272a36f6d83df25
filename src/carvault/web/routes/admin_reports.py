"""The operator's reports API: the annual report (JSON and PDF), finalising it, the reminder, the operator profile.

Thin over ``compliance.annual_report.AnnualReports`` (region.reports) and ``compliance.operator_profile``
(region.operator_profile), the same services the console and ``carvault admin reports`` use. Paths are relative
to /api/v1/admin. docs/annual-report.md describes the JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance import report_pdf
from carvault.compliance.operator_profile import FIELDS
from carvault.compliance.roles import Permission
from carvault.errors import FontMissing, InvalidQuery, ReportFinalised, ValidationFailed
from carvault.web.deps import RegionDep, staff_with
from carvault.web.errors import raises
from carvault.web.i18n import messages

router = APIRouter(tags=["admin: reports"])

Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.REPORTS_VIEW))]
Manager = Annotated[StaffPrincipal, Depends(staff_with(Permission.REPORTS_MANAGE))]
Year = Annotated[int, Path(description="calendar year, e.g. 2026", ge=1, le=9999)]


class ProfileBody(BaseModel):
    """The operator's identity and contacts (all five fields; each replaces the saved one)."""

    model_config = ConfigDict(extra="forbid")
    operator_name: str = Field(description=FIELDS["operator_name"][1], max_length=FIELDS["operator_name"][0])
    security_lead: str = Field(description=FIELDS["security_lead"][1], max_length=FIELDS["security_lead"][0])
    security_lead_contact: str = Field(
        description=FIELDS["security_lead_contact"][1], max_length=FIELDS["security_lead_contact"][0]
    )
    rights_contact: str = Field(description=FIELDS["rights_contact"][1], max_length=FIELDS["rights_contact"][0])
    rights_contact_contact: str = Field(
        description=FIELDS["rights_contact_contact"][1], max_length=FIELDS["rights_contact_contact"][0]
    )


@router.get("/reports/annual", summary="Finalised annual reports and the filing reminder")
def list_reports(staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return {"filed": region.reports.filings(), "due": region.reports.due()}


@router.get("/reports/due", summary="The reminder: report for YEAR due by 15 Dec, N days left (from 1 November)")
def due(staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return region.reports.due()


@router.get(
    "/reports/annual/{year:int}.pdf",
    summary="The annual report as a PDF (Chinese by default, or English)",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **raises(InvalidQuery, FontMissing)},
)
def annual_pdf(
    year: Year,
    staff: Viewer,
    region: RegionDep,
    lang: Literal["zh-CN", "en"] = Query("zh-CN", description="language of the PDF: zh-CN (primary) or en"),
) -> Response:
    report = region.reports.report(year)
    body = report_pdf.render(report, messages(lang))
    name = f"carvault-{region.name}-annual-report-{year}-{lang}.pdf"
    return Response(
        body, media_type="application/pdf", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get(
    "/reports/annual/{year:int}",
    summary="The annual report of a year (signed JSON; the filed copy once finalised)",
    responses=raises(InvalidQuery),
)
def annual(year: Year, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return region.reports.report(year)


@router.post(
    "/reports/annual/{year:int}/finalise",
    status_code=201,
    summary="Finalise a year's report: store the signed JSON so later records do not change the filed report",
    responses=raises(InvalidQuery, ReportFinalised),
)
def finalise(year: Year, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return region.reports.finalise(year, staff.actor)


@router.get("/reports/operator", summary="The operator's identity and contacts used by the reports")
def get_profile(staff: Viewer, region: RegionDep) -> dict[str, Any]:
    profile = region.operator_profile.get()
    return {"profile": profile.to_json() if profile else None}


@router.put(
    "/reports/operator",
    summary="Save the operator's identity and contacts (the one hand-entered part of the reports)",
    responses=raises(ValidationFailed),
)
def put_profile(body: ProfileBody, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return {"profile": region.operator_profile.save(body.model_dump(), staff.actor).to_json()}
