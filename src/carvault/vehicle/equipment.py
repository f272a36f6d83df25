"""The rest of the simulated car: body, cabin, wear, service, trouble codes, lamps, software and the charge port.

``simulator.py`` models the car's motion, energy and heat; this module reads that state once per second and
derives the slower signals the way a car's body and diagnostic systems would, so they agree with it:
- doors open only at a standstill (the simulator's getting-in and getting-out phases); the car locks itself in
  drive and when it is left off, unlocks after a crash; mirrors fold and the alarm arms when it is locked;
- the charge port flap opens before the cable goes in and closes after it comes out, so it is open only around a
  charging session; charging state, phase currents, session energy and time to complete follow the charger power;
- service distance falls with the odometer (a 20 000 km / one-year interval), brake pads wear with it, washer
  fluid runs down between services; tyre temperature follows the tyres' thermal model and a slow puncture on some
  days lowers one tyre's pressure until its warning comes on;
- on some days a trouble code appears (pending, then active with its lamp lit, then stored when it clears), and
  the systems it names report their fault while it is active;
- software updates arrive every four weeks; a car downloads one while driving and installs it parked.
Everything is drawn from the generator it is given (one per vehicle-day) and from the VIN, never from the
simulator's own stream, so adding signals here leaves every other signal unchanged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from carvault.dtc import DTC_COUNT_SIGNAL, DTC_SIGNAL, LAMP_BRANCH, DtcRecord, encode_dtcs
from carvault.signals import ALLOWED_VALUES

LV_LOCK, LV_OFF, LV_ON = 1, 2, 4  # simulator codes of Vehicle.LowVoltageSystemState
SERVICE_KM = 20_000.0
SERVICE_S = 365 * 86_400
RELEASE_EPOCH = dt.date(2025, 1, 2)
RELEASE_DAYS = 28
KMH = 3.6
B = "Vehicle.Powertrain.TractionBattery"
C = B + ".Charging"
PORT = C + ".ChargingPort.AnyPosition"
DOORS = ("Row1.DriverSide", "Row1.PassengerSide", "Row2.DriverSide", "Row2.PassengerSide")
WHEELS = ("Row1.Wheel.Left", "Row1.Wheel.Right", "Row2.Wheel.Left", "Row2.Wheel.Right")


@dataclass(frozen=True)
class Fault:
    """A trouble code the simulator can raise, the unit that reports it, its lamp and what it switches off."""

    code: str
    ecu: str
    lamp: str | None
    lamp_state: str = "ON"
    mil: bool = False
    errors: tuple[str, ...] = ()


FAULTS = (
    Fault("C0750", "TPMS", "TirePressure", "FLASHING"),
    Fault(
        "C0035",
        "ESP",
        "ABS",
        errors=(
            "Vehicle.ADAS.ABS.IsError",
            "Vehicle.ADAS.ESC.IsError",
            "Vehicle.ADAS.TCS.IsError",
            "Vehicle.ADAS.EBD.IsError",
        ),
    ),
    Fault("P0562", "VCU", "LowVoltageCharging"),
    Fault("U0155", "GW", None),
    Fault("P0A93", "DI", "DriveUnitTemperature", mil=True),
    Fault("P0AA6", "BMS", "HighVoltageSystem", mil=True),
)
FAULT_WEIGHTS = (0.25, 0.15, 0.2, 0.2, 0.1, 0.1)
PENDING_S = 60  # a fault is confirmed after a minute of being seen


def code(path: str, value: str) -> int:
    """The simulator's small-int code of an enumeration value (its index in the catalogue's allowed values)."""
    return ALLOWED_VALUES[path].index(value)


def _codes(path: str, values: np.ndarray) -> np.ndarray:
    allowed = ALLOWED_VALUES[path]
    return np.array([allowed.index(v) for v in values], dtype=np.int8) if len(values) else np.zeros(0, np.int8)


def _runs(t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run number of each 1 Hz row (a run is one wake of the car) and the row's index within its run."""
    start = np.r_[True, np.diff(t_ms) > 1000]
    run = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    return run, np.arange(len(t_ms)) - first[run]


def release_name(k: int) -> str:
    """The name of the ``k``-th four-weekly software release (``year.week.patch``)."""
    d = RELEASE_EPOCH + dt.timedelta(days=RELEASE_DAYS * k)
    return f"{d.year}.{d.isocalendar().week}.{1 + k % 4}"


def _software(s: dict[str, np.ndarray], day: dt.date, vin_int: int, run: np.ndarray) -> dict[str, np.ndarray]:
    """Version, update state and progress: release k is out on its day and installed ``delay`` days later."""
    n = len(run)
    delay = 1 + vin_int % 6
    k_today = ((day - RELEASE_EPOCH).days - delay) // RELEASE_DAYS  # newest release installed by the end of today
    install_day = RELEASE_EPOCH + dt.timedelta(days=RELEASE_DAYS * k_today + delay)
    out_k = ((day - RELEASE_EPOCH).days) // RELEASE_DAYS  # newest release published by today
    version = np.full(n, release_name(k_today), dtype=object)
    state = np.full(n, "NONE", dtype=object)
    target = np.full(n, "", dtype=object)
    progress = np.zeros(n)
    if install_day == day and n:
        moved = np.flatnonzero(s["driving"].astype(bool) | (s["v"] > 0.05))
        parked_from = int(moved[-1]) + 1 if len(moved) else 0
        last = (run == run[-1]) & (np.arange(n) >= min(parked_from, n - 1))  # installs wait until parked
        first = (run == run[0]) & ~last
        version[:] = release_name(k_today - 1)
        target[:] = release_name(k_today)
        state[:] = "SCHEDULED"
        if run[-1] != run[0]:
            i_first = np.flatnonzero(first)
            state[first] = "DOWNLOADING"
            progress[first] = np.floor(100 * (i_first - i_first[0] + 1) / len(i_first) / 10) * 10
        i_last = np.flatnonzero(last)
        state[last] = "INSTALLING"
        progress[last] = np.floor(100 * (i_last - i_last[0]) / max(len(i_last) - 1, 1) / 10) * 10
        state[i_last[-1]] = "SUCCEEDED"
        version[i_last[-1]] = release_name(k_today)
        target[i_last[-1]] = ""
        progress[i_last[-1]] = 100
    elif out_k > k_today:  # published, not yet installed: the car shows it as available
        state[:] = "AVAILABLE"
        target[:] = release_name(out_k)
    return {
        "Vehicle.CarVault.Software.Version": version,
        "Vehicle.CarVault.Software.UpdateState": _codes("Vehicle.CarVault.Software.UpdateState", state),
        "Vehicle.CarVault.Software.UpdateVersion": target,
        "Vehicle.CarVault.Software.UpdateProgress": progress,
    }


def _faults(s: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Fault | None, dict]:
    """The day's trouble code, if any: (status per row: 0 none, 1 pending, 2 active, 3 stored), count, fault, JSON."""
    t = s["t_ms"].astype(np.int64)
    n = len(t)
    status = np.zeros(n, dtype=np.int8)
    values = np.full(n, "[]", dtype=object)
    if n < 600 or rng.random() >= 0.3:
        return status, values, None, {}
    fault = FAULTS[int(rng.choice(len(FAULTS), p=FAULT_WEIGHTS))]
    i0 = int(rng.integers(int(0.1 * n), int(0.7 * n)))
    active_s = int(rng.integers(5 * 60, 40 * 60))
    i1 = min(i0 + PENDING_S, n - 1)
    i2 = min(i1 + active_s, n - 1)
    status[i0:i1] = 1
    status[i1:i2] = 2
    status[i2:] = 3
    names = {1: "pending", 2: "active", 3: "stored"}
    for lo, hi, st, last in ((i0, i1, 1, i0), (i1, i2, 2, i1), (i2, n, 3, i2 - 1)):
        if hi > lo:
            rec = DtcRecord(fault.code, names[st], fault.ecu, int(t[i0]), int(t[max(last, i0)]))
            values[lo:hi] = encode_dtcs([rec])
    return status, values, fault, {"i0": i0}


def signals(
    s: dict[str, np.ndarray],
    spec: Any,
    rng: np.random.Generator,
    *,
    vin_int: int,
    day: dt.date,
    midnight_ms: int,
    dark: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every equipment signal at the whole-second rows ``s`` (floats: NaN for no value; enums: small-int codes)."""
    n = len(s["v"])
    t = s["t_ms"].astype(np.int64)
    run, in_run = _runs(t)
    v, amb, occ = s["v"], s["amb"], s["occ"].astype(bool)
    pax = s["pax"].astype(bool)
    gear_d, driving, charging = s["gear_d"].astype(bool), s["driving"].astype(bool), s["charging"].astype(bool)
    plug = s["plug"].astype(bool)
    lv = s["lv"]
    ready = lv == LV_ON
    postcrash = s["postcrash"].astype(bool)
    falses, trues = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    odo_km = s["odo"] / 1000.0
    days_in = (day - dt.date(2020, 1, 1)).days
    out: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- weather: rain and light
    rain_h = (rng.uniform(6, 20), rng.uniform(0.5, 4)) if rng.random() < 0.3 else (0.0, 0.0)
    local_h = (t - midnight_ms) / 3.6e6
    raining = (local_h >= rain_h[0]) & (local_h < rain_h[0] + rain_h[1])
    intensity = np.where(raining, 30 + 40 * np.abs(np.sin(local_h * 5.0)), 0.0)
    out["Vehicle.Body.Raindetection.Intensity"] = np.round(intensity / 10) * 10
    out["Vehicle.Exterior.Humidity"] = np.round(np.where(raining, 95.0, 65.0 + 10 * np.sin(local_h / 24 * 2 * np.pi)))
    out["Vehicle.Exterior.LightIntensity"] = np.where(dark, 0.0, 80.0)

    # ---------------------------------------------------------------- locks, doors, windows, mirrors
    locked = ((gear_d & driving) | (gear_d & ready) | ((lv == LV_LOCK) | (lv == LV_OFF)) & ~occ) & ~postcrash
    for pos in DOORS:
        out[f"Vehicle.Cabin.Door.{pos}.IsLocked"] = locked
    warm = amb > 27.0
    airing = driving & warm & (in_run < 90)
    out["Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"] = np.where(airing, 15.0, 0.0)
    out["Vehicle.Cabin.Door.Row1.DriverSide.Window.IsOpen"] = airing
    for pos in DOORS[1:]:
        out[f"Vehicle.Cabin.Door.{pos}.Window.Position"] = np.zeros(n)
        out[f"Vehicle.Cabin.Door.{pos}.Window.IsOpen"] = falses
    for pos in DOORS[2:]:
        out[f"Vehicle.Cabin.Door.{pos}.IsChildLockActive"] = trues
    out["Vehicle.Cabin.IsWindowChildLockEngaged"] = falses
    out["Vehicle.Body.Hood.IsOpen"] = falses
    boot = s["door"].astype(bool) & (in_run < 60) & ~driving & (run % 2 == 1)  # a bag in the boot on some wakes
    out["Vehicle.Body.Trunk.Rear.IsOpen"] = boot
    out["Vehicle.Body.Trunk.Rear.Position"] = np.where(boot, 100.0, 0.0)
    out["Vehicle.Body.Trunk.Rear.IsLocked"] = locked
    out["Vehicle.Body.Trunk.Front.IsOpen"] = falses
    out["Vehicle.Body.Trunk.Front.IsLocked"] = locked
    out["Vehicle.Body.Horn.IsActive"] = postcrash & (in_run < 3)
    out["Vehicle.CarVault.Security.IsAlarmArmed"] = locked & ~occ
    folded = locked & ~occ
    tilt, pan = float(vin_int % 21 - 10), float(vin_int // 21 % 21 - 10)
    for side in ("DriverSide", "PassengerSide"):
        out[f"Vehicle.Body.Mirrors.{side}.IsFolded"] = folded
        out[f"Vehicle.Body.Mirrors.{side}.IsHeatingOn"] = raining & ready & (amb < 15)
        out[f"Vehicle.Body.Mirrors.{side}.Tilt"] = np.full(n, tilt)
        out[f"Vehicle.Body.Mirrors.{side}.Pan"] = np.full(n, pan if side == "DriverSide" else -pan)
    out["Vehicle.Cabin.Sunroof.Position"] = np.zeros(n)
    out["Vehicle.Cabin.Sunroof.Shade.Position"] = np.where(occ & ~dark & (amb < 30), 100.0, 0.0)
    out["Vehicle.Cabin.Light.IsDomeOn"] = s["door"].astype(bool) & dark

    # ---------------------------------------------------------------- wipers, washer, lights
    wipe = raining & (ready | driving)
    for end in ("Front", "Rear"):
        wiping = np.where(wipe, "RAIN_SENSOR" if end == "Front" else "INTERVAL", "OFF")
        out[f"Vehicle.Body.Windshield.{end}.Wiping.Mode"] = _codes(f"Vehicle.Body.Windshield.{end}.Wiping.Mode", wiping)
        out[f"Vehicle.Body.Windshield.{end}.Wiping.System.IsWiping"] = wipe & (v > 0.5)
        out[f"Vehicle.Body.Windshield.{end}.Wiping.System.IsWiperError"] = falses
        out[f"Vehicle.Body.Windshield.{end}.IsHeatingOn"] = wipe & (amb < 5)
    wiper_wear = float((days_in % 365) / 365 * 100)
    out["Vehicle.Body.Windshield.Front.Wiping.WiperWear"] = np.full(n, np.floor(wiper_wear))
    out["Vehicle.Body.Windshield.Front.Wiping.IsWipersWorn"] = np.full(n, wiper_wear >= 90)
    washer = max(100.0 - (days_in % 60) * 1.6, 0.0)
    out["Vehicle.Body.Windshield.Front.WasherFluid.Level"] = np.full(n, np.floor(washer))
    washer_low = np.full(n, washer < 15)
    out["Vehicle.Body.Windshield.Front.WasherFluid.IsLevelLow"] = washer_low
    lights_on = ready | driving
    out["Vehicle.Body.Lights.LightSwitch"] = np.full(n, code("Vehicle.Body.Lights.LightSwitch", "AUTO"), np.int8)
    out["Vehicle.Body.Lights.IsHighBeamSwitchOn"] = falses
    out["Vehicle.Body.Lights.Backup.IsOn"] = falses  # the simulated drives never reverse
    out["Vehicle.Body.Lights.Fog.Rear.IsOn"] = falses
    out["Vehicle.Body.Lights.LicensePlate.IsOn"] = dark & lights_on
    for p in (
        "Beam.Low",
        "Beam.High",
        "Running",
        "Backup",
        "Parking",
        "Fog.Front",
        "Fog.Rear",
        "LicensePlate",
        "Brake",
        "Hazard",
        "DirectionIndicator.Left",
        "DirectionIndicator.Right",
    ):
        out[f"Vehicle.Body.Lights.{p}.IsDefect"] = falses

    # ---------------------------------------------------------------- cabin climate, seats, occupancy
    hvac = s["hvac"].astype(bool)
    setp = float(spec.hvac_setpoint_c)
    for st in ("Row1.Driver", "Row1.Passenger", "Row2.Driver", "Row2.Passenger"):
        out[f"Vehicle.Cabin.HVAC.Station.{st}.Temperature"] = np.full(n, setp)
    fan = np.where(hvac, np.clip(np.round((20 + 12 * np.abs(s["t_cabin"] - setp)) / 10) * 10, 10, 100), 0.0)
    out["Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"] = fan
    out["Vehicle.Cabin.HVAC.Station.Row1.Passenger.FanSpeed"] = np.where(pax, fan, 0.0)
    distribution = np.where(amb < setp - 5, "DOWN", "MIDDLE")
    for st in ("Row1.Driver", "Row1.Passenger"):
        path = f"Vehicle.Cabin.HVAC.Station.{st}.AirDistribution"
        out[path] = _codes(path, distribution)
    out["Vehicle.Cabin.HVAC.IsRecirculationActive"] = hvac & (amb > 30)
    out["Vehicle.Cabin.HVAC.IsAirConditioningActive"] = hvac & (amb > setp - 2)
    demist = hvac & raining & (amb < 22)
    out["Vehicle.Cabin.HVAC.IsFrontDefrosterActive"] = demist
    out["Vehicle.Cabin.HVAC.IsRearDefrosterActive"] = demist
    seat = np.where(amb < 14, 60.0, np.where(amb > 28, -50.0, 0.0))
    out["Vehicle.Cabin.Seat.Row1.DriverSide.HeatingCooling"] = np.where(occ, seat, 0.0)
    out["Vehicle.Cabin.Seat.Row1.PassengerSide.HeatingCooling"] = np.where(pax, seat, 0.0)
    out["Vehicle.Cabin.Seat.Row2.DriverSide.HeatingCooling"] = np.zeros(n)
    out["Vehicle.Cabin.Seat.Row2.PassengerSide.HeatingCooling"] = np.zeros(n)
    out["Vehicle.Cabin.Seat.Row2.Middle.HeatingCooling"] = np.zeros(n)
    out["Vehicle.Chassis.SteeringWheel.HeatingCooling"] = np.where(occ & (amb < 10), 50.0, 0.0)
    occupancy = "Vehicle.Cabin.Seat.Row1.DriverSide.OccupancyStatus"
    out[occupancy] = _codes(occupancy, np.where(occ, "OCCUPIED", "EMPTY"))
    p_occ = "Vehicle.Cabin.Seat.Row1.PassengerSide.OccupancyStatus"
    out[p_occ] = _codes(p_occ, np.where(pax, "OCCUPIED", "EMPTY"))
    for pos in ("Row2.DriverSide", "Row2.Middle", "Row2.PassengerSide"):
        path = f"Vehicle.Cabin.Seat.{pos}.OccupancyStatus"
        out[path] = np.full(n, code(path, "EMPTY"), np.int8)
        out[f"Vehicle.Cabin.Seat.{pos}.IsBelted"] = falses
    out["Vehicle.Cabin.Seat.Row1.PassengerSide.Airbag.IsEnabled"] = trues

    # ---------------------------------------------------------------- driver monitoring
    look = rng.normal(0, 1, n)
    out["Vehicle.Driver.IsEyesOnRoad"] = driving & (look > -1.6)
    out["Vehicle.Driver.IsHandsOnWheel"] = driving & ~(s["cruise"].astype(bool) & (look > 1.2))
    drive_h = np.cumsum(driving) / 3600.0
    out["Vehicle.Driver.FatigueLevel"] = np.where(occ, np.clip(np.round(8 + 12 * drive_h), 0, 100), 0.0)
    out["Vehicle.Driver.DistractionLevel"] = np.where(driving, np.clip(np.round(10 + 6 * look), 0, 100), 0.0)
    out["Vehicle.ADAS.DMS.IsEnabled"] = trues
    out["Vehicle.ADAS.DMS.IsWarning"] = driving & (look < -2.6)

    # ---------------------------------------------------------------- tyres, brakes, service
    leak_wheel = int(rng.integers(4)) if rng.random() < 0.05 else -1
    leak = np.clip(1.0 - 0.35 * (np.arange(n) / max(n - 1, 1)), 0.0, 1.0)
    tyre_factor = (s["t_tyre"] + 273.15) / 293.15
    any_low = falses.copy()
    for i, w in enumerate(WHEELS):
        cold = spec.tyre_cold_kpa[i] * (leak if i == leak_wheel else 1.0)
        pressure = cold * tyre_factor
        low = pressure < 0.8 * spec.tyre_cold_kpa[i]
        any_low |= low
        out[f"Vehicle.Chassis.Axle.{w}.Tire.Pressure"] = pressure
        out[f"Vehicle.Chassis.Axle.{w}.Tire.IsPressureLow"] = low
        out[f"Vehicle.Chassis.Axle.{w}.Tire.Temperature"] = s["t_tyre"] + 0.4 * (i < 2)
        life = 50_000.0 if i < 2 else 70_000.0
        wear = np.floor(np.mod(odo_km + 977.0 * i, life) / life * 100)
        out[f"Vehicle.Chassis.Axle.{w}.Brake.PadWear"] = wear
        out[f"Vehicle.Chassis.Axle.{w}.Brake.IsBrakesWorn"] = wear >= 85
    pads_worn = np.any([out[f"Vehicle.Chassis.Axle.{w}.Brake.IsBrakesWorn"] for w in WHEELS], axis=0)
    # Pads are replaced at 85 % wear: the distance left is the most-worn pad's share of its life still to go.
    pads_left = [
        0.85 * life - np.mod(odo_km + 977.0 * i, life)
        for i, life in enumerate((50_000.0, 50_000.0, 70_000.0, 70_000.0))
    ]
    out["Vehicle.CarVault.Service.DistanceToBrakeService"] = np.floor(np.min(pads_left, axis=0))
    out["Vehicle.Chassis.Axle.Row1.Wheel.Left.Brake.FluidLevel"] = np.floor(92 - np.mod(odo_km, 40_000) / 40_000 * 6)
    out["Vehicle.Chassis.Axle.Row1.Wheel.Left.Brake.IsFluidLevelLow"] = falses
    out["Vehicle.Chassis.Axle.Row1.SteeringAngle"] = np.degrees(np.arctan(spec.wheelbase_m * s["kappa"]))
    out["Vehicle.Chassis.ParkingBrake.IsAutoApplyEnabled"] = trues
    to_service_km = SERVICE_KM - np.mod(odo_km, SERVICE_KM)
    anniversary = vin_int % 365
    doy = day.timetuple().tm_yday - 1
    to_service_s = ((anniversary - doy) % 365) * 86_400.0 - (t - midnight_ms) / 1000.0
    to_service_s = np.where(to_service_s < 0, to_service_s + SERVICE_S, to_service_s)
    due = (to_service_km < 1_000) | (to_service_s < 30 * 86_400)
    out["Vehicle.Service.DistanceToService"] = np.floor(to_service_km)
    out["Vehicle.Service.TimeToService"] = np.floor(to_service_s / 86_400) * 86_400
    out["Vehicle.Service.IsServiceDue"] = due
    # Brake fluid is changed every two years, on the service anniversary of an even year.
    fluid_s = to_service_s + SERVICE_S * ((day.year + (anniversary < doy)) % 2)
    out["Vehicle.CarVault.Service.TimeToBrakeFluidChange"] = np.floor(fluid_s / 86_400) * 86_400

    # ---------------------------------------------------------------- ADAS states
    cruise = s["cruise"].astype(bool)
    level = "Vehicle.ADAS.ActiveAutonomyLevel"
    out[level] = _codes(level, np.where(cruise, "SAE_1", "SAE_0"))
    out["Vehicle.ADAS.SupportedAutonomyLevel"] = np.full(
        n, code("Vehicle.ADAS.SupportedAutonomyLevel", "SAE_2"), np.int8
    )
    for p in ("ABS.IsEnabled", "EBD.IsEnabled", "EBA.IsEnabled", "LaneDepartureDetection.IsEnabled"):
        out[f"Vehicle.ADAS.{p}"] = trues
    for p in ("TCS.IsError", "EBD.IsError", "EBA.IsError", "CruiseControl.IsError", "LaneDepartureDetection.IsError"):
        out[f"Vehicle.ADAS.{p}"] = falses
    out["Vehicle.ADAS.EBD.IsEngaged"] = driving & (s["a"] < -3.0)
    out["Vehicle.ADAS.ESC.IsStrongCrossWindDetected"] = falses
    out["Vehicle.ADAS.ESC.RoadFriction.MostProbable"] = np.where(raining, 55.0, 85.0)
    out["Vehicle.ADAS.CruiseControl.IsAdaptive"] = trues
    out["Vehicle.ADAS.CruiseControl.AdaptiveDistanceSet"] = np.full(n, 40.0)
    for z in ("Front.Left", "Front.Right", "Rear.Center"):
        out[f"Vehicle.ADAS.ObstacleDetection.{z}.IsWarning"] = falses
    for z in ("Front.Center", "Rear.Left", "Rear.Right"):
        out[f"Vehicle.ADAS.ObstacleDetection.{z}.IsEnabled"] = trues
        out[f"Vehicle.ADAS.ObstacleDetection.{z}.IsError"] = falses
    for z in ("Rear.Left", "Rear.Right"):
        path = f"Vehicle.ADAS.ObstacleDetection.{z}.WarningType"
        out[path] = np.full(n, code(path, "UNDEFINED"), np.int8)
    gap_s = 1.8 + 0.5 * np.sin(np.arange(n) / 37.0)
    out["Vehicle.ADAS.ObstacleDetection.Front.Center.Distance"] = np.where(
        driving, np.clip(np.where(v > 0.5, v * gap_s, 4.0), 2.0, 250.0), 250.0
    )  # 250 m, the radar's reach: nothing ahead (parked, the radar sees no target)

    # ---------------------------------------------------------------- battery and charging
    out.update(_battery(s, spec, rng, run, in_run, plug, charging, ready, odo_km))
    out.update(_software(s, day, vin_int, run))

    # ---------------------------------------------------------------- powertrain and trip
    out["Vehicle.Powertrain.ElectricMotor.Power"] = np.round((s["f_trac"] - s["f_regen"]) * v / 1000.0)
    out["Vehicle.Powertrain.ElectricMotor.TimeInUse"] = np.round(odo_km / 38.0 + np.cumsum(driving) / 3600.0, 1)
    out["Vehicle.Powertrain.ElectricMotor.EngineCoolant.Temperature"] = s["t_motor"] - 5.0
    coolant = "Vehicle.Powertrain.ElectricMotor.EngineCoolant.Level"
    out[coolant] = np.full(n, code(coolant, "NORMAL"), np.int8)
    out["Vehicle.Powertrain.ElectricMotor.MaxPower"] = np.full(n, round(spec.motor_peak_kw))
    out["Vehicle.Powertrain.ElectricMotor.MaxTorque"] = np.full(n, round(spec.motor_max_nm))
    mode = "Vehicle.Powertrain.Transmission.PerformanceMode"
    out[mode] = np.full(n, code(mode, "ECONOMY" if spec.rated_wh_km < 150 else "NORMAL"), np.int8)
    out["Vehicle.Powertrain.Transmission.IsParkLockEngaged"] = ~gear_d
    drive_type = "Vehicle.Powertrain.Transmission.DriveType"
    out[drive_type] = np.full(n, code(drive_type, "REAR_WHEEL_DRIVE"), np.int8)
    out["Vehicle.Powertrain.Transmission.TravelledDistance"] = np.floor(odo_km * 10) / 10
    out["Vehicle.Powertrain.Type"] = np.full(n, code("Vehicle.Powertrain.Type", "ELECTRIC"), np.int8)
    out["Vehicle.LowVoltageBattery.CurrentCurrent"] = np.where(ready | charging, 6.0, -0.4) + 0.3 * rng.normal(0, 1, n)
    run_start_odo = s["odo"][np.flatnonzero(in_run == 0)][run]
    trip_m = np.floor(s["odo"] - run_start_odo)
    out["Vehicle.TraveledDistanceSinceStart"] = trip_m
    out["Vehicle.TripDuration"] = in_run.astype(np.float64)
    out["Vehicle.AverageSpeed"] = np.where(in_run > 0, trip_m / np.maximum(in_run, 1) * KMH, 0.0)
    out["Vehicle.IsBrokenDown"] = postcrash
    out["Vehicle.Connectivity.IsConnectivityAvailable"] = trues
    out["Vehicle.Trailer.IsConnected"] = falses
    out["Vehicle.CurrentLocation.VerticalAccuracy"] = np.full(n, 4.5)

    # ---------------------------------------------------------------- trouble codes and lamps
    status, dtcs, fault, _ = _faults(s, rng)
    active = status == 2
    out[DTC_SIGNAL] = dtcs
    out[DTC_COUNT_SIGNAL] = active.astype(np.float64)
    if fault is not None:
        for path in fault.errors:
            out[path] = active
    lamps: dict[str, np.ndarray] = {name: np.zeros(n, dtype=np.int8) for name in _lamp_names()}
    on, flash = code(LAMP_BRANCH + "ABS", "ON"), code(LAMP_BRANCH + "ABS", "FLASHING")
    if fault is not None and fault.lamp is not None:
        lamps[fault.lamp][active] = flash if fault.lamp_state == "FLASHING" else on
        if fault.mil:
            lamps["MalfunctionIndicator"][active] = on
        if fault.lamp == "ABS":
            lamps["StabilityControl"][active] = on
    tcs = driving & (s["a"] > 3.2) & (v < 8.0)
    lamps["StabilityControl"] = np.where(tcs & (lamps["StabilityControl"] == 0), flash, lamps["StabilityControl"])
    lamps["TirePressure"] = np.where(any_low, on, lamps["TirePressure"])
    lamps["BrakePadWear"][pads_worn] = on
    lamps["WasherFluid"][washer_low] = on
    lamps["ServiceDue"][due] = on
    lamps["LowCharge"][np.clip((s["soc"] - 3.0) / 0.94, 0, 100) < 10] = on
    lamps["SeatBelt"][driving & ~s["belt_d"].astype(bool)] = flash
    lamps["SeatBelt"][ready & ~driving & ~s["belt_d"].astype(bool) & occ] = on
    lamps["DoorAjar"][s["door"].astype(bool) & ready] = on
    lamps["HighVoltageSystem"][postcrash] = on
    lamps["Airbag"][postcrash] = on
    for name, arr in lamps.items():
        # Lamps are lit only while the instrument cluster is on (ready or driving, or the crash scene).
        out[LAMP_BRANCH + name] = np.where(ready | driving | postcrash, arr, 0).astype(np.int8)
    return out


def _lamp_names() -> list[str]:
    return [p[len(LAMP_BRANCH) :] for p in ALLOWED_VALUES if p.startswith(LAMP_BRANCH)]


def _battery(
    s: dict[str, np.ndarray],
    spec: Any,
    rng: np.random.Generator,
    run: np.ndarray,
    in_run: np.ndarray,
    plug: np.ndarray,
    charging: np.ndarray,
    ready: np.ndarray,
    odo_km: np.ndarray,
) -> dict[str, np.ndarray]:
    """Cells, capacities, energy counters, the charge port and the charging session."""
    n = len(run)
    out: dict[str, np.ndarray] = {}
    i = s["i_batt"]
    spread = 0.8 + 0.004 * np.abs(i)
    out[B + ".Temperature.Min"] = s["t_batt"] - spread
    out[B + ".Temperature.Max"] = s["t_batt"] + spread
    cell = s["v_batt"] / spec.cells_series
    out[B + ".CellVoltage.Min"] = cell - 0.004 - 0.00002 * np.abs(i)
    out[B + ".CellVoltage.Max"] = cell + 0.003 + 0.00002 * np.abs(i)
    weak = 1 + int(spec.cells_series * 0.37)
    out[B + ".CellVoltage.IdMin"] = np.full(n, float(weak))
    out[B + ".CellVoltage.IdMax"] = np.full(n, float(spec.cells_series - 3))
    out[B + ".GrossCapacity"] = np.full(n, round(spec.pack_kwh))
    out[B + ".NetCapacity"] = np.full(n, round(spec.usable_kwh))
    out[B + ".NominalVoltage"] = np.full(n, round(spec.cells_series * 3.7))
    usable = spec.usable_kwh
    out[B + ".StateOfCharge.CurrentEnergy"] = np.clip(s["soc"], 0, 100) / 100 * usable
    drawn = np.cumsum(np.maximum(-s["p_into"], 0)) / 3.6e6  # kWh, 1 s rows
    added = np.cumsum(np.maximum(s["p_into"], 0)) / 3.6e6
    base_out = odo_km[0] * spec.rated_wh_km / 1000.0 if n else 0.0
    out[B + ".AccumulatedConsumedEnergy"] = np.floor((base_out + drawn) * 10) / 10
    out[B + ".AccumulatedChargedEnergy"] = np.floor((base_out * 1.05 + added) * 10) / 10
    soc_disp = np.clip((s["soc"] - 3.0) / 0.94, 0.0, 100.0)
    wh_km = spec.rated_wh_km + 4.0 * np.abs(s["amb"] - spec.hvac_setpoint_c)
    range_m = soc_disp / 100 * usable * 1e6 / wh_km
    out[B + ".Range"] = range_m
    out[B + ".TimeRemaining"] = range_m / (40 / KMH)
    contactors = ready | charging | s["driving"].astype(bool)
    out[B + ".IsPowerConnected"] = contactors
    out[B + ".IsGroundConnected"] = contactors
    out[B + ".PowerLoss"] = i**2 * spec.pack_ohm
    out[B + ".DCDC.Temperature"] = s["amb"] + np.where(contactors, 12.0, 2.0)
    dc = s["dc"].astype(bool)
    conditioning = dc & (s["t_batt"] < 30)
    out[B + ".BatteryConditioning.IsActive"] = conditioning
    mode = B + ".BatteryConditioning.RequestedMode"
    out[mode] = _codes(mode, np.where(conditioning, "FAST_CHARGING_PREPARATION", "INACTIVE"))
    ac = charging & ~dc
    w = s["charge_w"]
    volts = np.where(plug & ~dc, 220.0 + rng.normal(0, 0.6, n), 0.0)
    out[C + ".ChargeVoltage.Phase1"] = volts
    out[C + ".ChargeCurrent.Phase1"] = np.where(ac, w / 0.92 / np.maximum(volts, 1.0), 0.0)
    for ph in (2, 3):  # Chinese home wallboxes are single-phase
        out[f"{C}.ChargeVoltage.Phase{ph}"] = np.zeros(n)
        out[f"{C}.ChargeCurrent.Phase{ph}"] = np.zeros(n)
    out[C + ".MaximumChargingCurrent.DC"] = np.where(dc, 250.0, 0.0)
    out[C + ".MaximumChargingCurrent.Phase1"] = np.where(plug & ~dc, 32.0, 0.0)
    out[C + ".IsDischarging"] = np.zeros(n, dtype=bool)
    ss = C + ".StartStopCharging"
    out[ss] = _codes(ss, np.where(charging, "START", "STOP"))
    timer = C + ".Timer.Mode"
    out[timer] = np.full(n, code(timer, "INACTIVE"), np.int8)
    # Session figures: per wake with the cable in (a session is one plugged-in wake).
    session = plug
    energy = np.zeros(n)
    mean = np.zeros(n)
    peak = np.zeros(n)
    for r in np.unique(run[session]):
        rows = np.flatnonzero((run == r) & session)
        e = np.cumsum(w[rows]) / 3.6e6
        energy[rows] = e
        on = np.cumsum(w[rows] > 0)
        mean[rows] = np.where(on > 0, e * 3600.0 / np.maximum(on, 1), 0.0)
        peak[rows] = np.maximum.accumulate(w[rows]) / 1000.0
    out["Vehicle.CarVault.Charging.EnergyAdded"] = energy
    out[C + ".AveragePower"] = mean
    out[C + ".MaxPower"] = np.floor(peak * 10) / 10
    out["Vehicle.CarVault.Charging.Power"] = w / 1000.0
    out[C + ".ChargeRate"] = np.where(charging, w / np.maximum(wh_km, 1.0) * 1.0, 0.0)  # W / (Wh/km) = km/h
    limit = np.where(dc, min(spec.charge_limit_pct, 80), spec.charge_limit_pct)
    left_kwh = np.maximum(limit - soc_disp, 0.0) * 0.94 / 100 * usable
    out[C + ".TimeToComplete"] = np.where(charging, left_kwh * 3.6e6 / np.maximum(w, 1.0), 0.0)
    out[C + ".Temperature"] = s["amb"] + np.where(charging, 2.0 + w / 20_000.0, 0.0)
    out[C + ".PowerLoss"] = np.where(ac, 0.08 * w, 0.0)
    flap = plug | np.r_[plug[1:], False] | np.r_[False, plug[:-1]]  # opens a second before, closes a second after
    out[PORT + ".IsFlapOpen"] = flap
    out[PORT + ".IsChargingCableConnected"] = plug
    out[PORT + ".IsChargingCableLocked"] = plug & (charging | (in_run > 0))
    state = np.where(
        charging,
        "CHARGING",
        np.where(plug & (energy > 0), "COMPLETE", np.where(plug, "CONNECTED", "DISCONNECTED")),
    )
    out["Vehicle.CarVault.Charging.State"] = _codes("Vehicle.CarVault.Charging.State", state)
    return out
