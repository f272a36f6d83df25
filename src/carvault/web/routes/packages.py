"""Incident packages for owners: request, list, download, and see the verification result."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from carvault.access.audit import OWNER_REQUEST, Actor
from carvault.access.packages import Event, PackageBuilder, trust_document
from carvault.errors import NotFound
from carvault.store.metadata import IncidentPackage, SavedCheckpoint
from carvault.verify.package import verify_package
from carvault.web.deps import CurrentOwner, RegionDep, RowId, parse_time

router = APIRouter(prefix="/api/v1", tags=["incident packages"])


class PackageRequest(BaseModel):
    """Either an event (time zero, with minutes before/after) or an explicit window."""

    event_time: str | int | None = Field(None, description="ISO 8601 or epoch ms of the event (time zero)")
    event_kind: str = Field("incident", max_length=32)
    minutes_before: float = Field(30, ge=0, le=720)
    minutes_after: float = Field(1, ge=0, le=720)
    start: str | int | None = None
    end: str | int | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PackageRequest:
        if (self.event_time is None) == (self.start is None or self.end is None):
            raise ValueError("give either event_time, or start and end")
        return self


def package_json(p: IncidentPackage) -> dict[str, Any]:
    """A package as the API lists it."""
    return {
        "id": p.id,
        "vin": p.vin,
        "start_ms": p.start_ms,
        "end_ms": p.end_ms,
        "event_kind": p.event_kind,
        "event_ms": p.event_ms,
        "requested_by": p.requested_by,
        "order_id": p.order_id,
        "sha256": p.sha256,
        "size": p.size,
        "batches": p.batches,
        "tree_size": p.tree_size,
        "created_ms": p.created_ms,
        "download": f"/api/v1/vehicles/{p.vin}/packages/{p.id}/download",
        "file_name": download_name(p),
    }


def download_name(p: IncidentPackage) -> str:
    """The file name a package downloads as (the page's verify command names exactly this file)."""
    return f"carvault-{p.file_name}"


def listed_gaps(data: bytes) -> list[dict[str, Any]]:
    """The gaps a package's coverage.json lists (kind, from_ms, to_ms, detail); none when it cannot be read (the
    verification's coverage check then says why)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            doc = json.loads(z.read("coverage.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return []
    gaps = doc.get("gaps") if isinstance(doc, dict) else None
    keys = ("kind", "from_ms", "to_ms", "detail")
    return [{k: g.get(k) for k in keys} for g in gaps or [] if isinstance(g, dict)]


def _owned_package(region: Any, owner_id: int, vin: str, package_id: int) -> IncidentPackage:
    v = region.vehicles.owned_one(owner_id, vin)
    with region.db.session() as s:
        p = s.get(IncidentPackage, package_id)
    if p is None or p.vin != v.vin or p.owner_id != owner_id:
        raise NotFound("no such package")
    return p


@router.post("/vehicles/{vin}/packages", status_code=201, summary="Build an incident package")
def create_package(vin: str, req: PackageRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    region.deletions.check_served(v.vin)
    event = None
    if req.event_time is not None:
        t = parse_time(str(req.event_time), "event_time")
        event = Event(req.event_kind, t)
        start, end = t - int(req.minutes_before * 60_000), t + int(req.minutes_after * 60_000)
    else:
        start, end = parse_time(str(req.start), "start"), parse_time(str(req.end), "end")
    row = PackageBuilder(region).build(
        v.vin,
        start,
        end,
        event=event,
        requested_by=Actor("owner", str(owner.owner_id)),
        owner_id=owner.owner_id,
        legal_basis=OWNER_REQUEST,
    )
    return package_json(row)


@router.get("/vehicles/{vin}/packages", summary="My packages for a vehicle")
def list_packages(vin: str, owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    with region.db.session() as s:
        rows = s.scalars(
            select(IncidentPackage)
            .where(IncidentPackage.vin == v.vin, IncidentPackage.owner_id == owner.owner_id)
            .order_by(IncidentPackage.id.desc())
        )
        return [package_json(p) for p in rows]


@router.get(
    "/vehicles/{vin}/packages/{package_id}/download",
    summary="Download a package (ZIP)",
    responses={200: {"content": {"application/zip": {}}}},
)
def download_package(vin: str, package_id: RowId, owner: CurrentOwner, region: RegionDep) -> Response:
    p = _owned_package(region, owner.owner_id, vin, package_id)
    region.audit.by_owner(owner.owner_id, "package.download", vin=p.vin, detail={"package_id": p.id})
    return Response(
        PackageBuilder(region).read(p),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{download_name(p)}"'},
    )


@router.get(
    "/vehicles/{vin}/packages/{package_id}/verification",
    summary="Run the offline verifier on the stored package (the same checks `carvault verify` does); the gaps "
    "its coverage report lists, with their times",
)
def verification(vin: str, package_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    p = _owned_package(region, owner.owner_id, vin, package_id)
    data = PackageBuilder(region).read(p)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "package.zip"
        path.write_bytes(data)
        verdict = verify_package(path, trust=trust_document(region))
    return {"ok": verdict.ok, "checks": [asdict(c) for c in verdict.checks], "gaps": listed_gaps(data)}


@router.get(
    "/region/trust",
    tags=["transparency log"],
    summary="What verifiers trust for this region: log origin and key, vehicle CA (save it as a file)",
)
def trust(region: RegionDep) -> dict[str, Any]:
    return trust_document(region)


class SaveCheckpoint(BaseModel):
    note: str = Field(max_length=10_000, description="a checkpoint as served by /api/v1/log/checkpoint")


@router.post(
    "/log/saved-checkpoints",
    status_code=201,
    tags=["transparency log"],
    summary="Keep a checkpoint you were shown (packages then prove consistency with it)",
)
def save_checkpoint(req: SaveCheckpoint, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    from carvault.errors import ValidationFailed
    from carvault.ledger.checkpoint import verify_checkpoint
    from carvault.ledger.merkle import VerificationError

    try:
        cp = verify_checkpoint(req.note, region.log.public_key, region.log.key_name, origin=region.log.origin)
    except VerificationError as e:
        raise ValidationFailed(f"not a checkpoint of this region's log: {e}") from None
    with region.db.session() as s:
        existing = s.scalar(
            select(SavedCheckpoint).where(
                SavedCheckpoint.owner_id == owner.owner_id, SavedCheckpoint.tree_size == cp.size
            )
        )
        if existing is None:
            s.add(SavedCheckpoint(owner_id=owner.owner_id, tree_size=cp.size, note=req.note))
    return {"tree_size": cp.size, "root": cp.root.hex()}


@router.get("/log/saved-checkpoints", tags=["transparency log"], summary="Checkpoints I kept")
def saved_checkpoints(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    with region.db.session() as s:
        rows = s.scalars(
            select(SavedCheckpoint)
            .where(SavedCheckpoint.owner_id == owner.owner_id)
            .order_by(SavedCheckpoint.tree_size)
        )
        return [{"tree_size": c.tree_size, "note": c.note, "saved_ms": c.saved_ms} for c in rows]
