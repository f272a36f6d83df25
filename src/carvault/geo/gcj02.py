"""WGS-84 <-> GCJ-02, the obfuscated datum that map tiles from Chinese providers are drawn in.

CarVault keeps every position in WGS-84. Tiles from Chinese providers (AMap/Gaode, Tencent, and others licensed in
mainland China) place streets in GCJ-02, which differs by a few hundred metres, so a WGS-84 route drawn on them
runs beside the road. For display only, positions are shifted with the published offset formula (the same one the
open implementations use; checked against their published pairs by the geo tests). Positions outside
mainland China are not shifted: the providers draw those in WGS-84.

"Mainland China" is decided by a coarse outline (:data:`MAINLAND_OUTLINE`, lat/lon vertices) minus Hong Kong and
Macau; within about 30 km of a land border the decision can be wrong, which costs at most the offset (< 1 km) on
the map. The portal's map.js receives the same outline from the server, so both sides decide alike.

The inverse has no closed form; :func:`to_wgs84` iterates the forward formula (error below a centimetre).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Krasovsky 1940 ellipsoid, which the formula uses.
_A = 6378245.0
_EE = 0.00669342162296594323

#: Coarse outline of mainland China incl. Hainan and the Bohai sea, as (lat, lon) vertices.
MAINLAND_OUTLINE: tuple[tuple[float, float], ...] = (
    (48.45, 135.10), (47.70, 134.70), (46.10, 133.90), (45.00, 133.10), (45.30, 131.90), (44.90, 131.00),
    (44.40, 131.25), (43.00, 131.30), (42.50, 130.70), (42.90, 130.20), (42.40, 129.70), (41.95, 128.10),
    (41.40, 128.15), (40.90, 126.20), (40.00, 124.30), (39.60, 123.00), (38.75, 121.80), (38.70, 121.10),
    (37.90, 121.00), (37.50, 122.75), (36.80, 122.60), (35.20, 119.60), (34.30, 120.50), (32.50, 121.40),
    (31.60, 122.00), (30.80, 122.10), (29.90, 122.45), (28.00, 121.40), (26.60, 120.30), (25.40, 119.90),
    (24.40, 118.20), (23.40, 117.50), (22.60, 116.40), (22.10, 114.60), (21.70, 113.20), (21.30, 111.40),
    (20.30, 111.20), (19.70, 111.20), (18.60, 110.60), (17.90, 109.50), (18.10, 108.50), (19.50, 108.40),
    (20.60, 109.50), (21.40, 108.10), (21.55, 107.90), (22.40, 106.70), (22.90, 106.80), (23.30, 105.40),
    (22.70, 104.10), (22.50, 103.20), (22.80, 102.30), (21.20, 101.60), (21.40, 101.00), (22.00, 99.90),
    (22.20, 99.20), (23.10, 99.50), (24.00, 97.70), (25.00, 97.70), (26.50, 98.60), (27.50, 98.70),
    (28.20, 97.60), (28.50, 96.50), (29.40, 96.10), (29.00, 95.40), (27.90, 92.00), (27.80, 91.60),
    (28.10, 89.50), (27.30, 88.80), (27.90, 88.10), (28.20, 86.00), (29.20, 83.50), (30.20, 81.30),
    (30.40, 79.40), (31.50, 78.80), (32.50, 78.40), (33.40, 78.80), (34.40, 78.20), (35.50, 77.90),
    (35.90, 76.70), (36.90, 75.30), (37.30, 74.70), (38.60, 74.30), (39.40, 73.60), (40.10, 73.80),
    (40.60, 75.50), (41.00, 77.80), (42.00, 80.10), (43.00, 80.40), (44.90, 79.90), (45.20, 82.50),
    (47.10, 83.00), (47.30, 85.50), (48.50, 85.70), (49.20, 87.30), (48.40, 88.00), (47.80, 90.30),
    (46.60, 91.00), (45.30, 90.80), (44.40, 93.50), (42.80, 96.30), (42.70, 100.80), (41.60, 105.00),
    (42.50, 109.50), (43.60, 111.80), (44.50, 111.50), (45.10, 113.60), (46.70, 119.90), (47.70, 119.70),
    (48.00, 118.50), (47.70, 117.40), (47.90, 115.50), (49.90, 116.70), (49.90, 117.80), (51.00, 119.20),
    (52.60, 120.60), (53.35, 121.30), (53.55, 122.30), (53.45, 124.00), (53.00, 125.60), (52.20, 126.70),
    (51.30, 126.90), (50.25, 127.55), (49.65, 128.50), (49.45, 129.60), (48.90, 130.60), (47.70, 130.90),
    (47.70, 132.50), (48.30, 133.60), (48.45, 135.10),
)  # fmt: skip

#: Places inside the outline that are not mainland China (south, west, north, east bounds).
EXCLUDED_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (22.15, 113.83, 22.43, 114.45),  # Hong Kong: Lantau and the south
    (22.43, 113.95, 22.51, 114.45),  # Hong Kong: the New Territories up to the Shenzhen River
    (22.10, 113.52, 22.22, 113.60),  # Macau
)


def in_mainland_china(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Whether each position lies in mainland China (by the coarse outline, ray casting)."""
    la = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lo = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    poly = np.asarray(MAINLAND_OUTLINE)
    y1, x1 = poly[:-1, 0][:, None], poly[:-1, 1][:, None]
    y2, x2 = poly[1:, 0][:, None], poly[1:, 1][:, None]
    crosses = (y1 > la) != (y2 > la)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (la - y1) * (x2 - x1) / (y2 - y1)
    inside = (np.count_nonzero(crosses & (lo < x_at), axis=0) % 2) == 1
    for south, west, north, east in EXCLUDED_BOXES:
        inside &= ~((la >= south) & (la <= north) & (lo >= west) & (lo <= east))
    return inside & np.isfinite(la) & np.isfinite(lo)


def _offset(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published GCJ-02 offset (degrees of latitude, longitude) at WGS-84 positions."""
    x, y = lon - 105.0, lat - 35.0
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x)) + common
    d_lat += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    d_lat += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
    d_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x)) + common
    d_lon += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    d_lon += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0
    rad = lat / 180.0 * np.pi
    magic = 1.0 - _EE * np.sin(rad) ** 2
    sqrt_magic = np.sqrt(magic)
    d_lat = (d_lat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * np.pi)
    d_lon = (d_lon * 180.0) / (_A / sqrt_magic * np.cos(rad) * np.pi)
    return d_lat, d_lon


def _arrays(lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    if la.shape != lo.shape:
        raise ValueError(f"latitudes and longitudes differ in shape: {la.shape} != {lo.shape}")
    return la, lo


def to_gcj02(lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS-84 -> GCJ-02 for whole tracks; positions outside mainland China (and NaN) come back unchanged."""
    la, lo = _arrays(lat, lon)
    inside = in_mainland_china(la.reshape(-1), lo.reshape(-1)).reshape(la.shape)
    d_lat, d_lon = _offset(la, lo)
    return np.where(inside, la + d_lat, la), np.where(inside, lo + d_lon, lo)


def to_wgs84(
    lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray, iterations: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 -> WGS-84, approximately: fixed-point iteration of the forward offset (sub-centimetre).

    A result outside mainland China means the input was not shifted, so it comes back unchanged.
    """
    g_lat, g_lon = _arrays(lat, lon)
    w_lat, w_lon = g_lat.copy(), g_lon.copy()
    for _ in range(iterations):
        d_lat, d_lon = _offset(w_lat, w_lon)
        w_lat, w_lon = g_lat - d_lat, g_lon - d_lon
    inside = in_mainland_china(w_lat.reshape(-1), w_lon.reshape(-1)).reshape(g_lat.shape)
    return np.where(inside, w_lat, g_lat), np.where(inside, w_lon, g_lon)


def point_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """One position, WGS-84 -> GCJ-02."""
    a, b = to_gcj02([lat], [lon])
    return float(a[0]), float(b[0])
