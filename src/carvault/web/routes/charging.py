"""Charging sessions (list, CSV, one session with its power curve), battery health, and the owner's tariffs.

Reads go through ``region.grants.access`` like every read of a vehicle's data: the owner sees everything, a grant
holder what the grant covers (the charging signals, its history window, location at its precision; never the
owner's tariffs, costs or place names). See access/charging.py for how sessions are derived and priced.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any, Literal

import pyarrow as pa
from fastapi import APIRouter, Body, Query, Response

from carvault.access.audit import OWNER_REQUEST, Actor, AuditAction
from carvault.access.charging import DAY_MS, REQUIRED, for_view, monthly_totals
from carvault.access.charging import battery_health as estimate_health
from carvault.access.completeness import check_instant
from carvault.access.grants import Access
from carvault.access.trips import LATITUDE, LONGITUDE
from carvault.errors import NotFound, TariffOverlap, ValidationFailed
from carvault.region import Region
from carvault.store.metadata import now_ms
from carvault.web.deps import Caller, CurrentOwner, RegionDep, RowId, parse_time
from carvault.web.errors import raises
from carvault.web.routes.timeline import data_span
from carvault.windows import check_window

router = APIRouter(prefix="/api/v1", tags=["charging"])

DEFAULT_DAYS = 365
MAX_DAYS = 400
LANGS = ("en", "zh-CN")
CSV_COLUMNS = (
    "start_utc",
    "end_utc",
    "duration_min",
    "energy_kwh",
    "energy_method",
    "current",
    "max_power_kw",
    "avg_power_kw",
    "soc_start",
    "soc_end",
    "range_added_km",
    "place",
    "lat",
    "lon",
    "cost",
    "currency",
)


def _window(region: Region, access: Access, start: str | None, end: str | None) -> tuple[int, int]:
    """The asked window (at most ``MAX_DAYS``), or the last year of data; a grant holder's is within the grant."""
    view = access.view
    lo, hi = data_span(region, access.vin)
    end_ms = check_instant(parse_time(end, "end"), "end") if end else (hi if hi is not None else now_ms())
    start_ms = check_instant(parse_time(start, "start"), "start") if start else end_ms - DEFAULT_DAYS * DAY_MS
    check_window(start_ms, end_ms, MAX_DAYS * DAY_MS, what="the charging window")
    if start or end:
        view.window(start_ms, end_ms)
        return start_ms, end_ms
    return view.clip(start_ms, end_ms)


def _located(access: Access, sessions: list[dict[str, Any]]) -> None:
    """Positions at the caller's precision: none without location in the grant, coarse unless precise."""
    view = access.view
    if view.is_owner:
        return
    allowed = {s.path for s in view.allowed()}
    if LATITUDE not in allowed or LONGITUDE not in allowed:
        for s in sessions:
            s["lat"] = s["lon"] = None
        return
    located = [s for s in sessions if s["lat"] is not None and s["lon"] is not None]
    if not located:
        return
    table = pa.table(
        {
            "t": pa.array([s["start_ms"] for s in located], pa.timestamp("ms", tz="UTC")),
            LATITUDE: pa.array([s["lat"] for s in located], pa.float64()),
            LONGITUDE: pa.array([s["lon"] for s in located], pa.float64()),
        }
    )
    coarse = view.location(table)
    for s, la, lo in zip(
        located, coarse.column(LATITUDE).to_pylist(), coarse.column(LONGITUDE).to_pylist(), strict=True
    ):
        s["lat"], s["lon"] = la, lo


def sessions_of(region: Region, access: Access, start_ms: int, end_ms: int, lang: str) -> list[dict[str, Any]]:
    """The sessions starting in the window as the API shows them (place, cost for the owner)."""
    facts = for_view(access.view, region.charging.facts(access.vin, start_ms, end_ms))
    _located(access, facts)
    owner_id = access.vehicle.owner_id if access.view.is_owner else None
    places = region.charging.places_of(owner_id, [(f["lat"], f["lon"]) for f in facts], lang)
    if owner_id is not None:
        region.charging.priced(owner_id, facts, places)
    for f, p in zip(facts, places, strict=True):
        f["place"] = p
        f.setdefault("cost", None)
    return facts


def _public(session: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if k not in ("minute_kwh", "minute0_ms")}


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def sessions_csv(vin: str, sessions: list[dict[str, Any]]) -> str:
    """The sessions as CSV; a first comment line says the times are UTC."""
    out = io.StringIO()
    out.write(f"# CarVault charging sessions of {vin}; all times are UTC (ISO 8601 date and time, no offset)\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in sessions:
        cost = (s.get("cost") or {}).get("amounts") or {}
        cur, amount = next(iter(cost.items())) if len(cost) == 1 else ("", None)
        w.writerow(
            [
                _utc(s["start_ms"]),
                _utc(s["end_ms"]),
                round(s["duration_s"] / 60, 1),
                s["energy_kwh"],
                s["energy_method"],
                s["current"],
                s["max_power_kw"],
                s["avg_power_kw"],
                s["soc_start"],
                s["soc_end"],
                s["range_added_km"],
                (s.get("place") or {}).get("name") or "",
                s["lat"],
                s["lon"],
                "" if amount is None else round(amount, 2),
                cur,
            ]
        )
    return out.getvalue()


def _checked(region: Region, access: Access) -> Access:
    """The access, if its view covers the charging signals and the vehicle's data is served (no legal hold)."""
    access.view.require(REQUIRED, "charging sessions")
    region.deletions.check_served(access.vin)
    return access


@router.get(
    "/vehicles/{vin}/charging",
    summary="Charging sessions of a window with energy, power, AC/DC, place and cost, and monthly totals",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def charging(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = Query(None, description="ISO 8601 or epoch ms (inclusive); default: a year before end"),
    end: str | None = Query(None, description="ISO 8601 or epoch ms (exclusive); default: the end of the data"),
    lang: Literal["en", "zh-CN"] = Query("en", description="language of place names"),
    format: Literal["json", "csv"] = Query("json"),
) -> Any:
    """Sessions starting in the window (at most 400 days), oldest first; costs only for the owner."""
    access = _checked(region, region.grants.access(caller, vin))
    start_ms, end_ms = _window(region, access, start, end)
    sessions = sessions_of(region, access, start_ms, end_ms, lang) if end_ms > start_ms else []
    region.grants.record_read(
        access,
        AuditAction.CHARGING_READ,
        {"start_ms": start_ms, "end_ms": end_ms, "sessions": len(sessions), "format": format},
    )
    if format == "csv":
        return Response(
            sessions_csv(access.vin, sessions),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{access.vin}-charging-{start_ms}-{end_ms}.csv"'},
        )
    return {
        "vin": access.vin,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "time_zone": region.charging.zone_name,
        "sessions": [_public(s) for s in sessions],
        "months": monthly_totals(sessions, region.charging.zone),
    }


@router.get("/vehicles/{vin}/charging/{start_ms}", summary="One charging session with its power curve and cost")
def charging_session(
    vin: str,
    start_ms: RowId,
    caller: Caller,
    region: RegionDep,
    lang: Literal["en", "zh-CN"] = Query("en", description="language of place names"),
) -> dict[str, Any]:
    """The session starting at ``start_ms`` (as the list gives it): figures, power curve, cost slices."""
    access = _checked(region, region.grants.access(caller, vin))
    check_instant(start_ms, "start_ms")  # a row id may be any 64-bit integer; start_ms + 1 must still be one
    access.view.window(start_ms, start_ms + 1)
    found = [s for s in sessions_of(region, access, start_ms, start_ms + 1, lang) if s["start_ms"] == start_ms]
    if not found:
        raise NotFound(f"no charging session of {access.vin} starts at {start_ms}", vin=access.vin, start_ms=start_ms)
    curve = region.charging.curve(access.vin, start_ms)
    region.grants.record_read(access, AuditAction.CHARGING_READ, {"session_start_ms": start_ms})
    return {"vin": access.vin, **_public(found[0]), "curve": curve}


@router.get("/vehicles/{vin}/battery-health", summary="Usable battery capacity estimated from charging, by month")
def battery_health(vin: str, caller: Caller, region: RegionDep) -> dict[str, Any]:
    """Estimates from every session in the data (or the grant's window), the car's own SOH beside them."""
    access = _checked(region, region.grants.access(caller, vin))
    lo, hi = data_span(region, access.vin)
    if lo is None or hi is None:
        sessions: list[dict[str, Any]] = []
    else:
        lo, hi = access.view.clip(lo, hi)
        sessions = for_view(access.view, region.charging.facts(access.vin, lo, hi)) if hi > lo else []
    region.grants.record_read(access, AuditAction.CHARGING_READ, {"battery_health": True, "sessions": len(sessions)})
    return {
        "vin": access.vin,
        "time_zone": region.charging.zone_name,
        **estimate_health(sessions, region.charging.zone),
    }


# ------------------------------------------------------------------------------------------ tariffs
def _audit(region: Region, owner: Any, what: str, detail: dict[str, Any]) -> None:
    region.audit.record(
        owner_id=owner.owner_id,
        actor=Actor("owner", str(owner.owner_id)),
        action=AuditAction.TARIFF_CHANGE,
        legal_basis=OWNER_REQUEST,
        detail={"change": what, **detail},
    )


@router.get("/tariffs", summary="Your charging tariffs")
def tariffs(owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    """Every tariff of the owner, oldest first, and the time zone their times are in."""
    return {
        "time_zone": region.charging.zone_name,
        "tariffs": [t.to_json() for t in region.charging.tariffs(owner.owner_id)],
    }


TARIFF_EXAMPLE = {
    "name": "Home, night",
    "place_id": None,
    "weekdays": [1, 2, 3, 4, 5, 6, 7],
    "start": "00:00",
    "end": "07:00",
    "price_per_kwh": "0.31",
    "session_fee": "0",
    "currency": "CNY",
    "valid_from_ms": None,
    "valid_to_ms": None,
}


@router.post(
    "/tariffs", status_code=201, summary="Add a charging tariff", responses=raises(ValidationFailed, TariffOverlap)
)
def add_tariff(
    owner: CurrentOwner, region: RegionDep, body: Any = Body(..., examples=[TARIFF_EXAMPLE])
) -> dict[str, Any]:
    """Times are local (the region's time zone); two tariffs for the same place may not price the same minute."""
    t = region.charging.add_tariff(owner.owner_id, body)
    _audit(region, owner, "add", {"tariff_id": t.id, "name": t.name})
    return t.to_json()


@router.put(
    "/tariffs/{tariff_id}",
    summary="Change a charging tariff (the whole tariff, as when adding)",
    responses=raises(NotFound, ValidationFailed, TariffOverlap),
)
def update_tariff(
    tariff_id: RowId, owner: CurrentOwner, region: RegionDep, body: Any = Body(..., examples=[TARIFF_EXAMPLE])
) -> dict[str, Any]:
    t = region.charging.update_tariff(owner.owner_id, tariff_id, body)
    _audit(region, owner, "change", {"tariff_id": t.id, "name": t.name})
    return t.to_json()


@router.delete("/tariffs/{tariff_id}", status_code=204, summary="Remove a charging tariff")
def delete_tariff(tariff_id: RowId, owner: CurrentOwner, region: RegionDep) -> Response:
    region.charging.delete_tariff(owner.owner_id, tariff_id)
    _audit(region, owner, "remove", {"tariff_id": tariff_id})
    return Response(status_code=204)
