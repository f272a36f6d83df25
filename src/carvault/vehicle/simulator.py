"""A fleet of simulated EVs driving realistic days in Shenzhen, as catalogue-typed Arrow tables.

A day is 2-4 drives (commute, errands, return) stitched from the micro-trips of the standard cycles
(``cycles.py``), upsampled 1 Hz -> 10 Hz with a monotone cubic, plus one AC or DC charging session.
The car is awake (rows every 100 ms) from getting in to getting out and while it charges; in between
it sleeps and there are no rows. Every other signal is derived from the speed trace through a simple
longitudinal model (road load + m*a, regen up to a limit, friction brakes for the rest), a route
integrated from heading and speed, a battery model (OCV + internal resistance) and first-order
thermal models, so the signals agree with each other the way a real car's do.

Conventions: acceleration and yaw follow ISO 8855 (x forward, y left, z up; yaw positive to the left,
gravity removed), so ``Acceleration.Lateral = v * yaw rate``; currents and powers are positive into
the battery (VSS). ``incident=True`` scripts the 2021 dispute: hard braking, ABS, AEB (master-cylinder
pressure 45.9 -> 92.7 -> 140.7 bar in the last second) and a crash that ends the day's driving.
Everything is determined by (vin, seed, day); the vehicle itself (mass, pack, home) by the VIN alone.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from carvault.errors import UnknownSignal
from carvault.signals import Signal, catalogue
from carvault.vehicle import equipment
from carvault.vehicle.cycles import Microtrip, microtrip_library, reference_dir

G = 9.80665
DT = 0.1  # s between rows while awake
HZ = 10
KMH = 3.6
AIR_DENSITY = 1.2
EARTH_RADIUS_M = 6_378_137.0
ANCHOR = (22.54, 114.06)  # lat, lon of the local east/north frame (Futian, Shenzhen)
SCRIPTED_EVENTS = (
    "hard_braking",
    "abs",
    "aeb",
    "crash",
)  # incident script order (protocol.EVENT_KINDS)
AEB_PRESSURE_BAR = (45.9, 92.7, 140.7)  # last second before impact, as released in the 2021 dispute
HARD_BRAKING_MPS2 = 0.5 * G
ODOMETER_EPOCH = dt.date(2020, 1, 1)
ODOMETER_M_PER_DAY = 80_000  # a day's driving never exceeds this, so odometers also grow across days
VIN_WMI = "LRW"  # a China WMI
_VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_VIN_VALUES = dict(
    zip("ABCDEFGHJKLMNPRSTUVWXYZ", (1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 7, 9, 2, 3, 4, 5, 6, 7, 8, 9), strict=True)
) | {str(d): d for d in range(10)}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)

# Codes into the catalogue's allowed values (signals.ALLOWED_VALUES), kept as small ints until output.
LV_LOCK, LV_OFF, LV_ACC, LV_ON, LV_START = 1, 2, 3, 4, 5
GEAR_PARK, GEAR_DRIVE = 126, 127  # VSS SelectedGear
# Smooth terrain shared by every car: (amplitude m, wavelength m, direction rad, phase rad).
_TERRAIN = ((10.0, 3100.0, 0.6, 1.3), (5.0, 1700.0, 2.1, 0.4), (2.0, 900.0, 4.0, 2.2))
_TERRAIN_BASE_M = 24.0


# ----------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SimEvent:
    """A scripted or detected event: ``kind`` is one of ``carvault.protocol.EVENT_KINDS``; ``t_ms`` is UTC ms."""

    kind: str
    t_ms: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriveSummary:
    """One drive, from pulling away to standing still at the destination (or after a crash)."""

    start_ms: int
    end_ms: int
    distance_m: float
    energy_kwh: float
    soc_start: float
    soc_end: float
    purpose: str
    origin: str
    destination: str


@dataclass(frozen=True)
class ChargeSummary:
    """One charging session; ``energy_kwh`` is what entered the battery."""

    start_ms: int
    end_ms: int
    kind: str
    energy_kwh: float
    soc_start: float
    soc_end: float
    max_power_kw: float


@dataclass(frozen=True)
class VehicleSpec:
    """The fixed properties of one simulated car, all derived from its VIN."""

    vin: str
    mass_kg: float
    crr: float
    cda_m2: float
    wheel_radius_m: float
    gear_ratio: float
    wheelbase_m: float
    track_m: float
    steering_ratio: float
    motor_peak_kw: float
    motor_max_nm: float
    regen_max_kw: float
    regen_max_decel: float
    pack_kwh: float
    soh_pct: float
    cells_series: int
    pack_ohm: float
    ac_kw: float
    dc_peak_kw: float
    charge_limit_pct: int
    rated_wh_km: float
    hvac_setpoint_c: float
    tyre_cold_kpa: tuple[float, float, float, float]
    home_xy: tuple[float, float]
    work_xy: tuple[float, float]
    odometer_base_m: int
    ignition_base: int

    @property
    def usable_kwh(self) -> float:
        """Energy between 0 and 100 % physical SOC at the current state of health."""
        return self.pack_kwh * self.soh_pct / 100.0


@dataclass(frozen=True)
class SimulatedDay:
    """One vehicle-day: the wire table plus what a test needs to check it against."""

    vin: str
    day: dt.date
    table: pa.Table
    events: list[SimEvent]
    drives: list[DriveSummary]
    charges: list[ChargeSummary]
    vehicle: VehicleSpec

    @property
    def samples(self) -> int:
        """Non-null values, ``t`` excluded."""
        return sum(len(c) - c.null_count for c in self.table.columns[1:])


# -------------------------------------------------------------------------------------------- VINs
def _stable_int(*parts: object) -> int:
    # hash() is salted per process; simulations must repeat across runs.
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_stable_int(*parts)))


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 / GB 16735 check character (position 9) of a 17-character VIN."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def is_valid_vin(vin: str) -> bool:
    """17 characters from the VIN alphabet (no I, O, Q) with a correct check digit."""
    return len(vin) == 17 and all(c in _VIN_CHARS for c in vin) and vin[8] == vin_check_digit(vin)


def fleet_vins(n: int, seed: int) -> list[str]:
    """``n`` distinct, valid VINs (WMI "LRW", check digit set), the same for the same seed."""
    rng = _rng("fleet", seed)
    serials = rng.choice(900_000, size=n, replace=False) + 100_000
    out = []
    for serial in serials.tolist():
        model = "3" if rng.random() < 0.45 else "Y"
        vds = model + "E7" + str(rng.choice(list("EK"))) + str(rng.choice(list("ABCD")))
        year = str(rng.choice(list("NPRS")))  # 2022-2025
        body = VIN_WMI + vds + "0" + year + "C" + f"{serial:06d}"
        out.append(body[:8] + vin_check_digit(body) + body[9:])
    return out


# --------------------------------------------------------------------------------- the vehicle
def _taxi_fixes(reference: Path) -> list[tuple[float, float]]:
    path = reference / "gps_shenzhen_taxi" / "transbigdata_traj2_shenzhen_taxi.csv"
    if not path.is_file():
        return [ANCHOR]
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(float(r["lat"]), float(r["lon"])) for r in csv.DictReader(f)]


def _to_xy(lat: float, lon: float) -> tuple[float, float]:
    x = np.radians(lon - ANCHOR[1]) * EARTH_RADIUS_M * np.cos(np.radians(ANCHOR[0]))
    y = np.radians(lat - ANCHOR[0]) * EARTH_RADIUS_M
    return float(x), float(y)


def _bearing_offset(rng: np.random.Generator, lo_m: float, hi_m: float) -> tuple[float, float]:
    # Shenzhen runs east-west with the bay and Hong Kong to the south: send trips E, W or N.
    centre = rng.choice([90.0, 270.0, 0.0, 45.0, 315.0])
    bearing = np.radians(centre + rng.uniform(-30, 30))
    d = rng.uniform(lo_m, hi_m)
    return float(d * np.sin(bearing)), float(d * np.cos(bearing))


def vehicle_spec(vin: str, reference: Path | None = None) -> VehicleSpec:
    """The car behind a VIN: mass, drivetrain, pack, chargers, home and work places."""
    rng = _rng("vehicle", vin)
    ref = reference if reference is not None else reference_dir()
    fixes = _taxi_fixes(ref)
    # Home on a real taxi fix (a point on a Shenzhen road), nudged so cars do not share a driveway.
    hx, hy = _to_xy(*fixes[int(rng.integers(len(fixes)))])
    hx, hy = hx + rng.uniform(-300, 300), hy + rng.uniform(-300, 300)
    wx, wy = _bearing_offset(rng, 4_000, 11_000)
    pack = float(rng.choice([60.0, 64.0, 72.0, 78.4]))
    return VehicleSpec(
        vin=vin,
        mass_kg=float(rng.uniform(1850, 2250)),
        crr=float(rng.uniform(0.0085, 0.0105)),
        cda_m2=float(rng.uniform(0.52, 0.64)),
        wheel_radius_m=float(rng.uniform(0.33, 0.355)),
        gear_ratio=float(rng.uniform(9.0, 9.7)),
        wheelbase_m=float(rng.uniform(2.75, 2.95)),
        track_m=1.6,
        steering_ratio=float(rng.uniform(13.5, 16.0)),
        motor_peak_kw=float(rng.uniform(150, 220)),
        motor_max_nm=float(rng.uniform(330, 450)),
        regen_max_kw=float(rng.uniform(60, 90)),
        regen_max_decel=float(rng.uniform(1.2, 1.8)),
        pack_kwh=pack,
        soh_pct=round(float(rng.uniform(90, 99)), 1),
        cells_series=int(rng.choice([96, 108])),
        pack_ohm=float(rng.uniform(0.07, 0.11)),
        ac_kw=float(rng.choice([3.3, 7.0, 7.0, 11.0])),
        dc_peak_kw=float(rng.uniform(80, 170)),
        charge_limit_pct=int(rng.choice([80, 90, 90, 100])),
        rated_wh_km=float(rng.uniform(140, 165)),
        hvac_setpoint_c=float(rng.choice([21.0, 22.0, 23.0, 24.0, 25.0])),
        tyre_cold_kpa=tuple(float(p) for p in rng.uniform(240, 260, 4)),  # type: ignore[arg-type]
        home_xy=(hx, hy),
        work_xy=(hx + wx, hy + wy),
        odometer_base_m=int(rng.uniform(3_000, 40_000)) * 1000,
        ignition_base=int(rng.integers(200, 3000)),
    )


# ------------------------------------------------------------------------------ numeric helpers
def _hermite_upsample(y: np.ndarray, factor: int) -> np.ndarray:
    """Monotone cubic (PCHIP, Fritsch-Carlson) through 1 Hz samples, evaluated ``factor`` times a second."""
    d = np.diff(y)
    m = np.zeros_like(y)
    prod = d[:-1] * d[1:]
    # Harmonic mean of neighbouring slopes where they agree, flat at extrema: never overshoots below 0.
    m[1:-1] = np.where(prod > 0, 2.0 * prod / np.where(prod > 0, d[:-1] + d[1:], 1.0), 0.0)
    u = np.arange(factor) / factor
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    out = np.outer(y[:-1], h00) + np.outer(m[:-1], h10) + np.outer(y[1:], h01) + np.outer(m[1:], h11)
    return out.ravel()


def _first_order(u: np.ndarray, tau_s: float, y0: float, dt_s: float = DT) -> np.ndarray:
    """Exact discrete first-order lag ``y' = (u - y) / tau``, vectorised in blocks."""
    a = float(np.exp(-dt_s / tau_s))
    out = np.empty(len(u))
    block = max(1, int(300 * tau_s / dt_s))  # keeps a**-k far from overflow
    y = y0
    for lo in range(0, len(u), block):
        seg = u[lo : lo + block]
        k = np.arange(1, len(seg) + 1)
        ys = a**k * (y + (1 - a) * np.cumsum(seg * a ** (-k.astype(np.float64))))
        out[lo : lo + len(seg)] = ys
        y = float(ys[-1])
    return out


def _smooth_noise(rng: np.random.Generator, n: int, tau_samples: float) -> np.ndarray:
    """Unit-variance noise correlated over ``tau_samples`` (an AR(1) process)."""
    if n == 0:
        return np.zeros(0)
    a = np.exp(-1.0 / tau_samples)
    y = _first_order(rng.standard_normal(n), tau_samples, 0.0, 1.0)
    return y / np.sqrt((1 - a) / (1 + a))


def _gauss_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    k = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return np.convolve(x, w / w.sum(), mode="same")


# ---------------------------------------------------------------------------- environment
def _ambient_c(local_h: np.ndarray, doy: int, offset: float) -> np.ndarray:
    """Shenzhen air temperature: ~15 C in January, ~29 C in July, warmest mid-afternoon."""
    season = 22.5 - 6.5 * np.cos(2 * np.pi * (doy - 15) / 365.25)
    return season + offset + 3.5 * np.sin(2 * np.pi * (local_h - 9.0) / 24.0)


def _daylight(local_h: np.ndarray, doy: int) -> np.ndarray:
    """True between sunrise and sunset in Shenzhen (about 05:40-19:10 in June, 07:05-17:45 in December)."""
    c = np.cos(2 * np.pi * (doy + 10) / 365.25)
    return (local_h > 6.37 + 0.72 * c) & (local_h < 18.45 - 0.72 * c)


def _terrain(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height (m) and road grade along the heading ``theta`` (math angle) at east/north positions."""
    h = np.full(len(x), _TERRAIN_BASE_M)
    grade = np.zeros(len(x))
    for amp, lam, d, ph in _TERRAIN:
        k = 2 * np.pi / lam
        arg = k * (x * np.cos(d) + y * np.sin(d)) + ph
        h += amp * np.sin(arg)
        grade += amp * k * np.cos(arg) * np.cos(theta - d)
    return h, grade


# ------------------------------------------------------------------------------- speed traces
def _stitch(
    rng: np.random.Generator,
    trips: Sequence[Microtrip],
    stops: Sequence[int],
    min_m: float,
    fast: int,
    need_highway: bool,
) -> np.ndarray:
    """A 1 Hz speed trace (m/s) from standstill to standstill, at least ``min_m`` long."""
    urban = [m for m in trips if m.max_speed_kmh < 60]
    road = [m for m in trips if 60 <= m.max_speed_kmh < 100 and m.distance_m >= 1000]
    high = [m for m in trips if m.max_speed_kmh >= 100 and m.distance_m <= 11_000]
    middle: list[Microtrip] = []
    if need_highway:
        middle.append(high[int(rng.integers(len(high)))])
    for _ in range(fast):
        budget = min_m - sum(m.distance_m for m in middle)
        fits = [m for m in road + high if m.distance_m <= 0.8 * budget]
        if fits:
            middle.insert(int(rng.integers(len(middle) + 1)), fits[int(rng.integers(len(fits)))])
    head: list[Microtrip] = []
    tail: list[Microtrip] = []
    total = sum(m.distance_m for m in middle)
    while total < min_m:
        remaining = min_m - total
        pool = [m for m in urban + road if m.distance_m <= max(remaining, 400.0) + 300.0] or urban
        pick = pool[int(rng.integers(len(pool)))]
        (head if rng.random() < 0.5 else tail).append(pick)
        total += pick.distance_m
    pieces = head + middle + tail
    parts: list[np.ndarray] = []
    for i, m in enumerate(pieces):
        parts.append(np.asarray(m.v[:-1]))
        if i + 1 < len(pieces):  # a red light or a queue between micro-trips
            parts.append(np.zeros(int(stops[int(rng.integers(len(stops)))]) + int(rng.integers(0, 20))))
    parts.append(np.zeros(1))
    return np.concatenate(parts)


def _turn_candidates(v1: np.ndarray) -> np.ndarray:
    """1 Hz indices where the car is slow at a local minimum (junctions: turns happen here)."""
    k = np.arange(1, len(v1) - 1)
    is_min = (v1[k] <= v1[k - 1]) & (v1[k] < v1[k + 1]) & (v1[k] < 25 / KMH)
    return k[is_min]


def _brake_profile(n: int, peak: float, ramp: int) -> np.ndarray:
    """Deceleration (positive) over ``n`` rows rising to ``peak`` within ``ramp`` rows."""
    return peak * np.clip(np.arange(1, n + 1) / ramp, 0.0, 1.0)


def _insert_hard_braking(rng: np.random.Generator, v: np.ndarray) -> tuple[int, int] | None:
    """An ordinary emergency stop into the trace (in place); returns its [start, end) rows."""
    n = len(v)
    idx = np.flatnonzero((v > 40 / KMH) & (v < 75 / KMH))
    idx = idx[(idx > 600) & (idx < n - 600)]
    if len(idx) == 0:
        return None
    i0 = int(idx[int(rng.integers(len(idx)))])
    peak = rng.uniform(5.4, 6.6)
    hold = int(rng.integers(8, 16))
    decel = np.concatenate((_brake_profile(hold, peak, 3), peak * np.linspace(1, 0, 4)[1:]))
    vb = v[i0] - np.cumsum(decel) * DT
    if vb[-1] < 2.0:
        return None
    # Then the driver pulls away again at a moderate 1.2 m/s^2 until back on the original trace.
    rec = vb[-1] + 1.2 * DT * np.arange(1, 600)
    env = np.concatenate((vb, rec))
    end = min(i0 + 1 + len(env), n)
    seg = np.minimum(v[i0 + 1 : end], env[: end - i0 - 1])
    rejoin = np.flatnonzero(env[: end - i0 - 1] >= v[i0 + 1 : end])
    rejoin = rejoin[rejoin > len(vb)]
    stop = int(rejoin[0]) if len(rejoin) else end - i0 - 1
    v[i0 + 1 : i0 + 1 + stop] = seg[:stop]
    return i0, i0 + 1 + len(vb)


@dataclass
class _Incident:
    """Row indices (within the drive) of the scripted incident."""

    brake: int
    abs_start: int
    aeb_start: int
    crash: int
    v_brake: float
    v_impact: float
    dv_long_kmh: float
    dv_lat_kmh: float


def _insert_incident(rng: np.random.Generator, v: np.ndarray) -> tuple[np.ndarray, _Incident]:
    """Hard braking -> ABS -> AEB -> crash in a fast part of the trace; the trace ends with the crash."""
    n = len(v)
    a = np.gradient(v, DT)
    ok = (v > 95 / KMH) & (np.abs(a) < 0.6)
    ok[: int(0.25 * n)] = False
    ok[int(0.9 * n) :] = False
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        idx = np.flatnonzero(v > 0.8 * v.max())
    i_b = int(idx[int(rng.integers(len(idx)))])
    v0 = float(v[i_b])
    a_driver = rng.uniform(5.6, 6.1)
    a_abs = rng.uniform(6.0, 6.5)  # wet road: the tyres cannot give more, ABS holds the wheels at the limit
    v_target = rng.uniform(42, 55) / KMH
    n_b = int(np.clip(round((v0 - v_target) / (0.5 * (a_driver + a_abs)) / DT), 26, 45))
    decel = _brake_profile(n_b, a_driver, 5)
    ripple = np.where(np.arange(15) % 2 == 0, 0.6, -0.6)  # ABS cycling the wheel slip
    decel[-15:] = a_abs + ripple
    vb = np.maximum(v0 - np.cumsum(decel) * DT, 25 / KMH)
    i_c = i_b + n_b  # time zero of the crash is this row
    v_imp = float(vb[-1])
    out = np.concatenate((v[: i_b + 1], vb, [v_imp * rng.uniform(0.25, 0.45), 0.0]))
    pad = (-len(out)) % HZ  # end on a whole second
    out = np.concatenate((out, np.zeros(pad + HZ)))
    dv_long = -min(v_imp * KMH * rng.uniform(1.03, 1.1), 99.0)  # a little rebound beyond the impact speed
    dv_lat = float(rng.uniform(-4, 4))
    inc = _Incident(
        brake=i_b,
        abs_start=i_c - 15,
        aeb_start=i_c - 10,
        crash=i_c,
        v_brake=v0,
        v_impact=v_imp,
        dv_long_kmh=dv_long,
        dv_lat_kmh=dv_lat,
    )
    return out, inc


# ------------------------------------------------------------------------------------ routes
def _route(
    rng: np.random.Generator, v: np.ndarray, turns_1hz: np.ndarray, start: complex, target: complex, solve: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (east + i*north, m), travel direction (math angle, rad) and curvature (1/m, left +)."""
    # Curvature is junction turns at low speed plus gentle bends; heading is its integral over distance.
    # With ``solve`` the turn angles are scaled (one factor for all) so the route ends at ``target``.
    n = len(v)
    ds = v * DT
    s = np.cumsum(ds) - ds
    length = float(s[-1] + ds[-1])
    grid = np.arange(0.0, length + 60.0, 20.0)
    bends = _gauss_smooth(rng.standard_normal(len(grid)), 8.0)
    bends = np.interp(s, grid, bends / max(float(bends.std()), 1e-9)) / 900.0
    cap = np.minimum(1 / 150.0, 0.5 / np.maximum(v, 1.0) ** 2)  # bends stay below 0.5 m/s^2 lateral
    kappa = np.clip(bends, -cap, cap)
    last_end = -1e9
    side = 1 if rng.random() < 0.5 else -1
    for k in turns_1hz.tolist():
        if rng.random() > 0.45:
            continue
        # Mostly alternate left and right: a street-grid staircase that keeps making progress.
        side = -side if rng.random() < 0.8 else side
        dpsi = np.radians(rng.uniform(70, 100)) * side
        i = k * HZ
        radius = 15.0
        for _ in range(3):  # widen the turn until its lateral acceleration stays under ~3 m/s^2
            arc = radius * abs(dpsi)
            lo, hi = np.searchsorted(s, [s[i] - 0.3 * arc, s[i] + 0.7 * arc])
            vmax = float(v[lo:hi].max()) if hi > lo else 0.0
            radius = float(np.clip(2 * vmax**2 / 3.0, 15.0, 150.0))
        arc = radius * abs(dpsi)
        s0 = s[i] - 0.3 * arc
        if s0 < last_end + 30.0 or s0 < 5.0 or s0 + arc > length - 5.0:
            continue
        lo, hi = np.searchsorted(s, [s0, s0 + arc])
        u = (s[lo:hi] - s0) / arc
        kappa[lo:hi] += dpsi / arc * (1 - np.cos(2 * np.pi * u))
        last_end = s0 + arc
    phi = np.cumsum(kappa * ds)  # heading change (rad), left positive
    scale = 1.0
    chord_target = abs(target - start)
    if solve and chord_target > 1.0:
        w = ds.reshape(-1, HZ).sum(1) if n % HZ == 0 else ds
        ph = phi[HZ // 2 :: HZ][: len(w)] if n % HZ == 0 else phi
        grid_a = np.linspace(0.0, 2.0, 81)
        chord = np.abs(np.exp(1j * np.outer(grid_a, ph)) @ w)
        diff = chord - chord_target
        cross = np.flatnonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))
        if len(cross):
            j = int(cross[np.argmin(np.abs(grid_a[cross] - 1.0))])
            f = diff[j] / (diff[j] - diff[j + 1])
            scale = float(grid_a[j] + f * (grid_a[j + 1] - grid_a[j]))
        else:
            scale = float(grid_a[int(np.argmin(np.abs(diff)))])
    steps = ds * np.exp(1j * scale * phi)
    rot = np.angle(target - start) - np.angle(steps.sum()) if abs(steps.sum()) > 1 else rng.uniform(0, 2 * np.pi)
    z = start + np.exp(1j * rot) * (np.cumsum(steps) - steps)
    theta = rot + scale * phi
    return z, theta, scale * kappa


# ------------------------------------------------------------------------------------- segments
# Per-row state every segment carries (floats default 0, booleans False).
_FLOAT_KEYS: tuple[str, ...] = ("v", "kappa", "x", "y", "theta", "charge_w", "dv_long", "dv_lat", "hr_boost")
_FLOAT_KEYS += ("p_override", "pedal_override")  # NaN where the physics decides
_BOOL_KEYS: tuple[str, ...] = ("gear_d", "door", "occ", "belt_d", "belt_p", "hvac", "charging", "dc", "hazard")
_BOOL_KEYS += ("abs", "aeb", "eba", "emerg", "airbag_d", "airbag_p", "driving", "postcrash", "cruise", "ldw")
_BOOL_KEYS += ("pax", "plug")  # a front passenger is in; a charging cable is in the port


def _blank(n: int, *, x: float, y: float, theta: float) -> dict[str, np.ndarray]:
    """A parked, powered-on segment of ``n`` rows at one position."""
    seg: dict[str, np.ndarray] = {k: np.zeros(n) for k in _FLOAT_KEYS}
    seg.update({k: np.zeros(n, dtype=bool) for k in _BOOL_KEYS})
    seg["x"][:], seg["y"][:], seg["theta"][:] = x, y, theta
    seg["p_override"][:] = np.nan
    seg["pedal_override"][:] = np.nan
    seg["lv"] = np.full(n, LV_ON, dtype=np.int8)
    return seg


def _pre_drive(n_s: int, pos: tuple[float, float, float], passenger: bool) -> dict[str, np.ndarray]:
    """Getting in: door, seat, belt, power on (ACC -> START -> ON), selecting D."""
    n = n_s * HZ
    seg = _blank(n, x=pos[0], y=pos[1], theta=pos[2])
    r = np.arange(n)
    seg["door"] = r < 40
    seg["occ"] = r >= 20
    seg["belt_d"] = r >= 80
    seg["belt_p"][:] = passenger & (r >= 90)
    seg["pax"][:] = passenger & (r >= 25)
    seg["lv"] = np.where(r < n - 40, LV_ACC, np.where(r < n - 30, LV_START, LV_ON)).astype(np.int8)
    seg["gear_d"] = r >= n - 20
    seg["hvac"] = r >= n - 30
    return seg


def _post_drive(n_s: int, pos: tuple[float, float, float], passenger: bool) -> dict[str, np.ndarray]:
    """Getting out: P, belt off, power to ACC, door, OFF."""
    n = n_s * HZ
    seg = _blank(n, x=pos[0], y=pos[1], theta=pos[2])
    r = np.arange(n)
    seg["gear_d"] = r < 10
    seg["belt_d"] = r < 30
    seg["belt_p"][:] = passenger & (r < 35)
    seg["pax"][:] = passenger & (r < 85)
    seg["door"] = (r >= 60) & (r < 100)
    seg["occ"] = r < 80
    seg["hvac"] = r < 30
    seg["lv"] = np.where(r < 30, LV_ON, np.where(r < n - 30, LV_ACC, LV_OFF)).astype(np.int8)
    return seg


def _post_crash(n_s: int, pos: tuple[float, float, float], passenger: bool, inc: _Incident) -> dict[str, np.ndarray]:
    """After the crash: standing, hazard lights on, airbags deployed, the driver gets out."""
    n = n_s * HZ
    seg = _blank(n, x=pos[0], y=pos[1], theta=pos[2])
    r = np.arange(n)
    seg["hazard"][:] = True
    seg["postcrash"][:] = True
    seg["airbag_d"][:] = True
    seg["airbag_p"][:] = passenger
    seg["dv_long"][:] = inc.dv_long_kmh
    seg["dv_lat"][:] = inc.dv_lat_kmh
    seg["belt_d"] = r < 300
    seg["belt_p"][:] = passenger & (r < 320)
    seg["pax"][:] = passenger & (r < 410)
    seg["door"] = (r >= 350) & (r < 420)
    seg["occ"] = r < 400
    seg["hr_boost"] = 45.0 * np.exp(-r / 900.0)
    return seg


def _charge_power(kind: str, soc0: float, target: float, spec: VehicleSpec, max_s: int) -> np.ndarray:
    """Power (W) the charger puts into the pack, row by row: ramp-up, constant, exponential taper."""
    e_pct = spec.usable_kwh * 3.6e6 / 100.0  # J per % SOC
    if kind == "DC":
        peak, ramp, knee, asym = spec.dc_peak_kw * 1000 * 0.97, 45.0, 55.0, 100.0
    else:
        peak, ramp, knee, asym = spec.ac_kw * 1000 * 0.92, 10.0, target - 3.0, target + 1.5
    knee = max(knee, soc0)
    t1 = max(ramp, ramp / 2 + (knee - soc0) * e_pct / peak)
    tau2 = (asym - knee) * e_pct / peak
    t_end = t1 + tau2 * np.log((asym - knee) / max(asym - target, 1e-3))
    n = int(min(max_s, t_end * 1.05 + 120)) * HZ
    t = np.arange(n) * DT
    p = np.where(t < t1, peak * np.minimum(1.0, t / ramp), peak * np.exp(-(t - t1) / tau2))
    return p


# --------------------------------------------------------------------------------- physics
@dataclass
class _State:
    """What carries over from one segment to the next (and across sleep)."""

    soc: float
    odo_m: float
    ign: int
    t_motor: float
    t_batt: float
    t_cabin: float
    t_tyre: float


def _physics(seg: dict[str, np.ndarray], spec: VehicleSpec, st: _State, amb: np.ndarray) -> None:
    """Forces, powers, SOC and temperatures of one segment (in place); advances ``st``."""
    v, m = seg["v"], spec.mass_kg
    a = seg["a"]
    moving = v > 0.05
    _, grade = _terrain(seg["x"], seg["y"], seg["theta"])
    seg["grade"] = grade
    f = (
        m * G * spec.crr * moving + 0.5 * AIR_DENSITY * spec.cda_m2 * v**2 + m * G * grade * moving + 1.04 * m * a
    )  # 4 % extra inertia for the rotating parts
    f_trac = np.maximum(f, 0.0)
    f_brk = np.maximum(-f, 0.0)
    fade = np.clip((v - 0.7) / 2.0, 0.0, 1.0)  # regen fades out at walking speed
    cap = np.minimum(m * spec.regen_max_decel, spec.regen_max_kw * 1000 / np.maximum(v, 0.1)) * fade
    f_regen = np.minimum(f_brk, cap)
    seg["f_trac"], seg["f_regen"], seg["f_fric"] = f_trac, f_regen, f_brk - f_regen
    # Cabin: conditioned toward the set point while someone is in, else drifting to the ambient soak.
    setp = np.where(seg["hvac"], spec.hvac_setpoint_c, amb)
    seg["t_cabin"] = _first_order(setp, 300.0 if seg["hvac"].any() else 1800.0, st.t_cabin)
    hvac_w = seg["hvac"] * np.minimum(
        350 + 110 * np.abs(amb - spec.hvac_setpoint_c) + 180 * np.abs(seg["t_cabin"] - spec.hvac_setpoint_c), 4000.0
    )
    aux_w = 250.0 + hvac_w + seg["dc"] * 1500.0  # electronics, climate, pack cooling on DC
    p_drive = f_trac * v / 0.9 - f_regen * v * 0.85
    p_into = seg["charge_w"] - p_drive - aux_w
    e_pct = spec.usable_kwh * 3.6e6 / 100.0
    seg["p_into"] = p_into
    seg["soc"] = st.soc + np.cumsum(p_into) * DT / e_pct
    ocv = spec.cells_series * (3.42 + 0.0078 * np.clip(seg["soc"], 0, 100))
    cur = p_into / ocv
    seg["v_batt"] = ocv + cur * spec.pack_ohm
    seg["i_batt"] = p_into / seg["v_batt"]
    loss = seg["i_batt"] ** 2 * spec.pack_ohm
    seg["t_batt"] = _first_order(np.minimum(amb + 0.012 * loss + 2.0, 40.0), 1800.0, st.t_batt)
    p_mech = np.abs(f_trac - f_regen) * v
    seg["t_motor"] = _first_order(amb + 6.0 + 0.0012 * p_mech, 900.0, st.t_motor)
    seg["t_tyre"] = _first_order(amb + 0.5 * v, 600.0, st.t_tyre)
    seg["odo"] = st.odo_m + np.cumsum(v * DT)
    st.soc = float(seg["soc"][-1])
    st.odo_m = float(seg["odo"][-1])
    st.t_cabin, st.t_batt = float(seg["t_cabin"][-1]), float(seg["t_batt"][-1])
    st.t_motor, st.t_tyre = float(seg["t_motor"][-1]), float(seg["t_tyre"][-1])


def _sleep(st: _State, gap_s: float, amb: float, soak: float) -> None:
    """The car sleeps for ``gap_s``: everything cools to ambient, the 12 V systems sip the pack."""
    for name, tau, to in (
        ("t_motor", 2400.0, amb),
        ("t_batt", 7200.0, amb),
        ("t_tyre", 1800.0, amb),
        ("t_cabin", 1800.0, soak),
    ):
        cur = getattr(st, name)
        setattr(st, name, to + (cur - to) * float(np.exp(-gap_s / tau)))
    st.soc -= 0.02 * gap_s / 3600.0


# ------------------------------------------------------------------------------------- the plan
@dataclass
class _Leg:
    """One drive of the day's plan."""

    purpose: str
    origin: str
    dest: str
    depart_h: float  # planned local departure, hours after midnight
    charge: str | None = None  # "AC" or "DC" right after arriving
    dwell_h: float = 0.0  # minimum stay at the destination before the next leg


def _plan(rng: np.random.Generator, incident: bool) -> list[_Leg]:
    """Who goes where and when: 2-4 legs and where the one charge happens."""
    n = int(rng.choice([2, 3, 4], p=[0.45, 0.3, 0.25]))
    commute = _Leg("commute", "home", "work", rng.uniform(7.0, 8.75))
    evening = rng.uniform(17.5, 19.25)
    if n == 2:
        legs = [commute, _Leg("return", "work", "home", evening)]
    elif n == 3:
        legs = [
            commute,
            _Leg("errand", "work", "shop", evening, dwell_h=rng.uniform(0.4, 1.2)),
            _Leg("return", "shop", "home", evening + 0.5),
        ]
    else:
        lunch = rng.uniform(12.0, 12.6)
        legs = [
            commute,
            _Leg("errand", "work", "shop", lunch, dwell_h=rng.uniform(0.4, 0.9)),
            _Leg("errand", "shop", "work", lunch + 0.5),
            _Leg("return", "work", "home", evening),
        ]
    r = rng.random()
    if not incident and r < 0.5:
        legs[-1].charge = "AC"  # the home wallbox after the last drive
    elif r < 0.75 or n == 2:
        legs[0].charge = "AC" if rng.random() < 0.6 else "DC"  # at work
    else:
        legs[1].charge = "DC"  # the fast charger at the mall
    return legs


# --------------------------------------------------------------------------------- simulate_day
def _day_paths(signals: Sequence[str] | None) -> list[str]:
    """The VSS paths a day is simulated for: those asked for, or every signal the simulated car has."""
    cat = catalogue()
    # Camera frames are not time series the simulator models; every other catalogue signal is simulated.
    # The simulated car is electric: it has no combustion engine to report on.
    paths = (
        list(signals)
        if signals is not None
        else [
            p
            for p in cat.paths
            if cat[p].category != "exterior_camera" and not p.startswith("Vehicle.Powertrain.CombustionEngine.")
        ]
    )
    unknown = [p for p in paths if p not in cat]
    if unknown:
        raise UnknownSignal(f"no signal {unknown[0]!r} in the catalogue", signal=unknown[0])
    return paths


@dataclass
class _Day:
    """The running state of one simulated day: the car, its clock, its plan and what it recorded so far."""

    spec: VehicleSpec
    rng: np.random.Generator
    doy: int
    temp_offset: float
    midnight_ms: int
    incident: bool
    legs: list[_Leg]
    places: dict[str, complex]
    hard_leg: int
    st: _State
    pos: tuple[float, float, float]
    t_leave: float
    segs: list[dict[str, np.ndarray]] = field(default_factory=list)
    events: list[SimEvent] = field(default_factory=list)
    drives: list[DriveSummary] = field(default_factory=list)
    charges: list[ChargeSummary] = field(default_factory=list)

    def local_h(self, t_ms: np.ndarray | float) -> np.ndarray:
        """Hours since local midnight."""
        return np.asarray((np.asarray(t_ms, dtype=np.float64) - self.midnight_ms) / 3.6e6)

    def amb_at(self, t_ms: np.ndarray | float) -> np.ndarray:
        """Ambient temperature (°C) at a time."""
        return _ambient_c(self.local_h(t_ms), self.doy, self.temp_offset)

    def place(self, seg: dict[str, np.ndarray], t0: int) -> int:
        """Put a segment on the clock at ``t0``, run its physics and keep it; return the time after it."""
        n = len(seg["v"])
        seg["t_ms"] = t0 + 100 * np.arange(n, dtype=np.int64)
        seg["amb"] = self.amb_at(seg["t_ms"])
        seg.setdefault("a", np.zeros(n))
        seg["ign"] = np.full(n, self.st.ign)
        _physics(seg, self.spec, self.st, seg["amb"])
        self.segs.append(seg)
        return t0 + 100 * n


def _start_day(vin: str, seed: int, day: dt.date, incident: bool, tz_offset_h: int, ref: Path) -> _Day:
    """The day's weather, plan, places and the car's state at dawn (random draws in a fixed order)."""
    spec = vehicle_spec(vin, ref)
    rng = _rng("day", vin, seed, day.isoformat())
    doy = day.timetuple().tm_yday
    temp_offset = float(rng.normal(0, 1.5))
    midnight_ms = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    midnight_ms -= tz_offset_h * 3_600_000

    legs = _plan(rng, incident)
    places = {"home": complex(*spec.home_xy), "work": complex(*spec.work_xy)}
    anchor_for_shop = places["work"] if len(legs) == 4 else (places["work"] + places["home"]) / 2
    places["shop"] = anchor_for_shop + complex(*_bearing_offset(rng, 1_500, 4_000))
    chord_sum = sum(abs(places[lg.dest] - places[lg.origin]) for lg in legs)
    hard_leg = int(rng.integers(len(legs))) if (not incident and rng.random() < 0.35) else -1

    # Start with enough charge for the day whatever the charging does.
    need_pct = chord_sum * 1.6 * 0.23 / 1000 / spec.usable_kwh * 100
    # Low enough that the day's charge has room to add at least ~15 %, high enough for the day's driving.
    soc0 = min(max(float(rng.uniform(30, 65)), need_pct + 12.0), 90.0)
    days_in = max((day - ODOMETER_EPOCH).days, 0)
    amb0 = float(_ambient_c(np.asarray(6.0), doy, temp_offset))
    st = _State(
        soc=soc0,
        odo_m=float(spec.odometer_base_m + days_in * ODOMETER_M_PER_DAY),
        ign=spec.ignition_base + 5 * days_in,
        t_motor=amb0,
        t_batt=amb0 + 1.0,
        t_cabin=amb0,
        t_tyre=amb0,
    )
    pos = (spec.home_xy[0], spec.home_xy[1], float(rng.uniform(0, 2 * np.pi)))
    t_leave = float(midnight_ms + 5 * 3_600_000)  # nothing happens before 05:00 local
    return _Day(spec, rng, doy, temp_offset, midnight_ms, incident, legs, places, hard_leg, st, pos, t_leave)


def _depart(d: _Day, leg: _Leg, n_pre: int) -> int:
    """When the car wakes for a leg: on a whole second, after the planned time and after it last slept."""
    rng = d.rng
    planned = d.midnight_ms + int(leg.depart_h * 3.6e6) + int(rng.integers(0, 300)) * 1000
    start_ms = max(planned, int(d.t_leave) + int(rng.integers(300, 900)) * 1000) - n_pre * 1000
    start_ms -= start_ms % 1000
    if d.segs:
        gap = (start_ms - int(d.segs[-1]["t_ms"][-1])) / 1000.0
        amb = float(d.amb_at(start_ms))
        _sleep(d.st, gap, amb, amb + 10.0 * float(_daylight(d.local_h(start_ms), d.doy)))
    return start_ms


def _drive_leg(d: _Day, li: int, leg: _Leg, trips: Any, stops: Any) -> bool:
    """Wake, drive one leg, park (and charge); return True when the day's incident ended it."""
    rng = d.rng
    last = li == len(d.legs) - 1
    passenger = bool(rng.random() < 0.35)
    chord = abs(d.places[leg.dest] - d.places[leg.origin])
    inc_here = d.incident and last
    v1 = _stitch(rng, trips, stops, max(1.3 * chord, 1_500.0), fast=1 + int(chord > 6_000), need_highway=inc_here)
    v10 = np.maximum(_hermite_upsample(v1, HZ), 0.0)
    v10[v10 < 1e-3] = 0.0
    inc: _Incident | None = None
    hard: tuple[int, int] | None = None
    if inc_here:
        v10, inc = _insert_incident(rng, v10)
    elif li == d.hard_leg:
        hard = _insert_hard_braking(rng, v10)
    turns = _turn_candidates(v10[::HZ])
    here = complex(d.pos[0], d.pos[1])  # where the car really is (a route closes to within metres)
    z, theta, kappa = _route(rng, v10, turns, here, d.places[leg.dest], solve=inc is None)

    n_pre = int(rng.integers(20, 46))
    start_ms = _depart(d, leg, n_pre)
    d.st.ign += 1  # this drive's ignition cycle
    d.pos = (d.pos[0], d.pos[1], float(theta[0]))
    t = d.place(_pre_drive(n_pre, d.pos, passenger), start_ms)

    drive = _blank(len(v10), x=0.0, y=0.0, theta=0.0)
    drive.update(v=v10, a=np.gradient(v10, DT), kappa=kappa, x=z.real, y=z.imag, theta=theta)
    for flag in ("driving", "gear_d", "occ", "belt_d", "hvac"):
        drive[flag][:] = True
    drive["belt_p"][:] = passenger
    drive["pax"][:] = passenger
    drive_start = t
    if hard is not None:
        d.events += _hard_braking(drive, hard, t)
    if inc is not None:
        d.events += _script_incident(drive, inc, passenger, t)
    _cruise_and_lane(rng, drive, bool(rng.random() < 0.5))
    soc_a, odo_a = d.st.soc, d.st.odo_m
    t = d.place(drive, t)
    d.drives.append(
        DriveSummary(
            start_ms=drive_start,
            end_ms=t - 100,
            distance_m=d.st.odo_m - odo_a,
            energy_kwh=float(-drive["p_into"].sum() * DT / 3.6e6),
            soc_start=soc_a,
            soc_end=d.st.soc,
            purpose=leg.purpose,
            origin=leg.origin,
            destination=leg.dest if inc is None else "crash site",
        )
    )
    d.pos = (float(z.real[-1]), float(z.imag[-1]), float(theta[-1]))
    return _park(d, leg, passenger, inc, t)


def _park(d: _Day, leg: _Leg, passenger: bool, inc: _Incident | None, t: int) -> bool:
    """After a leg: the crash scene, or parking, charging and the stay; return True after a crash."""
    rng = d.rng
    if inc is not None:
        d.t_leave = d.place(_post_crash(int(rng.integers(90, 150)), d.pos, passenger, inc), t)
        return True
    t = d.place(_post_drive(int(rng.integers(15, 41)), d.pos, passenger), t)
    if leg.charge is not None:
        t = _charge(rng, leg.charge, d.spec, d.st, d.pos, t, d.midnight_ms, d.charges, d.place)
    d.t_leave = t + leg.dwell_h * 3.6e6
    return False


def simulate_day(
    vin: str,
    seed: int,
    day: dt.date,
    *,
    incident: bool = False,
    tz_offset_h: int = 8,
    signals: Sequence[str] | None = None,
    reference: Path | None = None,
) -> SimulatedDay:
    """Simulate one local calendar day of a car; ``signals`` picks (and orders) the columns by VSS path."""
    paths = _day_paths(signals)
    ref = reference if reference is not None else reference_dir()
    trips, stops = microtrip_library(ref)
    d = _start_day(vin, seed, day, incident, tz_offset_h, ref)
    for li, leg in enumerate(d.legs):
        if _drive_leg(d, li, leg, trips, stops):
            break
    return SimulatedDay(
        vin=vin,
        day=day,
        table=_table(d.segs, d.spec, d.rng, paths, d.doy, d.midnight_ms, key=(vin, seed, day)),
        events=sorted(d.events, key=lambda e: e.t_ms),
        drives=d.drives,
        charges=d.charges,
        vehicle=d.spec,
    )


def _hard_braking(drive: dict[str, np.ndarray], rows: tuple[int, int], t0: int) -> list[SimEvent]:
    """Flags and event of an ordinary emergency stop at ``rows`` of a drive that starts at ``t0``."""
    h0, h1 = rows
    a = drive["a"]
    harsh = np.zeros(len(a), dtype=bool)
    harsh[h0:h1] = a[h0:h1] < -4.0
    drive["emerg"] = harsh
    drive["eba"] = harsh
    hb = np.flatnonzero(a[h0:h1] <= -HARD_BRAKING_MPS2)
    if not len(hb):
        return []
    detail = {
        "speed_kmh": round(float(drive["v"][h0]) * KMH, 1),
        "max_decel_mps2": round(float(-a[h0:h1].min()), 2),
        "scripted": False,
    }
    return [SimEvent("hard_braking", t0 + 100 * (h0 + int(hb[0])), detail)]


def _script_incident(drive: dict[str, np.ndarray], inc: _Incident, passenger: bool, t0: int) -> list[SimEvent]:
    """Pedals, brake pressure, ABS/AEB/EBA flags, delta-V and airbags of the incident; its events."""
    n = len(drive["v"])
    r = np.arange(n)
    b, c = inc.brake, inc.crash
    # The driver's pressure builds to the 45.9 bar of the record; AEB then takes it to 140.7 bar.
    p_drv = AEB_PRESSURE_BAR[0] * np.clip((r - b) / 5.0, 0.0, 1.0)
    p = np.where(r < inc.aeb_start, p_drv, np.interp(r, [inc.aeb_start, inc.aeb_start + 5, c], list(AEB_PRESSURE_BAR)))
    after = r > c
    since = np.maximum(r - c, 0)
    p = np.where(after, AEB_PRESSURE_BAR[2] * np.exp(-since / 8.0), p)
    drive["p_override"] = np.where(r >= b, p, np.nan)
    pedal = 100 * np.sqrt(p_drv / 160.0)  # AEB adds pressure without moving the pedal
    drive["pedal_override"] = np.where(r >= b, np.where(after, pedal * np.exp(-since / 6.0), pedal), np.nan)
    drive["abs"] = (r >= inc.abs_start) & (r < c)
    drive["aeb"] = (r >= inc.aeb_start) & (r <= c + 1)
    drive["emerg"] = (r > b) & (r <= c)
    drive["eba"] = (r > b + 1) & (r <= c)
    # Delta-V (49 CFR 563): cumulative velocity change from time zero, held after the event.
    v_imp = inc.v_impact
    frac = np.clip((v_imp - drive["v"]) / v_imp, 0.0, 1.0)
    drive["dv_long"] = np.where(r > c, inc.dv_long_kmh * np.where(r >= c + 2, 1.0, frac), 0.0)
    drive["dv_lat"] = np.where(r > c, inc.dv_lat_kmh * np.where(r >= c + 2, 1.0, 0.5), 0.0)
    drive["airbag_d"] = r > c
    drive["airbag_p"] = (r > c) & passenger
    drive["hazard"] = r > c
    drive["hr_boost"] = np.where(r >= b, 45.0 * np.clip((r - b) / 20.0, 0, 1), 0.0)
    hb = b + int(np.flatnonzero(drive["a"][b:] <= -HARD_BRAKING_MPS2)[0])
    hard = {
        "speed_kmh": round(inc.v_brake * KMH, 1),
        "max_decel_mps2": round(float(-drive["a"][hb:c].min()), 2),
        "scripted": True,
    }
    crash = {
        "speed_kmh": round(inc.v_impact * KMH, 1),
        "delta_v_long_kmh": round(inc.dv_long_kmh),
        "delta_v_lat_kmh": round(inc.dv_lat_kmh),
        "airbags": ["driver", "passenger"] if passenger else ["driver"],
    }
    return [
        SimEvent("hard_braking", t0 + 100 * hb, hard),
        SimEvent("abs", t0 + 100 * inc.abs_start, {"duration_s": (c - inc.abs_start) * DT}),
        SimEvent("aeb", t0 + 100 * inc.aeb_start, {"pressure_bar": list(AEB_PRESSURE_BAR)}),
        SimEvent("crash", t0 + 100 * c, crash),
    ]


def _cruise_and_lane(rng: np.random.Generator, drive: dict[str, np.ndarray], uses_cruise: bool) -> None:
    """Cruise control on steady fast stretches; a few lane-departure warnings at speed."""
    v, a = drive["v"], drive["a"]
    steady = (v > 70 / KMH) & (np.abs(a) < 0.4) & ~drive["emerg"]
    window = 150  # 15 s of steady driving before the driver sets it
    held = np.convolve(steady.astype(np.float64), np.ones(window), mode="full")[: len(v)] >= window - 0.5
    drive["cruise"] = held & steady & uses_cruise
    fast = np.flatnonzero(v > 60 / KMH)
    for _ in range(int(rng.poisson(len(fast) * DT / 1200.0))):
        i = int(fast[int(rng.integers(len(fast)))])
        drive["ldw"][i : i + int(rng.integers(10, 30))] = True


def _charge(
    rng: np.random.Generator,
    kind: str,
    spec: VehicleSpec,
    st: _State,
    pos: tuple[float, float, float],
    t: int,
    midnight_ms: int,
    charges: list[ChargeSummary],
    place: Callable[..., int],
) -> int:
    """A charging session straight after parking; returns the time the car goes back to sleep."""
    limit = float(spec.charge_limit_pct)
    target = min(limit, 80.0) if kind == "DC" else limit
    target_phys = 3.0 + 0.94 * target  # the limit is on the displayed SOC
    if st.soc >= target_phys - 1.0:
        return t
    max_s = 3600 if kind == "DC" else int(min(4 * 3600, (midnight_ms + 23.9 * 3.6e6 - t) / 1000))
    if max_s < 600:
        return t
    plug = int(rng.integers(30, 120))
    p = _charge_power(kind, st.soc, target_phys, spec, max_s)
    stays = kind == "DC" and bool(rng.random() < 0.5)
    seg = _blank(plug * HZ + len(p) + 60 * HZ, x=pos[0], y=pos[1], theta=pos[2])
    body = slice(plug * HZ, plug * HZ + len(p))
    noise = 1 + 0.004 * _smooth_noise(rng, len(p), 50.0)
    seg["charge_w"][body] = p * noise
    # Cut the session where the physical SOC reaches the target (the charger stops there).
    e_pct = spec.usable_kwh * 3.6e6 / 100.0
    approx = st.soc + np.cumsum(seg["charge_w"] - 250.0 - 1500.0 * (kind == "DC")) * DT / e_pct
    reached = np.flatnonzero(approx >= target_phys)
    if len(reached):
        end = int(reached[0]) + 1
        seg["charge_w"][end:] = 0.0
        keep = end + 60 * HZ
        keep += (-keep) % HZ
        for k in list(seg):
            seg[k] = seg[k][:keep]
    seg["charging"] = seg["charge_w"] > 0
    seg["dc"] = seg["charging"] & (kind == "DC")
    rows = np.arange(len(seg["v"]))
    seg["plug"] = (rows >= 10 * HZ) & (rows < len(rows) - 30 * HZ)  # cable in after 10 s, out 30 s before sleep
    seg["occ"][:] = stays
    seg["hvac"][:] = stays
    seg["lv"][:] = LV_ACC if stays else LV_LOCK
    soc_a = st.soc
    t0 = t
    t = place(seg, t)
    on = np.flatnonzero(seg["charging"])
    charges.append(
        ChargeSummary(
            start_ms=t0 + 100 * int(on[0]),
            end_ms=t0 + 100 * int(on[-1]),
            kind=kind,
            energy_kwh=float(np.maximum(seg["p_into"], 0).sum() * DT / 3.6e6),
            soc_start=soc_a,
            soc_end=st.soc,
            max_power_kw=float(seg["charge_w"].max() / 1000.0),
        )
    )
    return t


# ------------------------------------------------------------------------------------ output
def _quantise(sig: Signal, x: np.ndarray) -> np.ndarray:
    """Round to the catalogue resolution and clip to its range (compression relies on both)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    res = sig.resolution
    if res:
        inv = round(1.0 / res)
        # Dividing by an integer 1/res gives the nearest double to k*res; multiplying by res may not.
        x = np.round(x * inv) / inv if res < 1 and abs(inv * res - 1) < 1e-12 else np.round(x / res) * res
    if sig.min is not None or sig.max is not None:
        x = np.clip(x, sig.min if sig.min is not None else -np.inf, sig.max if sig.max is not None else np.inf)
    return x


def _table(
    segs: list[dict[str, np.ndarray]],
    spec: VehicleSpec,
    rng: np.random.Generator,
    paths: list[str],
    doy: int,
    midnight_ms: int,
    key: tuple[str, int, dt.date],
) -> pa.Table:
    """Sensor readings from the simulated state, as the catalogue-typed wire table."""
    d = {k: np.concatenate([s[k] for s in segs]) for k in segs[0]}
    t_ms = d["t_ms"]
    sec = np.flatnonzero(t_ms % 1000 == 0)
    col = _ten_hz(d, spec, rng)
    # 1 Hz signals are computed on whole-second rows only.
    dark = ~_daylight((t_ms[sec] - midnight_ms) / 3.6e6, doy)
    s = {k: arr[sec] for k, arr in d.items()}
    one_hz = _one_hz(s, spec, rng, dark)
    # The body, cabin, wear, diagnostics and software signals draw from their own stream (equipment.py).
    vin, seed, day = key
    extra = equipment.signals(
        s,
        spec,
        _rng("equipment", vin, seed, day.isoformat()),
        vin_int=_stable_int("equipment", vin),
        day=day,
        midnight_ms=midnight_ms,
        dark=dark,
    )
    one_hz.update(extra)  # equipment also refines a few (tyre pressure with a leak, ABS faults with a trouble code)
    return _wire_table(paths, t_ms, sec, col, one_hz)


def _ten_hz(d: dict[str, np.ndarray], spec: VehicleSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The 10 Hz signals (dynamics, brakes, pedals, wheels, motor, EDR) at every row."""
    n = len(d["t_ms"])
    v, a, kappa = d["v"], d["a"], d["kappa"]
    moving = v > 0.05  # below ~0.2 km/h wheel-speed sensors and the resolver read zero
    drv = d["driving"]

    def noise(sigma: float, where: np.ndarray | None = None) -> np.ndarray:
        z = rng.normal(0.0, sigma, n)
        return z if where is None else z * where

    m = spec.mass_kg
    # Brakes: friction beyond regen, the driver's foot holding the car at a standstill in D, overrides.
    hold = (~moving) & d["gear_d"] & ~d["postcrash"] & (d["f_trac"] <= 1.0)  # released as it pulls away
    # Gain: 0.6 g of friction braking takes the 45.9 bar of the 2021 record; ~14 bar holds the car at lights.
    pressure = d["f_fric"] / m * (AEB_PRESSURE_BAR[0] / 5.9) + hold * 14.0
    pressure = np.where(np.isnan(d["p_override"]), pressure, d["p_override"])
    brake_pedal = np.where(pressure > 0.3, 100 * np.sqrt(np.clip(pressure, 0, 160) / 160.0), 0.0)
    brake_pedal = np.where(np.isnan(d["pedal_override"]), brake_pedal, d["pedal_override"])
    f_max = np.minimum(
        spec.motor_max_nm * spec.gear_ratio / spec.wheel_radius_m, spec.motor_peak_kw * 1000 / np.maximum(v, 0.1)
    )
    accel_pedal = np.where(d["f_trac"] > 1.0, 100 * np.sqrt(np.clip(d["f_trac"] / f_max, 0, 1)), 0.0)
    accel_pedal = np.where(np.isnan(d["pedal_override"]), accel_pedal, 0.0)
    # UN R13-H: strong regen lights the brake lamps too.
    braking = (pressure > 0.5) | (brake_pedal >= 0.5) | (moving & (a < -1.3)) | d["aeb"]
    slip = np.where(d["abs"], 0.08 + 0.12 * (np.arange(n) % 3 == 0), 0.0)
    wheel = v * (1 - kappa * spec.track_m / 2) * (1 - slip)
    wheel_r = v * (1 + kappa * spec.track_m / 2) * (1 - slip)
    motor_rpm = v / spec.wheel_radius_m * spec.gear_ratio * 60 / (2 * np.pi)
    torque = np.clip(
        (d["f_trac"] - d["f_regen"]) * spec.wheel_radius_m / spec.gear_ratio, -spec.motor_max_nm, spec.motor_max_nm
    )
    steer = np.degrees(np.arctan(spec.wheelbase_m * kappa)) * spec.steering_ratio
    steer += 1.5 * _smooth_noise(rng, n, 30.0) * drv
    tcs = drv & (a > 3.2) & (v < 8.0)

    return {
        "Vehicle.Speed": (v * KMH + noise(0.03, moving)) * moving,
        "Vehicle.Acceleration.Longitudinal": a + noise(0.04, drv),
        "Vehicle.Acceleration.Lateral": kappa * v**2 + noise(0.04, drv),
        "Vehicle.Acceleration.Vertical": noise(1.0, drv) * (0.05 + 0.004 * v),
        "Vehicle.AngularVelocity.Yaw": np.degrees(kappa * v) + noise(0.05, drv),
        "Vehicle.Chassis.Accelerator.PedalPosition": accel_pedal,
        "Vehicle.Chassis.Brake.PedalPosition": brake_pedal,
        "Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected": d["emerg"],
        "Vehicle.Chassis.SteeringWheel.Angle": steer,
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed": (wheel * KMH + noise(0.04, moving)) * moving,
        "Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed": (wheel_r * KMH + noise(0.04, moving)) * moving,
        "Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed": (wheel * KMH + noise(0.04, moving)) * moving,
        "Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed": (wheel_r * KMH + noise(0.04, moving)) * moving,
        "Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling": (drv & (steer > 45)) | d["hazard"],
        "Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling": (drv & (steer < -45)) | d["hazard"],
        "Vehicle.ADAS.ObstacleDetection.Front.Center.IsWarning": d["aeb"],
        "Vehicle.ADAS.ObstacleDetection.Rear.Left.IsWarning": np.zeros(n, dtype=bool),
        "Vehicle.ADAS.ObstacleDetection.Rear.Right.IsWarning": np.zeros(n, dtype=bool),
        "Vehicle.Body.Lights.Brake.IsActive": braking.astype(np.int8),
        "Vehicle.ADAS.ABS.IsEngaged": d["abs"],
        "Vehicle.ADAS.ESC.IsEngaged": np.zeros(n, dtype=bool),
        "Vehicle.ADAS.EBA.IsEngaged": d["eba"],
        "Vehicle.ADAS.TCS.IsEngaged": tcs,
        "Vehicle.Powertrain.ElectricMotor.Speed": (motor_rpm + noise(0.5, moving)) * moving,
        "Vehicle.Powertrain.ElectricMotor.Torque": torque,
        "Vehicle.Powertrain.TractionBattery.CurrentCurrent": d["i_batt"] + noise(0.1, drv),
        "Vehicle.EDR.BrakeMasterCylinderPressure": pressure,
        "Vehicle.EDR.AEB.IsEngaged": d["aeb"],
        "Vehicle.EDR.DeltaV.Longitudinal": d["dv_long"],
        "Vehicle.EDR.DeltaV.Lateral": d["dv_lat"],
        "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed": d["airbag_d"],
        "Vehicle.Cabin.Seat.Row1.PassengerSide.Airbag.IsDeployed": d["airbag_p"],
    }


def _gnss_fixes(s: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Held-index, latitude, longitude, heading and terrain height of the 1 Hz GNSS fixes."""
    ns = len(s["v"])
    # GNSS error wanders while moving and is frozen at a standstill (receivers' static hold).
    held = np.cumsum(s["v"] > 0.05)
    x_gnss = s["x"] + 1.5 * _smooth_noise(rng, ns + 1, 20.0)[held]
    y_gnss = s["y"] + 1.5 * _smooth_noise(rng, ns + 1, 20.0)[held]
    height, _ = _terrain(s["x"], s["y"], s["theta"])
    lat = ANCHOR[0] + np.degrees(y_gnss / EARTH_RADIUS_M)
    lon = ANCHOR[1] + np.degrees(x_gnss / (EARTH_RADIUS_M * np.cos(np.radians(ANCHOR[0]))))
    heading = np.mod(90.0 - np.degrees(s["theta"]) + rng.normal(0, 0.2, ns + 1)[held], 360.0)
    return held, lat, lon, heading, height


def _one_hz(
    s: dict[str, np.ndarray], spec: VehicleSpec, rng: np.random.Generator, dark: np.ndarray
) -> dict[str, np.ndarray]:
    """The 1 Hz signals (location, battery, body, cabin, driver) at the whole-second rows ``s``."""
    ns = len(s["v"])
    held, lat, lon, heading, height = _gnss_fixes(s, rng)
    soc_disp = np.clip((s["soc"] - 3.0) / 0.94, 0.0, 100.0)
    ready = s["lv"] == LV_ON
    occ = s["occ"]
    hr = (68 + 4 * _smooth_noise(rng, ns, 60.0) + 6 * s["driving"] + s["hr_boost"]) * occ
    attentive = np.clip(93 + 4 * _smooth_noise(rng, ns, 90.0), 0, 100) * occ
    wh_km = spec.rated_wh_km + 4.0 * np.abs(s["amb"] - spec.hvac_setpoint_c)
    tyre_factor = (s["t_tyre"] + 273.15) / 293.15
    lv_volts = np.where(ready | s["charging"], 14.3, 12.7 - 0.1 * (s["lv"] == LV_LOCK))
    lv_volts = lv_volts + 0.02 * _smooth_noise(rng, ns, 30.0)
    dc = s["dc"]
    # Cruise set speed: the speed when cruise last engaged, held (0 before the first engagement).
    engaged = s["cruise"].astype(bool) & ~np.r_[False, s["cruise"][:-1].astype(bool)]
    set_at = np.maximum.accumulate(np.where(engaged, np.arange(ns), 0))
    speed_set = np.where(np.cumsum(engaged) > 0, np.round(s["v"][set_at] * KMH), 0.0)
    never = np.zeros(ns, dtype=bool)
    return {
        "Vehicle.CurrentLocation.Latitude": lat,
        "Vehicle.CurrentLocation.Longitude": lon,
        "Vehicle.CurrentLocation.Altitude": height + 2.5 * _smooth_noise(rng, ns + 1, 30.0)[held],
        "Vehicle.CurrentLocation.Heading": np.where(heading >= 359.95, 0.0, heading),
        "Vehicle.CurrentLocation.HorizontalAccuracy": 3.0 + 1.0 * _smooth_noise(rng, ns + 1, 120.0)[held],
        "Vehicle.TraveledDistance": np.floor(s["odo"]),
        "Vehicle.IsMoving": s["v"] > 0.05,
        "Vehicle.Powertrain.Transmission.CurrentGear": s["gear_d"].astype(np.float64),
        "Vehicle.Powertrain.Transmission.SelectedGear": np.where(s["gear_d"], GEAR_DRIVE, GEAR_PARK),
        "Vehicle.Powertrain.ElectricMotor.Temperature": s["t_motor"],
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": s["soc"],
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": soc_disp,
        "Vehicle.Powertrain.TractionBattery.CurrentVoltage": s["v_batt"],
        "Vehicle.Powertrain.TractionBattery.CurrentPower": s["p_into"],
        "Vehicle.Powertrain.TractionBattery.Temperature.Average": s["t_batt"],
        "Vehicle.Powertrain.TractionBattery.StateOfHealth": np.full(ns, spec.soh_pct),
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": s["charging"],
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeCurrent.DC": np.where(dc, s["charge_w"] / s["v_batt"], 0),
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeVoltage.DC": np.where(dc, s["v_batt"] + 1.5, 0.0),
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit": np.full(ns, float(spec.charge_limit_pct)),
        "Vehicle.Powertrain.Range": soc_disp / 100 * spec.usable_kwh * 1e6 / wh_km,
        "Vehicle.LowVoltageSystemState": s["lv"],
        "Vehicle.LowVoltageBattery.CurrentVoltage": lv_volts,
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure": spec.tyre_cold_kpa[0] * tyre_factor,
        "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure": spec.tyre_cold_kpa[1] * tyre_factor,
        "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure": spec.tyre_cold_kpa[2] * tyre_factor,
        "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure": spec.tyre_cold_kpa[3] * tyre_factor,
        "Vehicle.Exterior.AirTemperature": s["amb"] + 0.8 * (s["v"] < 1.0) * (~dark),  # sun-baked sensor at stops
        "Vehicle.Body.Lights.Hazard.IsSignaling": s["hazard"],
        "Vehicle.Body.Lights.Beam.Low.IsOn": dark & (ready | s["driving"]),
        "Vehicle.Body.Lights.Beam.High.IsOn": never,
        "Vehicle.Body.Lights.Fog.Front.IsOn": never,
        "Vehicle.Body.Lights.Parking.IsOn": never,
        "Vehicle.Body.Lights.Running.IsOn": ~dark & (ready | s["driving"]),
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": s["door"],
        "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen": never,
        "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen": never,
        "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen": never,
        "Vehicle.Chassis.ParkingBrake.IsEngaged": ~s["gear_d"].astype(bool),
        "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted": s["belt_d"],
        "Vehicle.Cabin.Seat.Row1.PassengerSide.IsBelted": s["belt_p"],
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": s["t_cabin"],
        "Vehicle.ADAS.CruiseControl.IsActive": s["cruise"],
        "Vehicle.ADAS.CruiseControl.IsEnabled": s["driving"].astype(bool),
        "Vehicle.ADAS.CruiseControl.SpeedSet": speed_set,
        "Vehicle.ADAS.ABS.IsError": never,
        "Vehicle.ADAS.ESC.IsError": never,
        "Vehicle.ADAS.ESC.IsEnabled": ~never,
        "Vehicle.ADAS.TCS.IsEnabled": ~never,
        "Vehicle.ADAS.LaneDepartureDetection.IsWarning": s["ldw"],
        "Vehicle.EDR.IgnitionCycle": s["ign"].astype(np.float64),
        "Vehicle.Driver.AttentiveProbability": attentive,
        "Vehicle.Driver.HeartRate": hr,
    }


def _wire_table(
    paths: list[str], t_ms: np.ndarray, sec: np.ndarray, col: dict[str, np.ndarray], one_hz: dict[str, np.ndarray]
) -> pa.Table:
    """The catalogue-typed table of ``paths``: 10 Hz columns on every row, 1 Hz ones on whole seconds only."""
    cat = catalogue()
    n = len(t_ms)
    schema = cat.arrow_schema(paths)
    arrays: list[pa.Array] = [pa.array(t_ms, type=schema.field("t").type)]
    null_mask = np.ones(n, dtype=bool)
    null_mask[sec] = False
    for p in paths:
        sig = cat[p]
        if sig.rate_hz >= HZ:
            vals, mask = col[p], None
        else:
            v1 = one_hz[p]
            vals = np.zeros(n, dtype=v1.dtype)
            vals[sec] = v1
            absent = _absent(v1)
            if sig.on_change:
                absent |= ~_changes(sig, v1, t_ms[sec])
            mask = null_mask
            if absent.any():
                mask = null_mask.copy()
                mask[sec] = absent
        arrays.append(_to_arrow(sig, vals, mask))
    return pa.Table.from_arrays(arrays, schema=schema)


def _absent(v: np.ndarray) -> np.ndarray:
    """Rows with no reading: NaN numbers, None texts."""
    if v.dtype == object:
        return np.array([x is None for x in v], dtype=bool)
    if np.issubdtype(v.dtype, np.floating):
        return np.isnan(v)
    return np.zeros(len(v), dtype=bool)


def _changes(sig: Signal, v: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    """The 1 Hz rows an on-change signal is sent on: where its value (as sent) changes, and on each wake."""
    sent = v if v.dtype == object or sig.arrow_type in (pa.bool_(), pa.string()) else _quantise(sig, v)
    if v.dtype != object and np.issubdtype(v.dtype, np.floating):
        sent = np.where(np.isnan(v), np.inf, sent)  # a value appearing or vanishing is a change
    wake = np.r_[True, np.diff(t_ms) > 1000]
    return wake | np.r_[True, sent[1:] != sent[:-1]]


def _to_arrow(sig: Signal, vals: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    """One column with the catalogue type; ``mask`` marks rows where the signal was not sampled."""
    if sig.arrow_type == pa.bool_():
        return pa.array(vals.astype(bool), mask=mask, type=pa.bool_())
    if sig.arrow_type == pa.string() and sig.allowed is None:  # free text (trouble codes, software versions)
        return pa.array(list(vals), mask=mask, type=pa.string())
    if sig.arrow_type == pa.string():
        allowed = sig.allowed or ()
        codes = pa.array(vals.astype(np.int8), mask=mask, type=pa.int8())
        return pa.DictionaryArray.from_arrays(codes, pa.array(list(allowed), type=pa.string())).dictionary_decode()
    q = _quantise(sig, vals)
    return pa.array(q.astype(sig.arrow_type.to_pandas_dtype()), mask=mask, type=sig.arrow_type)
