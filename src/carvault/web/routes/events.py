"""Events the car recorded (hard braking, ABS, AEB, crash), listed per vehicle."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from carvault.store.metadata import VehicleEvent
from carvault.web.deps import CurrentOwner, RegionDep

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get("/vehicles/{vin}/events", summary="Recorded events, newest first")
def list_events(vin: str, owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    with region.db.session() as s:
        rows = s.scalars(select(VehicleEvent).where(VehicleEvent.vin == v.vin).order_by(VehicleEvent.t_ms.desc()))
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
