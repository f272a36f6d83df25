"""The operator's records of processing (NDSMR Art. 12): list and show (records.view); bring generated entries up
to date, add, change and retire entrusted processors, delete an entry past its three years (records.manage)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.records import record_json
from carvault.compliance.roles import Permission
from carvault.errors import Conflict, NotFound, RecordRetained, ValidationFailed
from carvault.web.deps import RegionDep, RowId, staff_with
from carvault.web.errors import raises

router = APIRouter(tags=["admin: records"])
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.RECORDS_VIEW))]
Manager = Annotated[StaffPrincipal, Depends(staff_with(Permission.RECORDS_MANAGE))]


@router.get("/records", summary="Records of processing: activities, recipients, entrusted processors")
def list_records(
    staff: Viewer,
    region: RegionDep,
    kind: Literal["activity", "recipient", "processor"] | None = None,
    current: bool | None = None,
) -> list[dict[str, Any]]:
    return [record_json(r) for r in region.records.list(kind=kind, current=current)]


@router.get("/records/{record_id}", summary="One record", responses=raises(NotFound))
def show(record_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return record_json(region.records.get(record_id))


@router.post("/records/sync", summary="Bring activities (catalogue) and recipients (grants) up to date")
def sync(staff: Manager, region: RegionDep) -> dict[str, int]:
    return region.records.sync(staff)


class ProcessorFields(BaseModel):
    """An entrusted processor (PIPL Art. 21: purpose, period, manner, categories, protection measures)."""

    name: str = Field(min_length=1, max_length=300)
    purpose: str = Field(min_length=1, max_length=4000)
    legal_basis: str = Field(min_length=1, max_length=4000, description="the entrustment contract and its basis")
    retention: str = Field(min_length=1, max_length=4000)
    jurisdiction: str = Field(min_length=2, max_length=16, pattern="^[a-z]{2,16}$")
    categories: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, description="contact, contract reference, measures ...")


class NewProcessor(ProcessorFields):
    key: str = Field(min_length=1, max_length=64, pattern="^[a-z0-9][a-z0-9._-]{0,63}$")


class ProcessorChange(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=300)
    purpose: str | None = Field(None, min_length=1, max_length=4000)
    legal_basis: str | None = Field(None, min_length=1, max_length=4000)
    retention: str | None = Field(None, min_length=1, max_length=4000)
    jurisdiction: str | None = Field(None, min_length=2, max_length=16, pattern="^[a-z]{2,16}$")
    categories: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=64)
    detail: dict[str, Any] | None = None


@router.post(
    "/records/processors",
    status_code=201,
    summary="Record an entrusted processor",
    responses=raises(Conflict, ValidationFailed),
)
def add_processor(form: NewProcessor, staff: Manager, region: RegionDep) -> dict[str, Any]:
    fields = form.model_dump(exclude={"key"})
    return record_json(region.records.add_processor(staff, key=form.key, fields=fields))


@router.patch(
    "/records/{record_id}",
    summary="Change an entrusted processor's record",
    responses=raises(NotFound, Conflict, ValidationFailed),
)
def update(record_id: RowId, form: ProcessorChange, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return record_json(region.records.update_processor(record_id, staff, form.model_dump(exclude_none=True)))


@router.post(
    "/records/{record_id}/retire",
    summary="End an entrusted processor's engagement (the record stays three more years)",
    responses=raises(NotFound, Conflict),
)
def retire(record_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return record_json(region.records.retire(record_id, staff))


@router.delete(
    "/records/{record_id}",
    status_code=204,
    summary="Delete a record retired more than three years ago",
    responses=raises(NotFound, RecordRetained),
)
def delete(record_id: RowId, staff: Manager, region: RegionDep) -> None:
    region.records.delete(record_id, staff)
