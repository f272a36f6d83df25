"""An owner's vehicles: pairing, listing, telemetry windows and batch coverage."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from carvault.access.audit import AuditAction
from carvault.access.exports import FORMATS, render, window_parquet
from carvault.access.grants import Access
from carvault.access.vehicles import NAME_MAX, display_name
from carvault.errors import AlreadyExists, NotFound, TooManyRequests, ValidationFailed
from carvault.pki import attested_by
from carvault.region import Region
from carvault.store.metadata import Vehicle
from carvault.store.telemetry import resample
from carvault.web.deps import MAX_TIME_MS, Caller, CurrentOwner, RegionDep, parse_interval, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])


class ClaimRequest(BaseModel):
    vin: str = Field(min_length=17, max_length=17)
    pairing_code: str = Field(min_length=4, max_length=32)


class RenameRequest(BaseModel):
    name: str | None = Field(
        None, max_length=4 * NAME_MAX, description=f"the car's name (at most {NAME_MAX} characters); null: its model"
    )


def vehicle_json(v: Vehicle, *, owner: bool = True) -> dict[str, Any]:
    """A vehicle as its owner sees it; a grant holder sees its identity only.

    The chain head moves with every upload, so it would tell a grant holder that (and when) the car is still
    sending data after its history window ended; when the owner paired the car is none of its business either.
    """
    if not owner:  # the owner's name for the car is theirs
        return {"vin": v.vin, "region": v.region, "model": v.model, "display_name": v.model or v.vin}
    attested = attested_by(v.certificate_pem) if v.certificate_pem else None
    return {
        "vin": v.vin,
        "region": v.region,
        "model": v.model,
        "name": v.name,
        "display_name": display_name(v),
        "claimed_ms": v.claimed_ms,
        "last_seq": v.last_seq,
        "last_hash": v.last_hash,
        # Who signs the car's batches (docs/protocol.md §9): the car, or this region for a Fleet Telemetry car.
        "provenance": "region-attested" if attested else "car-signed",
        "attested_by": attested,
    }


@router.get("", summary="My vehicles (for a grant token: the vehicles its grant covers)")
def list_vehicles(caller: Caller, region: RegionDep) -> list[dict[str, Any]]:
    found = region.grants.vehicles(caller)
    if not caller.is_owner:  # a grant holder learning which cars it reaches is a read, in the owner's access log
        for v in found:
            region.grants.record_read(region.grants.access(caller, v.vin), AuditAction.VEHICLE_READ, {"list": True})
    return [vehicle_json(v, owner=caller.is_owner) for v in found]


@router.post(
    "/claim",
    status_code=201,
    summary="Pair a vehicle with the code it shows",
    responses=raises(NotFound, AlreadyExists, TooManyRequests),
)
def claim(req: ClaimRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.claim(owner.owner_id, req.vin, req.pairing_code)
    region.audit.by_owner(owner.owner_id, "vehicle.claim", vin=v.vin)
    return vehicle_json(v)


@router.get("/{vin}", summary="One of my vehicles")
def get_vehicle(vin: str, caller: Caller, region: RegionDep) -> dict[str, Any]:
    access = region.grants.access(caller, vin)
    if not access.view.is_owner:  # every third-party read is in the owner's access log
        region.grants.record_read(access, AuditAction.VEHICLE_READ, {})
    return vehicle_json(access.vehicle, owner=access.view.is_owner)


@router.patch(
    "/{vin}",
    summary="Name one of my vehicles (shown wherever it appears; null or blank: its model)",
    responses=raises(NotFound, AlreadyExists, ValidationFailed),
)
def rename_vehicle(vin: str, req: RenameRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.rename(owner.owner_id, vin, req.name)
    region.audit.by_owner(owner.owner_id, "vehicle.rename", vin=v.vin, detail={"name": v.name})
    return vehicle_json(v)


@router.get(
    "/{vin}/telemetry",
    summary="A window of telemetry as JSON, CSV or Parquet",
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def telemetry(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str = Query(description="window start, ISO 8601 or epoch ms (inclusive)"),
    end: str = Query(description="window end, ISO 8601 or epoch ms (exclusive)"),
    signals: str | None = Query(
        None, description="comma-separated VSS paths or branches; default all (for a grant: all it covers)"
    ),
    format: Literal["json", "csv", "parquet"] = Query("json"),
    resample_: str | None = Query(None, alias="resample", description="e.g. 1s, 5min: mean per interval"),
) -> Response:
    access = region.grants.access(caller, vin)
    return serve_telemetry(region, access, start, end, signals, format, resample_)


def serve_telemetry(
    region: Region, access: Access, start: str, end: str, signals: str | None, format: str, resample_: str | None
) -> Response:
    """A telemetry window through an access's view, recorded in the owner's access log (the owner's, a grant
    holder's, or a staff member's under a case: compliance/cases.py)."""
    v, view = access.vehicle, access.view
    region.deletions.check_served(v.vin)
    start_ms, end_ms = view.window(parse_time(start, "start"), parse_time(end, "end"))
    chosen = view.signals(signals.split(",") if signals else None)
    interval = parse_interval(resample_) if resample_ else None
    table = region.telemetry.window(v.vin, start_ms, end_ms, chosen)
    if interval:
        table = resample(table, interval)
    table = view.location(table)
    meta = {
        "vin": v.vin,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "resample_ms": interval,
        "units": {s.path: s.unit or None for s in chosen},
    }
    # The access-log record is written while the answer is encoded, and is durable before the answer leaves (a
    # failed write fails the request). Should the encoding fail, the read stays recorded: the data was taken out.
    recorded = region.grants.begin_record_read(
        access,
        AuditAction.TELEMETRY_READ,
        {
            "start_ms": start_ms,
            "end_ms": end_ms,
            "signals": signals or "*",
            "format": format,
            "resample_ms": interval,
            "rows": table.num_rows,
        },
        rows=table.num_rows,
    )
    try:
        if format == "parquet":  # cheap to write and to read: the window is fetched, not kept (exports are kept)
            body, media = window_parquet(table, meta), FORMATS["parquet"]
        else:
            body, media = render(table, format, meta)
    finally:
        recorded.result()
    headers = {}
    if format != "json":
        headers["Content-Disposition"] = f'attachment; filename="{v.vin}-{start_ms}-{end_ms}.{format}"'
    return Response(body, media_type=media, headers=headers)


@router.get("/{vin}/batches", summary="Accepted batches (coverage, chain and log positions)")
def batches(
    vin: str, caller: Caller, region: RegionDep, start: str | None = None, end: str | None = None
) -> dict[str, Any]:
    access = region.grants.access(caller, vin)
    v, view = access.vehicle, access.view
    start_ms = parse_time(start, "start") if start is not None else 0
    end_ms = parse_time(end, "end") if end is not None else MAX_TIME_MS
    # A window the caller named must lie inside a grant's; the default one is cut to it.
    start_ms, end_ms = view.window(start_ms, end_ms) if start or end else view.clip(start_ms, end_ms)
    # The store's span test is inclusive at both ends; the window's end is exclusive (a batch starting exactly at a
    # grant's end lies wholly outside it).
    refs = region.telemetry.batches(v.vin, start_ms, end_ms - 1, None)
    if not view.is_owner:
        region.grants.record_read(access, AuditAction.BATCHES_READ, {"start_ms": start_ms, "end_ms": end_ms})
    return {
        "vin": v.vin,
        "count": len(refs),
        # Provenance (docs/protocol.md §9): signed by the car, or attested by the region from records the car did not
        # sign (Fleet Telemetry); an owner and a court must always be able to tell the two apart.
        "batches": [
            {
                "seq": r.seq,
                "t0": r.t0,
                "t1": r.t1,
                "bytes": r.length,
                "provenance": "region-attested" if r.attested_by else "car-signed",
                "attested_by": r.attested_by,
            }
            for r in refs
        ],
    }
