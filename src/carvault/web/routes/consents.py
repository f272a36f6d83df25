"""Data and consent: what the car collects, the notice the rules require, and the owner's switches."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from carvault.access.places import places_json
from carvault.errors import BadSignature, Unauthenticated, UnknownVehicle
from carvault.ingest.vehicle_auth import authenticate_vehicle
from carvault.web.deps import VEHICLE_SIGNATURE, CurrentOwner, RegionDep, parse_time
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1", tags=["consent"])


class ConsentChange(BaseModel):
    enabled: bool
    purpose: str = Field("", max_length=400)
    ends: str | int | None = Field(None, description="end date (ISO 8601 or epoch ms); required when enabling")
    lasting: bool = Field(False, description="keep across ignition cycles (otherwise this drive only)")


def _category(overview: dict[str, Any], category: str) -> dict[str, Any]:
    return next(c for c in overview["categories"] if c["category"] == category)


@router.get("/vehicles/{vin}/consents", summary="Every data category: class, purpose, retention, region, status")
def get_consents(vin: str, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    return region.consents.overview(v.vin)


@router.put("/vehicles/{vin}/consents/{category}", summary="Turn a category on (with an end date) or off")
def put_consent(
    vin: str, category: str, change: ConsentChange, owner: CurrentOwner, region: RegionDep
) -> dict[str, Any]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    ends = parse_time(str(change.ends), "ends") if change.ends is not None else None
    region.consents.decide(
        v.vin,
        owner.owner_id,
        category,
        enabled=change.enabled,
        purpose=change.purpose,
        ends_ms=ends,
        lasting=change.lasting,
    )
    return _category(region.consents.overview(v.vin), category)


@router.delete("/vehicles/{vin}/consents/{category}", summary="Stop collecting a category, in one step")
def stop_consent(vin: str, category: str, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    v = region.vehicles.owned_one(owner.owner_id, vin)
    region.consents.decide(v.vin, owner.owner_id, category, enabled=False)
    return _category(region.consents.overview(v.vin), category)


@router.get(
    "/vehicle/policy",
    tags=["vehicle upload"],
    summary="The car fetches its collection policy (vehicle-signed request, docs/protocol.md §6)",
    openapi_extra=VEHICLE_SIGNATURE,
    responses=raises(Unauthenticated, BadSignature, UnknownVehicle),
)
def vehicle_policy(request: Request, region: RegionDep) -> dict[str, Any]:
    vin = authenticate_vehicle(region.gateway, "GET", request.url.path, request.headers)
    policy = region.consents.policy(vin)
    region.consents.mark_fetched(vin, policy.version)
    # The owner's places masked in the car travel with the policy (access/places.py); the region enforces them too.
    return {**policy.to_json(), "masked_places": places_json(region.places.masked_for_vehicle(vin))}
