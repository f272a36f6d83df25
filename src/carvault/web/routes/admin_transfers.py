"""The operator's transfer API: approved cross-border transfer records, their counters per year, and the log.

Thin over ``compliance.transfers.Transfers`` (region.transfers), the gate every read by a principal abroad passes.
Creating and suspending records needs ``transfers.manage``; reading them, the counters and the events
``transfers.view``. Paths are relative to /api/v1/admin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.roles import Permission
from carvault.compliance.transfers import RecipientKind, RecordStatus, Route, event_json, record_json
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.store.metadata import now_ms
from carvault.web.deps import MAX_DB_INT, MAX_TIME_MS, RegionDep, RowId, staff_with
from carvault.web.errors import raises

router = APIRouter(tags=["admin: transfers"])
Manager = Annotated[StaffPrincipal, Depends(staff_with(Permission.TRANSFERS_MANAGE))]
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.TRANSFERS_VIEW))]
RouteName = Literal["security_assessment", "standard_contract", "certification"]
KindName = Literal["app", "staff", "authority", "entity"]
StatusName = Literal["approved", "suspended", "expired"]
# One list each (compliance/transfers.py); the literals only give the API document its enums.
assert set(RouteName.__args__) == set(Route)  # type: ignore[attr-defined]
assert set(KindName.__args__) == set(RecipientKind)  # type: ignore[attr-defined]
assert set(StatusName.__args__) == set(RecordStatus)  # type: ignore[attr-defined]
Year = Annotated[
    int | None, Query(ge=2000, le=9999, description="calendar year (the region's civil time); default this year")
]


class NewRecord(BaseModel):
    """An approved transfer: who receives what, where, for what, how many persons a year, and until when."""

    model_config = ConfigDict(extra="forbid")
    route: RouteName
    recipient_kind: KindName = Field(description="app (client_id), staff (username), authority or entity (name)")
    recipient: str = Field(min_length=1, max_length=300)
    recipient_jurisdiction: str = Field(min_length=1, max_length=16, description="a region name, e.g. eu")
    purpose: str = Field(min_length=1, max_length=1000)
    categories: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=64)
    max_persons: int = Field(ge=1, le=1_000_000_000, description="persons per calendar year the approval covers")
    from_ms: int | None = Field(default=None, ge=0, le=MAX_TIME_MS, description="start (epoch ms); default now")
    to_ms: int = Field(ge=0, le=MAX_TIME_MS, description="end of the approved period (epoch ms, exclusive)")
    approval_reference: str = Field(min_length=1, max_length=300)


class Suspension(BaseModel):
    """Why a record stops covering transfers."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)


@router.post(
    "/transfers/records",
    status_code=201,
    summary="Record an approved cross-border transfer",
    responses=raises(ValidationFailed),
)
def create_record(form: NewRecord, staff: Manager, region: RegionDep) -> dict[str, Any]:
    """Important data is accepted only on a security assessment; the recipient must be outside this region."""
    record = region.transfers.create(
        route=form.route,
        recipient_kind=form.recipient_kind,
        recipient=form.recipient,
        recipient_jurisdiction=form.recipient_jurisdiction,
        purpose=form.purpose,
        categories=form.categories,
        max_persons=form.max_persons,
        from_ms=now_ms() if form.from_ms is None else form.from_ms,
        to_ms=form.to_ms,
        approval_reference=form.approval_reference,
        by=staff.actor,
    )
    return record_json(record)


@router.get("/transfers/records", summary="Transfer records, newest first")
def list_records(
    staff: Viewer,
    region: RegionDep,
    status: StatusName | None = Query(None, description="as shown now: approved, suspended or expired"),
    recipient: str | None = Query(None, max_length=300),
) -> dict[str, Any]:
    now = now_ms()
    return {"records": [record_json(r, now) for r in region.transfers.list(status=status, recipient=recipient)]}


@router.get(
    "/transfers/records/{record_id}", summary="One transfer record with this year's counts", responses=raises(NotFound)
)
def get_record(record_id: RowId, staff: Viewer, region: RegionDep, year: Year = None) -> dict[str, Any]:
    record = region.transfers.get(record_id)
    y = year or region.transfers.year()
    return {**record_json(record), "year": y, "counters": region.transfers.record_counters(record, y)}


@router.post(
    "/transfers/records/{record_id}/suspend",
    summary="Suspend a transfer record (effective on the next request)",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def suspend_record(record_id: RowId, form: Suspension, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return record_json(region.transfers.suspend(record_id, reason=form.reason, by=staff.actor))


@router.get("/transfers/counters", summary="Persons transferred abroad in a year, with thresholds and warnings")
def counters(staff: Viewer, region: RegionDep, year: Year = None) -> dict[str, Any]:
    """Region-wide sensitive and non-sensitive persons, per record, each limit's level (ok, warning, reached)."""
    return region.transfers.counters(year or region.transfers.year())


@router.get("/transfers/events", summary="Logged transfers abroad, newest first")
def events(
    staff: Viewer,
    region: RegionDep,
    record_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
    owner_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
    year: Year = None,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
) -> dict[str, Any]:
    rows = region.transfers.events(record_id=record_id, owner_id=owner_id, year=year, limit=limit, before_id=before_id)
    return {"events": [event_json(e) for e in rows]}
