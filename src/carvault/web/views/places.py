"""The owner's "Places" page (/places) and the map configuration every map reads (/map/config).

Places are named circles (home, work …) built on the places API (web/routes/places.py). With a tile server
configured, a map lets the owner click the centre; without one, the centre is typed in. The map configuration tells
``static/map.js`` which tile server to draw on, its datum, and (for GCJ-02 tiles) the mainland-China outline the
shift applies in (carvault/geo/gcj02.py), so browser and server decide alike.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from carvault.access.places import MAX_RADIUS_M, MIN_RADIUS_M, OwnerPlace, covering, place_of_json
from carvault.geo.gcj02 import EXCLUDED_BOXES, MAINLAND_OUTLINE
from carvault.geo.geocoder import describe_many
from carvault.settings import Settings
from carvault.web.views.base import Page, PageError, page

router = APIRouter(include_in_schema=False)

FIELDS = ("name", "lat", "lon", "radius_m")


def map_config(settings: Settings) -> dict[str, Any]:
    """What map.js needs: tile URL template (empty: no tiles), attribution, datum, and the GCJ-02 outline."""
    config: dict[str, Any] = {
        "url": settings.map_tile_url,
        "attribution": settings.map_tile_attribution,
        "crs": settings.map_tile_crs,
    }
    if settings.map_tile_url and settings.map_tile_crs == "gcj02":
        config["outline"] = [list(p) for p in MAINLAND_OUTLINE]
        config["excluded"] = [list(b) for b in EXCLUDED_BOXES]
    return config


async def _owner_places(p: Page) -> list[OwnerPlace]:
    """The owner's places, to name where a drive starts and ends (none if the places API answers nothing)."""
    r = await p.api("GET", "/api/v1/places")
    return [place_of_json(x) for x in r.json().get("places", [])] if r.status_code == 200 else []


async def name_points(p: Page, points: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per point, its name: the owner's place covering it (``place``), else the nearest town (``town``)."""
    places = await _owner_places(p)
    named: list[dict[str, Any]] = []
    rest: list[int] = []
    for i, (la, lo) in enumerate(points):
        own = covering(places, la, lo)
        named.append({"name": own.name, "source": "place"} if own else {"name": None, "source": "town"})
        if own is None:
            rest.append(i)
    if rest:
        # In a worker thread: the first call in a process loads the GeoNames table (about a second).
        lats, lons = [points[i][0] for i in rest], [points[i][1] for i in rest]
        towns = await asyncio.to_thread(describe_many, lats, lons, p.t.language)
        for i, town in zip(rest, towns, strict=True):
            named[i]["name"] = town or p.t("maps.unknown_place")
    return named


@router.get("/map/config")
async def map_configuration(request: Request) -> Response:
    """The tile server of this region's maps (public: it names no owner or car)."""
    config = map_config(request.app.state.region.settings)
    return JSONResponse(config, headers={"Cache-Control": "public, max-age=300"})


def map_spec(places: list[dict[str, Any]], label: str, center: tuple[float, float] | None = None) -> str:
    """The data-map JSON of the places map: each place as a circle, the view centred on them (or ``center``)."""
    spec: dict[str, Any] = {
        "tracks": [],
        "markers": [
            {"lat": x["lat"], "lon": x["lon"], "kind": "place", "label": x["name"], "radius_m": x["radius_m"]}
            for x in places
        ],
        "label": label,
    }
    if center is not None:
        spec["center"] = list(center)
    return json.dumps(spec, ensure_ascii=False)


async def _render(p: Page, form: dict[str, Any] | None = None, error: str | None = None, status: int = 200) -> Response:
    r = await p.api("GET", "/api/v1/places")
    if r.status_code != 200:
        raise PageError(r.status_code, p.t("places.error.other"))
    places = r.json()["places"]
    settings = p.request.app.state.region.settings
    return p.render(
        "places.html",
        status=status,
        title=p.t("places.title"),
        places=places,
        form=form or {"radius_m": "200"},
        error=error,
        tiles=bool(settings.map_tile_url),
        gcj02=settings.map_tile_crs == "gcj02",
        map_spec=map_spec(places, p.t("places.map_label")),
        min_radius=MIN_RADIUS_M,
        max_radius=MAX_RADIUS_M,
    )


@router.get("/places")
async def places_page(request: Request) -> Response:
    p = await page(request)
    return await _render(p)


def _number(text: str) -> float | str:
    """A form number as a JSON number, or the text itself (the API then names the field that is wrong)."""
    try:
        return float(text.strip().replace(",", "."))
    except ValueError:
        return text


def place_body(form: dict[str, str]) -> dict[str, Any]:
    """The API body of the add/edit form (the API validates; nothing is checked twice here)."""
    radius = _number(form.get("radius_m", ""))
    return {
        "name": form.get("name", ""),
        "lat": _number(form.get("lat", "")),
        "lon": _number(form.get("lon", "")),
        "radius_m": int(radius) if isinstance(radius, float) and radius.is_integer() else radius,
        "mask_in_car": form.get("mask_in_car") == "on",
    }


def _message(p: Page, r: Any) -> str:
    """The page's own words for an API refusal (by code, and by field for validation)."""
    try:
        err = r.json().get("error", {})
    except ValueError:
        err = {}
    code, field = err.get("code", ""), err.get("field", "")
    if field:
        found = p.t.maybe(f"places.error.{code}.{field}", "")
        if found:
            return found
    return p.t.maybe(f"places.error.{code}", p.t("places.error.other"))


@router.post("/places")
async def add_place(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    r = await p.api("POST", "/api/v1/places", json_body=place_body(form))
    if r.status_code == 201:
        return p.redirect("/places", "place_added")
    return await _render(p, form=form, error=_message(p, r), status=r.status_code if r.status_code < 500 else 400)


@router.post("/places/{place_id}")
async def edit_place(place_id: int, request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    r = await p.api("PATCH", f"/api/v1/places/{place_id}", json_body=place_body(form))
    if r.status_code == 200:
        return p.redirect("/places", "place_saved")
    if r.status_code == 404:
        raise PageError(404, p.t("places.error.place_not_found"))
    return await _render(p, error=_message(p, r), status=r.status_code if r.status_code < 500 else 400)


@router.post("/places/{place_id}/delete")
async def delete_place(place_id: int, request: Request) -> Response:
    p = await page(request)
    await p.form()
    r = await p.api("DELETE", f"/api/v1/places/{place_id}")
    if r.status_code not in (204, 404):
        raise PageError(r.status_code, p.t("places.error.other"))
    return p.redirect("/places", "place_removed")
