"""Owner-defined places: named circles (home, work …) shown on maps and, when the owner asks, masked in the car.

A place is a centre (WGS-84), a radius between ``MIN_RADIUS_M`` and ``MAX_RADIUS_M`` and a name. With
``mask_in_car`` the car nulls every position inside it before anything leaves the car (the places travel with the
car's collection policy, ``GET /api/v1/vehicle/policy``), and the region enforces the same rule itself: a batch or
live frame of one of the owner's cars carrying a position inside a masked place is refused whole
(``LocationInMaskedPlace``, like a consent refusal) — the region never trusts the car's filtering. Every change is
recorded in the owner's audit log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select

from carvault.access.audit import CONTRACT, Actor, AuditAction, AuditLog
from carvault.errors import AlreadyExists, LocationInMaskedPlace, PlaceNotFound, TooManyPlaces, ValidationFailed
from carvault.location import LAT, LON, Place, distance_m
from carvault.protocol.columns import has_column
from carvault.store.metadata import Database, OwnerPlaceRecord, Vehicle, now_ms

MAX_PLACES = 50
MIN_RADIUS_M = 50
MAX_RADIUS_M = 5000
MAX_NAME = 100
FIELDS = ("name", "lat", "lon", "radius_m", "mask_in_car")


@dataclass(frozen=True)
class OwnerPlace:
    """One of an owner's places."""

    id: int
    name: str
    lat: float
    lon: float
    radius_m: int
    mask_in_car: bool
    created_ms: int = 0
    updated_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        """The API form."""
        return {
            "id": self.id,
            "name": self.name,
            "lat": self.lat,
            "lon": self.lon,
            "radius_m": self.radius_m,
            "mask_in_car": self.mask_in_car,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }

    def circle(self) -> Place:
        """The circle the car and the region mask (``carvault.location.Place``)."""
        return Place(self.lat, self.lon, float(self.radius_m))


def _of(r: OwnerPlaceRecord) -> OwnerPlace:
    return OwnerPlace(r.id, r.name, r.lat, r.lon, r.radius_m, r.mask_in_car, r.created_ms, r.updated_ms)


def _number(body: Mapping[str, Any], name: str, low: float, high: float, what: str) -> float:
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise ValidationFailed(f"{name} must be {what}", field=name)
    return float(v)


def parse_place(body: Any, *, partial: bool = False) -> dict[str, Any]:
    """The checked fields of a create (all required) or update (``partial``: any of them) body."""
    if not isinstance(body, Mapping):
        raise ValidationFailed("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ValidationFailed(f"unknown field {unknown[0]}", field=unknown[0])
    missing = [f for f in FIELDS if f not in body and f != "mask_in_car"]
    if missing and not partial:
        raise ValidationFailed(f"{missing[0]} is required", field=missing[0])
    out: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
            raise ValidationFailed(f"name must be 1 to {MAX_NAME} characters", field="name")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValidationFailed("name must not contain control characters", field="name")
        out["name"] = " ".join(name.split())
    if "lat" in body:
        out["lat"] = round(_number(body, "lat", -90.0, 90.0, "a latitude from -90 to 90 degrees"), 7)
    if "lon" in body:
        out["lon"] = round(_number(body, "lon", -180.0, 180.0, "a longitude from -180 to 180 degrees"), 7)
    if "radius_m" in body:
        r = body["radius_m"]
        if isinstance(r, float) and r.is_integer():
            r = int(r)
        if isinstance(r, bool) or not isinstance(r, int) or not MIN_RADIUS_M <= r <= MAX_RADIUS_M:
            raise ValidationFailed(
                f"radius_m must be a whole number of metres from {MIN_RADIUS_M} to {MAX_RADIUS_M}", field="radius_m"
            )
        out["radius_m"] = r
    if "mask_in_car" in body:
        if not isinstance(body["mask_in_car"], bool):
            raise ValidationFailed("mask_in_car must be true or false", field="mask_in_car")
        out["mask_in_car"] = body["mask_in_car"]
    if partial and not out:
        raise ValidationFailed(f"give at least one of {', '.join(FIELDS)}", field="body")
    return out


def positions_inside(table: pa.Table, places: Sequence[Place]) -> np.ndarray:
    """Per row, whether the row's position (non-null latitude and longitude) lies inside one of ``places``."""
    if not places or not has_column(table, LAT) or not has_column(table, LON):
        return np.zeros(table.num_rows, dtype=bool)
    lat = pc.fill_null(table.column(LAT).cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)
    lon = pc.fill_null(table.column(LON).cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)
    inside = np.zeros(len(lat), dtype=bool)
    for p in places:
        with np.errstate(invalid="ignore"):
            inside |= distance_m(lat, lon, p) <= p.radius_m
    return inside


def check_masked(table: pa.Table, places: Sequence[Place]) -> None:
    """Refuse (``LocationInMaskedPlace``) rows carrying a position inside a masked place; the car should have
    nulled them (``carvault.location.mask_places``, the same distance rule)."""
    inside = positions_inside(table, places)
    if not inside.any():
        return
    t = table.column("t").cast(pa.int64()).to_numpy()[inside]
    raise LocationInMaskedPlace(
        f"batch carries {len(t)} position(s) from {int(t[0])} to {int(t[-1])} (UTC ms) inside a place the owner "
        "masks in the car; the region stores no position inside a masked place",
        category="location",
        status="masked_place",
        from_ms=int(t[0]),
        to_ms=int(t[-1]),
        instants=len(t),
    )


class Places:
    """The owners' places: list, create, update, delete (audited), match a point, masked circles per car."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    def list(self, owner_id: int) -> list[OwnerPlace]:
        """The owner's places, in the order they were made."""
        with self.db.session() as s:
            rows = s.scalars(
                select(OwnerPlaceRecord).where(OwnerPlaceRecord.owner_id == owner_id).order_by(OwnerPlaceRecord.id)
            )
            return [_of(r) for r in rows]

    def get(self, owner_id: int, place_id: int) -> OwnerPlace:
        """One of the owner's places, or ``PlaceNotFound`` (also for another owner's place)."""
        with self.db.session() as s:
            return _of(self._row(s, owner_id, place_id))

    @staticmethod
    def _row(s: Any, owner_id: int, place_id: int) -> OwnerPlaceRecord:
        row = s.get(OwnerPlaceRecord, place_id) if 0 < place_id < 2**63 else None
        if row is None or row.owner_id != owner_id:
            raise PlaceNotFound(f"you have no place with id {place_id}", place_id=place_id)
        return row

    @staticmethod
    def _check_name(s: Any, owner_id: int, name: str, place_id: int | None = None) -> None:
        q = select(OwnerPlaceRecord.id).where(
            OwnerPlaceRecord.owner_id == owner_id, func.lower(OwnerPlaceRecord.name) == name.lower()
        )
        if place_id is not None:
            q = q.where(OwnerPlaceRecord.id != place_id)
        if s.scalar(q.limit(1)) is not None:
            raise AlreadyExists(f"you already have a place named {name!r}", field="name")

    def create(self, owner_id: int, body: Any) -> OwnerPlace:
        """Name a new place (validated; at most ``MAX_PLACES`` per owner); audited."""
        values = parse_place(body)
        with self.db.session() as s:
            count = s.scalar(select(func.count(OwnerPlaceRecord.id)).where(OwnerPlaceRecord.owner_id == owner_id))
            if (count or 0) >= MAX_PLACES:
                raise TooManyPlaces(f"an account may keep at most {MAX_PLACES} places", limit=MAX_PLACES)
            self._check_name(s, owner_id, values["name"])
            now = now_ms()
            row = OwnerPlaceRecord(owner_id=owner_id, created_ms=now, updated_ms=now, **values)
            s.add(row)
            s.flush()
            place = _of(row)
        self._audit(owner_id, "created", place)
        return place

    def update(self, owner_id: int, place_id: int, body: Any) -> OwnerPlace:
        """Change some of a place's fields (validated); audited."""
        values = parse_place(body, partial=True)
        with self.db.session() as s:
            row = self._row(s, owner_id, place_id)
            if "name" in values:
                self._check_name(s, owner_id, values["name"], place_id)
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_ms = now_ms()
            s.flush()
            place = _of(row)
        self._audit(owner_id, "updated", place, changed=sorted(values))
        return place

    def delete(self, owner_id: int, place_id: int) -> OwnerPlace:
        """Remove a place (its masking ends with it); audited."""
        with self.db.session() as s:
            row = self._row(s, owner_id, place_id)
            place = _of(row)
            s.delete(row)
        self._audit(owner_id, "deleted", place)
        return place

    def _audit(self, owner_id: int, what: str, place: OwnerPlace, changed: list[str] | None = None) -> None:
        detail: dict[str, Any] = {
            "change": what,
            "place_id": place.id,
            "name": place.name,
            "radius_m": place.radius_m,
            "mask_in_car": place.mask_in_car,
        }
        if changed is not None:
            detail["fields"] = changed
        self.audit.record(
            owner_id=owner_id,
            actor=Actor("owner", str(owner_id)),
            action=AuditAction.PLACE_CHANGE,
            legal_basis=CONTRACT,
            detail=detail,
        )

    def match(self, owner_id: int, lat: float, lon: float) -> OwnerPlace | None:
        """The owner's place whose circle covers the point (the nearest centre when several do), or None."""
        return covering(self.list(owner_id), lat, lon)

    def masked_for_vehicle(self, vin: str) -> tuple[Place, ...]:
        """The circles the vehicle's owner masks in the car (none for a car without an owner)."""
        with self.db.session() as s:
            rows = s.execute(
                select(OwnerPlaceRecord.lat, OwnerPlaceRecord.lon, OwnerPlaceRecord.radius_m)
                .join(Vehicle, Vehicle.owner_id == OwnerPlaceRecord.owner_id)
                .where(Vehicle.vin == vin, OwnerPlaceRecord.mask_in_car.is_(True))
                .order_by(OwnerPlaceRecord.id)
            ).all()
        return tuple(Place(r.lat, r.lon, float(r.radius_m)) for r in rows)

    def check_batch(self, vin: str, table: pa.Table) -> None:
        """The region's own masking check of a batch or live frame (``LocationInMaskedPlace`` when it fails)."""
        if not has_column(table, LAT) or table.column(LAT).null_count == table.num_rows:
            return  # no position at all: nothing to read from the database
        check_masked(table, self.masked_for_vehicle(vin))


def covering(places: Sequence[OwnerPlace], lat: float | None, lon: float | None) -> OwnerPlace | None:
    """Of ``places``, the one whose circle covers the point (the nearest centre when several do), or None."""
    if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    best: tuple[float, OwnerPlace] | None = None
    for p in places:
        d = float(distance_m(np.array([lat]), np.array([lon]), p.circle())[0])
        if d <= p.radius_m and (best is None or d < best[0]):
            best = (d, p)
    return best[1] if best else None


def place_of_json(d: Mapping[str, Any]) -> OwnerPlace:
    """An ``OwnerPlace`` from its API form."""
    return OwnerPlace(
        int(d["id"]), str(d["name"]), float(d["lat"]), float(d["lon"]), int(d["radius_m"]), bool(d["mask_in_car"])
    )


def places_json(places: Sequence[Place]) -> list[dict[str, float]]:
    """The masked circles in the car's policy document (``masked_places``)."""
    return [{"lat": p.lat, "lon": p.lon, "radius_m": p.radius_m} for p in places]
