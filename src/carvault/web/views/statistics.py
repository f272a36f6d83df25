"""The "Statistics" page of a vehicle: months and years, efficiency, states, vampire drain, tyres, temperatures, range.

Everything comes from the statistics API (web/routes/statistics.py) in the owner's display time zone. Each chart is
drawn by ``static/statistics.js`` with uPlot from a JSON spec and is also rendered as a data table on the server,
so the page says the same without a script and to a screen reader.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carvault.access import statistics as st
from carvault.web.i18n import Translator
from carvault.web.views.base import FormError, PageError, page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)

DEFAULT_DAYS = 30
MAX_DAYS = 92
STATE_COLOURS = {"driving": "#1d4ed8", "charging": "#0b6e4f", "parked": "#94a3b8", "offline": "#3f3f46"}
TYRE_COLOURS = ("#1d4ed8", "#b91c1c", "#0b6e4f", "#b45309")
TEMP_COLOURS = {st.AIR: "#0e7490", st.CABIN: "#7c3aed", st.BATTERY_T: "#b45309", st.MOTOR_T: "#b91c1c"}
TYRE_KEYS = ("stats.tyre_fl", "stats.tyre_fr", "stats.tyre_rl", "stats.tyre_rr")
TEMP_KEYS = {
    st.AIR: "stats.t_outside",
    st.CABIN: "stats.t_cabin",
    st.BATTERY_T: "stats.t_battery",
    st.MOTOR_T: "stats.t_motor",
}


def _window(p: Any, q: Any, data_end_ms: int | None) -> tuple[int, int]:
    """The chosen days (inclusive dates in the display zone), default the last 30 days of data."""
    try:
        if q.get("from") or q.get("to"):
            start = p.time_input(q.get("from"), "from")
            end = p.time_input(q.get("to"), "to") + st.DAY_MS  # the last day counts whole
        else:
            last = dt.datetime.fromtimestamp(((data_end_ms or 0) - 1) / 1000, p.t.tz).date() if data_end_ms else None
            last = last or dt.datetime.now(p.t.tz).date()
            end = int(dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), p.t.tz).timestamp() * 1000)
            start = end - DEFAULT_DAYS * st.DAY_MS
    except FormError as e:
        raise PageError(400, str(e)) from None
    if end <= start:
        raise PageError(400, p.t("stats.window_order"))
    if end - start > MAX_DAYS * st.DAY_MS:
        raise PageError(400, p.t("stats.window_limit", days=MAX_DAYS))
    return start, end


def _bars(
    cid: str, title: str, labels: list[str], values: list[float | None], unit: str, axis: str, colour: str
) -> dict:
    return {
        "id": cid,
        "title": title,
        "kind": "bars",
        "labels": labels,
        "x": list(range(len(labels))),
        "x_label": axis,
        "series": [{"label": title, "unit": unit, "color": colour, "values": values}],
        "y_label": unit,
        "table_only": len(labels) < 2,  # one bar says nothing a table row does not (and has a single tick)
    }


def _states_by_day(t: Translator, intervals: list[dict[str, Any]], start: int, end: int) -> list[dict[str, Any]]:
    """One bar per local day: segments as fractions of the day (SVG rectangles, no inline styles)."""
    rows = []
    for _, a, b in st.local_days(start, end, t.tz):
        segs = []
        for i in intervals:
            lo, hi = max(a, i["start_ms"]), min(b, i["end_ms"])
            if hi > lo:
                segs.append(
                    {
                        "state": i["state"],
                        "x": round((lo - a) / (b - a) * 1000, 2),
                        "w": round((hi - lo) / (b - a) * 1000, 2),
                        "color": STATE_COLOURS[i["state"]],
                        "title": f"{t('stats.state.' + i['state'])} {t.dt(lo, 'time')}–{t.dt(hi, 'time')}",
                    }
                )
        totals = {
            s: sum(
                (min(b, i["end_ms"]) - max(a, i["start_ms"])) / 1000
                for i in intervals
                if i["state"] == s and min(b, i["end_ms"]) > max(a, i["start_ms"])
            )
            for s in st.STATES
        }
        rows.append({"day": t.dt(a, "date"), "segments": segs, "totals": totals})
    return rows


@router.get("/vehicles/{vin}/statistics")
async def statistics_page(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    t = p.t
    base = f"/api/v1/vehicles/{car['vin']}"
    tz = {"tz": t.tz_name}
    year = await p.get_json(f"{base}/statistics", params={"granularity": "month", **tz})
    start, end = _window(p, request.query_params, year["end_ms"] if year["periods"] else None)
    window = {"start": start, "end": end, **tz}
    years = await p.get_json(
        f"{base}/statistics", params={"granularity": "year", "start": year["start_ms"], "end": year["end_ms"], **tz}
    )
    chosen = await p.get_json(f"{base}/statistics", params={"granularity": "day", **window})
    states = await p.get_json(f"{base}/states", params=window)
    eff = await p.get_json(f"{base}/efficiency", params=window)
    drain = await p.get_json(f"{base}/vampire-drain", params=window)
    cond = await p.get_json(f"{base}/conditions", params=window)

    charts = _efficiency_charts(t, eff, year["periods"], drain) + _condition_charts(t, cond)
    tables = {c["id"]: _table(t, c) for c in charts}
    chart_data = {"tz": t.tz_name, "lang": t.language, "charts": [c for c in charts if not c.get("table_only")]}
    return p.render(
        "statistics.html",
        title=t("stats.title"),
        car=car,
        start=start,
        end=end,
        last_day=end - st.DAY_MS,
        months=year["periods"],
        years=years["periods"],
        chosen=chosen["total"],
        days=_states_by_day(t, states["intervals"], start, end),
        state_totals=states["totals_s"],
        state_colours=STATE_COLOURS,
        states_list=list(reversed(st.STATES)),
        intervals=states["intervals"],
        eff=eff,
        drives=sorted(eff["drives"], key=lambda d: d["start_ms"], reverse=True)[:100],
        drain=drain,
        standstills=sorted(drain["periods"], key=lambda d: d["start_ms"], reverse=True),
        cond=cond,
        charts=charts,
        tables=tables,
        chart_data=chart_data,
    )


def _efficiency_charts(
    t: Translator, eff: dict[str, Any], months: list[dict[str, Any]], drain: dict[str, Any]
) -> list[dict[str, Any]]:
    """Bar charts: efficiency by speed, temperature and month; drain per day."""
    charts: list[dict[str, Any]] = []
    kmh, whkm, celsius = "km/h", "Wh/km", "°C"
    speed_labels = [f"{b['bin']}–{b['bin'] + 20}" if b["bin"] < 120 else f"≥{b['bin']}" for b in eff["by_speed"]]
    if eff["by_speed"]:
        charts.append(
            _bars(
                "eff-speed",
                t("stats.eff_by_speed"),
                speed_labels,
                [b["wh_per_km"] for b in eff["by_speed"]],
                whkm,
                t("stats.axis_speed", unit=kmh),
                "#1d4ed8",
            )
        )
    if eff["by_temperature"]:
        step = eff["temperature_bin_c"]
        labels = [f"{b['bin']}–{b['bin'] + step:g}" for b in eff["by_temperature"]]
        charts.append(
            _bars(
                "eff-temp",
                t("stats.eff_by_temp"),
                labels,
                [b["wh_per_km"] for b in eff["by_temperature"]],
                whkm,
                t("stats.axis_temp", unit=celsius),
                "#0e7490",
            )
        )
    if any(m["wh_per_km"] is not None for m in months):
        charts.append(
            _bars(
                "eff-month",
                t("stats.eff_by_month"),
                [m["period"] for m in months],
                [m["wh_per_km"] for m in months],
                whkm,
                t("stats.axis_month"),
                "#7c3aed",
            )
        )
    if drain["per_day"]:
        charts.append(
            _bars(
                "drain-day",
                t("stats.drain_per_day"),
                [d["day"] for d in drain["per_day"]],
                [d["pct_per_hour"] for d in drain["per_day"]],
                "%/h",
                t("stats.axis_day"),
                "#b45309",
            )
        )
    return charts


def _condition_charts(t: Translator, cond: dict[str, Any]) -> list[dict[str, Any]]:
    """Line charts of tyre pressures and temperatures over time; range against state of charge as points."""
    charts: list[dict[str, Any]] = []
    celsius = "°C"
    series = cond["series"]
    xs = [ms / 1000 for ms in cond["t"]]
    tyres = [
        {"label": t(k), "unit": "kPa", "color": c, "values": series[p_]}
        for p_, k, c in zip(st.TYRES, TYRE_KEYS, TYRE_COLOURS, strict=True)
        if p_ in series
    ]
    if tyres:
        charts.append(
            {
                "id": "tyres",
                "title": t("stats.tyres"),
                "kind": "line",
                "time": True,
                "x": xs,
                "x_label": t("chart.time"),
                "series": tyres,
                "y_label": "kPa",
            }
        )
    temps = [
        {"label": t(TEMP_KEYS[p_]), "unit": celsius, "color": TEMP_COLOURS[p_], "values": series[p_]}
        for p_ in st.TEMPERATURES
        if p_ in series
    ]
    if temps:
        charts.append(
            {
                "id": "temps",
                "title": t("stats.temperatures"),
                "kind": "line",
                "time": True,
                "x": xs,
                "x_label": t("chart.time"),
                "series": temps,
                "y_label": celsius,
            }
        )
    pairs = cond["range_vs_soc"]
    if pairs:
        charts.append(
            {
                "id": "range",
                "title": t("stats.range_vs_soc"),
                "kind": "points",
                "x": [a for a, _ in pairs],
                "x_label": t("stats.axis_soc"),
                "x_unit": "%",
                "series": [
                    {"label": t("stats.range"), "unit": "km", "color": "#0b6e4f", "values": [b for _, b in pairs]}
                ],
                "y_label": "km",
            }
        )
    return charts


def _table(t: Translator, chart: dict[str, Any]) -> dict[str, Any]:
    """A chart's data as rows for the screen-reader table (times in the display zone, at most 500 rows)."""
    if chart.get("time"):
        xs = [t.dt(int(x * 1000), "datetime") for x in chart["x"]]
    elif "labels" in chart:
        xs = chart["labels"]
    else:
        xs = [f"{x:g}" for x in chart["x"]]
    head = [chart["x_label"] + (f" ({chart['x_unit']})" if chart.get("x_unit") else "")]
    head += [f"{s['label']} ({s['unit']})" for s in chart["series"]]
    rows = [[x, *(s["values"][i] for s in chart["series"])] for i, x in enumerate(xs)]
    step = max(1, len(rows) // 500)
    return {"head": head, "rows": rows[::step], "thinned": step > 1}
