"""A vehicle's statistics: efficiency, vampire drain, states, totals by month and year, and condition views.

Everything is derived from the signed telemetry, one local calendar day at a time, and vectorised with numpy
(access/trips.py finds the drives and charging sessions). A day's summary is kept in ``statistics_days``
(store/metadata.py) so that a year answers in a fraction of a second; the row is only a cache of the evidence:

- it is recomputed when the batches it was built from change (its *fingerprint*: how many batches overlap the
  day's read window, the sums of their sequence numbers and end times, the retention cut-offs that touch the
  day, and the algorithm's version), and never kept for a day that has not ended yet;
- it is dropped with the batches: a deletion removes a vehicle's rows, a retention purge the rows of the days
  it reached (compliance/deletion.py, compliance/retention.py).

Definitions (docs/statistics.md explains each figure to owners):

- **States.** *Driving* and *charging* are trips.py's drives and charging sessions; *offline* is time without any
  sample for more than ``GAP_MS`` (the car asleep, out of coverage, or data not sent); *parked* is the rest.
  Where they overlap, driving wins over charging, charging over offline.
- **Efficiency** of a drive is its energy used (net energy that left the battery, ``-∫ CurrentPower dt``, so
  regeneration counts against it) per distance, in Wh/km; without power samples, the fall of the battery's stored
  energy (``StateOfCharge.CurrentEnergy``) is used instead, and the drive says which (``energy_source``).
- **Vampire drain**: a *standstill* is the time between the end of one drive or charge and the start of the next
  (parked and offline intervals joined). Its loss is the state of charge at its start minus at its end, each taken
  from the sample nearest to the moment (at most ``SOC_TOLERANCE_MS`` away). Standstills shorter than
  ``MIN_STANDSTILL_MS``, without a state of charge at either end, or whose charge *rose* by more than
  ``RISE_TOLERANCE`` points (a charge that was not recorded) are left out as missing data.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from carvault.access.trips import DC_CURRENT, IS_CHARGING, IS_MOVING, ODOMETER, POWER, SOC, SPEED, detect
from carvault.errors import InvalidQuery
from carvault.protocol.columns import has_column
from carvault.signals import Catalogue
from carvault.store.metadata import BatchRecord, Database, StatisticsDay, now_ms

VERSION = 2  # bump when a definition changes: every kept summary is then recomputed
DAY_MS = 86_400_000
GAP_MS = 60_000  # no sample for longer than this: offline
LEAD_MS = 10 * 60_000  # read before the day, so a drive begun just before midnight is not cut in two
TRAIL_MS = 2 * 3_600_000  # read after the day, so a drive begun before midnight is counted whole, in its day
SOC_TOLERANCE_MS = 120_000
MIN_STANDSTILL_MS = 3_600_000
RISE_TOLERANCE = 0.3  # state-of-charge points a standstill may gain from sensor noise
BUCKET_MS = 600_000  # condition views keep 10-minute means
RECENT_REQUESTS = 4  # parsed days kept in memory for this many recent requests

AIR = "Vehicle.Exterior.AirTemperature"
CABIN = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
BATTERY_T = "Vehicle.Powertrain.TractionBattery.Temperature.Average"
MOTOR_T = "Vehicle.Powertrain.ElectricMotor.Temperature"
RANGE = "Vehicle.Powertrain.Range"
ENERGY = "Vehicle.Powertrain.TractionBattery.StateOfCharge.CurrentEnergy"
TYRES = tuple(f"Vehicle.Chassis.Axle.Row{r}.Wheel.{s}.Tire.Pressure" for r in (1, 2) for s in ("Left", "Right"))
TEMPERATURES = (AIR, CABIN, BATTERY_T, MOTOR_T)
#: What the statistics need at the least (a grant without one of these cannot see them).
CORE_SIGNALS = (SPEED, IS_MOVING, ODOMETER, SOC, IS_CHARGING, POWER, DC_CURRENT)
CONDITION_SIGNALS = (*TYRES, *TEMPERATURES, RANGE, SOC)
DAY_SIGNALS = tuple(dict.fromkeys((*CORE_SIGNALS, AIR, ENERGY, *CONDITION_SIGNALS)))

STATES = ("parked", "offline", "charging", "driving")  # in order of precedence (last wins)
GRANULARITIES = ("day", "month", "year")
SPEED_BINS_KMH = (0, 20, 40, 60, 80, 100, 120)
TEMP_BIN_C = 5.0


# ------------------------------------------------------------------------------------------- helpers
def zone(name: str | None) -> tuple[str, tzinfo]:
    """An IANA time zone by name (default UTC); ``InvalidQuery`` for an unknown one."""
    key = (name or "UTC").strip() or "UTC"
    try:
        if len(key) > 64 or not key.isascii():  # no IANA name is longer; the file system would refuse it anyway
            raise ValueError(key)
        return key, ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidQuery(
            f"unknown time zone {key[:60]!r}; use an IANA name such as Asia/Shanghai", tz=key[:60]
        ) from None


def local_days(start_ms: int, end_ms: int, tz: tzinfo) -> list[tuple[date, int, int]]:
    """The local calendar days overlapping [start_ms, end_ms): (date, first ms, end ms), whole days."""
    first = datetime.fromtimestamp(start_ms / 1000, tz).date()
    last = datetime.fromtimestamp((end_ms - 1) / 1000, tz).date()
    out = []
    d = first
    while d <= last:
        a = int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)
        n = d + timedelta(days=1)
        b = int(datetime(n.year, n.month, n.day, tzinfo=tz).timestamp() * 1000)
        out.append((d, a, b))
        d = n
    return out


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if not has_column(table, name):
        return np.full(table.num_rows, np.nan)
    return np.asarray(pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _fin(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


class _Samples:
    """The valid samples of one signal, for values nearest to moments and means over ranges (vectorised)."""

    def __init__(self, t: np.ndarray, x: np.ndarray) -> None:
        ok = ~np.isnan(x)
        self.t, self.x = t[ok], x[ok]
        self.cum = np.r_[0.0, np.cumsum(self.x)]

    def nearest(self, at: np.ndarray, tolerance_ms: int = SOC_TOLERANCE_MS) -> np.ndarray:
        """The sample nearest to each moment, NaN if none lies within the tolerance."""
        at = np.asarray(at, dtype=np.int64)
        if len(self.t) == 0:
            return np.full(len(at), np.nan)
        i = np.clip(np.searchsorted(self.t, at), 1, max(len(self.t) - 1, 1))
        lo = np.clip(i - 1, 0, len(self.t) - 1)
        hi = np.clip(i, 0, len(self.t) - 1)
        pick = np.where(np.abs(self.t[hi] - at) < np.abs(self.t[lo] - at), hi, lo)
        return np.where(np.abs(self.t[pick] - at) <= tolerance_ms, self.x[pick], np.nan)

    def mean(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The mean of the samples in each [a, b), NaN where there is none."""
        i, j = np.searchsorted(self.t, a), np.searchsorted(self.t, b)
        n = j - i
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, (self.cum[j] - self.cum[i]) / np.maximum(n, 1), np.nan)


def _cover(mids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which points lie inside one of the non-overlapping intervals [a, b)."""
    if len(a) == 0:
        return np.zeros(len(mids), dtype=bool)
    order = np.argsort(a)
    a, b = a[order], b[order]
    k = np.searchsorted(a, mids, side="right") - 1
    return (k >= 0) & (mids < b[np.maximum(k, 0)])


def paint(start_ms: int, end_ms: int, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, int, int]]:
    """Intervals (state index, start, end) covering [start_ms, end_ms); later layers win where they overlap."""
    if end_ms <= start_ms:
        return []
    edges = [np.array([start_ms, end_ms], dtype=np.int64)]
    for a, b in layers:
        edges += [np.clip(a, start_ms, end_ms), np.clip(b, start_ms, end_ms)]
    bounds = np.unique(np.concatenate(edges).astype(np.int64))
    mids = (bounds[:-1] + bounds[1:]) / 2.0
    code = np.zeros(len(mids), dtype=np.int64)
    for k, (a, b) in enumerate(layers, start=1):
        code[_cover(mids, np.asarray(a, np.int64), np.asarray(b, np.int64))] = k
    cut = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    ends = np.r_[cut[1:], len(code)]
    return [(int(code[c]), int(bounds[c]), int(bounds[e])) for c, e in zip(cut, ends, strict=True)]


# ----------------------------------------------------------------------------------------- one day
def summarise(
    table: pa.Table,
    start_ms: int,
    end_ms: int,
    until_ms: int | None = None,
    *,
    missing: Sequence[tuple[int, int]] = (),
    seen_ms: int | None = None,
) -> dict[str, Any]:
    """The summary of [start_ms, end_ms) from a window read from ``start_ms - LEAD_MS`` to ``end_ms + TRAIL_MS``.

    ``until_ms`` (now) cuts a day that has not ended: nothing is said about the future. ``missing`` are stretches
    the chain says were sent but are not here (between batches whose sequence numbers are not consecutive): an
    offline interval overlapping one is marked, and a standstill containing it is not counted as drain.
    ``seen_ms`` is when the live channel last heard the car: on a running day the car counts as awake from its last
    stored sample until then (its batches are still on their way), and offline only after.
    """
    stop = min(end_ms, until_ms) if until_ms is not None else end_ms
    t = table.column("t").cast(pa.int64()).to_numpy() if table.num_rows else np.empty(0, np.int64)
    found = detect(table) if table.num_rows else None
    drives = [d for d in (found.drives if found else []) if start_ms <= d.start_ms < end_ms]
    charges = [c for c in (found.charges if found else []) if start_ms <= c.start_ms < end_ms]
    # Offline: the stretches without a sample, the day's edges included.
    inside = t[(t >= start_ms - GAP_MS) & (t < stop + GAP_MS)]
    pts = np.r_[start_ms - 1, inside, stop + 1] if len(inside) else np.array([start_ms, stop])
    gap = np.flatnonzero(np.diff(pts) > GAP_MS) if len(inside) else np.array([0])
    off_a, off_b = pts[gap], pts[gap + 1]
    if seen_ms is not None and len(off_a) and off_b[-1] >= stop and off_a[-1] <= seen_ms < stop:
        # The live channel heard the car after its last stored sample: awake, its batches still on their way.
        off_a = off_a.copy()
        off_a[-1] = seen_ms
    all_drives = found.drives if found else []
    all_charges = found.charges if found else []
    layers = [
        (off_a, off_b),
        (np.array([c.start_ms for c in all_charges], np.int64), np.array([c.end_ms for c in all_charges], np.int64)),
        (np.array([d.start_ms for d in all_drives], np.int64), np.array([d.end_ms for d in all_drives], np.int64)),
    ]
    intervals = paint(start_ms, stop, layers)
    soc, energy, air = (_Samples(t, _floats(table, p)) for p in (SOC, ENERGY, AIR))
    a = np.array([i[1] for i in intervals], np.int64)
    b = np.array([i[2] for i in intervals], np.int64)
    soc_a, soc_b, e_a, e_b = soc.nearest(a), soc.nearest(b), energy.nearest(a), energy.nearest(b)
    temp = air.mean(a, b)
    # Asleep, the car measures nothing: take the mean of the temperatures when it fell asleep and woke up.
    offline = np.array([k == STATES.index("offline") for k, _, _ in intervals], dtype=bool)
    if offline.any():
        ends = np.vstack([air.nearest(a), air.nearest(b)])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            temp = np.where(offline, np.nanmean(ends, axis=0), temp)
    gap_a = np.array([m[0] for m in missing], np.int64)
    gap_b = np.array([m[1] for m in missing], np.int64)
    lost = [bool(((gap_a < b[i]) & (gap_b > a[i])).any()) if len(gap_a) else False for i in range(len(intervals))]
    states = [
        [STATES[k], int(a[i]), int(b[i]), _r(soc_a[i]), _r(soc_b[i]), _r(e_a[i]), _r(e_b[i]), _r(temp[i], 2)]
        + [int(lost[i] and STATES[k] == "offline")]
        for i, (k, _, _) in enumerate(intervals)
    ]
    return {
        "v": VERSION,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "until_ms": stop,
        "states": states,
        "drives": _drive_rows(drives, energy, air),
        "charges": [
            {
                "start_ms": c.start_ms,
                "end_ms": c.end_ms,
                "energy_kwh": _r(c.energy_kwh),
                "kind": c.kind,
                "soc_start": _r(c.soc_start),
                "soc_end": _r(c.soc_end),
            }
            for c in charges
        ],
        "conditions": _buckets(table, t, start_ms, stop),
    }


def _drive_rows(drives: list[Any], energy: _Samples, air: _Samples) -> list[dict[str, Any]]:
    """Each drive with its energy (and where it came from), efficiency and outside temperature."""
    if not drives:
        return []
    s = np.array([d.start_ms for d in drives], np.int64)
    e = np.array([d.end_ms for d in drives], np.int64)
    stored = energy.nearest(s) - energy.nearest(e)
    temp = air.mean(s, e)
    rows = []
    for k, d in enumerate(drives):
        kwh = d.energy_kwh if d.energy_kwh is not None else _fin(stored[k])
        source: str | None = None if kwh is None else ("power" if d.energy_kwh is not None else "battery_energy")
        rows.append(
            {
                "start_ms": d.start_ms,
                "end_ms": d.end_ms,
                "duration_s": _r(d.duration_s),
                "distance_m": _r(d.distance_m),
                "energy_kwh": _r(kwh),
                "energy_source": source,
                "wh_per_km": _r(kwh * 1000 / (d.distance_m / 1000), 1) if kwh is not None and d.distance_m else None,
                "avg_speed_kmh": _r(d.avg_speed_kmh, 2),
                "top_speed_kmh": _r(d.top_speed_kmh, 2),
                "outside_c": _r(temp[k], 2),
                "soc_start": _r(d.soc_start),
                "soc_end": _r(d.soc_end),
            }
        )
    return rows


def _buckets(table: pa.Table, t: np.ndarray, start_ms: int, stop_ms: int) -> dict[str, Any]:
    """10-minute means of the condition signals inside [start_ms, stop_ms) (only buckets with a value)."""
    keep = (t >= start_ms) & (t < stop_ms)
    if not keep.any():
        return {"t": [], "series": {}}
    idx = (t[keep] - start_ms) // BUCKET_MS
    n_b = int(idx.max()) + 1
    series: dict[str, np.ndarray] = {}
    for path in CONDITION_SIGNALS:
        x = _floats(table, path)[keep]
        ok = ~np.isnan(x)
        if not ok.any():
            continue
        n = np.bincount(idx[ok], minlength=n_b)
        s = np.bincount(idx[ok], weights=x[ok], minlength=n_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            series[path] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    if not series:
        return {"t": [], "series": {}}
    any_value = np.any([~np.isnan(v) for v in series.values()], axis=0)
    used = np.flatnonzero(any_value)
    return {
        "t": [int(start_ms + i * BUCKET_MS) for i in used],
        "series": {p: [_r(x, 2) for x in v[used]] for p, v in series.items()},
    }


# -------------------------------------------------------------------------------------- combining days
@dataclass(frozen=True)
class Days:
    """The summaries of consecutive local days, in order, with the zone they were cut in."""

    tz_name: str
    tz: tzinfo
    days: list[dict[str, Any]]

    def states(self) -> list[list[Any]]:
        """State intervals across the days; a state running over midnight is one interval."""
        out: list[list[Any]] = []
        for d in self.days:
            for row in d["states"]:
                last = out[-1] if out else None
                if last is not None and last[0] == row[0] and last[2] == row[1]:
                    w0, w1 = last[2] - last[1], row[2] - row[1]
                    temps = [(x, w) for x, w in ((last[7], w0), (row[7], w1)) if x is not None]
                    tmean = sum(x * w for x, w in temps) / sum(w for _, w in temps) if temps else None
                    flag = max(last[8] if len(last) > 8 else 0, row[8] if len(row) > 8 else 0)
                    out[-1] = [last[0], last[1], row[2], last[3], row[4], last[5], row[6], _r(tmean, 2), flag]
                else:
                    out.append(list(row))
        return out

    def drives(self) -> list[dict[str, Any]]:
        """Every drive, in order."""
        return [r for d in self.days for r in d["drives"]]

    def charges(self) -> list[dict[str, Any]]:
        """Every charging session, in order."""
        return [r for d in self.days for r in d["charges"]]


def with_sessions(days: Days, sessions: Sequence[Mapping[str, Any]]) -> Days:
    """The days with their charging sessions taken from the charging service (access/charging.py) instead.

    That service prices and keeps the sessions the Charging tab shows; using its sessions keeps the two tabs'
    charged energy equal. Each session belongs to the day it started. The kept days are not changed (copies).
    """
    starts = np.array([d["start_ms"] for d in days.days], np.int64)
    per_day: list[list[dict[str, Any]]] = [[] for _ in days.days]
    for f in sessions:
        k = int(np.searchsorted(starts, int(f["start_ms"]), side="right")) - 1
        if 0 <= k < len(days.days) and f["start_ms"] < days.days[k]["end_ms"]:
            per_day[k].append(
                {
                    "start_ms": f["start_ms"],
                    "end_ms": f["end_ms"],
                    "energy_kwh": _r(f.get("energy_kwh")),
                    "kind": f.get("current"),
                    "soc_start": _r(f.get("soc_start")),
                    "soc_end": _r(f.get("soc_end")),
                }
            )
    return Days(days.tz_name, days.tz, [{**d, "charges": c} for d, c in zip(days.days, per_day, strict=True)])


def period_key(ms: int, tz: tzinfo, granularity: str) -> str:
    """``2026``, ``2026-11`` or ``2026-11-20`` for a moment, in the local zone."""
    d = datetime.fromtimestamp(ms / 1000, tz)
    return {"year": f"{d.year:04d}", "month": f"{d.year:04d}-{d.month:02d}", "day": d.date().isoformat()}[granularity]


def totals(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Distance, drives, time, energy, charging and time per state over some day summaries."""
    drives = [r for d in days for r in d["drives"]]
    charges = [r for d in days for r in d["charges"]]
    dist = sum(r["distance_m"] or 0 for r in drives)
    with_energy = [r for r in drives if r["energy_kwh"] is not None and r["distance_m"]]
    e_used = sum(r["energy_kwh"] for r in with_energy)
    e_dist = sum(r["distance_m"] for r in with_energy)
    tops = [r["top_speed_kmh"] for r in drives if r["top_speed_kmh"] is not None]
    charged = [r["energy_kwh"] for r in charges if r["energy_kwh"] is not None]
    per_state = dict.fromkeys(STATES, 0.0)
    for d in days:
        for row in d["states"]:
            per_state[row[0]] += (row[2] - row[1]) / 1000.0
    return {
        "distance_m": round(dist, 1),
        "drives": len(drives),
        "driving_s": round(sum(r["duration_s"] or 0 for r in drives), 1),
        "energy_kwh": round(e_used, 3) if with_energy else None,
        "wh_per_km": round(e_used * 1000 / (e_dist / 1000), 1) if e_dist > 0 else None,
        "charges": len(charges),
        "charged_kwh": round(sum(charged), 3) if charged else None,
        "top_speed_kmh": max(tops) if tops else None,
        "state_s": {k: round(v, 1) for k, v in per_state.items()},
    }


def by_period(days: Days, granularity: str) -> list[dict[str, Any]]:
    """Totals per local day, month or year (periods without any day summary are left out)."""
    if granularity not in GRANULARITIES:
        raise InvalidQuery(f"granularity must be one of {', '.join(GRANULARITIES)}", granularity=granularity[:20])
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in days.days:
        groups.setdefault(period_key(d["start_ms"], days.tz, granularity), []).append(d)
    return [
        {"period": key, "start_ms": g[0]["start_ms"], "end_ms": g[-1]["end_ms"], **totals(g)}
        for key, g in groups.items()
    ]


def _weighted(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """Distance-weighted efficiency of drives grouped by ``key`` (None: left out)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        k = key(r)
        if k is not None:
            groups.setdefault(k, []).append(r)
    out = []
    for k in sorted(groups):
        g = groups[k]
        e, m = sum(r["energy_kwh"] for r in g), sum(r["distance_m"] for r in g)
        out.append({"bin": k, "drives": len(g), "distance_m": round(m, 1), "wh_per_km": round(e * 1e6 / m, 1)})
    return out


def efficiency(days: Days, *, with_temperature: bool = True, with_battery_energy: bool = True) -> dict[str, Any]:
    """Wh/km per drive, binned by average speed and outside temperature, and per month (distance-weighted).

    ``with_battery_energy`` false (a grant without ``ENERGY``): drives whose energy came from it have none."""
    drives = [r if with_temperature else {**r, "outside_c": None} for r in days.drives()]
    if not with_battery_energy:
        drives = [
            {**r, "energy_kwh": None, "energy_source": None, "wh_per_km": None}
            if r.get("energy_source") == "battery_energy"
            else r
            for r in drives
        ]
    usable = [r for r in drives if r["energy_kwh"] is not None and r["distance_m"] and r["distance_m"] > 0]

    def speed_bin(r: dict[str, Any]) -> int | None:
        v = r["avg_speed_kmh"]
        return None if v is None else max(b for b in SPEED_BINS_KMH if b <= v)

    def temp_bin(r: dict[str, Any]) -> int | None:
        c = r["outside_c"]
        return None if c is None else int(math.floor(c / TEMP_BIN_C) * TEMP_BIN_C)

    e = sum(r["energy_kwh"] for r in usable)
    m = sum(r["distance_m"] for r in usable)
    return {
        "drives": drives,
        "wh_per_km": round(e * 1e6 / m, 1) if m > 0 else None,
        "by_speed": _weighted(usable, speed_bin),
        "speed_bin_kmh": list(SPEED_BINS_KMH),
        "by_temperature": _weighted(usable, temp_bin),
        "temperature_bin_c": TEMP_BIN_C,
        "by_month": _weighted(usable, lambda r: period_key(r["start_ms"], days.tz, "month")),
    }


def vampire_drain(days: Days, *, min_hours: float = MIN_STANDSTILL_MS / 3.6e6, with_temperature: bool = True) -> dict:
    """State of charge (and kWh) lost per standstill and per local day, with the outside temperature."""
    periods: list[dict[str, Any]] = []
    run: list[list[Any]] = []

    def close() -> None:
        if not run:
            return
        a, b = run[0][1], run[-1][2]
        soc0, soc1, e0, e1 = run[0][3], run[-1][4], run[0][5], run[-1][6]
        hours = (b - a) / 3.6e6
        temps = [(r[7], r[2] - r[1]) for r in run if r[7] is not None]
        offline_ms = sum(r[2] - r[1] for r in run if r[0] == "offline")
        excluded = None
        if hours < min_hours:
            excluded = "short"
        elif soc0 is None or soc1 is None:
            excluded = "missing_soc"
        elif any(len(r) > 8 and r[8] for r in run):
            excluded = "missing_data"
        elif soc1 - soc0 > RISE_TOLERANCE:
            excluded = "soc_rose"
        lost = None if soc0 is None or soc1 is None else round(soc0 - soc1, 3)
        periods.append(
            {
                "start_ms": a,
                "end_ms": b,
                "hours": round(hours, 3),
                "offline_hours": round(offline_ms / 3.6e6, 3),
                "soc_start": soc0,
                "soc_end": soc1,
                "soc_lost": lost,
                "pct_per_hour": round(lost / hours, 4) if lost is not None and hours > 0 else None,
                "kwh_lost": round(e0 - e1, 3) if e0 is not None and e1 is not None else None,
                "outside_c": (
                    round(sum(x * w for x, w in temps) / sum(w for _, w in temps), 2)
                    if temps and with_temperature
                    else None
                ),
                "excluded": excluded,
            }
        )
        run.clear()

    for row in days.states():
        if row[0] in ("parked", "offline"):
            run.append(row)
        else:
            close()
    close()
    kept = [p for p in periods if p["excluded"] is None]
    return {
        "periods": periods,
        "per_day": _drain_per_day(kept, days),
        "pct_per_hour": (round(sum(p["soc_lost"] for p in kept) / sum(p["hours"] for p in kept), 4) if kept else None),
        "min_hours": min_hours,
    }


def _drain_per_day(kept: list[dict[str, Any]], days: Days) -> list[dict[str, Any]]:
    """Each local day's share of the kept standstills (a standstill's loss spread evenly over its hours)."""
    if not kept or not days.days:
        return []
    pa_ = np.array([p["start_ms"] for p in kept], np.float64)
    pb = np.array([p["end_ms"] for p in kept], np.float64)
    lost = np.array([p["soc_lost"] for p in kept], np.float64)
    kwh = np.array([np.nan if p["kwh_lost"] is None else p["kwh_lost"] for p in kept], np.float64)
    da = np.array([d["start_ms"] for d in days.days], np.float64)
    db = np.array([d["end_ms"] for d in days.days], np.float64)
    # days x standstills: the milliseconds each standstill spends in each day (one matrix, no Python loop).
    overlap = np.clip(np.minimum(db[:, None], pb[None, :]) - np.maximum(da[:, None], pa_[None, :]), 0, None)
    share = overlap / np.maximum(pb - pa_, 1)[None, :]
    hours = overlap.sum(axis=1) / 3.6e6
    lost_d = share @ lost
    has_kwh = (share[:, ~np.isnan(kwh)] > 0).any(axis=1)
    kwh_d = share[:, ~np.isnan(kwh)] @ kwh[~np.isnan(kwh)]
    return [
        {
            "day": period_key(d["start_ms"], days.tz, "day"),
            "start_ms": d["start_ms"],
            "parked_hours": round(float(hours[k]), 3),
            "soc_lost": round(float(lost_d[k]), 3),
            "kwh_lost": round(float(kwh_d[k]), 3) if has_kwh[k] else None,
            "pct_per_hour": round(float(lost_d[k] / hours[k]), 4),
        }
        for k, d in enumerate(days.days)
        if hours[k] > 0
    ]


def conditions(days: Days, allowed: set[str], start_ms: int, end_ms: int) -> dict[str, Any]:
    """Tyre pressures, temperatures, range and state of charge over the days, at 10 min, 1 h or 1 day steps."""
    span = end_ms - start_ms
    step = BUCKET_MS if span <= 8 * DAY_MS else (3_600_000 if span <= 62 * DAY_MS else DAY_MS)
    paths = [p for p in CONDITION_SIGNALS if p in allowed]
    ts: list[int] = []
    cols: dict[str, list[float | None]] = {p: [] for p in paths}
    for d in days.days:
        c = d["conditions"]
        ts += c["t"]
        for p in paths:
            cols[p] += c["series"].get(p) or [None] * len(c["t"])
    t = np.array(ts, dtype=np.int64)
    keep = (t >= start_ms) & (t < end_ms)
    t = t[keep]
    out_t: list[int] = []
    series: dict[str, list[float | None]] = {}
    if len(t):
        key = (t - start_ms) // step
        uniq, inv = np.unique(key, return_inverse=True)
        out_t = [int(start_ms + k * step) for k in uniq]
        for p in paths:
            x = np.array([np.nan if v is None else v for v in cols[p]], dtype=np.float64)[keep]
            ok = ~np.isnan(x)
            n = np.bincount(inv[ok], minlength=len(uniq))
            s = np.bincount(inv[ok], weights=x[ok], minlength=len(uniq))
            if n.sum() == 0:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                series[p] = [_r(v, 2) for v in np.where(n > 0, s / np.maximum(n, 1), np.nan)]
    pairs = []
    if RANGE in series and SOC in series:
        pairs = sorted(
            (soc, round(rng / 1000, 1)) for soc, rng in zip(series[SOC], series[RANGE], strict=True) if soc and rng
        )
    return {"step_ms": step, "t": out_t, "series": series, "range_vs_soc": [list(p) for p in pairs]}


# -------------------------------------------------------------------------------------------- service
class Statistics:
    """Day summaries of each vehicle, read from the telemetry and kept in ``statistics_days`` as a cache."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        window: Callable[[str, int, int, list[Any]], pa.Table],
        *,
        withheld: Callable[[], Mapping[str, int]] | None = None,
        last_seen: Callable[[str], int | None] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.window = window
        self.withheld = withheld
        self.last_seen = last_seen
        self.clock = clock
        self._recent: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._signals = [catalogue[p] for p in DAY_SIGNALS if p in catalogue]

    def days(self, vin: str, start_ms: int, end_ms: int, tz_name: str | None = None) -> Days:
        """The summaries of the local days overlapping [start_ms, end_ms), from the cache or recomputed."""
        name, tz = zone(tz_name)
        spans = local_days(start_ms, end_ms, tz)
        now = self.clock()
        spans = [s for s in spans if s[1] < now]
        if not spans:
            return Days(name, tz, [])
        prints, missing = self._fingerprints(vin, spans)
        # A page asks for the same finished days more than once (months, then years): the parsed days are kept for
        # the last few requests, under their fingerprints, so a change is never served stale.
        key = (vin, name, spans[0][1], spans[-1][2], tuple(prints)) if spans[-1][2] + TRAIL_MS <= now else None
        with self._lock:
            recent = self._recent.get(key) if key is not None else None
        if recent is not None:
            return Days(name, tz, recent)
        seen = self.last_seen(vin) if self.last_seen is not None else None
        with self.db.session() as s:
            cached = {
                (r.start_ms, r.end_ms): (r.fingerprint, r.body)
                for r in s.execute(
                    select(
                        StatisticsDay.start_ms, StatisticsDay.end_ms, StatisticsDay.fingerprint, StatisticsDay.body
                    ).where(
                        StatisticsDay.vin == vin,
                        StatisticsDay.start_ms >= spans[0][1],
                        StatisticsDay.start_ms <= spans[-1][1],
                    )
                )
            }
        out: list[dict[str, Any]] = []
        fresh: list[tuple[int, int, str, str]] = []
        for (_, a, b), fp in zip(spans, prints, strict=True):
            hit = cached.get((a, b))
            if fp is None:  # no batch near the day: nothing to read
                out.append(summarise(pa.table({"t": pa.array([], pa.int64())}), a, b, now, seen_ms=seen))
                continue
            if hit is not None and hit[0] == fp:
                out.append(json.loads(hit[1]))
                continue
            table = self.window(vin, a - LEAD_MS, b + TRAIL_MS, self._signals)
            day = summarise(table, a, b, now, missing=missing, seen_ms=seen if b > now else None)
            out.append(day)
            if b + TRAIL_MS <= now:  # a day still running (or its overhang) is never kept
                fresh.append((a, b, fp, json.dumps(day, separators=(",", ":"))))
        if fresh:
            self._keep(vin, fresh, stale=[k for k in cached if k in {(a, b) for a, b, _, _ in fresh}])
        if key is not None:
            with self._lock:
                self._recent[key] = out
                while len(self._recent) > RECENT_REQUESTS:
                    self._recent.popitem(last=False)
        return Days(name, tz, out)

    def _keep(self, vin: str, fresh: list[tuple[int, int, str, str]], stale: list[tuple[int, int]]) -> None:
        """Store recomputed summaries (replacing stale ones); a concurrent writer of the same day wins."""
        try:
            with self.db.session() as s:
                for a, b in stale:
                    s.execute(
                        delete(StatisticsDay).where(
                            StatisticsDay.vin == vin, StatisticsDay.start_ms == a, StatisticsDay.end_ms == b
                        )
                    )
                s.add_all(
                    StatisticsDay(vin=vin, start_ms=a, end_ms=b, fingerprint=fp, body=body, computed_ms=self.clock())
                    for a, b, fp, body in fresh
                )
        except IntegrityError:
            pass  # another request kept the same days first: its rows are as good as ours

    def _fingerprints(
        self, vin: str, spans: list[tuple[date, int, int]]
    ) -> tuple[list[str | None], list[tuple[int, int]]]:
        """What each day's summary depends on (None: no batch in reach of the day), and the chain's gaps."""
        lo, hi = spans[0][1] - LEAD_MS, spans[-1][2] + TRAIL_MS
        with self.db.session() as s:
            rows = s.execute(
                select(BatchRecord.seq, BatchRecord.t0, BatchRecord.t1).where(
                    BatchRecord.vin == vin,  # every kind: the chain's sequence numbers run across them
                    BatchRecord.t0 < hi,
                    BatchRecord.t1 >= lo,
                )
            ).all()
        if not rows:
            return [None] * len(spans), []
        arr = np.array(rows, dtype=np.int64)
        by_seq = arr[np.argsort(arr[:, 0])]
        hole = np.flatnonzero(np.diff(by_seq[:, 0]) > 1)
        missing = [(int(by_seq[i, 2]), int(by_seq[i + 1, 1])) for i in hole]
        seq, t0, t1 = arr[:, 0], arr[:, 1], arr[:, 2]
        o0, o1 = np.argsort(t0), np.argsort(t1)
        t0s, t1s = t0[o0], t1[o1]
        c_seq0, c_seq1 = np.r_[0, np.cumsum(seq[o0])], np.r_[0, np.cumsum(seq[o1])]
        c_t0, c_t1 = np.r_[0, np.cumsum(t1[o0] % 1_000_000_007)], np.r_[0, np.cumsum(t1[o1] % 1_000_000_007)]
        a = np.array([sp[1] - LEAD_MS for sp in spans], np.int64)
        b = np.array([sp[2] + TRAIL_MS for sp in spans], np.int64)
        # Batches overlapping [a, b): those starting before b, less those that ended before a (t0 <= t1).
        i0, i1 = np.searchsorted(t0s, b, side="left"), np.searchsorted(t1s, a, side="left")
        count = i0 - i1
        sums = c_seq0[i0] - c_seq1[i1]
        ends = c_t0[i0] - c_t1[i1]
        cutoffs = dict(self.withheld()) if self.withheld is not None else {}
        out: list[str | None] = []
        for k, sp in enumerate(spans):
            if count[k] <= 0:
                out.append(None)
                continue
            cut = sorted((p, c) for p, c in cutoffs.items() if p in DAY_SIGNALS and c > sp[1] - LEAD_MS)
            text = f"{VERSION}:{count[k]}:{sums[k]}:{ends[k]}:{cut}"
            out.append(hashlib.sha256(text.encode()).hexdigest()[:32])
        return out, missing

    def forget(self, vin: str, before_ms: int | None = None) -> int:
        """Drop a vehicle's kept summaries (those of days starting before ``before_ms``, or all)."""
        with self._lock:
            for key in [k for k in self._recent if k[0] == vin]:
                del self._recent[key]
        with self.db.session() as s:
            q = delete(StatisticsDay).where(StatisticsDay.vin == vin)
            if before_ms is not None:
                q = q.where(StatisticsDay.start_ms < before_ms)
            return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]
