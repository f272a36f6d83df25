"""The operator's rights desk: list and show requests (rights.view); assign, start, verify, complete, refuse and open
a case for one (rights.handle). Rules live in compliance/rights.py; this module only translates HTTP."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.cases import case_json
from carvault.compliance.rights import HANDLING_BASIS, MAX_TEXT, Kind, Status, actor_of, request_json
from carvault.compliance.roles import Permission
from carvault.errors import Conflict, NotFound, RoleForbidden, ValidationFailed
from carvault.web.deps import MAX_DB_INT, MAX_TIME_MS, RegionDep, RowId, staff_with
from carvault.web.errors import raises
from carvault.web.routes.rights import KindName

router = APIRouter(tags=["admin: rights"])
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.RIGHTS_VIEW))]
Handler = Annotated[StaffPrincipal, Depends(staff_with(Permission.RIGHTS_HANDLE))]
StatusName = Literal["received", "in_progress", "done", "refused", "withdrawn"]
assert set(StatusName.__args__) == {s.value for s in Status}  # type: ignore[attr-defined]


@router.get("/rights-requests", summary="Rights requests, soonest deadline first, with counts (overdue on top)")
def list_requests(
    staff: Viewer,
    region: RegionDep,
    status: StatusName | None = None,
    kind: KindName | None = None,
    overdue: bool | None = Query(None, description="true: open past the deadline; false: the others"),
    owner_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_DB_INT),
) -> dict[str, Any]:
    rows = region.rights.list(
        status=Status(status) if status else None,
        kind=Kind(kind) if kind else None,
        overdue=overdue,
        owner_id=owner_id,
        limit=limit,
        offset=offset,
    )
    return {"counts": region.rights.counts(), "requests": [request_json(r, operator=True) for r in rows]}


@router.get("/rights-requests/{request_id}", summary="One rights request", responses=raises(NotFound))
def show_request(request_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.get(request_id), operator=True)


class Assignment(BaseModel):
    username: str = Field(min_length=1, max_length=64, description="the staff member who will handle it")


@router.post(
    "/rights-requests/{request_id}/assign",
    summary="Give a request to a handler",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def assign(request_id: RowId, form: Assignment, staff: Handler, region: RegionDep) -> dict[str, Any]:
    member = region.staff.by_username(form.username)
    if member.disabled_ms is not None:
        raise ValidationFailed(f"{member.username} is disabled", field="username")
    return request_json(region.rights.assign(request_id, staff, member), operator=True)


@router.post(
    "/rights-requests/{request_id}/start", summary="Start handling a request", responses=raises(NotFound, Conflict)
)
def start(request_id: RowId, staff: Handler, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.start(request_id, staff), operator=True)


class Note(BaseModel):
    note: str = Field(min_length=1, max_length=MAX_TEXT, description="how the evidence was checked")


@router.post(
    "/rights-requests/{request_id}/verify",
    summary="Record that a next-of-kin request's evidence was checked",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def verify(request_id: RowId, form: Note, staff: Handler, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.verify(request_id, staff, form.note), operator=True)


class Outcome(BaseModel):
    outcome: str = Field(max_length=MAX_TEXT, description="what was done, as the owner will read it")


@router.post(
    "/rights-requests/{request_id}/complete",
    summary="Close a request as done, with its outcome",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def complete(request_id: RowId, form: Outcome, staff: Handler, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.complete(request_id, staff, form.outcome), operator=True)


class Refusal(BaseModel):
    reason: str = Field(max_length=MAX_TEXT, description="why, as the owner will read it (required)")


@router.post(
    "/rights-requests/{request_id}/refuse",
    summary="Refuse a request, with a written reason",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def refuse(request_id: RowId, form: Refusal, staff: Handler, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.refuse(request_id, staff, form.reason), operator=True)


@router.post(
    "/rights-requests/{request_id}/deletion",
    summary="Carry out the deletion a request asks for (a verified next-of-kin request, PIPL Art. 49)",
    responses=raises(NotFound, Conflict),
)
def carry_out_deletion(request_id: RowId, staff: Handler, region: RegionDep) -> dict[str, Any]:
    r = region.rights.deletion_due(request_id)
    assert r.owner_id is not None
    d = region.deletions.request(
        r.owner_id,
        r.vin,
        f"rights request {r.id} ({r.kind})",
        by=actor_of(staff),
        legal_basis=HANDLING_BASIS,
        immediately=True,  # a verified next-of-kin request: no owner is left to change their mind (docs/deletion.md)
    )
    return request_json(region.rights.link(r.id, deletion_request_id=d.id), operator=True)


class CaseForm(BaseModel):
    legal_basis: str = Field(min_length=1, max_length=400)
    ends_ms: int = Field(ge=0, le=MAX_TIME_MS, description="when the case ends (epoch ms), at most 90 days away")
    vins: list[Annotated[str, Field(min_length=17, max_length=17)]] | None = Field(
        None, max_length=100, description="default: the request's vehicle, else every vehicle of the owner"
    )
    from_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)
    to_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)


@router.post(
    "/rights-requests/{request_id}/case",
    status_code=201,
    summary="Open a rights-request case to read the data the request needs (compliance/cases.py)",
    responses=raises(NotFound, Conflict, ValidationFailed, RoleForbidden),
)
def open_case(request_id: RowId, form: CaseForm, staff: Handler, region: RegionDep) -> dict[str, Any]:
    r = region.rights.get(request_id)
    if r.status != Status.IN_PROGRESS:
        raise Conflict("start the request before opening a case for it", status=r.status)
    if r.owner_id is None:
        raise Conflict("the request names no account here, so there is no data to read")
    vins = form.vins or ([r.vin] if r.vin else [v.vin for v in region.vehicles.owned(r.owner_id)])
    if not vins:
        raise ValidationFailed("the owner has no vehicle; there is no telemetry to read", field="vins")
    case = region.cases.open(
        staff,
        kind="rights_request",
        vins=vins,
        legal_basis=form.legal_basis,
        ends_ms=form.ends_ms,
        reference=f"rights request {r.id}",
        subject=f"{r.kind} request of {r.received_ms}",
        owner_id=r.owner_id,
        from_ms=form.from_ms,
        to_ms=form.to_ms,
    )
    region.rights.link_case(r.id, case.id)
    return {"request": request_json(region.rights.get(r.id), operator=True), "case": case_json(case)}
