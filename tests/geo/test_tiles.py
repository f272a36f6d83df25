"""The tile settings: templates checked when settings are read, the origin the content security policy allows."""

from __future__ import annotations

import pytest

from carvault.geo.tiles import check_tile_crs, check_tile_url, tile_origin
from carvault.settings import Settings


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("", None),
        ("https://tiles.example.org/{z}/{x}/{y}.png", "https://tiles.example.org"),
        ("https://{s}.tile.example.org/{z}/{x}/{y}.png", "https://*.tile.example.org"),
        ("https://webrd0{s}.is.example.cn/appmaptile?x={x}&y={y}&z={z}", "https://*.is.example.cn"),
        ("http://127.0.0.1:8080/t/{z}/{x}/{y}.png", "http://127.0.0.1:8080"),
    ],
)
def test_origin_for_the_policy(url: str, origin: str | None) -> None:
    assert check_tile_url(url) == url
    assert tile_origin(url) == origin


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://tiles.example.org/{z}/{x}/{y}.png", "http(s)"),
        ("/tiles/{z}/{x}/{y}.png", "http(s)"),
        ("https://tiles.example.org/{z}/{x}.png", "{y} missing"),
        ("https://tiles.{s}.example.org/{z}/{x}/{y}.png", "first label"),
        ("https://tiles.example.org/{z}/{x}/{y}.png; script-src *", "semicolons"),
        ("https://tiles.example.org/{z}/{x}/{y}.png 'unsafe-inline'", "quotes"),
    ],
)
def test_bad_templates_are_refused_when_settings_are_read(url: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        Settings.from_env({"CARVAULT_MAP_TILE_URL": url})
    assert words in str(e.value)


def test_crs() -> None:
    assert check_tile_crs("gcj02") == "gcj02"
    s = Settings.from_env(
        {"CARVAULT_MAP_TILE_URL": "https://t.example.org/{z}/{x}/{y}.png", "CARVAULT_MAP_TILE_CRS": "gcj02"}
    )
    assert s.map_tile_crs == "gcj02" and s.map_tile_url.endswith("{y}.png")
    with pytest.raises(ValueError, match="wgs84, gcj02"):
        Settings.from_env({"CARVAULT_MAP_TILE_CRS": "bd09"})
