"""A vehicle's timeline (drives and charging sessions derived from its telemetry) and its route as GPX/GeoJSON."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from carvault.access.audit import AuditAction
from carvault.access.gpx import LATITUDE, LONGITUDE, MEDIA_TYPE, ROUTE_SIGNALS, gpx_name, to_gpx
from carvault.access.trips import TIMELINE_SIGNALS, detect
from carvault.compliance.sharing import ScopedView
from carvault.region import Region
from carvault.store.metadata import BatchRecord, now_ms
from carvault.web.deps import Caller, RegionDep, parse_time
from carvault.windows import check_window

router = APIRouter(prefix="/api/v1/vehicles", tags=["timeline"])

DAY_MS = 86_400_000
DEFAULT_DAYS = 7
MAX_TIMELINE_MS = 92 * DAY_MS
MAX_ROUTE_MS = 31 * DAY_MS


def data_span(region: Region, vin: str) -> tuple[int | None, int | None]:
    """First and last instant the vehicle's telemetry batches cover (None, None before any upload)."""
    with region.db.session() as s:
        lo, hi = s.execute(
            select(func.min(BatchRecord.t0), func.max(BatchRecord.t1)).where(
                BatchRecord.vin == vin, BatchRecord.kind == "telemetry"
            )
        ).one()
    return (int(lo), int(hi) + 1) if lo is not None else (None, None)


def window_or_default(
    region: Region, view: ScopedView, start: str | None, end: str | None, limit_ms: int
) -> tuple[int, int, int | None, int | None]:
    """The asked window, or the last week of data; refuses windows longer than ``limit_ms``.

    For a grant holder a named window must lie inside the grant's history window; a default one is cut to it.
    """
    lo, hi = data_span(region, view.vin)
    if not view.is_owner:
        lo, hi = view.clip(lo or 0, hi or 0) if lo is not None else (lo, hi)
    end_ms = parse_time(end, "end") if end else (hi if hi is not None else now_ms())
    start_ms = parse_time(start, "start") if start else end_ms - DEFAULT_DAYS * DAY_MS
    if start or end:
        view.window(start_ms, end_ms)
    else:
        start_ms, end_ms = view.clip(start_ms, end_ms)
        if end_ms <= start_ms:  # the grant's window holds none of the default week: an empty answer, not an error
            return start_ms, start_ms, lo, hi
    check_window(start_ms, end_ms, limit_ms)
    return start_ms, end_ms, lo, hi


@router.get("/{vin}/timeline", summary="Drives and charging sessions derived from the telemetry of a window")
def timeline(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = Query(None, description="ISO 8601 or epoch ms (inclusive); default: a week before end"),
    end: str | None = Query(None, description="ISO 8601 or epoch ms (exclusive); default: the end of the data"),
) -> dict[str, Any]:
    """Recomputed from the signed data on every call; a drive crossing the window's edges is cut at them."""
    access = region.grants.access(caller, vin)
    v, view = access.vehicle, access.view
    view.require(TIMELINE_SIGNALS, "the timeline")
    region.deletions.check_served(v.vin)
    start_ms, end_ms, lo, hi = window_or_default(region, view, start, end, MAX_TIMELINE_MS)
    signals = [region.catalogue[p] for p in TIMELINE_SIGNALS if p in region.catalogue]
    if end_ms > start_ms:
        table = region.telemetry.window(v.vin, start_ms, end_ms, signals)
    else:  # an empty default window (see window_or_default)
        table = region.catalogue.arrow_schema([s.path for s in signals]).empty_table()
    found = detect(view.location(table))
    region.grants.record_read(
        access,
        AuditAction.TIMELINE_READ,
        {"start_ms": start_ms, "end_ms": end_ms, "drives": len(found.drives), "charges": len(found.charges)},
    )
    return {
        "vin": v.vin,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "data_start_ms": lo,
        "data_end_ms": hi,
        "drives": [d.to_json() for d in found.drives],
        "charges": [c.to_json() for c in found.charges],
    }


@router.get(
    "/{vin}/route",
    summary="Where the vehicle went in a window, as GPX 1.1 or GeoJSON",
    responses={200: {"content": {MEDIA_TYPE: {}, "application/geo+json": {}}}},
)
def route(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str = Query(description="ISO 8601 or epoch ms (inclusive)"),
    end: str = Query(description="ISO 8601 or epoch ms (exclusive)"),
    format: Literal["gpx", "geojson"] = Query("gpx"),
) -> Response:
    access = region.grants.access(caller, vin)
    v, view = access.vehicle, access.view
    view.require(ROUTE_SIGNALS, "the route")
    region.deletions.check_served(v.vin)
    start_ms, end_ms, _, _ = window_or_default(region, view, start, end, MAX_ROUTE_MS)
    table = view.location(
        region.telemetry.window(v.vin, start_ms, end_ms, [region.catalogue[p] for p in ROUTE_SIGNALS])
    )
    if format == "gpx":
        body = to_gpx(table, gpx_name(v.vin, start_ms, end_ms), "Exported by CarVault")
        media = MEDIA_TYPE
    else:
        located = table.filter(pc.and_(pc.is_valid(table.column(LATITUDE)), pc.is_valid(table.column(LONGITUDE))))
        coords = np.column_stack([located.column(LONGITUDE).to_numpy(), located.column(LATITUDE).to_numpy()]).tolist()
        body = json.dumps(
            {
                "type": "Feature",
                "properties": {"vin": v.vin, "start_ms": start_ms, "end_ms": end_ms},
                "geometry": {"type": "LineString", "coordinates": coords},
            }
        ).encode()
        media = "application/geo+json"
    region.grants.record_read(
        access,
        AuditAction.TELEMETRY_READ,
        {
            "start_ms": start_ms,
            "end_ms": end_ms,
            "signals": ",".join(ROUTE_SIGNALS),
            "format": format,
            "resample_ms": None,
            "rows": table.num_rows,
        },
        rows=table.num_rows,
    )
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{v.vin}-{start_ms}-{end_ms}.{format}"'},
    )
