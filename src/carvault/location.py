"""Location at the precision its purpose needs: H3 cells instead of coordinates, and masked places.

Pure and shared: the car coarsens before anything leaves it (unless precise location is consented),
and the platform uses the same functions for any view other than the owner's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.protocol.columns import has_column

LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
ALT = "Vehicle.CurrentLocation.Altitude"
ACC = "Vehicle.CurrentLocation.HorizontalAccuracy"
DEFAULT_RESOLUTION = 8  # hexagons of ~0.74 km², edge ~530 m
EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Place:
    """A place whose surroundings are masked (home, work): centre and radius."""

    lat: float
    lon: float
    radius_m: float


def places_from_json(items: object) -> tuple[Place, ...]:
    """Masked places as the region sends them in the car's policy (``masked_places``); ValueError if malformed."""
    if not isinstance(items, list):
        raise ValueError("masked_places must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a masked place must be an object with lat, lon and radius_m")
        try:
            lat, lon, radius = float(item["lat"]), float(item["lon"]), float(item["radius_m"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("a masked place must have numeric lat, lon and radius_m") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and radius > 0):
            raise ValueError(f"masked place out of range: {lat}, {lon}, {radius} m")
        out.append(Place(lat, lon, radius))
    return tuple(out)


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = table.schema.get_all_field_indices(name)[0]
    return table.set_column(i, table.schema.field(i), values)


def coarsen(table: pa.Table, resolution: int = DEFAULT_RESOLUTION) -> pa.Table:
    """Replace coordinates by the centre of their H3 cell; drop altitude; accuracy becomes the cell edge."""
    if not has_column(table, LAT) or not has_column(table, LON):
        return table
    lat = table.column(LAT).to_numpy(zero_copy_only=False).astype(np.float64)
    lon = table.column(LON).to_numpy(zero_copy_only=False).astype(np.float64)
    ok = ~(np.isnan(lat) | np.isnan(lon))
    out_lat = np.full(len(lat), np.nan)
    out_lon = np.full(len(lon), np.nan)
    if ok.any():
        # One H3 call per distinct position (positions repeat while parked; h3-py has no vector API).
        pairs = np.stack([lat[ok], lon[ok]], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        centres = np.array([h3.cell_to_latlng(h3.latlng_to_cell(a, b, resolution)) for a, b in uniq.tolist()])
        out_lat[ok] = centres[inverse.reshape(-1), 0]
        out_lon[ok] = centres[inverse.reshape(-1), 1]
    mask = pa.array(~ok)
    table = _replace(table, LAT, pa.array(np.round(out_lat, 7), pa.float64(), mask=~ok))
    table = _replace(table, LON, pa.array(np.round(out_lon, 7), pa.float64(), mask=~ok))
    if has_column(table, ALT):
        table = _replace(table, ALT, pa.nulls(table.num_rows, pa.float64()))
    if has_column(table, ACC):
        edge = round(h3.average_hexagon_edge_length(resolution, "m"), 1)
        table = _replace(table, ACC, pc.if_else(mask, pa.scalar(None, pa.float64()), pa.scalar(edge)))
    return table


def distance_m(lat: np.ndarray, lon: np.ndarray, place: Place) -> np.ndarray:
    """Great-circle distance from each position to a place (haversine)."""
    p1, p2 = np.radians(lat), np.radians(place.lat)
    dp, dl = p2 - p1, np.radians(place.lon - lon)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def mask_places(table: pa.Table, places: Sequence[Place]) -> pa.Table:
    """Null every location column at instants within a masked place's radius (trip ends near home/work)."""
    if not places or not has_column(table, LAT):
        return table
    lat = table.column(LAT).to_numpy(zero_copy_only=False).astype(np.float64)
    lon = table.column(LON).to_numpy(zero_copy_only=False).astype(np.float64)
    inside = np.zeros(len(lat), dtype=bool)
    for p in places:
        with np.errstate(invalid="ignore"):
            inside |= distance_m(lat, lon, p) <= p.radius_m
    if not inside.any():
        return table
    keep = pa.array(~inside)
    for name in table.column_names:
        if name.startswith("Vehicle.CurrentLocation."):
            col = table.column(name)
            table = _replace(table, name, pc.if_else(keep, col, pa.nulls(len(col), col.type)))
    return table
