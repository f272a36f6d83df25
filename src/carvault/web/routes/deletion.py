"""Delete my data: request it, see the deadline, the status, the receipt, and any legal hold."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from carvault.compliance.deletion import request_json
from carvault.errors import NotFound
from carvault.web.deps import CurrentOwner, RegionDep
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1", tags=["deletion"])


class DeletionForm(BaseModel):
    vin: str | None = Field(None, min_length=17, max_length=17, description="one vehicle, or null for all my data")
    reason: str = Field("", max_length=1000)


@router.post(
    "/deletion-requests",
    status_code=201,
    summary="Ask for deletion of off-vehicle copies",
    responses=raises(NotFound),
)
def create(form: DeletionForm, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    req = region.deletions.request(owner.owner_id, form.vin, form.reason)
    holds = region.deletions.active_holds(
        [req.vin] if req.vin else [v.vin for v in region.vehicles.owned(owner.owner_id)]
    )
    return request_json(req, holds if req.status == "held" else [])


@router.get("/deletion-requests", summary="My deletion requests")
def list_requests(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    return region.deletions.list(owner.owner_id)
