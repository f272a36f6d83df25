"""GCJ-02: published pairs, the inverse's error, positions outside mainland China, the outline against GeoNames."""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import pytest

from carvault.geo import gcj02, geocoder

# (WGS-84 lat, lon) -> (GCJ-02 lat, lon), as published with open implementations of the formula:
# googollee/eviltransform's test table (Shanghai, Shenzhen, Beijing) and wandergis/coordtransform's README example.
PUBLISHED = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
    ((39.915, 116.404), (39.91640428150164, 116.41024449916938)),
]


@pytest.mark.parametrize(("wgs", "gcj"), PUBLISHED)
def test_published_pairs(wgs: tuple[float, float], gcj: tuple[float, float]) -> None:
    lat, lon = gcj02.point_to_gcj02(*wgs)
    assert lat == pytest.approx(gcj[0], abs=1e-9) and lon == pytest.approx(gcj[1], abs=1e-9)


def test_whole_track_vectorised_equals_point_by_point() -> None:
    rng = np.random.default_rng(7)
    lat = rng.uniform(22.0, 40.0, 500)
    lon = rng.uniform(105.0, 120.0, 500)
    g_lat, g_lon = gcj02.to_gcj02(lat, lon)
    for i in range(0, 500, 50):
        assert (g_lat[i], g_lon[i]) == gcj02.point_to_gcj02(lat[i], lon[i])
    shift = geocoder.EARTH_RADIUS_M * np.radians(np.hypot(g_lat - lat, (g_lon - lon) * np.cos(np.radians(lat))))
    inside = gcj02.in_mainland_china(lat, lon)
    assert inside.sum() > 400 and (shift[inside] > 50).all() and (shift[inside] < 1000).all()


def test_inverse_round_trip_below_a_centimetre() -> None:
    rng = np.random.default_rng(11)
    lat = rng.uniform(18.5, 50.0, 2000)
    lon = rng.uniform(80.0, 125.0, 2000)
    back_lat, back_lon = gcj02.to_wgs84(*gcj02.to_gcj02(lat, lon))
    err_m = geocoder.EARTH_RADIUS_M * np.radians(np.hypot(back_lat - lat, (back_lon - lon) * np.cos(np.radians(lat))))
    # Exact to a centimetre except a handful of positions within the offset (< 1 km) of the outline, where the
    # shifted position lands on the other side of it and the inverse cannot tell that it was shifted.
    assert (err_m < 0.01).mean() > 0.998 and err_m.max() < 1000
    clear = (
        gcj02.in_mainland_china(lat, lon)
        & gcj02.in_mainland_china(back_lat + 0.01, back_lon)
        & (gcj02.in_mainland_china(back_lat - 0.01, back_lon))
    )
    assert clear.sum() > 1000 and err_m[clear].max() < 0.01


def test_outside_mainland_china_and_missing_values_unchanged() -> None:
    places = {
        "Munich": (48.137, 11.575),
        "Hong Kong": (22.30, 114.17),
        "Macau": (22.19, 113.54),
        "Taipei": (25.03, 121.56),
        "Seoul": (37.56, 126.97),
        "Ulaanbaatar": (47.90, 106.90),
        "Hanoi": (21.03, 105.85),
    }
    lat = np.array([p[0] for p in places.values()] + [np.nan])
    lon = np.array([p[1] for p in places.values()] + [116.4])
    g_lat, g_lon = gcj02.to_gcj02(lat, lon)
    assert np.array_equal(g_lat, lat, equal_nan=True) and np.array_equal(g_lon, lon)
    assert gcj02.in_mainland_china(
        np.array([22.54, 39.9, 43.8, 29.65, 20.04]), np.array([114.06, 116.4, 87.6, 91.1, 110.32])
    ).all()


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        gcj02.to_gcj02([1.0, 2.0], [3.0])


def test_outline_agrees_with_geonames_countries() -> None:
    with resources.files(geocoder.DATA_PACKAGE).joinpath(geocoder.DATA_FILE).open("r", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    lat = np.array([float(r["lat"]) for r in rows])
    lon = np.array([float(r["lon"]) for r in rows])
    cn = np.array([r["cc"] == "CN" for r in rows])
    inside = gcj02.in_mainland_china(lat, lon)
    assert inside[cn].mean() > 0.997  # of ~14,700 Chinese towns, only border and offshore ones fall outside
    assert inside[~cn].sum() < 40  # of ~130,000 others, only a few right at the border fall inside
