"""Background exports: a window or the whole history as CSV, Parquet, JSON or GPX, with progress.

The owner exports anything of theirs; a grant holder exports within its grant (access/jobs.py), sees only the
jobs made under it, and every look at a job re-checks the grant (revoked or ended: 401; car no longer covered: 403).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from carvault.access.accounts import Principal
from carvault.access.audit import AuditAction
from carvault.access.jobs import MEDIA_TYPES, ExportJobs, job_json
from carvault.errors import Conflict, DataFrozen, NotFound, OutOfScope
from carvault.store.tables import ExportJob
from carvault.web.deps import Caller, RegionDep, RowId, parse_interval, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/exports", tags=["exports"])
_create_lock = threading.Lock()


def get_jobs(request: Request) -> ExportJobs:
    """This process's export worker for the app's region (made on first use)."""
    state = request.app.state
    with _create_lock:
        if getattr(state, "export_jobs", None) is None:
            state.export_jobs = ExportJobs(state.region)
    return state.export_jobs


class ExportRequest(BaseModel):
    """What to export; leave out start and end for the whole history."""

    vin: str = Field(min_length=17, max_length=17)
    start: str | int | None = Field(None, description="ISO 8601 or epoch ms (inclusive)")
    end: str | int | None = Field(None, description="ISO 8601 or epoch ms (exclusive)")
    format: Literal["csv", "parquet", "json", "gpx"] = "csv"
    signals: str | None = Field(None, max_length=20_000, description="comma-separated VSS paths or branches")
    resample: str | None = Field(None, max_length=16, description="e.g. 1s, 5min: mean per interval")


@router.post(
    "",
    status_code=202,
    summary="Start an export job (answered at once; poll it for progress). A grant holder exports within its grant",
    responses=raises(NotFound, Conflict, DataFrozen, OutOfScope),
)
def create_export(req: ExportRequest, request: Request, caller: Caller, region: RegionDep) -> dict[str, Any]:
    access = region.grants.access(caller, req.vin, transfer_action="export")
    v = access.vehicle
    region.deletions.check_served(v.vin)
    start = parse_time(str(req.start), "start") if req.start is not None else None
    end = parse_time(str(req.end), "end") if req.end is not None else None
    interval = parse_interval(req.resample) if req.resample else None
    grant_id = access.grant.id if access.grant is not None else None
    job = get_jobs(request).create(
        v.owner_id,
        v.vin,
        start_ms=start,
        end_ms=end,
        fmt=req.format,
        signals=req.signals,
        resample_ms=interval,
        view=access.view,
        grant_id=grant_id,
    )
    detail = {
        "export_id": job.id,
        "start_ms": job.start_ms,
        "end_ms": job.end_ms,
        "format": job.format,
        "signals": job.signals or "*",
        "resample_ms": interval,
        "whole_history": job.whole_history,
    }
    if access.view.is_owner:
        region.audit.by_owner(caller.owner_id, AuditAction.EXPORT_CREATE, vin=v.vin, detail=detail)
    else:
        region.grants.record_read(access, AuditAction.EXPORT_CREATE, detail)
    return job_json(job)


def _job(request: Request, caller: Principal, export_id: int) -> ExportJob:
    """One job the caller may see: the owner's any, a grant holder's only those made under its grant."""
    return get_jobs(request).get(caller.owner_id, export_id, caller.grant_id)


@router.get("", summary="My export jobs, newest first (a grant holder: the jobs made under its grant)")
def list_exports(request: Request, caller: Caller, region: RegionDep, vin: str | None = None) -> list[dict[str, Any]]:
    covered = {v.vin for v in region.grants.vehicles(caller)}  # a grant holder's grant is re-checked here
    jobs = get_jobs(request).for_owner(caller.owner_id, vin.upper() if vin else None, grant_id=caller.grant_id)
    return [job_json(j) for j in jobs if caller.is_owner or j.vin in covered]


@router.get("/{export_id}", summary="One export job: status and progress (0..1)")
def get_export(export_id: RowId, request: Request, caller: Caller, region: RegionDep) -> dict[str, Any]:
    job = _job(request, caller, export_id)
    if not caller.is_owner:
        # The grant re-checked (revoked or ended → 401, car not covered → 403); a status is no transfer to count.
        region.grants.access(caller, job.vin, count_transfer=False)
    return job_json(job)


@router.get(
    "/{export_id}/download",
    summary="The finished file",
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}, **raises(Conflict)},
)
def download_export(export_id: RowId, request: Request, caller: Caller, region: RegionDep) -> Response:
    jobs = get_jobs(request)
    job = _job(request, caller, export_id)
    access = None if caller.is_owner else region.grants.access(caller, job.vin, transfer_action="download")
    region.deletions.check_served(job.vin)
    found = jobs.download(job)  # a file here (local blob store) or a stream from object storage
    detail = {"export_id": job.id, "sha256": job.sha256}
    if access is None:
        region.audit.by_owner(caller.owner_id, AuditAction.EXPORT_DOWNLOAD, vin=job.vin, detail=detail)
    else:  # the moment the data reaches the recipient: counted as served
        region.grants.record_read(access, AuditAction.EXPORT_DOWNLOAD, {**detail, "rows": job.rows}, rows=job.rows)
    if not isinstance(found, Path):
        disposition = f'attachment; filename="{jobs.file_name(job)}"'
        return StreamingResponse(
            found,
            media_type=MEDIA_TYPES[job.format],
            headers={"X-Content-SHA256": job.sha256 or "", "Content-Disposition": disposition},
        )
    return FileResponse(
        found,
        media_type=MEDIA_TYPES[job.format],
        filename=jobs.file_name(job),
        headers={"X-Content-SHA256": job.sha256 or ""},
    )


@router.delete("/{export_id}", summary="Cancel a job, or delete a finished export's file", responses=raises(Conflict))
def cancel_export(export_id: RowId, request: Request, caller: Caller, region: RegionDep) -> dict[str, Any]:
    job = _job(request, caller, export_id)
    if not caller.is_owner:
        region.grants.access(caller, job.vin, count_transfer=False)
    return job_json(get_jobs(request).cancel(caller.owner_id, job.id, caller.grant_id))
