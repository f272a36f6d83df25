"""Maps in Chromium: a drive on real tiles from a local XYZ tile server (tiles requested, route drawn, GCJ-02 shifts
it exactly as carvault.geo.gcj02 does), the tile-free fallback with place names (the owner's own first), and the
Places page in English and Chinese at desktop and phone size, with and without tiles; axe-core finds nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from carvault.geo import gcj02, geocoder
from tests.tileserver import TileServer, tile_server  # noqa: F401 - the fixture
from tests.web.portal.a11y import axe_violations
from tests.web.portal.conftest import api, new_context, screenshot
from tests.web.portal.world import DAY, PASSWORD, World

pytestmark = pytest.mark.slow


@contextmanager
def tiles_on(world: World, server: TileServer | None, crs: str = "wgs84") -> Iterator[None]:
    """The region's map settings for the duration (the portal and its CSP read them per request)."""
    before = world.region.settings
    url = server.url_template if server else ""
    world.region.settings = before.with_(
        map_tile_url=url, map_tile_attribution="Test tiles © CarVault", map_tile_crs=crs
    )
    try:
        yield
    finally:
        world.region.settings = before


def _open(page: Any, email: str, url: str) -> list[str]:
    """Log in through the form straight to ``url``; the list collects failed requests and script errors from now."""
    problems: list[str] = []
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"/login?next={quote(url, safe='')}")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click(".auth-card button[type=submit]")
    page.wait_for_url(lambda u: u.endswith(url) or url in u)
    return problems


def _first_drive(world: World) -> dict[str, Any]:
    return api(world, f"/api/v1/vehicles/{world.cars[0].vin}/timeline").json()["drives"][0]


def _drive_url(world: World) -> str:
    drive = _first_drive(world)
    return f"/vehicles/{world.cars[0].vin}/drive?start={drive['start_ms']}&end={drive['end_ms']}"


def _route(page: Any) -> dict[str, Any]:
    return json.loads(page.get_attribute("[data-testid=route-map]", "data-map"))


@contextmanager
def _place(world: World, lat: float, lon: float, name: str = "Home") -> Iterator[dict[str, Any]]:
    r = httpx.post(
        f"{world.url}/api/v1/places",
        headers=world.auth,
        json={"name": name, "lat": lat, "lon": lon, "radius_m": 150, "mask_in_car": False},
    )
    assert r.status_code == 201, r.text
    try:
        yield r.json()
    finally:
        httpx.delete(f"{world.url}/api/v1/places/{r.json()['id']}", headers=world.auth)


def test_csp_and_map_config_follow_the_tile_setting(world: World, tile_server: TileServer) -> None:  # noqa: F811
    with httpx.Client(base_url=world.url) as http:
        assert http.get("/map/config").json() == {"url": "", "attribution": "", "crs": "wgs84"}
        assert "img-src 'self' data:;" in http.get("/login").headers["content-security-policy"]
        with tiles_on(world, tile_server, "gcj02"):
            cfg = http.get("/map/config").json()
            csp = http.get("/login").headers["content-security-policy"]
            api_csp = http.get("/api/v1/catalogue").headers["content-security-policy"]
        assert cfg["url"] == tile_server.url_template and cfg["crs"] == "gcj02"
        assert cfg["outline"] == [list(p) for p in gcj02.MAINLAND_OUTLINE]
        assert (
            f"img-src 'self' data: {tile_server.url};" in csp and f"img-src 'self' data: {tile_server.url}" in api_csp
        )
        assert "script-src 'self'" in csp  # nothing else loosened


@pytest.mark.parametrize(("lang", "size"), [("en", "desktop"), ("zh-CN", "phone")])
def test_drive_without_tiles_keeps_the_drawing_and_names_the_places(
    browser: Any, world: World, lang: str, size: str
) -> None:
    url, start_ms = _drive_url(world), _first_drive(world)["start_ms"]
    ctx = new_context(browser, world, size, lang)
    page = ctx.new_page()
    errors = _open(page, world.email, url)
    spec = _route(page)
    start, end = spec["markers"][0], spec["markers"][-1]
    with _place(world, start["lat"], start["lon"]):
        page.goto(url)
        page.wait_for_load_state("networkidle")
        assert page.locator("#route-svg").is_visible()  # the tile-free SVG stays
        assert page.locator(".cv-map-canvas").count() == 0
        items = page.locator("[data-testid=route-places] li")
        assert items.first.get_attribute("data-source") == "place" and "Home" in items.first.inner_text()
        last = items.last
        town = geocoder.describe(end["lat"], end["lon"], lang)
        assert town and (town.startswith("中国 · 广东省 · ") if lang == "zh-CN" else town.endswith(", CN"))
        assert last.get_attribute("data-kind") == "end"
        assert (town or "") in last.inner_text() or last.get_attribute("data-source") == "place"
        assert "GeoNames" in page.inner_text(".route-card")
        screenshot(page, f"maps-drive-no-tiles-{lang}-{size}")
        assert axe_violations(page) == []
        # The timeline names where each drive started and ended, too.
        page.goto(f"/vehicles/{world.cars[0].vin}?from={DAY.isoformat()}&to={DAY.isoformat()}")
        routes = page.locator("[data-testid=drive-places]").all_inner_texts()
        first = page.locator(f"a[href*='start={start_ms}']").locator("xpath=ancestor::li[1]")
        assert len(routes) >= 2 and "Home" in first.locator("[data-testid=drive-places]").inner_text()
        assert axe_violations(page) == []
    assert not errors, errors
    ctx.close()


@pytest.mark.parametrize("crs", ["wgs84", "gcj02"])
def test_drive_on_tiles(browser: Any, world: World, tile_server: TileServer, crs: str) -> None:  # noqa: F811
    url = _drive_url(world)
    with tiles_on(world, tile_server, crs):
        tile_server.clear()
        ctx = new_context(browser, world)
        page = ctx.new_page()
        errors = _open(page, world.email, url)
        page.wait_for_selector(f".cv-map[data-map-ready={crs}]")
        page.wait_for_function("() => document.querySelectorAll('.leaflet-tile-loaded').length > 0")
        served = tile_server.served()
        assert served and len({z for z, _, _ in served}) == 1 and 8 <= served[0][0] <= 18
        assert not page.locator("#route-svg").is_visible()  # the fallback gives way to the map
        drawn = page.evaluate(
            "() => window.carvaultMaps.map(m => ({tracks: m.tracks, crs: m.crs, markers: m.markers.length}))"
        )[0]
        spec = _route(page)
        assert drawn["crs"] == crs and drawn["markers"] == len(spec["markers"]) >= 2
        wgs = np.array([p for t in spec["tracks"] for p in t])
        shown = np.array([p for t in drawn["tracks"] for p in t])
        assert wgs.shape == shown.shape and len(wgs) > 10
        if crs == "wgs84":
            assert np.array_equal(wgs, shown)
        else:  # the browser shifts exactly as the server's module does, and the shift is real (Shenzhen)
            lat, lon = gcj02.to_gcj02(wgs[:, 0], wgs[:, 1])
            assert np.allclose(shown[:, 0], lat, atol=1e-9) and np.allclose(shown[:, 1], lon, atol=1e-9)
            shift_m = geocoder.EARTH_RADIUS_M * np.radians(np.hypot(shown[:, 0] - wgs[:, 0], shown[:, 1] - wgs[:, 1]))
            assert shift_m.max() > 100
            assert page.locator("[data-testid=gcj02-note]").is_visible()
            # Beyond this route: 3000 points over China and its borders, both directions, browser against server.
            rng = np.random.default_rng(5)
            pts = np.column_stack([rng.uniform(15, 56, 3000), rng.uniform(70, 140, 3000)])
            both = page.evaluate(
                """async (pts) => {
                    const cfg = await (await fetch('/map/config')).json();
                    return pts.map(p => [window.carvaultMapToTiles(p[0], p[1], cfg),
                                         window.carvaultMapFromTiles(p[0], p[1], cfg)]);
                }""",
                pts.tolist(),
            )
            js_to = np.array([b[0] for b in both])
            js_from = np.array([b[1] for b in both])
            py_to = np.column_stack(gcj02.to_gcj02(pts[:, 0], pts[:, 1]))
            py_from = np.column_stack(gcj02.to_wgs84(pts[:, 0], pts[:, 1]))
            assert np.allclose(js_to, py_to, atol=1e-9) and np.allclose(js_from, py_from, atol=1e-9)
            assert 500 < (js_to != pts).any(axis=1).sum() < 2500  # some inside the outline, some outside
        path = page.locator("path.cv-map-track").first.get_attribute("d")
        assert path and path.count("L") > 10  # the polyline is drawn
        assert "Test tiles" in page.inner_text(".leaflet-control-attribution")
        screenshot(page, f"maps-drive-tiles-{crs}")
        assert axe_violations(page) == []
        assert not errors, errors
        ctx.close()


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_places_page_without_tiles(browser: Any, world: World, lang: str, size: str) -> None:
    ctx = new_context(browser, world, size, lang)
    page = ctx.new_page()
    errors = _open(page, world.email, "/places")
    assert page.locator("h1").inner_text() == ("Places" if lang == "en" else "地点")
    assert page.locator("[data-testid=no-tiles]").is_visible() and page.locator(".cv-map").count() == 0
    assert page.locator(".mainnav a[aria-current=page]").get_attribute("href") == "/places"
    name = f"Office {lang} {size}"
    page.fill("#place-name", name)
    page.fill("#place-lat", "22.5400")
    page.fill("#place-lon", "114.0500")
    page.fill("#place-radius", "30")  # below the minimum: the API refuses, the page says why, keeps the input
    page.evaluate("() => document.getElementById('add-place').noValidate = true")
    page.click("#add-place button[type=submit]")
    error = page.locator("[data-testid=place-error]").inner_text()
    assert ("50" in error and "5000" in error) and page.input_value("#place-name") == name
    page.fill("#place-radius", "250")
    page.check("#place-mask")
    page.click("#add-place button[type=submit]")
    row = page.locator(".place-row", has_text=name)
    assert row.count() == 1 and ("Masked in the car" if lang == "en" else "在车内遮蔽") in row.inner_text()
    screenshot(page, f"maps-places-{lang}-{size}")
    assert axe_violations(page) == []
    row.locator("summary").click()
    row.locator("input[name=radius_m]").fill("400")
    row.locator("form.form button[type=submit]").click()
    row = page.locator(".place-row", has_text=name)
    assert "400" in row.inner_text()
    row.locator("form[action$='/delete'] button").click()
    assert page.locator(".place-row", has_text=name).count() == 0
    assert [e for e in errors if not e.endswith("/places")] == [] and len(errors) == 1  # only the refused radius
    ctx.close()


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_places_page_picks_the_centre_on_tiles(
    browser: Any,
    world: World,
    tile_server: TileServer,  # noqa: F811
    lang: str,
) -> None:
    with tiles_on(world, tile_server, "gcj02"), _place(world, 22.54, 114.06, "Futian") as futian:
        ctx = new_context(browser, world, "phone" if lang == "zh-CN" else "desktop", lang)
        page = ctx.new_page()
        errors = _open(page, world.email, "/places")
        page.wait_for_selector(".cv-map[data-map-ready=gcj02]")
        page.wait_for_function("() => document.querySelectorAll('.leaflet-tile-loaded').length > 0")
        box = page.locator(".cv-map-canvas").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        lat, lon = float(page.input_value("#place-lat")), float(page.input_value("#place-lon"))
        # The click is on the GCJ-02 tiles; the form gets WGS-84 back: the map's centre is the shifted place.
        assert abs(lat - futian["lat"]) < 0.002 and abs(lon - futian["lon"]) < 0.002
        g_lat, g_lon = gcj02.point_to_gcj02(lat, lon)
        assert abs(g_lat - lat) + abs(g_lon - lon) > 0.001  # it was shifted back, not copied
        screenshot(page, f"maps-places-tiles-{lang}")
        assert axe_violations(page) == []
        assert not errors, errors
        ctx.close()
