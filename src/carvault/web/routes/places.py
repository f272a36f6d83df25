"""The owner's places (home, work …): list, create, update, delete. Owner-only (``CurrentOwner``).

A place with ``mask_in_car`` travels to the owner's cars with their collection policy; the car nulls every position
inside it and the region refuses a batch that carries one (access/places.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Response

from carvault.access.places import MAX_PLACES, MAX_RADIUS_M, MIN_RADIUS_M
from carvault.errors import AlreadyExists, PlaceNotFound, TooManyPlaces, ValidationFailed
from carvault.web.deps import CurrentOwner, RegionDep, RowId
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/places", tags=["places"])

EXAMPLE = {"name": "Home", "lat": 22.5431, "lon": 113.9344, "radius_m": 200, "mask_in_car": True}
LIMITS = {"max_places": MAX_PLACES, "min_radius_m": MIN_RADIUS_M, "max_radius_m": MAX_RADIUS_M}


@router.get("", summary="Your places")
def list_places(owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    """Every place of the owner, oldest first, and the limits a place must keep."""
    return {"places": [p.to_json() for p in region.places.list(owner.owner_id)], "limits": LIMITS}


@router.post(
    "",
    status_code=201,
    summary=f"Name a place (radius {MIN_RADIUS_M} to {MAX_RADIUS_M} m; at most {MAX_PLACES})",
    responses=raises(ValidationFailed, AlreadyExists, TooManyPlaces),
)
def create_place(owner: CurrentOwner, region: RegionDep, body: Any = Body(..., examples=[EXAMPLE])) -> dict[str, Any]:
    """``mask_in_car`` (default false): the car nulls every position inside the circle before sending."""
    return region.places.create(owner.owner_id, body).to_json()


@router.get("/{place_id}", summary="One of your places", responses=raises(PlaceNotFound))
def get_place(place_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return region.places.get(owner.owner_id, place_id).to_json()


@router.patch(
    "/{place_id}",
    summary="Change some fields of a place",
    responses=raises(PlaceNotFound, ValidationFailed, AlreadyExists),
)
def update_place(
    place_id: RowId, owner: CurrentOwner, region: RegionDep, body: Any = Body(..., examples=[{"radius_m": 300}])
) -> dict[str, Any]:
    return region.places.update(owner.owner_id, place_id, body).to_json()


@router.delete("/{place_id}", status_code=204, summary="Remove a place", responses=raises(PlaceNotFound))
def delete_place(place_id: RowId, owner: CurrentOwner, region: RegionDep) -> Response:
    region.places.delete(owner.owner_id, place_id)
    return Response(status_code=204)
