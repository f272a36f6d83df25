"""The operator's retention API: run a purge (or a dry run), list runs with their signed records, the policy.

Thin over ``compliance.retention.Retention`` (region.retention), the same service the scheduler, the CLI and
the console use. Paths are relative to /api/v1/admin.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from carvault.access.staff import StaffPrincipal
from carvault.compliance.retention import run_json
from carvault.compliance.roles import Permission
from carvault.web.deps import RegionDep, RowId, staff_with

router = APIRouter(tags=["admin: retention"])

Runner = Annotated[StaffPrincipal, Depends(staff_with(Permission.RETENTION_RUN))]
Viewer = Annotated[StaffPrincipal, Depends(staff_with(Permission.RETENTION_VIEW))]


class RunRequest(BaseModel):
    """A purge to start now."""

    model_config = ConfigDict(extra="forbid")
    dry_run: bool = Field(False, description="plan and count only: nothing is erased or withheld")


@router.post("/retention/runs", status_code=201, summary="Run a retention purge now (or a dry run)")
def start_run(staff: Runner, region: RegionDep, req: RunRequest | None = None) -> dict[str, Any]:
    """Erase batches past their longest period and withhold categories past theirs; the signed record back.

    ``retention_running`` (409) while another replica's purge holds the lease.
    """
    dry = req.dry_run if req is not None else False
    return run_json(region.retention.run(dry_run=dry, actor=staff.actor))


@router.get("/retention/runs", summary="Recent retention runs, newest first")
def list_runs(
    staff: Viewer, region: RegionDep, limit: int = Query(50, ge=1, le=500, description="how many")
) -> dict[str, Any]:
    runs = region.retention.runs(limit)
    return {"runs": [run_json(r) for r in runs]}


@router.get("/retention/runs/{run_id}", summary="One retention run with its signed purge record")
def get_run(run_id: RowId, staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return run_json(region.retention.get(run_id))


@router.get("/retention/policy", summary="Retention periods per category, cutoffs in force, next run due")
def policy(staff: Viewer, region: RegionDep) -> dict[str, Any]:
    return region.retention.policy(due=True)
