"""Operator cases: open, list, show, close, and the one route that reads an owner's telemetry under a case."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.cases import KINDS, MAX_VINS, STATES, case_json
from carvault.compliance.roles import Permission
from carvault.errors import (
    CaseInactive,
    Conflict,
    CrossBorderTransfer,
    DataFrozen,
    NotFound,
    OutOfScope,
    ValidationFailed,
)
from carvault.web.deps import MAX_DB_INT, MAX_TIME_MS, RegionDep, RowId, staff_with
from carvault.web.errors import raises
from carvault.web.routes.vehicles import serve_telemetry

router = APIRouter(tags=["admin: cases"])
Opener = Annotated[StaffPrincipal, Depends(staff_with(Permission.CASES_OPEN))]
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.CASES_VIEW))]
Reader = Annotated[StaffPrincipal, Depends(staff_with(Permission.CASE_READ))]
Kind = Literal["rights_request", "authority_order", "breach_investigation", "support_ticket"]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]  # one list of kinds (compliance/cases.py)
State = Literal["open", "awaiting_owner", "declined", "ended", "closed"]
assert set(State.__args__) == set(STATES)  # type: ignore[attr-defined]


class NewCase(BaseModel):
    kind: Kind
    vins: list[Annotated[str, Field(min_length=17, max_length=17)]] = Field(min_length=1, max_length=MAX_VINS)
    legal_basis: str = Field(min_length=1, max_length=400)
    ends_ms: int = Field(ge=0, le=MAX_TIME_MS, description="when the case ends (epoch ms), at most 90 days away")
    reference: str = Field(default="", max_length=200)
    subject: str = Field(default="", max_length=1000, description="what and why, as the owner will read it")
    owner_id: int | None = Field(default=None, ge=1, le=MAX_DB_INT)
    authority: str | None = Field(default=None, max_length=200)
    jurisdiction: str | None = Field(default=None, min_length=2, max_length=16)
    from_ms: int | None = Field(default=None, ge=0, le=MAX_TIME_MS)
    to_ms: int | None = Field(default=None, ge=0, le=MAX_TIME_MS)


class CaseClosing(BaseModel):
    outcome: str = Field(default="", max_length=1000)


@router.post("/cases", status_code=201, summary="Open a case", responses=raises(NotFound, ValidationFailed))
def open_case(form: NewCase, staff: Opener, region: RegionDep) -> dict[str, Any]:
    case = region.cases.open(
        staff,
        kind=form.kind,
        vins=form.vins,
        legal_basis=form.legal_basis,
        ends_ms=form.ends_ms,
        reference=form.reference,
        subject=form.subject,
        owner_id=form.owner_id,
        authority=form.authority,
        jurisdiction=form.jurisdiction,
        from_ms=form.from_ms,
        to_ms=form.to_ms,
    )
    return case_json(case)


@router.get("/cases", summary="Cases, newest first")
def list_cases(
    staff: Viewer,
    region: RegionDep,
    state: State | None = None,
    kind: Kind | None = None,
    owner_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
    limit: int = Query(200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    return [case_json(c) for c in region.cases.list(state=state, kind=kind, owner_id=owner_id, limit=limit)]


@router.get("/cases/{case_id}", summary="One case")
def get_case(case_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return case_json(region.cases.get(case_id))


@router.post(
    "/cases/{case_id}/close", summary="Close a case: nothing is read under it after this", responses=raises(Conflict)
)
def close_case(case_id: RowId, form: CaseClosing, staff: Opener, region: RegionDep) -> dict[str, Any]:
    return case_json(region.cases.close(staff, case_id, form.outcome))


@router.get(
    "/cases/{case_id}/vehicles/{vin}/telemetry",
    summary="A window of a vehicle's telemetry under an open case (recorded in the owner's access log)",
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        **raises(CaseInactive, OutOfScope, DataFrozen, CrossBorderTransfer),
    },
)
def case_telemetry(
    case_id: RowId,
    vin: str,
    staff: Reader,
    region: RegionDep,
    start: str = Query(description="window start, ISO 8601 or epoch ms (inclusive)"),
    end: str = Query(description="window end, ISO 8601 or epoch ms (exclusive)"),
    signals: str | None = Query(None, description="comma-separated VSS paths or branches; default all"),
    format: Literal["json", "csv", "parquet"] = Query("json"),
    resample_: str | None = Query(None, alias="resample", description="e.g. 1s, 5min: mean per interval"),
) -> Response:
    access = region.cases.access(staff, case_id, vin)
    return serve_telemetry(region, access, start, end, signals, format, resample_)
