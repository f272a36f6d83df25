"""The offline reverse geocoder: nearest towns by real distance, Chinese names, threads, bad input."""

from __future__ import annotations

import csv
import threading
from importlib import resources

import numpy as np

from carvault.geo import geocoder
from carvault.geo.names_zh import CN_PROVINCES, COUNTRIES


def _rows() -> list[dict[str, str]]:
    with resources.files(geocoder.DATA_PACKAGE).joinpath(geocoder.DATA_FILE).open("r", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_known_places_in_english_and_chinese() -> None:
    assert geocoder.describe(22.538, 113.939, "en") == "Nanshan, Guangdong, CN"
    assert geocoder.describe(22.538, 113.939, "zh-CN") == "中国 · 广东省 · Nanshan"
    assert geocoder.describe(48.137, 11.575, "en") == "Munich, Upper Bavaria, DE"
    assert geocoder.describe(48.137, 11.575, "zh-CN") == "德国 · Bavaria · Munich"
    assert geocoder.describe(31.23, 121.47, "zh-CN").startswith("中国 · 上海市 · ")


def test_nearest_by_distance_not_by_degrees() -> None:
    # At 70°N a degree of longitude is ~38 km: a town 0.3° east (~11 km) is nearer than one 0.2° north (~22 km),
    # which a search in degrees gets wrong. Build the check from the data itself: pick Tromsø's neighbourhood.
    rows = [r for r in _rows() if r["cc"] == "NO" and 69.0 < float(r["lat"]) < 70.5]
    lat, lon = 69.6496, 18.956  # Tromsø centre
    dist = [geocoder.EARTH_RADIUS_M * _gc(lat, lon, float(r["lat"]), float(r["lon"])) for r in rows]
    best = rows[int(np.argmin(dist))]
    assert geocoder.nearest_towns([lat], [lon])[0].name == best["name"]


def _gc(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return float(2 * np.arcsin(np.sqrt(a)))


def test_no_name_far_from_towns_or_for_bad_input() -> None:
    assert geocoder.describe(0.0, -140.0) is None  # the middle of the Pacific
    assert geocoder.describe(None, 10.0) is None
    assert geocoder.describe(float("nan"), 10.0) is None
    assert geocoder.describe(91.0, 10.0) is None
    assert geocoder.describe("north", 10.0) is None  # type: ignore[arg-type]
    assert geocoder.describe_many([], []) == []


def test_describe_many_matches_describe_and_keeps_order() -> None:
    lats = [52.52, float("nan"), 22.538, 0.0, 40.7128]
    lons = [13.405, 0.0, 113.939, -140.0, -74.006]
    many = geocoder.describe_many(np.array(lats), np.array(lons), "en")
    assert many == [geocoder.describe(a, b, "en") for a, b in zip(lats, lons, strict=True)]
    assert many[1] is None and many[3] is None and many[0].endswith(", DE") and many[4].endswith(", US")


def test_every_country_and_chinese_province_in_the_data_has_a_chinese_name() -> None:
    rows = _rows()
    assert {r["cc"] for r in rows} <= set(COUNTRIES)
    assert {r["admin1"] for r in rows if r["cc"] == "CN"} <= set(CN_PROVINCES)
    assert len(set(CN_PROVINCES.values())) == len(CN_PROVINCES) == 31


def test_concurrent_first_use_loads_once_and_answers_everyone() -> None:
    geocoder._index = None  # a fresh process: many threads ask at once
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(geocoder.describe(22.538, 113.939, "en"))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Nanshan, Guangdong, CN"] * 8
