"""A vehicle's "Charging" page: sessions, a session's power curve, monthly totals, battery health, tariffs.

Built on the charging API (web/routes/charging.py) like every page on its API. Charts are drawn by
``static/charging.js`` with the vendored uPlot; each is also a data table for screen readers (and without script).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.web.views.base import Page, PageError, page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)

DAY_MS = 86_400_000
PERIODS = (1, 3, 12)  # months the page offers
WEEKDAYS = (1, 2, 3, 4, 5, 6, 7)
CHART_KEYS = ("charging.chart.time", "charging.chart.power", "charging.chart.soc", "charging.chart.capacity")


def _money(cost: dict[str, float] | None) -> str:
    if not cost:
        return "—"
    return " + ".join(f"{v:,.2f} {c}" for c, v in sorted(cost.items()))


async def _places(p: Page) -> list[dict[str, Any]]:
    """The owner's places for the tariff form (none while the places API answers nothing)."""
    r = await p.api("GET", "/api/v1/places")
    if r.status_code != 200:
        return []
    body = r.json()
    items = body.get("places", []) if isinstance(body, dict) else body
    return [{"id": x["id"], "name": x["name"]} for x in items if isinstance(x, dict) and "id" in x]


async def _render(
    p: Page, vin: str, request: Request, form: dict[str, Any] | None = None, error: str | None = None
) -> Response:
    car = await vehicle(p, vin)
    q = request.query_params
    try:
        months = int(q.get("months", "12"))
    except ValueError:
        months = 12
    months = months if months in PERIODS else 12
    lang = "zh-CN" if p.t.zh else "en"
    data = await p.get_json(f"/api/v1/vehicles/{car['vin']}/charging", params={"lang": lang})
    if months != 12:  # the last 1 or 3 months of the year the API gave
        since = data["end_ms"] - months * 31 * DAY_MS
        data["sessions"] = [s for s in data["sessions"] if s["start_ms"] >= since]
        keep = {p.t.dt(s["start_ms"], "date")[:7] for s in data["sessions"]}
        data["months"] = [m for m in data["months"] if m["month"] in keep]
    sessions = list(reversed(data["sessions"]))  # newest first
    chosen = q.get("session")
    selected = None
    if sessions:
        want = int(chosen) if chosen and chosen.isdigit() else sessions[0]["start_ms"]
        r = await p.api("GET", f"/api/v1/vehicles/{car['vin']}/charging/{want}", params={"lang": lang})
        if r.status_code == 200:
            selected = r.json()
        elif chosen:
            raise PageError(404, p.t("charging.no_session"))
    health = await p.get_json(f"/api/v1/vehicles/{car['vin']}/battery-health")
    tariffs = await p.get_json("/api/v1/tariffs")
    places = await _places(p)
    place_names = {x["id"]: x["name"] for x in places}
    chart = {
        "labels": {k.rsplit(".", 1)[1]: p.t(k) for k in CHART_KEYS},
        "curve": selected["curve"] if selected else None,
        "health": [m for m in health["months"] if m["capacity_kwh"] is not None],
        "nominal": health["nominal_capacity_kwh"],
    }
    for s in sessions:
        s["cost_text"] = _money((s.get("cost") or {}).get("amounts"))
    for m in data["months"]:
        m["cost_text"] = _money(m["cost"])
        m["avg_text"] = _money(m["avg_price_per_kwh"])
    return p.render(
        "charging.html",
        status=422 if error else 200,
        title=p.t("charging.title"),
        car=car,
        tab="charging",
        data=data,
        sessions=sessions,
        selected=selected,
        selected_cost=_money(((selected or {}).get("cost") or {}).get("amounts")),
        health=health,
        tariffs=tariffs["tariffs"],
        tariff_zone=tariffs["time_zone"],
        places=places,
        place_names=place_names,
        months=months,
        periods=PERIODS,
        weekdays=WEEKDAYS,
        chart_json=json.dumps(chart, ensure_ascii=False).replace("</", "<\\/"),
        form=form or {},
        error=error,
    )


@router.get("/vehicles/{vin}/charging")
async def charging(vin: str, request: Request) -> Response:
    p = await page(request)
    return await _render(p, vin, request)


def _tariff_body(form: dict[str, Any], days: list[str]) -> dict[str, Any]:
    place = form.get("place_id", "")
    return {
        "name": form.get("name", ""),
        "place_id": int(place) if place.isdigit() else None,
        "weekdays": [int(d) for d in days if d.isdigit()],
        "start": form.get("start", ""),
        "end": form.get("end", "") if form.get("end", "") not in ("00:00", "") else "24:00",
        "price_per_kwh": form.get("price_per_kwh", "").strip() or "x",
        "session_fee": form.get("session_fee", "").strip() or "0",
        "currency": form.get("currency", "").strip().upper(),
    }


@router.post("/vehicles/{vin}/charging/tariffs")
async def add_tariff(vin: str, request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    days = [v for k, v in (await request.form()).multi_items() if k == "weekday" and isinstance(v, str)]
    r = await p.api("POST", "/api/v1/tariffs", json_body=_tariff_body(form, days))
    if r.status_code == 201:
        return p.redirect(f"/vehicles/{vin}/charging?notice=tariff_added#tariffs-h")
    err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
    code, field = err.get("code", ""), err.get("field", "")
    message = p.t(f"charging.error.{code}.{field}") if field else ""
    if not field or message == f"charging.error.{code}.{field}":
        message = p.t.maybe(f"charging.error.{code}", p.t("charging.error.other"))
    return await _render(p, vin, request, form={**form, "weekday": days}, error=message)


@router.post("/vehicles/{vin}/charging/tariffs/{tariff_id}/delete")
async def delete_tariff(vin: str, tariff_id: int, request: Request) -> Response:
    p = await page(request)
    await p.form()
    r = await p.api("DELETE", f"/api/v1/tariffs/{tariff_id}")
    if r.status_code not in (204, 404):
        raise PageError(r.status_code, p.t("charging.error.other"))
    return p.redirect(f"/vehicles/{vin}/charging?notice=tariff_removed#tariffs-h")
