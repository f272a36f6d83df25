"""Drives and charging sessions derived from telemetry, vectorised with numpy.

Nothing here is stored: a timeline is recomputed from the signed data whenever it is asked for, so it
can never disagree with what the car sent. The input is a window as ``TelemetryStore.window`` returns
it (raw 10 Hz / 1 Hz rows, or resampled, e.g. to 1 s); every column is optional except ``t``.

The data are reduced to one row per second (per interval when resampled), then:

- a **drive** is a run of moving seconds (``Vehicle.IsMoving``, or speed above 1 km/h) in which no stop
  lasts longer than ``max_stop_s`` and the car never went to sleep (no rows for more than ``max_gap_s``);
  it starts at the first moving second and ends after the last one. Distance comes from the odometer
  (``Vehicle.TraveledDistance``), or the integral of speed without one; energy used is the net energy that
  left the traction battery (``-∫ CurrentPower dt``, VSS counts power into the battery as positive), so
  regenerative braking counts against it.
- a **charging session** is a run of ``TractionBattery.Charging.IsCharging`` seconds with pauses of at
  most ``max_pause_s``; energy added is ``∫ max(CurrentPower, 0) dt``; it is DC when the DC charge current
  was ever above 1 A.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.protocol.columns import has_column

SPEED = "Vehicle.Speed"
IS_MOVING = "Vehicle.IsMoving"
ODOMETER = "Vehicle.TraveledDistance"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
DC_CURRENT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeCurrent.DC"
LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"

# What a timeline reads: every signal the detection uses (location only for start/end places).
TIMELINE_SIGNALS = (SPEED, IS_MOVING, ODOMETER, SOC, IS_CHARGING, POWER, DC_CURRENT, LATITUDE, LONGITUDE)

MOVING_KMH = 1.0  # speed above which a second counts as moving when IsMoving is not sampled
MIN_DRIVE_M = 100.0  # shorter "drives" are parking manoeuvres
DC_MIN_A = 1.0


@dataclass(frozen=True)
class Drive:
    """One drive, from pulling away to standing still at the destination."""

    start_ms: int
    end_ms: int
    duration_s: float
    distance_m: float
    energy_kwh: float | None
    top_speed_kmh: float | None
    avg_speed_kmh: float | None
    soc_start: float | None
    soc_end: float | None
    start_lat: float | None
    start_lon: float | None
    end_lat: float | None
    end_lon: float | None

    def to_json(self) -> dict[str, Any]:
        """The drive as the API shows it."""
        return {"kind": "drive", **_rounded(asdict(self))}


@dataclass(frozen=True)
class Charge:
    """One charging session."""

    start_ms: int
    end_ms: int
    duration_s: float
    energy_kwh: float | None
    max_power_kw: float | None
    soc_start: float | None
    soc_end: float | None
    kind: str | None  # "DC" | "AC" | None (charge current not recorded)
    lat: float | None
    lon: float | None

    def to_json(self) -> dict[str, Any]:
        """The charging session as the API shows it."""
        return {"kind": "charge", **{("current" if k == "kind" else k): v for k, v in _rounded(asdict(self)).items()}}


@dataclass(frozen=True)
class Timeline:
    """Drives and charging sessions found in a window."""

    drives: list[Drive]
    charges: list[Charge]


def _opt(x: Any) -> float | None:
    """A float, or None for NaN (not measured)."""
    v = float(x)
    return None if np.isnan(v) else v


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            v = None if not np.isfinite(v) else round(v, 7 if k.endswith(("lat", "lon")) else 3)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------ helpers
def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN where not sampled (all NaN when the column is absent)."""
    if not has_column(table, name):
        return np.full(table.num_rows, np.nan)
    col = table.column(name)
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _per_group(x: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    """Reduce ``x`` over consecutive groups starting at ``starts``, ignoring NaN (NaN if a group has none)."""
    if how == "max":
        return np.fmax.reduceat(x, starts)
    if how == "min":
        return np.fmin.reduceat(x, starts)
    valid = ~np.isnan(x)
    n = np.add.reduceat(valid.astype(np.int64), starts)
    s = np.add.reduceat(np.where(valid, x, 0.0), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaN (leading NaN stay)."""
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = x[idx]
    out[: int(np.argmax(valid)) if valid.any() else len(x)] = np.nan
    return out


def _bfill(x: np.ndarray) -> np.ndarray:
    return _ffill(x[::-1])[::-1]


def _at(x: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Value at each index, forward-filled (or back-filled when nothing came before)."""
    f = _ffill(x)[i]
    return np.where(np.isnan(f), _bfill(x)[i], f)


def _range_reduce(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc.reduce(x[lo[k]:hi[k]])`` for non-overlapping increasing ranges, in one call."""
    if len(lo) == 0:
        return np.empty(0)
    padded = np.append(x, np.nan)  # hi may equal len(x)
    idx = np.empty(2 * len(lo), dtype=np.int64)
    idx[0::2], idx[1::2] = lo, hi
    return ufunc.reduceat(padded, idx)[0::2]


def _runs(flag: np.ndarray, sec: np.ndarray, max_pause_s: float, gap_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last group index of runs of ``flag``, joining pauses up to ``max_pause_s`` within one awake span."""
    on = np.flatnonzero(flag)
    if len(on) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    brk = (np.diff(sec[on]) > max_pause_s) | (np.diff(gap_id[on]) > 0)
    cut = np.flatnonzero(brk)
    return on[np.r_[0, cut + 1]], on[np.r_[cut, len(on) - 1]]


# ---------------------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class _Seconds:
    """A window reduced to one group per second (per interval when resampled coarser), with running integrals."""

    sec: np.ndarray  # the group's second
    first_t: np.ndarray  # ms of the group's first row
    dt: np.ndarray  # how long each group stands for (nothing across a sleep)
    gap_id: np.ndarray  # groups after a sleep get a new id
    speed: np.ndarray
    moving: np.ndarray
    odo: np.ndarray
    soc: np.ndarray
    power: np.ndarray
    charging: np.ndarray
    dc: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    e_out: np.ndarray  # cumulative kWh leaving the battery (net of regen), one longer than the groups
    e_in: np.ndarray  # cumulative kWh into the battery
    d_speed: np.ndarray  # cumulative metres from integrating speed
    has_power: np.ndarray  # cumulative count of groups with a power sample

    def end_ms(self, last: np.ndarray) -> np.ndarray:
        """The end time of runs whose last group is ``last``."""
        return ((self.sec[last] + self.dt[last]) * 1000).astype(np.int64)


def _seconds(table: pa.Table, max_gap_s: float) -> _Seconds:
    """Group a non-empty window by second and integrate power and speed over the groups."""
    t = table.column("t").cast(pa.int64()).to_numpy()
    sec_all = t // 1000
    starts = np.flatnonzero(np.r_[True, sec_all[1:] != sec_all[:-1]])
    sec = sec_all[starts].astype(np.float64)

    def group(path: str, how: str) -> np.ndarray:
        return _per_group(_floats(table, path), starts, how)

    speed, power = group(SPEED, "max"), group(POWER, "mean")
    step = np.diff(sec, append=sec[-1] + (np.median(np.diff(sec)) if len(sec) > 1 else 1.0))
    gap = step > max_gap_s
    dt = np.where(gap, np.minimum(step, 1.0), step)
    # Cumulative integrals, so any range is one subtraction.
    p = np.nan_to_num(power)
    return _Seconds(
        sec=sec,
        first_t=t[starts],
        dt=dt,
        gap_id=np.r_[0, np.cumsum(gap[:-1])],
        speed=speed,
        moving=group(IS_MOVING, "max"),
        odo=group(ODOMETER, "max"),
        soc=group(SOC, "mean"),
        power=power,
        charging=group(IS_CHARGING, "max"),
        dc=group(DC_CURRENT, "max"),
        lat=group(LATITUDE, "mean"),
        lon=group(LONGITUDE, "mean"),
        e_out=np.r_[0.0, np.cumsum(-p * dt)] / 3.6e6,
        e_in=np.r_[0.0, np.cumsum(np.maximum(p, 0.0) * dt)] / 3.6e6,
        d_speed=np.r_[0.0, np.cumsum(np.nan_to_num(speed) / 3.6 * dt)],
        has_power=np.r_[0, np.cumsum(~np.isnan(power))],
    )


def _drives(g: _Seconds, max_stop_s: float, min_drive_m: float) -> list[Drive]:
    """Runs of moving seconds with stops of at most ``max_stop_s``, at least ``min_drive_m`` long."""
    moving = (g.moving > 0.5) | (g.speed > MOVING_KMH)
    i0, i1 = _runs(moving, g.sec, max_stop_s, g.gap_id)
    if not len(i0):
        return []
    start_ms, end_ms = g.first_t[i0], g.end_ms(i1)
    before, after = np.maximum(i0 - 1, 0), np.minimum(i1 + 1, len(g.sec) - 1)
    odo_d = _at(g.odo, after) - _at(g.odo, before)
    # An odometer that went backwards (replaced unit, bad data) says nothing: integrate speed instead.
    dist = np.where(np.isnan(odo_d) | (odo_d < 0), g.d_speed[i1 + 1] - g.d_speed[i0], odo_d)
    energy = np.where(g.has_power[i1 + 1] - g.has_power[i0] > 0, g.e_out[i1 + 1] - g.e_out[i0], np.nan)
    top = _range_reduce(g.speed, i0, i1 + 1, np.fmax)
    dur = (end_ms - start_ms) / 1000.0
    soc0, soc1 = _at(g.soc, before), _at(g.soc, after)
    lat0, lon0, lat1, lon1 = _at(g.lat, i0), _at(g.lon, i0), _at(g.lat, i1), _at(g.lon, i1)
    return [
        Drive(
            start_ms=int(start_ms[k]),
            end_ms=int(end_ms[k]),
            duration_s=float(dur[k]),
            distance_m=float(dist[k]),
            energy_kwh=_opt(energy[k]),
            top_speed_kmh=_opt(top[k]),
            avg_speed_kmh=float(dist[k] / dur[k] * 3.6) if dur[k] > 0 else None,
            soc_start=_opt(soc0[k]),
            soc_end=_opt(soc1[k]),
            start_lat=_opt(lat0[k]),
            start_lon=_opt(lon0[k]),
            end_lat=_opt(lat1[k]),
            end_lon=_opt(lon1[k]),
        )
        for k in range(len(i0))
        if dist[k] >= min_drive_m
    ]


def _charges(g: _Seconds, max_pause_s: float) -> list[Charge]:
    """Runs of charging seconds with pauses of at most ``max_pause_s``."""
    c0, c1 = _runs(g.charging > 0.5, g.sec, max_pause_s, g.gap_id)
    if not len(c0):
        return []
    cstart, cend = g.first_t[c0], g.end_ms(c1)
    added = np.where(g.has_power[c1 + 1] - g.has_power[c0] > 0, g.e_in[c1 + 1] - g.e_in[c0], np.nan)
    pmax = _range_reduce(g.power, c0, c1 + 1, np.fmax) / 1000.0
    dcmax = _range_reduce(g.dc, c0, c1 + 1, np.fmax)
    soc0, soc1 = _at(g.soc, c0), _at(g.soc, c1)
    clat, clon = _at(g.lat, c0), _at(g.lon, c0)
    return [
        Charge(
            start_ms=int(cstart[k]),
            end_ms=int(cend[k]),
            duration_s=float((cend[k] - cstart[k]) / 1000.0),
            energy_kwh=_opt(added[k]),
            max_power_kw=_opt(pmax[k]),
            soc_start=_opt(soc0[k]),
            soc_end=_opt(soc1[k]),
            kind=None if np.isnan(dcmax[k]) else ("DC" if dcmax[k] > DC_MIN_A else "AC"),
            lat=_opt(clat[k]),
            lon=_opt(clon[k]),
        )
        for k in range(len(c0))
    ]


def detect(
    table: pa.Table,
    *,
    max_stop_s: float = 300,
    max_gap_s: float = 60,
    max_pause_s: float = 120,
    min_drive_m: float = MIN_DRIVE_M,
) -> Timeline:
    """Drives and charging sessions in a telemetry window (see the module docstring for the rules)."""
    if table.num_rows == 0:
        return Timeline([], [])
    g = _seconds(table, max_gap_s)
    return Timeline(_drives(g, max_stop_s, min_drive_m), _charges(g, max_pause_s))
