"""A vehicle's trouble codes and warning lamps in plain words (issue 14), for its owner or a grant that covers them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from carvault.access.audit import AuditAction
from carvault.access.diagnostics import MAX_DAYS, Diagnostics
from carvault.errors import InvalidQuery, NotFound, OutOfScope
from carvault.store.metadata import now_ms
from carvault.web.deps import Caller, RegionDep, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])


@router.get(
    "/{vin}/diagnostics",
    summary="Trouble codes (with plain-language meaning in English and Chinese), warning lamps, service and software",
    responses=raises(NotFound, OutOfScope, InvalidQuery),
)
def diagnostics(
    vin: str,
    caller: Caller,
    region: RegionDep,
    end: str | None = Query(None, description="as of this time, ISO 8601 or epoch ms (default: now)"),
    days: int | None = Query(None, description=f"days of history before `end` (1 to {MAX_DAYS}, default 30)"),
) -> dict[str, Any]:
    access = region.grants.access(caller, vin)
    region.deletions.check_served(access.vin)
    service = Diagnostics(region.catalogue, region.telemetry)
    end_ms = parse_time(end, "end") if end is not None else now_ms()
    start_ms, end_ms = service.window(access, end_ms, days)
    report = service.report(access, start_ms, end_ms)
    if not access.view.is_owner:  # every third-party read is in the owner's access log
        region.grants.record_read(
            access, AuditAction.DIAGNOSTICS_READ, {"start_ms": start_ms, "end_ms": end_ms, "codes": len(report.codes)}
        )
    return report.to_json()
