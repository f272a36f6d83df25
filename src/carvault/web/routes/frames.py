"""Exterior camera frames: vehicles upload de-identified JPEGs bound to a signed batch; owners download them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from carvault.access.audit import AuditAction
from carvault.errors import (
    BadRequest,
    DeIdentificationMissing,
    NotFound,
    NotShareable,
    PayloadTooLarge,
    UnknownVehicle,
    UnsupportedMediaType,
)
from carvault.ingest.frames import FRAME_MEDIA_TYPE, VIN_HEADER, FrameStore, UnknownFrame
from carvault.protocol import CAMERA
from carvault.web.deps import Caller, RegionDep, binary_body, header_parameter, read_body
from carvault.web.errors import raises

router = APIRouter(tags=["camera frames"])


def get_frames(request: Request, region: RegionDep) -> FrameStore:
    """The region's frame store (built on first use and kept on the app)."""
    store = getattr(region, "frames", None) or getattr(request.app.state, "frames", None)
    if store is None:
        store = FrameStore(region.db, region.segment_reader, region.blobs)
        request.app.state.frames = store
    return store


FramesDep = Annotated[FrameStore, Depends(get_frames)]


@router.post(
    "/api/v1/ingest/frames",
    tags=["vehicle upload"],
    summary="Upload one de-identified camera frame named by an accepted media batch",
    openapi_extra={
        **binary_body(FRAME_MEDIA_TYPE, "one de-identified JPEG whose SHA-256 an accepted media batch names"),
        "parameters": [header_parameter(VIN_HEADER, "the vehicle's VIN", {"type": "string", "minLength": 1})],
    },
    responses=raises(
        BadRequest, UnknownVehicle, UnknownFrame, PayloadTooLarge, UnsupportedMediaType, DeIdentificationMissing
    ),
)
async def upload_frame(request: Request, frames: FramesDep) -> dict[str, Any]:
    """Take one JPEG (Content-Type image/jpeg, header CarVault-Vin) whose SHA-256 a signed batch names."""
    body = await read_body(request, frames.max_bytes, "frame")
    return await run_in_threadpool(
        frames.accept, request.headers.get(VIN_HEADER), body, request.headers.get("content-type")
    )


@router.get(
    "/api/v1/vehicles/{vin}/frames/{sha256}",
    tags=["vehicles"],
    summary="One de-identified camera frame of my vehicle (JPEG; never served to a grant)",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}}, **raises(NotShareable)},
)
def download_frame(vin: str, sha256: str, caller: Caller, region: RegionDep, frames: FramesDep) -> Response:
    """The owner's own frame; a grant holder is told camera frames are never shareable (compliance/sharing.py)."""
    access = region.grants.access(caller, vin)
    if not access.view.is_owner:
        raise NotShareable("camera frames are never shared through grants", categories=["exterior_camera"])
    v = access.vehicle
    region.deletions.check_served(v.vin)
    rec, data = frames.read(v.vin, sha256)
    # Past the camera category's period by the last purge's cutoffs (it skipped a held vehicle): not served.
    cutoff = region.retention.withheld().get(CAMERA + "FrameHash")
    if cutoff is not None and rec.t_ms < cutoff:
        raise NotFound(f"vehicle {v.vin} has no stored frame {sha256}", vin=v.vin, sha256=sha256)
    region.audit.by_owner(
        caller.owner_id,
        AuditAction.FRAME_READ,
        vin=v.vin,
        detail={"sha256": rec.sha256, "seq": rec.seq, "t_ms": rec.t_ms, "bytes": len(data)},
    )
    return Response(
        data,
        media_type=FRAME_MEDIA_TYPE,
        headers={"ETag": f'"{rec.sha256}"', "Content-Disposition": f'inline; filename="{rec.sha256}.jpg"'},
    )
