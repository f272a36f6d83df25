"""The owner's audit log: who touched my data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from carvault.access.audit import event_json
from carvault.web.deps import MAX_DB_INT, CurrentOwner, RegionDep, parse_time

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", summary="My audit log, newest first (hash-chained)")
def list_audit(
    owner: CurrentOwner,
    region: RegionDep,
    action: str | None = None,
    actor: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_DB_INT),
) -> dict[str, Any]:
    events = region.audit.list(
        owner.owner_id,
        action=action,
        actor=actor,
        since_ms=parse_time(since, "since") if since else None,
        until_ms=parse_time(until, "until") if until else None,
        limit=limit,
        before_id=before_id,
    )
    return {"events": [event_json(e) for e in events]}
