"""A drive (or any window): its route, charts, zoom, and "download this window".

The route is drawn on the operator's map tiles when a tile server is configured (static/map.js, vendored Leaflet;
GCJ-02 tiles get the route shifted for display only) and as a tile-free SVG otherwise (kept inside the map element
as its fallback). Start, end and events are named: the owner's own places first ("Home"), else the nearest town from
the offline GeoNames geocoder (carvault/geo/geocoder.py).
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.errors import InvalidQuery, WindowTooLong
from carvault.web.views.base import FormError, PageError, page
from carvault.web.views.places import name_points
from carvault.web.views.vehicles import events, vehicle
from carvault.windows import check_window

router = APIRouter(include_in_schema=False)

SPEED = "Vehicle.Speed"
ACCEL = "Vehicle.Chassis.Accelerator.PedalPosition"
BRAKE = "Vehicle.Chassis.Brake.PedalPosition"
PRESSURE = "Vehicle.EDR.BrakeMasterCylinderPressure"
ABS = "Vehicle.ADAS.ABS.IsEngaged"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
CHART_SIGNALS = (SPEED, ACCEL, BRAKE, ABS, PRESSURE, SOC)
# Chart id -> series (path, message key, unit, colour); colours are the CSS palette's.
CHARTS = (
    ("speed", ((SPEED, "signal.speed", "km/h", "#0b6e4f"),)),
    (
        "pedals",
        (
            (ACCEL, "signal.accelerator", "%", "#1d4ed8"),
            (BRAKE, "signal.brake", "%", "#b91c1c"),
            (ABS, "signal.abs", "", "#b45309"),
        ),
    ),
    ("pressure", ((PRESSURE, "signal.pressure", "bar", "#7c3aed"),)),
    ("soc", ((SOC, "signal.soc", "%", "#0e7490"),)),
)
MAX_WINDOW_MS = 24 * 3_600_000
MAX_POINTS = 3600
SVG_W, SVG_H, SVG_PAD = 640, 400, 28
NICE_M = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)


def resample_for(window_ms: int) -> str:
    """A resampling interval that keeps a chart under ~3600 points (1 s for drives up to an hour)."""
    return f"{max(1, math.ceil(window_ms / 1000 / MAX_POINTS))}s"


def route_svg(
    t: list[int], lat: list[float | None], lon: list[float | None], marks: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The route projected into an SVG box: polyline segments, start/end/event marks, a scale bar."""
    pts = [(ti, la, lo) for ti, la, lo in zip(t, lat, lon, strict=True) if la is not None and lo is not None]
    if len(pts) < 2:
        return None
    lat0 = sum(p[1] for p in pts) / len(pts)
    kx = math.cos(math.radians(lat0)) * 111_320.0  # metres per degree of longitude here
    ky = 110_540.0
    xs = [(p[2] - pts[0][2]) * kx for p in pts]
    ys = [(p[1] - pts[0][1]) * ky for p in pts]
    w_m, h_m = max(max(xs) - min(xs), 1.0), max(max(ys) - min(ys), 1.0)
    scale = min((SVG_W - 2 * SVG_PAD) / w_m, (SVG_H - 2 * SVG_PAD) / h_m)
    ox = SVG_PAD + ((SVG_W - 2 * SVG_PAD) - w_m * scale) / 2 - min(xs) * scale
    oy = SVG_H - SVG_PAD - ((SVG_H - 2 * SVG_PAD) - h_m * scale) / 2 + min(ys) * scale
    px = [(round(ox + x * scale, 1), round(oy - y * scale, 1)) for x, y in zip(xs, ys, strict=True)]
    step = max(1, len(px) // 2000)
    segments: list[str] = []
    current: list[str] = []
    for i in range(0, len(px), step):
        if current and pts[i][0] - pts[max(0, i - step)][0] > 60_000 * step:  # no location for a minute: lift pen
            segments.append(" ".join(current))
            current = []
        current.append(f"{'M' if not current else 'L'}{px[i][0]},{px[i][1]}")
    segments.append(" ".join(current))

    def at(ms: int) -> tuple[float, float]:
        k = min(range(len(pts)), key=lambda i: abs(pts[i][0] - ms))
        return px[k]

    nice = next((m for m in NICE_M if m * scale >= 60), NICE_M[-1])
    return {
        "w": SVG_W,
        "h": SVG_H,
        "segments": segments,
        "start": px[0],
        "end": px[-1],
        "marks": [{**m, "xy": at(m["t_ms"])} for m in marks],
        "scale_px": round(nice * scale, 1),
        "scale_m": nice,
        "points": [[x, y, pts[i][0]] for i, (x, y) in enumerate(px)][::step],
    }


def _positions(t: list[int], lat: list[float | None], lon: list[float | None]) -> list[tuple[int, float, float]]:
    return [(ti, la, lo) for ti, la, lo in zip(t, lat, lon, strict=True) if la is not None and lo is not None]


def route_map(pts: list[tuple[int, float, float]], marks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The data-map of map.js: the route as tracks (a pen lift after a minute without location), start, end, events.

    ``marks`` carry ``kind`` (start, end, event), ``t_ms`` and ``label``; each is placed at the nearest position."""
    step = max(1, len(pts) // 2000)
    tracks: list[list[list[float]]] = []
    current: list[list[float]] = []
    for i in range(0, len(pts), step):
        if current and pts[i][0] - pts[max(0, i - step)][0] > 60_000 * step:
            tracks.append(current)
            current = []
        current.append([round(pts[i][1], 6), round(pts[i][2], 6)])
    if pts and (len(pts) - 1) % step:
        current.append([round(pts[-1][1], 6), round(pts[-1][2], 6)])
    if current:
        tracks.append(current)
    times = [p[0] for p in pts]
    markers = []
    for m in marks:
        k = min(range(len(pts)), key=lambda i: abs(times[i] - m["t_ms"]))
        markers.append({"lat": pts[k][1], "lon": pts[k][2], "kind": m["kind"], "label": m["label"]})
    return {"tracks": tracks, "markers": markers, "label": label}


@router.get("/vehicles/{vin}/drive")
async def drive(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    q = request.query_params
    try:
        if q.get("from") or q.get("to"):
            start, end = p.time_input(q.get("from"), "from"), p.time_input(q.get("to"), "to")
        else:
            start, end = int(q.get("start", "")), int(q.get("end", ""))
    except (ValueError, FormError) as e:
        raise PageError(400, str(e) if isinstance(e, FormError) else p.t("error.window")) from None
    try:
        check_window(start, end, MAX_WINDOW_MS)
    except InvalidQuery as e:  # each mistake its own words: reversed, empty, too long
        key = "drive.window_limit" if isinstance(e, WindowTooLong) else f"edges.code.{e.code}"
        raise PageError(400, p.t(key)) from None
    interval = resample_for(end - start)
    data = await p.get_json(
        f"/api/v1/vehicles/{car['vin']}/telemetry",
        params={"start": start, "end": end, "signals": ",".join((*CHART_SIGNALS, LAT, LON)), "resample": interval},
    )
    tl = await p.get_json(f"/api/v1/vehicles/{car['vin']}/timeline", params={"start": start, "end": end})
    evs = await events(p, car["vin"], start, end)
    r = await p.api("GET", f"/api/v1/vehicles/{car['vin']}/consents")
    precise = r.status_code == 200 and any(
        c["category"] == "location_precise" and c["status"] == "collecting" for c in r.json()["categories"]
    )
    sig = data["signals"]
    route = route_svg(
        data["t"],
        sig.get(LAT, []),
        sig.get(LON, []),
        [{"kind": e["kind"], "t_ms": e["t_ms"], "label": p.t.maybe(f"event.{e['kind']}", e["kind"])} for e in evs],
    )
    pts = _positions(data["t"], sig.get(LAT, []), sig.get(LON, []))
    where: list[dict[str, Any]] = []
    map_spec = None
    if len(pts) >= 2:
        spots = [
            {"kind": "start", "t_ms": pts[0][0], "label": p.t("drive.start")},
            *[{"kind": "event", "t_ms": e["t_ms"], "label": p.t.maybe(f"event.{e['kind']}", e["kind"])} for e in evs],
            {"kind": "end", "t_ms": pts[-1][0], "label": p.t("drive.end")},
        ]
        spec = route_map(pts, spots, p.t("maps.route_label"))
        names = await name_points(p, [(m["lat"], m["lon"]) for m in spec["markers"]])
        for spot, marker, name in zip(spots, spec["markers"], names, strict=True):
            marker["label"] = f"{spot['label']} · {name['name']} · {p.t.dt(spot['t_ms'], 'time_s')}"
            where.append({**spot, **name})
        map_spec = json.dumps(spec, ensure_ascii=False)
    settings = request.app.state.region.settings
    drives = tl["drives"]
    speeds = [d["top_speed_kmh"] for d in drives if d["top_speed_kmh"] is not None]
    stats = {
        "distance_m": sum(d["distance_m"] for d in drives),
        "duration_s": (end - start) / 1000,
        "energy_kwh": sum(d["energy_kwh"] or 0 for d in drives) if drives else None,
        "top_speed_kmh": max(speeds) if speeds else None,
        "soc_start": drives[0]["soc_start"] if drives else None,
        "soc_end": drives[-1]["soc_end"] if drives else None,
    }
    charts = [
        {
            "id": cid,
            "title": p.t(f"chart.{cid}"),
            "series": [
                {"path": path, "label": p.t(key), "unit": unit, "color": colour} for path, key, unit, colour in series
            ],
        }
        for cid, series in CHARTS
    ]
    window = {"start": start, "end": end}
    downloads = [
        (
            fmt.upper() if fmt != "parquet" else "Parquet",
            f"/api/v1/vehicles/{car['vin']}/telemetry?" + urlencode({**window, "format": fmt}),
        )
        for fmt in ("csv", "json", "parquet")
    ]
    downloads.append(("GPX", f"/api/v1/vehicles/{car['vin']}/route?" + urlencode({**window, "format": "gpx"})))
    chart_data = {
        "vin": car["vin"],
        "tz": p.t.tz_name,
        "start": start,
        "end": end,
        "resample": interval,
        "t": data["t"],
        "signals": {k: v for k, v in sig.items() if k in CHART_SIGNALS},
        "charts": charts,
        "route": route["points"] if route else [],
        "labels": {"time": p.t("chart.time"), "loading": p.t("drive.loading"), "full": p.t("drive.full_resolution")},
    }
    return p.render(
        "drive.html",
        title=p.t("drive.title_at", day=p.t.dt(start, "date"), start=p.t.dt(start, "time"), end=p.t.dt(end, "time")),
        car=car,
        start=start,
        end=end,
        stats=stats,
        drives=drives,
        route=route,
        events=evs,
        charts=charts,
        chart_data=chart_data,
        downloads=downloads,
        interval=interval,
        rows=data["rows"],
        coarse=route is not None and not precise,
        map_spec=map_spec,
        where=where,
        tiles=bool(settings.map_tile_url),
        gcj02=bool(settings.map_tile_url) and settings.map_tile_crs == "gcj02",
    )
