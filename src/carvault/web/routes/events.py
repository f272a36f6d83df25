"""Events the car recorded (hard braking, ABS, AEB, crash), listed per vehicle."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from carvault.access.audit import AuditAction
from carvault.store.metadata import VehicleEvent
from carvault.web.deps import MAX_TIME_MS, Caller, RegionDep

EDR_CATEGORY = "edr"

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get("/vehicles/{vin}/events", summary="Recorded events, newest first (for a grant: within its window)")
def list_events(vin: str, caller: Caller, region: RegionDep) -> list[dict[str, Any]]:
    access = region.grants.access(caller, vin)
    v, view = access.vehicle, access.view
    # An event is event-recorder data: a grant must cover the whole event-recorder category to list events.
    view.require([s.path for s in region.catalogue if s.category == EDR_CATEGORY], "events")
    region.deletions.check_served(v.vin)
    lo, hi = view.clip(0, MAX_TIME_MS)
    with region.db.session() as s:
        rows = list(
            s.scalars(
                select(VehicleEvent)
                .where(VehicleEvent.vin == v.vin, VehicleEvent.t_ms >= lo, VehicleEvent.t_ms < hi)
                .order_by(VehicleEvent.t_ms.desc())
            )
        )
    if not view.is_owner:
        region.grants.record_read(access, AuditAction.EVENTS_READ, {"events": len(rows)})
    return [
        {
            "id": e.id,
            "kind": e.kind,
            "t_ms": e.t_ms,
            "batch_seq": e.batch_seq,
            "detail": json.loads(e.detail),
            "legal_basis": e.legal_basis,
        }
        for e in rows
    ]
