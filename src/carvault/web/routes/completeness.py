"""A vehicle's completeness report (issue 13): what is missing and why, signed by the region; for its owner or a grant.

``GET /api/v1/vehicles/{vin}/completeness`` answers the signed report as JSON; ``completeness.json`` offers the same
as a download, ``completeness.csv`` the gaps with their reasons (times in UTC, as the file says), and
``completeness/calendar`` the per-day coverage strip from the batch index. docs/completeness.md describes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from carvault.access.audit import AuditAction
from carvault.access.completeness import CALENDAR_DAYS, check_instant, gaps_csv, zone_of
from carvault.access.grants import Access
from carvault.errors import InvalidQuery, NotFound, OutOfScope
from carvault.store.metadata import now_ms
from carvault.web.deps import Caller, RegionDep, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])

_WINDOW_HELP = {
    "day": "a civil date, YYYY-MM-DD, in `tz`",
    "tz": "IANA time zone the days are cut in (default: the region's)",
    "start_ms": "window start, epoch ms (with end_ms, instead of day; at most 7 days)",
    "end_ms": "window end, epoch ms (exclusive)",
}


@dataclass(frozen=True)
class _Window:
    """The query parameters that choose a report's window (one definition for the report, its file and its CSV)."""

    day: str | None = Query(None, max_length=10, description=_WINDOW_HELP["day"])
    tz: str | None = Query(None, max_length=64, description=_WINDOW_HELP["tz"])
    start_ms: int | None = Query(None, ge=0, le=2**53, description=_WINDOW_HELP["start_ms"])
    end_ms: int | None = Query(None, ge=0, le=2**53, description=_WINDOW_HELP["end_ms"])


ReportWindow = Annotated[_Window, Depends()]


def _report(access: Access, region: RegionDep, window: _Window) -> dict[str, Any]:
    """The signed report of the vehicle ``access`` opens; the read goes in the owner's access log (anyone's)."""
    region.deletions.check_served(access.vin)  # kept, not served, while a hold stops its deletion
    service = region.completeness
    lo, hi, zone = service.window(day=window.day, start_ms=window.start_ms, end_ms=window.end_ms, tz=window.tz)
    report = service.report(access, lo, hi, zone)
    region.grants.record_read(access, AuditAction.COMPLETENESS_READ, {"start_ms": lo, "end_ms": hi})
    return report


@router.get(
    "/{vin}/completeness",
    summary="Completeness report: per day and per drive, what is missing and why (signed by the region)",
    responses=raises(NotFound, OutOfScope, InvalidQuery),
)
def completeness(
    vin: str,
    caller: Caller,
    region: RegionDep,
    window: ReportWindow,
) -> dict[str, Any]:
    return _report(region.grants.access(caller, vin), region, window)


@router.get(
    "/{vin}/completeness.json",
    summary="The completeness report as a file to keep (`carvault verify completeness FILE` checks it offline)",
    responses=raises(NotFound, OutOfScope, InvalidQuery),
)
def completeness_file(
    vin: str,
    caller: Caller,
    region: RegionDep,
    window: ReportWindow,
) -> Response:
    report = _report(region.grants.access(caller, vin), region, window)
    name = f"completeness-{report['vin']}-{window.day or report['window']['start_ms']}.json"
    return Response(
        json.dumps(report, indent=1, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{vin}/completeness.csv",
    summary="The completeness report's gaps and their reasons as CSV (times in UTC)",
    responses=raises(NotFound, OutOfScope, InvalidQuery),
)
def completeness_csv(
    vin: str,
    caller: Caller,
    region: RegionDep,
    window: ReportWindow,
) -> Response:
    report = _report(region.grants.access(caller, vin), region, window)
    name = f"completeness-gaps-{report['vin']}-{window.day or report['window']['start_ms']}-utc.csv"
    return Response(
        gaps_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{vin}/completeness/calendar",
    summary="Per-day coverage from the batch index (seconds covered by batches, refusals) for a calendar strip",
    responses=raises(NotFound, OutOfScope, InvalidQuery),
)
def completeness_calendar(
    vin: str,
    caller: Caller,
    region: RegionDep,
    end: str | None = Query(None, max_length=40, description="up to this time, ISO 8601 or epoch ms (default: now)"),
    days: int = Query(CALENDAR_DAYS, ge=1, le=92, description="how many days before `end`"),
    tz: str | None = Query(None, max_length=64, description=_WINDOW_HELP["tz"]),
) -> dict[str, Any]:
    access = region.grants.access(caller, vin)
    region.deletions.check_served(access.vin)
    zone_name = zone_of(tz, region.name)[0]
    end_ms = check_instant(parse_time(end, "end") if end is not None else now_ms(), "end")
    start_ms, end_ms = access.view.window(end_ms - days * 86_400_000, end_ms)
    cal = region.completeness.calendar(
        access.vin, end_ms, zone_name, days=(end_ms - start_ms) // 86_400_000 or 1, owner=access.view.is_owner
    )
    region.grants.record_read(access, AuditAction.COMPLETENESS_READ, {"start_ms": start_ms, "end_ms": end_ms})
    return {"vin": access.vin, "time_zone": zone_name, "days": cal}
