"""Delete my data: request it, see the deadline, the status, the receipt, and any legal hold."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from carvault.compliance.deletion import request_json
from carvault.errors import DeletionNotCancellable, NotFound
from carvault.web.deps import CurrentOwner, RegionDep, RowId
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1", tags=["deletion"])


class DeletionForm(BaseModel):
    vin: str | None = Field(None, min_length=17, max_length=17, description="one vehicle, or null for all my data")
    reason: str = Field("", max_length=1000)
    immediately: bool = Field(
        False,
        description="skip the grace period (setting deletion_grace_s, 72 hours by default) and erase now; "
        "without it the request can be cancelled until due_ms",
    )


@router.post(
    "/deletion-requests",
    status_code=201,
    summary="Ask for deletion of off-vehicle copies (after a grace period in which it can be cancelled)",
    responses=raises(NotFound),
)
def create(form: DeletionForm, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    req = region.deletions.request(owner.owner_id, form.vin, form.reason, immediately=form.immediately)
    holds = region.deletions.active_holds(
        [req.vin] if req.vin else [v.vin for v in region.vehicles.owned(owner.owner_id)]
    )
    return request_json(req, holds if req.status == "held" else [])


@router.get("/deletion-requests", summary="My deletion requests")
def list_requests(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    return region.deletions.list(owner.owner_id)


@router.post(
    "/deletion-requests/{request_id}/cancel",
    summary="Cancel a deletion request during its grace period",
    responses=raises(NotFound, DeletionNotCancellable),
)
def cancel(request_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return request_json(region.deletions.cancel(owner.owner_id, request_id), [])
