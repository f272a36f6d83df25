"""Background exports: a window or the whole history as CSV, Parquet, JSON or GPX, with progress."""

from __future__ import annotations

import threading
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from carvault.access.jobs import MEDIA_TYPES, ExportJobs, job_json
from carvault.errors import Conflict, DataFrozen, NotFound
from carvault.web.deps import CurrentOwner, RegionDep, RowId, parse_interval, parse_time
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
    summary="Start an export job (answered at once; poll it for progress)",
    responses=raises(NotFound, Conflict, DataFrozen),
)
def create_export(req: ExportRequest, request: Request, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.owned_one(owner.owner_id, req.vin)
    start = parse_time(str(req.start), "start") if req.start is not None else None
    end = parse_time(str(req.end), "end") if req.end is not None else None
    interval = parse_interval(req.resample) if req.resample else None
    job = get_jobs(request).create(
        owner.owner_id, v.vin, start_ms=start, end_ms=end, fmt=req.format, signals=req.signals, resample_ms=interval
    )
    region.audit.by_owner(
        owner.owner_id,
        "export.create",
        vin=v.vin,
        detail={
            "export_id": job.id,
            "start_ms": job.start_ms,
            "end_ms": job.end_ms,
            "format": job.format,
            "signals": job.signals or "*",
            "resample_ms": interval,
            "whole_history": job.whole_history,
        },
    )
    return job_json(job)


@router.get("", summary="My export jobs, newest first")
def list_exports(request: Request, owner: CurrentOwner, vin: str | None = None) -> list[dict[str, Any]]:
    return [job_json(j) for j in get_jobs(request).for_owner(owner.owner_id, vin.upper() if vin else None)]


@router.get("/{export_id}", summary="One export job: status and progress (0..1)")
def get_export(export_id: RowId, request: Request, owner: CurrentOwner) -> dict[str, Any]:
    return job_json(get_jobs(request).get(owner.owner_id, export_id))


@router.get(
    "/{export_id}/download",
    summary="The finished file",
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}, **raises(Conflict)},
)
def download_export(export_id: RowId, request: Request, owner: CurrentOwner, region: RegionDep) -> FileResponse:
    jobs = get_jobs(request)
    job = jobs.get(owner.owner_id, export_id)
    path = jobs.open_file(job)
    region.audit.by_owner(
        owner.owner_id, "export.download", vin=job.vin, detail={"export_id": job.id, "sha256": job.sha256}
    )
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[job.format],
        filename=jobs.file_name(job),
        headers={"X-Content-SHA256": job.sha256 or ""},
    )


@router.delete("/{export_id}", summary="Cancel a job, or delete a finished export's file", responses=raises(Conflict))
def cancel_export(export_id: RowId, request: Request, owner: CurrentOwner) -> dict[str, Any]:
    return job_json(get_jobs(request).cancel(owner.owner_id, export_id))
