"""Charging: sessions with their power curve and cost, the owner's tariffs, monthly totals and battery health.

**Sessions** are found in the signed telemetry by the rules of ``access/trips.py`` (a run of
``Charging.IsCharging`` seconds with pauses of at most two minutes, split where the car slept). For each one:

- *energy added* is the energy that entered the traction battery, ``∫ max(CurrentPower, 0) dt`` over the session
  (``energy_method`` ``integrated_power``); a car that sends no power but its stored energy
  (``StateOfCharge.CurrentEnergy``) gets the difference of that (``battery_energy``). Both are measured at the
  battery: what the charger drew from the grid is more by the charging losses (typically 5–15 % on AC, less on DC),
  which the car does not report;
- AC or DC (DC when the DC charge current was ever above 1 A), maximum and average power, state of charge at start
  and end, range added (``Vehicle.Powertrain.Range``), where (the owner's place, else the nearest town);
- the *power curve*: power and state of charge against time, averaged into at most ``CURVE_POINTS`` steps;
- *energy per minute* (UTC minutes), which is what prices a session: tariffs change on whole local minutes.

Detection over a year of 10 Hz data is too slow for a page, so sessions are kept in ``charging_sessions``, derived
per UTC day from the batches covering it. Each ``charging_days`` row names those batches by a fingerprint; a day
whose batches changed (late uploads, erasure) is derived again on the next read, and deletion and retention drop
the rows of what they erase (``forget``). The rows are never evidence and can always be rebuilt.

**Tariffs** belong to the owner: at one of their places or anywhere, on chosen weekdays between two local times
(the region's time zone), a price per kWh, an optional fee per session, a currency and an optional validity period.
Two tariffs for the same place (or both for anywhere) may not price the same minute (``TariffOverlap``); a tariff
of the session's place wins over an "anywhere" tariff. A session is priced minute by minute, so a session crossing
from the night to the day tariff pays each for the energy added under it; the fee is the one in force at the start.
Prices apply to the energy added to the battery (see above).

**Battery health**: usable capacity ≈ energy added ÷ rise in state of charge, from sessions that added at least
``MIN_HEALTH_DSOC`` percentage points (short sessions magnify the SOC's rounding); the median per month gives the
trend, set against the pack's capacity when new when the car sends it (``TractionBattery.GrossCapacity``), and the
car's own ``StateOfHealth`` is shown beside it when sent.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carvault.access.places import covering
from carvault.access.trips import (
    DC_CURRENT,
    IS_CHARGING,
    LATITUDE,
    LONGITUDE,
    POWER,
    SOC,
    _at,
    _floats,
    _per_group,
    _runs,
    _seconds,
    detect,
)
from carvault.errors import NotFound, TariffOverlap, ValidationFailed
from carvault.signals import Catalogue
from carvault.store.metadata import BatchRecord, ChargingDay, ChargingSession, ChargingTariff, Database, now_ms
from carvault.store.telemetry import TelemetryStore
from carvault.timezones import region_zone

if TYPE_CHECKING:
    from carvault.compliance.sharing import ScopedView

RANGE = "Vehicle.Powertrain.Range"
SOH = "Vehicle.Powertrain.TractionBattery.StateOfHealth"
ENERGY = "Vehicle.Powertrain.TractionBattery.StateOfCharge.CurrentEnergy"
GROSS = "Vehicle.Powertrain.TractionBattery.GrossCapacity"
#: Signals a grant must cover for a holder to read charging sessions (location is optional: without it, no place).
REQUIRED = (IS_CHARGING, POWER, SOC)
SIGNALS = (IS_CHARGING, POWER, SOC, DC_CURRENT, LATITUDE, LONGITUDE, RANGE, SOH, ENERGY, GROSS)

DAY_MS = 86_400_000
PAD_BEFORE_MS = 3_600_000  # a day is analysed from an hour before it (a session must be seen from its start) ...
PAD_AFTER_MS = DAY_MS  # ... to a day after it: sessions starting that day and lasting up to a day end inside
MAX_REBUILD_DAYS = 7  # days derived in one pass (bounds the memory of one light read)
MAX_PAUSE_S = 120
EDGE_MS = 60_000  # a session is read with a minute of margin either side
CURVE_POINTS = 300
MIN_HEALTH_DSOC = 20.0  # percentage points of SOC a session must add to count for battery health
MAX_TARIFFS = 200
MAX_PRICE = Decimal(100_000)
MINUTES = 1440


# ------------------------------------------------------------------------------------------ sessions
@dataclass(frozen=True)
class SessionFacts:
    """One charging session as derived from the telemetry (see the module docstring)."""

    start_ms: int
    end_ms: int
    duration_s: float
    energy_kwh: float | None
    energy_method: str | None  # "integrated_power" | "battery_energy" | None
    max_power_kw: float | None
    avg_power_kw: float | None
    current: str | None  # "AC" | "DC" | None
    soc_start: float | None
    soc_end: float | None
    range_added_km: float | None
    lat: float | None
    lon: float | None
    soh_pct: float | None
    gross_capacity_kwh: float | None
    minute0_ms: int  # the UTC minute of ``minute_kwh[0]``
    minute_kwh: list[float] = field(default_factory=list)
    curve: dict[str, list[float | None]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the curve (what lists and prices need)."""
        d = asdict(self)
        d.pop("curve")
        return d


def _num(x: float, digits: int = 3) -> float | None:
    return round(float(x), digits) if np.isfinite(x) else None


def _curve(rel_s: np.ndarray, power_w: np.ndarray, soc: np.ndarray) -> dict[str, list[float | None]]:
    """Power (kW) and SOC (%) averaged into at most ``CURVE_POINTS`` equal steps of the session."""
    span = float(rel_s[-1]) + 1.0 if len(rel_s) else 1.0
    step = max(1.0, math.ceil(span / CURVE_POINTS))
    bucket = (rel_s // step).astype(np.int64)
    n = int(bucket[-1]) + 1 if len(bucket) else 0

    def mean(x: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x)
        s = np.bincount(bucket, weights=np.where(ok, x, 0.0), minlength=n)
        c = np.bincount(bucket, weights=ok.astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)

    p, q = mean(power_w) / 1000.0, mean(soc)
    keep = np.flatnonzero(np.isfinite(p) | np.isfinite(q))
    return {
        "t_s": [float(k * step) for k in keep],
        "power_kw": [_num(v) for v in p[keep]],
        "soc": [_num(v, 2) for v in q[keep]],
    }


def analyse(table: pa.Table, *, max_pause_s: float = MAX_PAUSE_S, max_gap_s: float = 60) -> list[SessionFacts]:
    """The charging sessions of a telemetry window (any of ``SIGNALS``; only ``t`` and IsCharging are needed)."""
    if table.num_rows == 0:
        return []
    g = _seconds(table, max_gap_s)
    c0, c1 = _runs(g.charging > 0.5, g.sec, max_pause_s, g.gap_id)
    if not len(c0):
        return []
    t = table.column("t").cast(pa.int64()).to_numpy()
    sec_all = t // 1000
    starts = np.flatnonzero(np.r_[True, sec_all[1:] != sec_all[:-1]])
    rng = _per_group(_floats(table, RANGE), starts, "mean")
    soh = _per_group(_floats(table, SOH), starts, "mean")
    energy = _per_group(_floats(table, ENERGY), starts, "mean")
    gross = _per_group(_floats(table, GROSS), starts, "max")
    out = []
    for i0, i1 in zip(c0.tolist(), c1.tolist(), strict=True):
        out.append(_facts(g, i0, i1, rng, soh, energy, gross))
    return out


def _facts(
    g: Any, i0: int, i1: int, rng: np.ndarray, soh: np.ndarray, energy: np.ndarray, gross: np.ndarray
) -> SessionFacts:
    """The figures of the session spanning groups ``i0``..``i1`` of ``g`` (trips._Seconds)."""
    sl = slice(i0, i1 + 1)
    start_ms, end_ms = int(g.first_t[i0]), int(g.end_ms(np.array([i1]))[0])
    p, dt_s, sec = g.power[sl], g.dt[sl], g.sec[sl]
    joules = np.maximum(np.nan_to_num(p), 0.0) * dt_s
    idx = np.array([i0, i1])
    e_ends = _at(energy, idx)
    method: str | None
    if np.isfinite(p).any():
        kwh, method = float(joules.sum() / 3.6e6), "integrated_power"
    elif np.isfinite(e_ends).all():
        kwh, method = max(0.0, float(e_ends[1] - e_ends[0])), "battery_energy"
        joules = kwh * 3.6e6 * dt_s / max(float(dt_s.sum()), 1e-9)  # spread evenly: the car gave no finer account
    else:
        kwh, method = float("nan"), None
    duration_s = (end_ms - start_ms) / 1000.0
    minute = (sec // 60).astype(np.int64)
    m0 = int(minute[0])
    per_minute = np.bincount(minute - m0, weights=joules) / 3.6e6 if method else np.zeros(0)
    dcmax = np.nanmax(g.dc[sl]) if np.isfinite(g.dc[sl]).any() else np.nan
    soc01, rng01 = _at(g.soc, idx), _at(rng, idx)
    seg_soh, seg_gross = soh[sl], gross[sl]
    return SessionFacts(
        start_ms=start_ms,
        end_ms=end_ms,
        duration_s=duration_s,
        energy_kwh=_num(kwh, 4),
        energy_method=method,
        max_power_kw=_num(np.nanmax(p) / 1000.0) if np.isfinite(p).any() else None,
        avg_power_kw=_num(kwh / (duration_s / 3600.0)) if method and duration_s > 0 else None,
        current=None if not np.isfinite(dcmax) else ("DC" if dcmax > 1.0 else "AC"),
        soc_start=_num(soc01[0], 2),
        soc_end=_num(soc01[1], 2),
        range_added_km=_num((rng01[1] - rng01[0]) / 1000.0, 1),
        lat=_num(_at(g.lat, idx[:1])[0], 7),
        lon=_num(_at(g.lon, idx[:1])[0], 7),
        soh_pct=_num(np.nanmean(seg_soh), 2) if np.isfinite(seg_soh).any() else None,
        gross_capacity_kwh=_num(np.nanmax(seg_gross), 1) if np.isfinite(seg_gross).any() else None,
        minute0_ms=m0 * 60_000,
        minute_kwh=[round(float(v), 6) for v in per_minute],
        curve=_curve(sec - sec[0], p, g.soc[sl]),
    )


def forget(s: Session, vin: str, start_ms: int | None = None, end_ms: int | None = None) -> None:
    """In the caller's transaction: drop derived charging rows of ``vin`` (those whose day could hold data of
    [start_ms, end_ms] when given); they are derived again from what remains on the next read."""
    days, sessions = (
        delete(ChargingDay).where(ChargingDay.vin == vin),
        delete(ChargingSession).where(ChargingSession.vin == vin),
    )
    if start_ms is not None and end_ms is not None:
        lo, hi = start_ms - PAD_AFTER_MS - DAY_MS, end_ms + PAD_BEFORE_MS
        days = days.where(ChargingDay.day_ms >= lo, ChargingDay.day_ms <= hi)
        sessions = sessions.where(ChargingSession.day_ms >= lo, ChargingSession.day_ms <= hi)
    s.execute(sessions)
    s.execute(days)


# ------------------------------------------------------------------------------------------ tariffs
@dataclass(frozen=True)
class Tariff:
    """A charging tariff as the pricing reads it."""

    id: int
    name: str
    place_id: int | None
    weekdays: int
    start_minute: int
    end_minute: int
    price_micros: int
    session_fee_micros: int
    currency: str
    valid_from_ms: int | None
    valid_to_ms: int | None

    @classmethod
    def of(cls, row: ChargingTariff) -> Tariff:
        """From its table row."""
        return cls(
            row.id,
            row.name,
            row.place_id,
            row.weekdays,
            row.start_minute,
            row.end_minute,
            row.price_micros,
            row.session_fee_micros,
            row.currency,
            row.valid_from_ms,
            row.valid_to_ms,
        )

    def to_json(self) -> dict[str, Any]:
        """The tariff as the API shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "place_id": self.place_id,
            "weekdays": [d + 1 for d in range(7) if self.weekdays >> d & 1],
            "start": _hhmm(self.start_minute),
            "end": _hhmm(self.end_minute),
            "price_per_kwh": str(Decimal(self.price_micros) / 1_000_000),
            "session_fee": str(Decimal(self.session_fee_micros) / 1_000_000),
            "currency": self.currency,
            "valid_from_ms": self.valid_from_ms,
            "valid_to_ms": self.valid_to_ms,
        }

    def overlaps(self, other: Tariff) -> bool:
        """Both would price some minute for the same place."""
        return (
            self.place_id == other.place_id
            and bool(self.weekdays & other.weekdays)
            and self.start_minute < other.end_minute
            and other.start_minute < self.end_minute
            and (self.valid_from_ms or 0) < (other.valid_to_ms or 2**62)
            and (other.valid_from_ms or 0) < (self.valid_to_ms or 2**62)
        )


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _minute_of(value: Any, name: str) -> int:
    m = _TIME.match(str(value).strip()) if isinstance(value, str) else None
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise ValidationFailed(f"{name} must be a time of day as HH:MM (00:00 to 24:00)", field=name)
    return int(m.group(1)) * 60 + int(m.group(2))


def _micros(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValidationFailed(f"{name} must be a number", field=name)
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationFailed(f"{name} must be a number", field=name) from None
    if not d.is_finite() or d < 0 or d > MAX_PRICE:
        raise ValidationFailed(f"{name} must be between 0 and {MAX_PRICE}", field=name)
    if d != d.quantize(Decimal("0.000001")):
        raise ValidationFailed(f"{name} may have at most 6 decimals", field=name)
    return int(d * 1_000_000)


def tariff_of(body: dict[str, Any], *, tariff_id: int = 0) -> Tariff:
    """A tariff from an API body (see ``Tariff.to_json`` for the fields); ``ValidationFailed`` names the field."""
    if not isinstance(body, dict):
        raise ValidationFailed("a tariff is a JSON object")
    known = {"name", "place_id", "weekdays", "start", "end", "price_per_kwh", "session_fee", "currency"}
    known |= {"valid_from_ms", "valid_to_ms"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationFailed(f"unknown field {unknown[0]}", field=unknown[0])
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
        raise ValidationFailed("name must be 1 to 100 characters", field="name")
    place = body.get("place_id")
    if place is not None and (isinstance(place, bool) or not isinstance(place, int) or place <= 0):
        raise ValidationFailed("place_id must be one of your places' ids, or null for anywhere", field="place_id")
    days = body.get("weekdays", [1, 2, 3, 4, 5, 6, 7])
    if (
        not isinstance(days, list)
        or not days
        or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7 for d in days)
    ):
        raise ValidationFailed("weekdays must list days 1 (Monday) to 7 (Sunday)", field="weekdays")
    start, end = _minute_of(body.get("start", "00:00"), "start"), _minute_of(body.get("end", "24:00"), "end")
    if start >= MINUTES:
        raise ValidationFailed("start must be before 24:00", field="start")
    if end <= start:
        raise ValidationFailed(
            "end must be after start; for a night tariff add two: 22:00–24:00 and 00:00–06:00", field="end"
        )
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency.strip().upper()):
        raise ValidationFailed("currency must be a three-letter ISO 4217 code such as CNY or EUR", field="currency")
    valid = []
    for key in ("valid_from_ms", "valid_to_ms"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53):
            raise ValidationFailed(f"{key} must be epoch milliseconds or null", field=key)
        valid.append(v)
    if valid[0] is not None and valid[1] is not None and valid[1] <= valid[0]:
        raise ValidationFailed("valid_to_ms must be after valid_from_ms", field="valid_to_ms")
    return Tariff(
        id=tariff_id,
        name=name.strip(),
        place_id=place,
        weekdays=sum(1 << (d - 1) for d in set(days)),
        start_minute=start,
        end_minute=end,
        price_micros=_micros(body.get("price_per_kwh"), "price_per_kwh"),
        session_fee_micros=_micros(body.get("session_fee", 0), "session_fee"),
        currency=currency.strip().upper(),
        valid_from_ms=valid[0],
        valid_to_ms=valid[1],
    )


@dataclass(frozen=True)
class Cost:
    """What a session cost: amounts per currency, the energy each tariff priced, what no tariff priced."""

    amounts: dict[str, float]
    kwh: dict[str, float]  # priced energy per currency
    unpriced_kwh: float
    slices: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The cost as the API shows it."""
        return {
            "amounts": {c: round(v, 4) for c, v in self.amounts.items()},
            "priced_kwh": {c: round(v, 4) for c, v in self.kwh.items()},
            "unpriced_kwh": round(self.unpriced_kwh, 4),
            "slices": self.slices,
        }


def _local_minutes(first_ms: int, n: int, zone: dt.tzinfo) -> np.ndarray:
    """Local minute numbers (minutes since 1970-01-01 local) of ``n`` UTC minutes from ``first_ms``."""
    utc = first_ms // 60_000 + np.arange(n, dtype=np.int64)

    def offset(ms: int) -> int:
        off = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(zone).utcoffset() or dt.timedelta()
        return int(off.total_seconds() // 60)

    a, b = offset(first_ms), offset(first_ms + 60_000 * max(n - 1, 0))
    if a == b:
        return utc + a
    return np.array([m + offset(int(m) * 60_000) for m in utc.tolist()], dtype=np.int64)  # crosses a clock change


def price(
    minute0_ms: int, minute_kwh: Sequence[float], place_id: int | None, tariffs: Sequence[Tariff], zone: dt.tzinfo
) -> Cost:
    """Price a session's energy minute by minute (see the module docstring for the rules)."""
    kwh = np.asarray(minute_kwh, dtype=np.float64)
    n = len(kwh)
    if n == 0:
        return Cost({}, {}, 0.0, [])
    local = _local_minutes(minute0_ms, n, zone)
    weekday = ((local // MINUTES) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    mod = local % MINUTES
    utc_ms = minute0_ms + 60_000 * np.arange(n, dtype=np.int64)
    which = np.full(n, -1, dtype=np.int64)
    ordered = [t for t in tariffs if t.place_id is not None and t.place_id == place_id]
    ordered += [t for t in tariffs if t.place_id is None]  # a place's own tariffs win over "anywhere"
    for k, t in enumerate(ordered):
        hit = (which < 0) & ((t.weekdays >> weekday) & 1 == 1) & (mod >= t.start_minute) & (mod < t.end_minute)
        if t.valid_from_ms is not None:
            hit &= utc_ms >= t.valid_from_ms
        if t.valid_to_ms is not None:
            hit &= utc_ms < t.valid_to_ms
        which[hit] = k
    amounts: dict[str, float] = {}
    priced: dict[str, float] = {}
    slices = []
    for k, t in enumerate(ordered):
        mask = which == k
        if not mask.any():
            continue
        e = float(kwh[mask].sum())
        amount = e * t.price_micros / 1e6
        amounts[t.currency] = amounts.get(t.currency, 0.0) + amount
        priced[t.currency] = priced.get(t.currency, 0.0) + e
        slices.append(
            {"tariff_id": t.id, "name": t.name, "kwh": round(e, 4), "amount": round(amount, 4), "currency": t.currency}
        )
    if which[0] >= 0:  # the fee of the tariff in force when the session started
        first = ordered[int(which[0])]
        if first.session_fee_micros:
            fee = first.session_fee_micros / 1e6
            amounts[first.currency] = amounts.get(first.currency, 0.0) + fee
            slices.append({"tariff_id": first.id, "name": first.name, "fee": fee, "currency": first.currency})
    return Cost(amounts, priced, float(kwh[which < 0].sum()), slices)


# ------------------------------------------------------------------------------------------ totals, health
def month_of(ms: int, zone: dt.tzinfo) -> str:
    """The local calendar month of an instant, as YYYY-MM."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(zone).strftime("%Y-%m")


def monthly_totals(sessions: Iterable[dict[str, Any]], zone: dt.tzinfo) -> list[dict[str, Any]]:
    """Per local month: sessions, energy, AC/DC split, time charging, cost and average price per currency."""
    months: dict[str, dict[str, Any]] = {}
    for s in sessions:
        m = months.setdefault(
            month_of(s["start_ms"], zone),
            {"sessions": 0, "energy_kwh": 0.0, "ac_kwh": 0.0, "dc_kwh": 0.0, "ac_sessions": 0, "dc_sessions": 0}
            | {"duration_s": 0.0, "cost": {}, "priced_kwh": {}},
        )
        e = s.get("energy_kwh") or 0.0
        m["sessions"] += 1
        m["energy_kwh"] += e
        m["duration_s"] += s["duration_s"]
        if s.get("current") in ("AC", "DC"):
            m[f"{s['current'].lower()}_kwh"] += e
            m[f"{s['current'].lower()}_sessions"] += 1
        cost = s.get("cost") or {}
        for cur, v in cost.get("amounts", {}).items():
            m["cost"][cur] = m["cost"].get(cur, 0.0) + v
        for cur, v in cost.get("priced_kwh", {}).items():
            m["priced_kwh"][cur] = m["priced_kwh"].get(cur, 0.0) + v
    out = []
    for month in sorted(months):
        m = months[month]
        avg = {c: round(m["cost"][c] / m["priced_kwh"][c], 4) for c in m["cost"] if m["priced_kwh"].get(c, 0) > 0}
        out.append(
            {
                "month": month,
                **{
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in m.items()
                    if k not in ("cost", "priced_kwh")
                },
                "cost": {c: round(v, 2) for c, v in m["cost"].items()},
                "avg_price_per_kwh": avg,
            }
        )
    return out


def capacity_estimates(sessions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Usable capacity (kWh) per session that added at least ``MIN_HEALTH_DSOC`` points of SOC from measured power."""
    out = []
    for s in sessions:
        if s.get("energy_method") != "integrated_power" or s.get("energy_kwh") is None:
            continue
        if s.get("soc_start") is None or s.get("soc_end") is None:
            continue
        dsoc = s["soc_end"] - s["soc_start"]
        if dsoc < MIN_HEALTH_DSOC:
            continue
        out.append(
            {
                "start_ms": s["start_ms"],
                "capacity_kwh": round(s["energy_kwh"] / dsoc * 100.0, 2),
                "soc_added": round(dsoc, 2),
                "current": s.get("current"),
            }
        )
    return out


def battery_health(sessions: list[dict[str, Any]], zone: dt.tzinfo) -> dict[str, Any]:
    """Estimated usable capacity per month (median of the sessions' estimates), the car's own SOH, the nominal."""
    estimates = capacity_estimates(sessions)
    nominal = max((s["gross_capacity_kwh"] for s in sessions if s.get("gross_capacity_kwh")), default=None)
    by_month: dict[str, list[float]] = {}
    soh_by_month: dict[str, list[float]] = {}
    for e in estimates:
        by_month.setdefault(month_of(e["start_ms"], zone), []).append(e["capacity_kwh"])
    for s in sessions:
        if s.get("soh_pct") is not None:
            soh_by_month.setdefault(month_of(s["start_ms"], zone), []).append(s["soh_pct"])
    months = []
    for month in sorted(set(by_month) | set(soh_by_month)):
        caps = by_month.get(month, [])
        med = float(np.median(caps)) if caps else None
        sohs = soh_by_month.get(month, [])
        months.append(
            {
                "month": month,
                "sessions": len(caps),
                "capacity_kwh": round(med, 2) if med is not None else None,
                "capacity_min_kwh": round(min(caps), 2) if caps else None,
                "capacity_max_kwh": round(max(caps), 2) if caps else None,
                "of_nominal_pct": round(med / nominal * 100, 1) if med is not None and nominal else None,
                "car_soh_pct": round(float(np.mean(sohs)), 1) if sohs else None,
            }
        )
    latest = float(np.median([e["capacity_kwh"] for e in estimates[-10:]])) if estimates else None
    return {
        "method": {
            "min_soc_added": MIN_HEALTH_DSOC,
            "energy": "integrated_power",
            "losses": "energy is measured at the battery: charger losses are not in it",
        },
        "nominal_capacity_kwh": nominal,
        "capacity_kwh": round(latest, 2) if latest is not None else None,
        "of_nominal_pct": round(latest / nominal * 100, 1) if latest is not None and nominal else None,
        "months": months,
        "estimates": estimates,
    }


# ------------------------------------------------------------------------------------------ the service
def nearest_towns(lats: Sequence[float], lons: Sequence[float], lang: str) -> list[str | None]:
    """The offline reverse geocoder's short place names (carvault.geo.geocoder, imported when first needed)."""
    from carvault.geo.geocoder import describe_many

    return describe_many(lats, lons, lang)


class PlaceMatcher(Protocol):
    """What charging needs of the owner's places (access/places.py)."""

    def list(self, owner_id: int) -> Any:
        """The owner's places (``OwnerPlace``), matched to positions with ``covering``."""

    def get(self, owner_id: int, place_id: int) -> Any:
        """The owner's place of that id; ``NotFound`` (a subclass) when the owner has none."""


def _fingerprints(batches: np.ndarray, days: np.ndarray) -> list[str]:
    """Per day, a fingerprint of the batches (rows: seq, t0, t1) that overlap the day's analysis window.

    A batch overlaps [lo, hi) when t0 < hi and t1 >= lo; as t0 <= t1, those are the batches with t0 < hi less those
    with t1 < lo, so counts and power sums of their seqs come from two sorted prefix sums (uint64, wrapping).
    """
    if not len(batches):
        return ["0:0:0:0"] * len(days)
    lo, hi = days - PAD_BEFORE_MS, days + DAY_MS + PAD_AFTER_MS
    o0, o1 = np.argsort(batches[:, 1], kind="stable"), np.argsort(batches[:, 2], kind="stable")
    a = np.searchsorted(batches[o0, 1], hi, side="left")  # batches starting before the window ends
    b = np.searchsorted(batches[o1, 2], lo, side="left")  # batches ending before the window starts
    seq = batches[:, 0].astype(np.uint64)
    parts = []
    for w in (np.ones_like(seq), seq, seq * seq, seq * seq * seq):
        p0 = np.concatenate([np.zeros(1, np.uint64), np.cumsum(w[o0], dtype=np.uint64)])
        p1 = np.concatenate([np.zeros(1, np.uint64), np.cumsum(w[o1], dtype=np.uint64)])
        parts.append(p0[a] - p1[b])
    return [f"{n}:{s1}:{s2}:{s3}" for n, s1, s2, s3 in zip(*(x.tolist() for x in parts), strict=True)]


# A session's figures derived from one signal each beyond ``REQUIRED``: a grant holder gets them only if the grant
# covers that signal (the energy only when it was read from the battery's stored energy).
FIGURE_SIGNALS = {
    "range_added_km": RANGE,
    "soh_pct": SOH,
    "gross_capacity_kwh": GROSS,
    "current": DC_CURRENT,
}


def for_view(view: ScopedView, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sessions without the figures whose signals the reader's grant does not cover (the owner's: all).

    Every place that shows session figures to a grant holder goes through this (the Charging API, the statistics'
    charged energy).
    """
    if view.is_owner:
        return sessions
    allowed = {s.path for s in view.allowed()}
    hidden = [k for k, path in FIGURE_SIGNALS.items() if path not in allowed]
    for s in sessions:
        for k in hidden:
            s[k] = None
        if s.get("energy_method") == "battery_energy" and ENERGY not in allowed:
            s["energy_kwh"] = s["energy_method"] = None
    return sessions


class Charging:
    """Charging sessions of a vehicle, the owner's tariffs, monthly totals and battery health."""

    def __init__(
        self,
        db: Database,
        telemetry: TelemetryStore,
        catalogue: Catalogue,
        region: str,
        *,
        places: Callable[[], PlaceMatcher | None] = lambda: None,
        describe: Callable[[Sequence[float], Sequence[float], str], list[str | None]] | None = None,
    ) -> None:
        self.db = db
        self.telemetry = telemetry
        self.catalogue = catalogue
        zone = region_zone(region)
        self.zone_name, self.zone = (zone[0], zone[1]) if zone else ("UTC", dt.UTC)
        self.places = places
        self.describe = describe

    # ------------------------------------------------------------------ derived sessions
    def _signals(self, paths: Iterable[str]) -> list[Any]:
        return [self.catalogue[p] for p in paths if p in self.catalogue]

    def refresh(self, vin: str, start_ms: int, end_ms: int) -> int:
        """Derive again every day of [start_ms, end_ms) whose batches changed; returns the days derived."""
        first = start_ms // DAY_MS * DAY_MS
        days = np.arange(first, max(end_ms, first + 1), DAY_MS, dtype=np.int64)
        with self.db.session() as s:
            rows = s.execute(
                select(BatchRecord.seq, BatchRecord.t0, BatchRecord.t1).where(
                    BatchRecord.vin == vin,
                    BatchRecord.kind == "telemetry",
                    BatchRecord.t0 < int(days[-1]) + DAY_MS + PAD_AFTER_MS,
                    BatchRecord.t1 >= int(days[0]) - PAD_BEFORE_MS,
                )
            ).all()
            stored = dict(
                s.execute(
                    select(ChargingDay.day_ms, ChargingDay.fingerprint).where(
                        ChargingDay.vin == vin, ChargingDay.day_ms >= int(days[0]), ChargingDay.day_ms <= int(days[-1])
                    )
                ).all()
            )
        batches = np.array([tuple(r) for r in rows], dtype=np.int64).reshape(-1, 3)  # plain tuples: fast
        prints = _fingerprints(batches, days)
        stale = [(int(d), fp) for d, fp in zip(days.tolist(), prints, strict=True) if stored.get(int(d)) != fp]
        runs: list[list[tuple[int, str]]] = []
        for item in stale:
            if runs and item[0] - runs[-1][-1][0] == DAY_MS and len(runs[-1]) < MAX_REBUILD_DAYS:
                runs[-1].append(item)
            else:
                runs.append([item])
        found = [f for run in runs for f in self._derive(vin, run)]
        self._store(vin, stale, found)
        return len(stale)

    def _derive(self, vin: str, days: list[tuple[int, str]]) -> list[SessionFacts]:
        """The sessions starting on consecutive ``days`` (none read for days without batches)."""
        lo, hi = days[0][0], days[-1][0] + DAY_MS
        found: list[SessionFacts] = []
        if all(fp.startswith("0:") for _, fp in days):
            return found
        light = self.telemetry.window(vin, lo - PAD_BEFORE_MS, hi + PAD_AFTER_MS, self._signals([IS_CHARGING]))
        spans = [c for c in detect(light, max_pause_s=MAX_PAUSE_S).charges if lo <= c.start_ms < hi]
        signals = self._signals(SIGNALS)
        for c in spans:
            full = self.telemetry.window(vin, c.start_ms - EDGE_MS, c.end_ms + EDGE_MS, signals)
            candidates = analyse(full)
            if candidates:
                found.append(max(candidates, key=lambda f: min(f.end_ms, c.end_ms) - max(f.start_ms, c.start_ms)))
        return found

    def _store(self, vin: str, days: list[tuple[int, str]], found: list[SessionFacts]) -> None:
        """Replace the rows of ``days`` with ``found`` in one transaction."""
        if not days:
            return
        day_list = [d for d, _ in days]
        try:
            with self.db.session() as s:
                for k in range(0, len(day_list), 500):
                    part = day_list[k : k + 500]
                    s.execute(
                        delete(ChargingSession).where(ChargingSession.vin == vin, ChargingSession.day_ms.in_(part))
                    )
                    s.execute(delete(ChargingDay).where(ChargingDay.vin == vin, ChargingDay.day_ms.in_(part)))
                s.add_all(ChargingDay(vin=vin, day_ms=d, fingerprint=fp, computed_ms=now_ms()) for d, fp in days)
                s.add_all(
                    ChargingSession(
                        vin=vin,
                        day_ms=f.start_ms // DAY_MS * DAY_MS,
                        start_ms=f.start_ms,
                        end_ms=f.end_ms,
                        summary=json.dumps(f.summary(), separators=(",", ":")),
                        detail=json.dumps(f.curve, separators=(",", ":")),
                    )
                    for f in found
                )
        except IntegrityError:  # another request derived the same days meanwhile: theirs stand
            pass

    def facts(self, vin: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Summaries of the sessions starting in [start_ms, end_ms), derived first where stale; oldest first.

        Values past their retention period are left out as telemetry reads leave them out (store/telemetry.py).
        """
        self.refresh(vin, start_ms, end_ms)
        with self.db.session() as s:
            rows = s.scalars(
                select(ChargingSession.summary)
                .where(
                    ChargingSession.vin == vin, ChargingSession.start_ms >= start_ms, ChargingSession.start_ms < end_ms
                )
                .order_by(ChargingSession.start_ms)
            ).all()
        out = [json.loads(r) for r in rows]
        cutoffs = self.telemetry.withheld() if self.telemetry.withheld is not None else {}
        gone = max((cutoffs.get(p, 0) for p in REQUIRED), default=0)
        where_gone = max(cutoffs.get(LATITUDE, 0), cutoffs.get(LONGITUDE, 0))
        out = [f for f in out if f["start_ms"] >= gone]
        for f in out:
            if f["start_ms"] < where_gone:
                f["lat"] = f["lon"] = None
        return out

    def curve(self, vin: str, start_ms: int) -> dict[str, Any]:
        """The power curve of the session starting at ``start_ms``; ``NotFound`` when none starts then."""
        self.refresh(vin, start_ms, start_ms + 1)
        with self.db.session() as s:
            row = s.scalars(
                select(ChargingSession.detail).where(ChargingSession.vin == vin, ChargingSession.start_ms == start_ms)
            ).first()
        if row is None:
            raise NotFound(f"no charging session of {vin} starts at {start_ms}", vin=vin, start_ms=start_ms)
        return dict(json.loads(row))

    # ------------------------------------------------------------------ places
    def places_of(
        self, owner_id: int | None, points: Sequence[tuple[float | None, float | None]], lang: str
    ) -> list[dict[str, Any] | None]:
        """Per point: the owner's place covering it (``kind`` "place") or the nearest town (``kind`` "area")."""
        out: list[dict[str, Any] | None] = [None] * len(points)
        seen: dict[tuple[float, float], Any] = {}
        matcher = self.places()
        owned = matcher.list(owner_id) if matcher is not None and owner_id is not None else []  # one query
        rest: list[int] = []
        for i, (lat, lon) in enumerate(points):
            if lat is None or lon is None:
                continue
            if owned:
                key = (round(lat, 4), round(lon, 4))
                if key not in seen:
                    seen[key] = covering(owned, lat, lon)
                p = seen[key]
                if p is not None:
                    out[i] = {"kind": "place", "id": int(p.id), "name": str(p.name)}
                    continue
            rest.append(i)
        if rest and self.describe is not None:
            names = self.describe([points[i][0] or 0.0 for i in rest], [points[i][1] or 0.0 for i in rest], lang)
            for i, name in zip(rest, names, strict=True):
                out[i] = {"kind": "area", "id": None, "name": name} if name else None
        return out

    # ------------------------------------------------------------------ tariffs
    def tariffs(self, owner_id: int) -> list[Tariff]:
        """The owner's tariffs, oldest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(ChargingTariff).where(ChargingTariff.owner_id == owner_id).order_by(ChargingTariff.id)
            )
            return [Tariff.of(r) for r in rows]

    def _check(self, owner_id: int, t: Tariff, existing: list[Tariff]) -> None:
        """Refuse a tariff naming a place the owner does not have, or overlapping another."""
        matcher = self.places()
        if t.place_id is not None and matcher is not None:
            try:
                matcher.get(owner_id, t.place_id)
            except NotFound:
                raise ValidationFailed(f"you have no place {t.place_id}", field="place_id") from None
        for other in existing:
            if other.id != t.id and t.overlaps(other):
                raise TariffOverlap(
                    f"this tariff would price minutes that tariff {other.id} ({other.name}) already prices for the "
                    "same place; change its days, times or validity",
                    tariff_id=other.id,
                )

    def add_tariff(self, owner_id: int, body: dict[str, Any]) -> Tariff:
        """Validate and store a new tariff; ``ValidationFailed`` or ``TariffOverlap`` store nothing."""
        t = tariff_of(body)
        existing = self.tariffs(owner_id)
        if len(existing) >= MAX_TARIFFS:
            raise ValidationFailed(f"an owner may keep at most {MAX_TARIFFS} tariffs")
        self._check(owner_id, t, existing)
        with self.db.session() as s:
            row = ChargingTariff(owner_id=owner_id, **{k: v for k, v in asdict(t).items() if k != "id"})
            s.add(row)
            s.flush()
            return Tariff.of(row)

    def update_tariff(self, owner_id: int, tariff_id: int, body: dict[str, Any]) -> Tariff:
        """Replace a tariff's terms (the whole body, as for a new one)."""
        t = tariff_of(body, tariff_id=tariff_id)
        existing = self.tariffs(owner_id)
        if not any(e.id == tariff_id for e in existing):
            raise NotFound(f"you have no tariff {tariff_id}", tariff_id=tariff_id)
        self._check(owner_id, t, existing)
        with self.db.session() as s:
            row = s.get(ChargingTariff, tariff_id)
            assert row is not None and row.owner_id == owner_id
            for k, v in asdict(t).items():
                if k != "id":
                    setattr(row, k, v)
            s.flush()
            return Tariff.of(row)

    def delete_tariff(self, owner_id: int, tariff_id: int) -> None:
        """Remove a tariff; ``NotFound`` if the owner has none of that id."""
        with self.db.session() as s:
            row = s.get(ChargingTariff, tariff_id)
            if row is None or row.owner_id != owner_id:
                raise NotFound(f"you have no tariff {tariff_id}", tariff_id=tariff_id)
            s.delete(row)

    def priced(self, owner_id: int, sessions: list[dict[str, Any]], places: list[dict[str, Any] | None]) -> None:
        """Add ``cost`` to each session (in place) from the owner's tariffs."""
        tariffs = self.tariffs(owner_id)
        for s, place in zip(sessions, places, strict=True):
            pid = place["id"] if place and place["kind"] == "place" else None
            s["cost"] = price(s["minute0_ms"], s["minute_kwh"], pid, tariffs, self.zone).to_json() if tariffs else None

    def month_range(self, month: str) -> tuple[int, int]:
        """The UTC span of a local calendar month given as YYYY-MM (``ValidationFailed`` otherwise)."""
        m = re.fullmatch(r"(\d{4})-(\d{2})", month or "")
        if not m or not 1 <= int(m.group(2)) <= 12 or not 1970 <= int(m.group(1)) <= 9999:
            raise ValidationFailed("month must be YYYY-MM", field="month")
        y, mo = int(m.group(1)), int(m.group(2))
        start = dt.datetime(y, mo, 1, tzinfo=self.zone)
        end = start + dt.timedelta(days=calendar.monthrange(y, mo)[1])
        return int(start.timestamp() * 1000), int(end.replace(tzinfo=self.zone).timestamp() * 1000)
