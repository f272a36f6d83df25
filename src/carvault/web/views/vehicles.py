"""My vehicles, pairing a new one, and a vehicle's timeline of drives, charging sessions and events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.views.base import FormError, Page, page
from carvault.web.views.places import name_points

router = APIRouter(include_in_schema=False)
DAY_MS = 86_400_000
EVENT_WINDOW_MS = 120_000  # an event's drive view: two minutes either side


async def vehicle(p: Page, vin: str) -> dict[str, Any]:
    """One of the owner's vehicles (the 404 page for anyone else's)."""
    data: dict[str, Any] = await p.get_json(f"/api/v1/vehicles/{vin}")
    return data


async def events(p: Page, vin: str, start_ms: int | None = None, end_ms: int | None = None) -> list[dict[str, Any]]:
    """The vehicle's recorded events in a window (empty when the events API answers nothing)."""
    params = {k: v for k, v in (("start", start_ms), ("end", end_ms)) if v is not None}
    r = await p.api("GET", f"/api/v1/vehicles/{vin}/events", params=params)
    if r.status_code != 200:
        return []
    body = r.json()
    items = body.get("events", []) if isinstance(body, dict) else body
    return sorted(
        (e for e in items if (start_ms is None or e["t_ms"] >= start_ms) and (end_ms is None or e["t_ms"] < end_ms)),
        key=lambda e: e["t_ms"],
    )


def describe_event(p: Page, e: dict[str, Any]) -> list[str]:
    """Readable lines about an event's recorded detail (triggers, recorded window, lock)."""
    d = e.get("detail") or {}
    lines: list[str] = []
    triggers = []
    for trig in d.get("triggers") or []:
        if not isinstance(trig, dict):
            continue
        kind = str(trig.get("kind"))
        text = f"{p.t.maybe('event.' + kind, kind)} {p.t.dt(trig.get('t_ms'), 'time_ms')}"
        if trig.get("deceleration_g") is not None:
            text += f" ({trig['deceleration_g']:.2f} g)"
        if trig.get("delta_v_kmh") is not None:
            text += f" (Δv {trig['delta_v_kmh']:+.1f} km/h)"
        triggers.append(text)
    if triggers:
        lines.append(p.t("event.triggers", list=" · ".join(triggers)))
    if d.get("pre_s") is not None and d.get("post_s") is not None:
        lines.append(p.t("event.recorded", pre=f"{d['pre_s']:g}", post=f"{d['post_s']:g}"))
    if d.get("locked"):
        lines.append(p.t("event.locked"))
    known = {"triggers", "pre_s", "post_s", "locked"}
    extra = [
        f"{p.t.maybe('detail.' + k, k)}: {v}"
        for k, v in d.items()
        if k not in known and isinstance(v, str | int | float | bool)
    ]
    if extra:
        lines.append(" · ".join(extra))
    return lines


async def _list(
    p: Page, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    cars = await p.get_json("/api/v1/vehicles")
    return p.render(
        "vehicles.html", status=status, title=p.t("vehicles.title"), vehicles=cars, error=error, form=form or {}
    )


@router.get("/vehicles")
async def vehicles(request: Request) -> Response:
    return await _list(await page(request))


@router.post("/vehicles/pair")
async def pair(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    vin, code = form.get("vin", "").strip().upper(), form.get("pairing_code", "").strip()
    r = await p.api("POST", "/api/v1/vehicles/claim", json_body={"vin": vin, "pairing_code": code})
    if r.status_code == 201:
        return p.redirect(f"/vehicles/{vin}", "vehicle_paired")
    error = {
        404: p.t("pair.wrong_code"),
        409: p.t("pair.taken"),
        422: p.t("pair.invalid"),
        429: p.t("pair.too_many"),
    }.get(r.status_code, p.t("error.other"))
    return await _list(p, 400 if r.status_code != 429 else 429, error, {"vin": vin})


@router.post("/vehicles/{vin}/name")
async def rename(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    form = await p.form()
    r = await p.api("PATCH", f"/api/v1/vehicles/{car['vin']}", json_body={"name": form.get("name", "")})
    if r.status_code == 200:
        return p.redirect("/vehicles", "vehicle_renamed")
    err = r.json().get("error", {}) if r.status_code < 500 else {}
    key = "taken" if r.status_code == 409 else "too_long" if "most" in err else "characters"
    form_back = {"rename_vin": car["vin"], "name": form.get("name", "")}
    return await _list(p, 409 if r.status_code == 409 else 400, p.t(f"edges.name.{key}"), form_back)


def _day_start(p: Page, ms: int) -> int:
    d = datetime.fromtimestamp(ms / 1000, p.t.tz)
    return int(d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


async def _name_drives(p: Page, drives: list[dict[str, Any]]) -> None:
    """Where each drive started and ended (``from_name``, ``to_name``): the owner's places, else the nearest town."""
    located = [d for d in drives if None not in (d["start_lat"], d["start_lon"], d["end_lat"], d["end_lon"])]
    points = [pt for d in located for pt in ((d["start_lat"], d["start_lon"]), (d["end_lat"], d["end_lon"]))]
    names = await name_points(p, points) if points else []
    for k, d in enumerate(located):
        d["from_name"], d["to_name"] = names[2 * k]["name"], names[2 * k + 1]["name"]


@router.get("/vehicles/{vin}")
async def timeline(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    q = request.query_params
    params: dict[str, Any] = {}
    error = None
    try:
        if q.get("from"):
            params["start"] = p.time_input(q.get("from"), "from")
        if q.get("to"):
            # The "to" day is included: the window ends at the next local midnight.
            to = datetime.fromtimestamp(p.time_input(q.get("to"), "to") / 1000, p.t.tz) + timedelta(days=1)
            params["end"] = int(to.timestamp() * 1000)
        if "end" in params and "start" not in params:
            params["start"] = params["end"] - 7 * DAY_MS
    except FormError as e:
        error, params = str(e), {}
    r = await p.api("GET", f"/api/v1/vehicles/{car['vin']}/timeline", params=params)
    if r.status_code != 200 and params:
        error = p.error_text(r)
        r = await p.api("GET", f"/api/v1/vehicles/{car['vin']}/timeline")
    tl = r.json()
    await _name_drives(p, tl["drives"])
    evs = await events(p, car["vin"], tl["start_ms"], tl["end_ms"])
    items: list[dict[str, Any]] = [*tl["drives"], *tl["charges"]]
    items += [
        {**e, "kind": "event", "event_kind": e["kind"], "start_ms": e["t_ms"], "lines": describe_event(p, e)}
        for e in evs
    ]
    items.sort(key=lambda x: x["start_ms"], reverse=True)
    days: list[tuple[int, list[dict[str, Any]]]] = []
    for item in items:
        day = _day_start(p, item["start_ms"])
        if not days or days[-1][0] != day:
            days.append((day, []))
        days[-1][1].append(item)
    drives = tl["drives"]
    totals = {
        "drives": len(drives),
        "distance_m": sum(d["distance_m"] for d in drives),
        "duration_s": sum(d["duration_s"] for d in drives),
        "energy_kwh": sum(d["energy_kwh"] or 0 for d in drives),
        "charges": len(tl["charges"]),
        "added_kwh": sum(c["energy_kwh"] or 0 for c in tl["charges"]),
        "events": len(evs),
    }
    span = tl["end_ms"] - tl["start_ms"]
    newer = tl["data_end_ms"] is not None and tl["end_ms"] < tl["data_end_ms"]
    return p.render(
        "timeline.html",
        title=p.t("timeline.title"),
        car=car,
        tl=tl,
        days=days,
        totals=totals,
        error=error,
        event_window_ms=EVENT_WINDOW_MS,
        first_day=p.t.dt(tl["start_ms"], "input_date"),
        last_day=p.t.dt(tl["end_ms"] - 1, "input_date"),
        older=(p.t.dt(tl["start_ms"] - span, "input_date"), p.t.dt(tl["start_ms"] - 1, "input_date")),
        newer=(p.t.dt(tl["end_ms"], "input_date"), p.t.dt(tl["end_ms"] + span - 1, "input_date")) if newer else None,
    )
