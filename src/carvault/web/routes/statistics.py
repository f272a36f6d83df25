"""A vehicle's statistics: totals by day/month/year, states, efficiency, vampire drain and conditions.

Every route goes through ``region.grants.access`` (owner or grant holder), needs the signals it derives from
(``OutOfScope`` otherwise), keeps a grant holder inside the grant's history window, and is recorded in the owner's
access log. Day summaries come from ``region.statistics`` (access/statistics.py).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from carvault.access import statistics as st
from carvault.access.audit import AuditAction
from carvault.access.charging import for_view
from carvault.access.completeness import check_instant
from carvault.access.grants import Access
from carvault.region import Region
from carvault.store.metadata import now_ms
from carvault.web.deps import Caller, RegionDep, parse_time
from carvault.web.routes.timeline import data_span
from carvault.windows import check_window

router = APIRouter(prefix="/api/v1/vehicles", tags=["statistics"])

DAY_MS = st.DAY_MS
MAX_STATISTICS_DAYS = 400
MAX_DETAIL_DAYS = 92
START = Query(None, description="ISO 8601 or epoch ms (inclusive); default: see each route")
END = Query(None, description="ISO 8601 or epoch ms (exclusive); default: the end of the data")
TZ = Query("UTC", description="IANA time zone the days, months and years are cut in, e.g. Asia/Shanghai")


def _window(
    region: Region,
    access: Access,
    start: str | None,
    end: str | None,
    default_days: int,
    max_days: int,
    tz: str = "UTC",
) -> tuple[int, int]:
    """The asked window, or the last ``default_days`` of data; a grant holder's stays inside the grant."""
    view = access.view
    lo, hi = data_span(region, access.vin)
    end_ms = check_instant(parse_time(end, "end"), "end") if end else (hi if hi is not None else now_ms())
    start_ms = check_instant(parse_time(start, "start"), "start") if start else end_ms - default_days * DAY_MS
    check_window(start_ms, end_ms, max_days * DAY_MS, what="this window")
    if start or end:
        view.window(start_ms, end_ms)
    else:
        start_ms, end_ms = view.clip(start_ms, end_ms)
    if lo is not None:  # nothing to say about days before the first upload's (local) day
        start_ms = min(max(start_ms, st.local_days(lo, lo + 1, st.zone(tz)[1])[0][1]), end_ms)
    return start_ms, end_ms


def _check(region: Region, access: Access, paths: tuple[str, ...], what: str) -> Access:
    """The grant covers the signals a view derives from, and the vehicle's data is still served."""
    access.view.require(paths, what)
    region.deletions.check_served(access.vin)
    return access


def _days(region: Region, access: Access, start_ms: int, end_ms: int, tz: str) -> st.Days:
    days = region.statistics.days(access.vin, start_ms, end_ms, tz)
    if not access.view.is_owner:  # a grant's window may cut a day: keep only what lies inside it
        days = st.Days(
            days.tz_name, days.tz, [d for d in days.days if d["start_ms"] >= start_ms and d["end_ms"] <= end_ms]
        )
    return days


def _allowed(access: Access) -> set[str]:
    return {s.path for s in access.view.allowed()}


def _record(region: Region, access: Access, view: str, start_ms: int, end_ms: int, **detail: Any) -> None:
    region.grants.record_read(
        access, AuditAction.STATISTICS_READ, {"view": view, "start_ms": start_ms, "end_ms": end_ms, **detail}
    )


@router.get("/{vin}/statistics", summary="Distance, drives, energy, charging and time per state by day, month or year")
def statistics(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = START,
    end: str | None = END,
    granularity: Literal["day", "month", "year"] = Query("month"),
    tz: str = TZ,
) -> dict[str, Any]:
    """Default window: the last 365 days of data; at most 400 days."""
    name, _ = st.zone(tz)
    access = _check(region, region.grants.access(caller, vin), st.CORE_SIGNALS, "statistics")
    start_ms, end_ms = _window(region, access, start, end, 365, MAX_STATISTICS_DAYS, name)
    days = _days(region, access, start_ms, end_ms, name)
    # Charged energy as the Charging tab counts it (its sessions, kept and priced by region.charging).
    days = st.with_sessions(days, for_view(access.view, region.charging.facts(access.vin, start_ms, end_ms)))
    periods = st.by_period(days, granularity)
    _record(region, access, "statistics", start_ms, end_ms, granularity=granularity)
    return {
        "vin": access.vin,
        "tz": name,
        "granularity": granularity,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "periods": periods,
        "total": st.totals(days.days),
    }


@router.get("/{vin}/states", summary="Driving, charging, parked and offline intervals with their durations")
def states(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = START,
    end: str | None = END,
    tz: str = TZ,
) -> dict[str, Any]:
    """Default window: the last 7 days of data; at most 92 days."""
    name, _ = st.zone(tz)
    access = _check(region, region.grants.access(caller, vin), st.CORE_SIGNALS, "the states timeline")
    start_ms, end_ms = _window(region, access, start, end, 7, MAX_DETAIL_DAYS, name)
    days = _days(region, access, start_ms, end_ms, name)
    rows = [r for r in days.states() if r[2] > start_ms and r[1] < end_ms]
    intervals = [
        {
            "state": r[0],
            "start_ms": max(r[1], start_ms),
            "end_ms": min(r[2], end_ms),
            "duration_s": (min(r[2], end_ms) - max(r[1], start_ms)) / 1000,
        }
        for r in rows
    ]
    totals = dict.fromkeys(st.STATES, 0.0)
    for i in intervals:
        totals[i["state"]] += i["duration_s"]
    _record(region, access, "states", start_ms, end_ms)
    return {
        "vin": access.vin,
        "tz": name,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "intervals": intervals,
        "totals_s": totals,
    }


@router.get("/{vin}/efficiency", summary="Wh/km per drive, by average speed, outside temperature and month")
def efficiency(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = START,
    end: str | None = END,
    tz: str = TZ,
) -> dict[str, Any]:
    """Default window: the last 365 days of data; at most 400 days."""
    name, _ = st.zone(tz)
    access = _check(region, region.grants.access(caller, vin), st.CORE_SIGNALS, "efficiency")
    start_ms, end_ms = _window(region, access, start, end, 365, MAX_STATISTICS_DAYS, name)
    days = _days(region, access, start_ms, end_ms, name)
    allowed = _allowed(access)
    body = st.efficiency(days, with_temperature=st.AIR in allowed, with_battery_energy=st.ENERGY in allowed)
    _record(region, access, "efficiency", start_ms, end_ms, drives=len(body["drives"]))
    return {"vin": access.vin, "tz": name, "start_ms": start_ms, "end_ms": end_ms, **body}


@router.get("/{vin}/vampire-drain", summary="State of charge lost while parked, per standstill and per day")
def vampire_drain(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = START,
    end: str | None = END,
    tz: str = TZ,
    min_hours: float = Query(1.0, ge=0.25, le=240, description="shorter standstills are left out"),
) -> dict[str, Any]:
    """Default window: the last 30 days of data; at most 92 days."""
    name, _ = st.zone(tz)
    access = _check(region, region.grants.access(caller, vin), st.CORE_SIGNALS, "vampire drain")
    start_ms, end_ms = _window(region, access, start, end, 30, MAX_DETAIL_DAYS, name)
    days = _days(region, access, start_ms, end_ms, name)
    body = st.vampire_drain(days, min_hours=min_hours, with_temperature=st.AIR in _allowed(access))
    _record(region, access, "vampire_drain", start_ms, end_ms)
    return {"vin": access.vin, "tz": name, "start_ms": start_ms, "end_ms": end_ms, **body}


@router.get("/{vin}/conditions", summary="Tyre pressures, temperatures, range and state of charge over a window")
def conditions(
    vin: str,
    caller: Caller,
    region: RegionDep,
    start: str | None = START,
    end: str | None = END,
    tz: str = TZ,
) -> dict[str, Any]:
    """10-minute means up to 8 days, hourly up to 62 days, daily beyond; default the last 7 days, at most 400."""
    name, _ = st.zone(tz)
    access = region.grants.access(caller, vin)
    region.deletions.check_served(access.vin)
    allowed = _allowed(access)
    if not any(p in allowed for p in st.CONDITION_SIGNALS):
        access.view.require(st.CONDITION_SIGNALS, "the conditions view")
    start_ms, end_ms = _window(region, access, start, end, 7, MAX_STATISTICS_DAYS, name)
    days = _days(region, access, start_ms, end_ms, name)
    body = st.conditions(days, allowed, start_ms, end_ms)
    units = {p: region.catalogue[p].unit for p in body["series"] if p in region.catalogue}
    _record(region, access, "conditions", start_ms, end_ms)
    return {"vin": access.vin, "tz": name, "start_ms": start_ms, "end_ms": end_ms, "units": units, **body}
