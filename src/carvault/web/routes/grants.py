"""The owner's grants: who may read what of my cars, until when; one-step revoke; scoped personal access tokens.

Owner-only (``CurrentOwner``): a grant token can neither list, widen nor revoke grants. Revocation ends the grant
and every token acting for it, effective on the holder's next request (access/grants.py re-reads the grant).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from carvault.access.grants import grant_json
from carvault.errors import InvalidQuery, NotFound, NotShareable, ValidationFailed
from carvault.web.deps import CurrentOwner, RegionDep, RowId, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/grants", tags=["sharing"])

Time = str | int | None


class TokenRequest(BaseModel):
    """A personal access token for the owner's own scripts: a grant with purpose ``personal``."""

    label: str = Field(min_length=1, max_length=200, description="what the token is for, e.g. 'home dashboard'")
    vins: list[Annotated[str, Field(min_length=1, max_length=17)]] = Field(min_length=1, max_length=100)
    signals: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=200, description="VSS branches or paths, e.g. Vehicle.Powertrain.TractionBattery"
    )
    history_from: Time = Field(None, description="start of the history window (ISO 8601 or epoch ms)")
    history_to: Time = Field(None, description="end of the history window (ISO 8601 or epoch ms); none: open")
    live: bool = False
    precise_location: bool = False
    expires: Time = Field(None, description="end date (ISO 8601 or epoch ms), at most 366 days ahead; default 90")


def _time(value: Time, name: str) -> int | None:
    return None if value is None or value == "" else parse_time(str(value), name)


@router.get("", summary="My grants with app, scope, last access, reads and rows served (?all=1: ended ones too)")
def list_grants(
    owner: CurrentOwner, region: RegionDep, all: bool = Query(False, description="include revoked and ended grants")
) -> dict[str, Any]:
    rows = region.grants.of_owner(owner.owner_id, include_ended=all)
    return {"grants": [grant_json(g, app) for g, app in rows]}


@router.get("/{grant_id:int}", summary="One of my grants", responses=raises(NotFound))
def get_grant(grant_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    g = region.grants.get(owner.owner_id, grant_id)
    return grant_json(g, region.apps.find(g.client_id) if g.client_id else None)


@router.delete(
    "/{grant_id:int}",
    summary="Revoke a grant and every token acting for it, in one step (effective on the next request)",
    responses=raises(NotFound),
)
def revoke_grant(grant_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    g = region.grants.revoke(owner.owner_id, grant_id)
    return grant_json(g, region.apps.find(g.client_id) if g.client_id else None)


@router.post(
    "/tokens",
    status_code=201,
    summary="Create a scoped personal access token (the secret is shown once)",
    responses=raises(ValidationFailed, NotShareable, NotFound, InvalidQuery),
)
def create_token(req: TokenRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    secret, g = region.grants.personal_token(
        owner.owner_id,
        label=req.label,
        vins=req.vins,
        signals=req.signals,
        from_ms=_time(req.history_from, "history_from"),
        to_ms=_time(req.history_to, "history_to"),
        live=req.live,
        precise_location=req.precise_location,
        expires_ms=_time(req.expires, "expires"),
    )
    return {"token": secret, "grant": grant_json(g)}
