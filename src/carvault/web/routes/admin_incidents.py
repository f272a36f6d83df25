"""The operator's incident register (PIPL Art. 57): record, correct, compute affected owners, notify owners, record
the authority's notification, close (incidents.manage); list and show (incidents.view). Rules: compliance/incidents.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.incidents import FIELDS, LANGUAGE_CODES, MAX_FIELD, MAX_SCOPE, incident_json
from carvault.compliance.roles import Permission
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.web.deps import MAX_DB_INT, MAX_TIME_MS, RegionDep, RowId, staff_with
from carvault.web.errors import raises

router = APIRouter(tags=["admin: incidents"])
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.INCIDENTS_VIEW))]
Manager = Annotated[StaffPrincipal, Depends(staff_with(Permission.INCIDENTS_MANAGE))]


class NoticeText(BaseModel):
    """The notification in one language: the parts PIPL Art. 57 lists."""

    what: str = Field("", max_length=MAX_FIELD, description="what happened and which information is concerned")
    cause: str = Field("", max_length=MAX_FIELD)
    harm: str = Field("", max_length=MAX_FIELD, description="the harm it may cause")
    measures: str = Field("", max_length=MAX_FIELD, description="the remedies taken")
    actions: str = Field("", max_length=MAX_FIELD, description="what owners can do to reduce the harm")
    contact: str = Field("", max_length=MAX_FIELD, description="how to reach the operator")


assert tuple(NoticeText.model_fields) == FIELDS


class Content(BaseModel):
    """The notification text, per portal language (English required; every language before owners are told)."""

    en: NoticeText
    zh_CN: NoticeText | None = Field(None, alias="zh-CN")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None}


assert {"en", "zh-CN"} == set(LANGUAGE_CODES)
Vin = Annotated[str, Field(min_length=17, max_length=17)]


class NewIncident(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    detected_ms: int = Field(ge=1, le=MAX_TIME_MS)
    content: Content
    vins: list[Vin] = Field(default_factory=list, max_length=MAX_SCOPE)
    owner_ids: list[Annotated[int, Field(ge=1, le=MAX_DB_INT)]] = Field(default_factory=list, max_length=MAX_SCOPE)
    categories: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)
    occurred_from_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)
    occurred_to_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)


@router.post("/incidents", status_code=201, summary="Record an incident", responses=raises(ValidationFailed))
def record(form: NewIncident, staff: Manager, region: RegionDep) -> dict[str, Any]:
    inc = region.incidents.record(
        staff,
        title=form.title,
        detected_ms=form.detected_ms,
        content=form.content.as_dict(),
        vins=form.vins,
        owner_ids=form.owner_ids,
        categories=form.categories,
        occurred_from_ms=form.occurred_from_ms,
        occurred_to_ms=form.occurred_to_ms,
    )
    return incident_json(inc)


@router.get("/incidents", summary="Incidents, newest first")
def list_incidents(
    staff: Viewer,
    region: RegionDep,
    status: Literal["open", "notified", "closed"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_DB_INT),
) -> list[dict[str, Any]]:
    return [incident_json(i) for i in region.incidents.list(status=status, limit=limit, offset=offset)]


@router.get("/incidents/{incident_id}", summary="One incident", responses=raises(NotFound))
def show(incident_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return incident_json(region.incidents.get(incident_id))


class Correction(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=300)
    content: Content | None = None


@router.patch(
    "/incidents/{incident_id}",
    summary="Correct the title or the notification text before owners are told",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def correct(incident_id: RowId, form: Correction, staff: Manager, region: RegionDep) -> dict[str, Any]:
    content = form.content.as_dict() if form.content else None
    return incident_json(region.incidents.update(incident_id, staff, title=form.title, content=content))


@router.get(
    "/incidents/{incident_id}/affected",
    summary="The affected owners, computed from the records",
    responses=raises(NotFound),
)
def affected(incident_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    owners = region.incidents.affected(incident_id)
    return {"incident_id": incident_id, "count": len(owners), "owner_ids": owners}


@router.post(
    "/incidents/{incident_id}/notify-owners",
    summary="Send the notice to every affected owner's portal (each once)",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def notify_owners(incident_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    sent = region.incidents.notify_owners(incident_id, staff)
    return {"sent": sent, "incident": incident_json(region.incidents.get(incident_id))}


class AuthorityNotice(BaseModel):
    authority: str = Field(min_length=1, max_length=300)
    reference: str = Field("", max_length=200)
    content: str = Field(min_length=1, max_length=20_000, description="what was reported")
    notified_ms: int | None = Field(None, ge=1, le=MAX_TIME_MS, description="when (default: now)")


@router.post(
    "/incidents/{incident_id}/authority",
    summary="Record the notification of the authority",
    responses=raises(NotFound, ValidationFailed),
)
def notify_authority(incident_id: RowId, form: AuthorityNotice, staff: Manager, region: RegionDep) -> dict[str, Any]:
    inc = region.incidents.notify_authority(
        incident_id,
        staff,
        authority=form.authority,
        reference=form.reference,
        content=form.content,
        notified_ms=form.notified_ms,
    )
    return incident_json(inc)


@router.post("/incidents/{incident_id}/close", summary="Close an incident", responses=raises(NotFound, Conflict))
def close(incident_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return incident_json(region.incidents.close(incident_id, staff))
