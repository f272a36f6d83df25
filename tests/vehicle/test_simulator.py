"""The simulated fleet: catalogue-exact tables whose signals agree with each other and with physics."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from carvault.errors import UnknownSignal
from carvault.protocol import decode_payload, encode_payload
from carvault.signals import catalogue
from carvault.vehicle.simulator import (
    AEB_PRESSURE_BAR,
    SCRIPTED_EVENTS,
    SimulatedDay,
    fleet_vins,
    is_valid_vin,
    simulate_day,
    vin_check_digit,
)

DAY = dt.date(2025, 7, 14)
VINS = fleet_vins(3, 1)
G = 9.80665


@pytest.fixture(scope="module")
def normal() -> SimulatedDay:
    return simulate_day(VINS[1], 11, DAY)


@pytest.fixture(scope="module")
def incident() -> SimulatedDay:
    return simulate_day(VINS[0], 7, DAY, incident=True)


@pytest.fixture(params=["normal", "incident"])
def day(request: pytest.FixtureRequest) -> SimulatedDay:
    return request.getfixturevalue(request.param)


def t_ms(d: SimulatedDay) -> np.ndarray:
    return d.table.column("t").cast(pa.int64()).to_numpy()


def col(d: SimulatedDay, path: str) -> np.ndarray:
    """A column as float64 (nulls become NaN; booleans 0/1)."""
    c = d.table.column(path)
    if pa.types.is_boolean(c.type):
        c = c.cast(pa.int8())
    return c.cast(pa.float64()).to_numpy(zero_copy_only=False)


def strings(d: SimulatedDay, path: str) -> np.ndarray:
    return np.array(d.table.column(path).to_pylist(), dtype=object)


def at(d: SimulatedDay, path: str, when_ms: int) -> float:
    return float(col(d, path)[int(np.searchsorted(t_ms(d), when_ms))])


def haversine_m(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    h = np.sin(np.diff(la) / 2) ** 2 + np.cos(la[1:]) * np.cos(la[:-1]) * np.sin(np.diff(lo) / 2) ** 2
    return 2 * 6_371_000 * np.arcsin(np.sqrt(h))


# --------------------------------------------------------------------------------- shape of the table
def test_deterministic_for_a_seed(normal: SimulatedDay) -> None:
    again = simulate_day(VINS[1], 11, DAY)
    assert again.table.equals(normal.table)
    assert again.events == normal.events and again.drives == normal.drives and again.charges == normal.charges
    other = simulate_day(VINS[1], 12, DAY)
    assert not other.table.equals(normal.table)
    assert other.vehicle == normal.vehicle  # the car is the VIN's, whatever the day


def test_schema_is_the_catalogue_schema(day: SimulatedDay) -> None:
    cat = catalogue()
    # Every signal but camera frames, and the combustion engine an electric car does not have.
    simulated = [
        p
        for p in cat.paths
        if cat[p].category != "exterior_camera" and not p.startswith("Vehicle.Powertrain.CombustionEngine.")
    ]
    assert day.table.schema == cat.arrow_schema(simulated)
    assert day.table.column_names[0] == "t"


def test_signal_subset_has_the_same_values(normal: SimulatedDay) -> None:
    subset = ["Vehicle.EDR.BrakeMasterCylinderPressure", "Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"]
    sub = simulate_day(VINS[1], 11, DAY, signals=subset)
    assert sub.table.schema == catalogue().arrow_schema(subset)
    for p in subset:
        assert sub.table.column(p).equals(normal.table.column(p))


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(UnknownSignal):
        simulate_day(VINS[1], 11, DAY, signals=["Vehicle.Speed", "Vehicle.WarpDrive.Speed"])


def test_time_axis(day: SimulatedDay) -> None:
    t = t_ms(day)
    steps = np.diff(t)
    assert np.all(steps > 0)
    # Awake: exactly 100 ms apart. Asleep: no rows for at least a few minutes.
    assert set(np.unique(steps[steps < 60_000]).tolist()) == {100}
    assert np.all(steps[steps != 100] >= 240_000)
    starts = np.concatenate(([t[0]], t[1:][steps != 100]))
    assert np.all(starts % 1000 == 0)
    local_midnight = int(dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=dt.UTC).timestamp() * 1000) - 8 * 3_600_000
    assert t[0] >= local_midnight + 5 * 3_600_000 and t[-1] < local_midnight + 24 * 3_600_000


def test_null_pattern_follows_the_rate(day: SimulatedDay) -> None:
    whole_second = t_ms(day) % 1000 == 0
    for sig in (s for s in catalogue() if s.path in day.table.column_names):
        valid = day.table.column(sig.path).is_valid().to_numpy(zero_copy_only=False)
        if sig.rate_hz == 10:
            assert valid.all(), sig.path
        elif sig.on_change:
            # Sent on whole seconds only: on each wake and on each change, a subset of the 1 Hz rows.
            assert not (valid & ~whole_second).any(), sig.path
            assert valid[0] and valid.sum() < whole_second.sum(), sig.path
        else:
            assert np.array_equal(valid, whole_second), sig.path


def test_values_in_range_finite_and_quantised(day: SimulatedDay) -> None:
    for sig in (s for s in catalogue() if s.path in day.table.column_names):
        c = day.table.column(sig.path).drop_null()
        if sig.allowed:
            assert pc.all(pc.is_in(c, value_set=pa.array(sig.allowed))).as_py(), sig.path
            continue
        if pa.types.is_boolean(c.type):
            continue
        if pa.types.is_string(c.type):  # free text: trouble codes (checked below) and software versions
            continue
        x = c.cast(pa.float64()).to_numpy()
        assert np.all(np.isfinite(x)), sig.path
        if sig.min is not None and sig.max is not None:
            assert x.min() >= sig.min and x.max() <= sig.max, (sig.path, x.min(), x.max())
        if sig.resolution:
            steps = x / sig.resolution
            # float32 columns hold the nearest float to each multiple of the resolution
            assert np.max(np.abs(steps - np.round(steps))) < 1e-3 * max(1.0, np.abs(steps).max() / 1e4), sig.path


def test_table_survives_the_wire_format(normal: SimulatedDay) -> None:
    t = t_ms(normal)
    first_drive = normal.drives[0].start_ms
    part = normal.table.filter(
        pc.and_(pc.greater_equal(pa.array(t), first_drive), pc.less(pa.array(t), first_drive + 60_000))
    )
    assert part.num_rows == 600
    assert decode_payload(encode_payload(part)).equals(part)


# ------------------------------------------------------------------------------------------- physics
def test_acceleration_is_dv_dt(day: SimulatedDay) -> None:
    t = t_ms(day)
    v = col(day, "Vehicle.Speed") / 3.6
    a = col(day, "Vehicle.Acceleration.Longitudinal")
    for d in day.drives:
        m = (t >= d.start_ms) & (t <= d.end_ms)
        err = a[m] - np.gradient(v[m], 0.1)
        assert abs(err.mean()) < 0.02 and np.sqrt(np.mean(err**2)) < 0.15


def test_turns_are_consistent(day: SimulatedDay) -> None:
    v = col(day, "Vehicle.Speed") / 3.6
    yaw = np.radians(col(day, "Vehicle.AngularVelocity.Yaw"))
    lat = col(day, "Vehicle.Acceleration.Lateral")
    steer = col(day, "Vehicle.Chassis.SteeringWheel.Angle")
    moving = v > 3
    err = lat[moving] - v[moving] * yaw[moving]
    assert np.sqrt(np.mean(err**2)) < 0.15
    assert np.percentile(np.abs(lat[moving]), 99) < 4.0  # turns are taken gently
    turning = moving & (np.abs(yaw) > np.radians(8))
    assert turning.sum() > 20
    assert np.mean(np.sign(steer[turning]) == np.sign(yaw[turning])) > 0.95  # left is positive for both


def test_motor_follows_the_wheels(day: SimulatedDay) -> None:
    v = col(day, "Vehicle.Speed") / 3.6
    rpm = col(day, "Vehicle.Powertrain.ElectricMotor.Speed")
    fast = v > 5
    ratio = rpm[fast] / v[fast]  # gear ratio / wheel circumference, a constant
    assert np.std(ratio) / np.mean(ratio) < 0.01
    assert np.all(rpm[v == 0] == 0)


def test_pedals_torque_and_brakes_agree(day: SimulatedDay) -> None:
    acc = col(day, "Vehicle.Chassis.Accelerator.PedalPosition")
    brake = col(day, "Vehicle.Chassis.Brake.PedalPosition")
    torque = col(day, "Vehicle.Powertrain.ElectricMotor.Torque")
    current = col(day, "Vehicle.Powertrain.TractionBattery.CurrentCurrent")
    pressure = col(day, "Vehicle.EDR.BrakeMasterCylinderPressure")
    lights = strings(day, "Vehicle.Body.Lights.Brake.IsActive")
    assert np.all(torque[acc >= 10] > 0)  # the pedal asks for traction
    assert np.mean(current[acc >= 20] < 0) > 0.99  # which the pack supplies
    assert np.all(pressure[brake > 0] > 0)
    assert np.all(lights[brake > 0] == "ACTIVE")
    assert np.all((acc == 0) | (brake == 0))  # never both feet


def test_soc_falls_driving_and_rises_charging(day: SimulatedDay) -> None:
    t = t_ms(day)
    soc = col(day, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current")
    for d in day.drives:
        assert d.soc_end < d.soc_start and d.energy_kwh > 0
        s = soc[(t >= d.start_ms) & (t <= d.end_ms)]
        s = s[~np.isnan(s)]
        assert s[-1] < s[0]
    assert len(day.charges) == 1
    c = day.charges[0]
    assert c.soc_end > c.soc_start + 5 and c.energy_kwh > 3
    m = (t >= c.start_ms) & (t <= c.end_ms) & (t % 1000 == 0)
    s = soc[m]
    assert np.all(np.diff(s) >= -0.011) and s[-1] > s[0]
    assert np.all(col(day, "Vehicle.Powertrain.TractionBattery.Charging.IsCharging")[m] == 1)
    ramped = (t >= c.start_ms + 60_000) & (t <= c.end_ms)  # once the charger has ramped up
    assert np.all(col(day, "Vehicle.Powertrain.TractionBattery.CurrentPower")[m & ramped] > 0)
    assert np.all(col(day, "Vehicle.Powertrain.TractionBattery.CurrentCurrent")[ramped] > 0)
    dc_amps = col(day, "Vehicle.Powertrain.TractionBattery.Charging.ChargeCurrent.DC")[m]
    assert np.all(dc_amps > 0) if c.kind == "DC" else np.all(dc_amps == 0)
    sec = t % 1000 == 0
    charging = col(day, "Vehicle.Powertrain.TractionBattery.Charging.IsCharging")[sec] == 1
    assert np.array_equal(charging, (t[sec] >= c.start_ms) & (t[sec] <= c.end_ms))


def test_odometer_counts_the_drives(day: SimulatedDay) -> None:
    odo = col(day, "Vehicle.TraveledDistance")
    odo = odo[~np.isnan(odo)]
    assert np.all(np.diff(odo) >= 0)
    assert odo[-1] - odo[0] == pytest.approx(sum(d.distance_m for d in day.drives), abs=2 * len(day.drives) + 2)


def test_odometer_keeps_growing_across_days() -> None:
    today = simulate_day(VINS[2], 5, DAY, signals=["Vehicle.TraveledDistance"])
    tomorrow = simulate_day(VINS[2], 6, DAY + dt.timedelta(days=1), signals=["Vehicle.TraveledDistance"])
    last = pc.max(today.table.column("Vehicle.TraveledDistance")).as_py()
    assert pc.min(tomorrow.table.column("Vehicle.TraveledDistance")).as_py() >= last


def test_positions_follow_the_speed(day: SimulatedDay) -> None:
    t = t_ms(day)
    sec = t % 1000 == 0
    lat, lon = col(day, "Vehicle.CurrentLocation.Latitude")[sec], col(day, "Vehicle.CurrentLocation.Longitude")[sec]
    assert lat.min() > 22.4 and lat.max() < 22.8 and lon.min() > 113.8 and lon.max() < 114.4  # Shenzhen
    heading = col(day, "Vehicle.CurrentLocation.Heading")[sec]
    assert np.all((heading >= 0) & (heading < 360))
    ts = t[sec]
    for d in day.drives:
        m = (ts >= d.start_ms) & (ts <= d.end_ms)
        assert haversine_m(lat[m], lon[m]).sum() == pytest.approx(d.distance_m, rel=0.03)
    if day.drives[-1].destination == "home":
        assert haversine_m(lat[[0, -1]], lon[[0, -1]])[0] < 100  # back where the day began


def test_heading_follows_the_track(normal: SimulatedDay) -> None:
    t = t_ms(normal)
    sec = t % 1000 == 0
    lat, lon = (
        col(normal, "Vehicle.CurrentLocation.Latitude")[sec],
        col(normal, "Vehicle.CurrentLocation.Longitude")[sec],
    )
    heading = col(normal, "Vehicle.CurrentLocation.Heading")[sec]
    v = col(normal, "Vehicle.Speed")[sec]
    east = np.diff(lon) * np.cos(np.radians(22.54))
    bearing = np.degrees(np.arctan2(east, np.diff(lat))) % 360
    fast = (v[:-1] > 40) & (v[1:] > 40)
    diff = (bearing[fast] - heading[:-1][fast] + 180) % 360 - 180
    assert np.median(np.abs(diff)) < 5


def test_driving_state(day: SimulatedDay) -> None:
    sec = t_ms(day) % 1000 == 0
    moving = col(day, "Vehicle.Speed")[sec] > 0
    assert np.array_equal(col(day, "Vehicle.IsMoving")[sec] == 1, moving)
    assert np.all(col(day, "Vehicle.Powertrain.Transmission.SelectedGear")[sec][moving] == 127)
    assert np.all(col(day, "Vehicle.Powertrain.Transmission.CurrentGear")[sec][moving] == 1)
    assert np.all(col(day, "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted")[sec][moving] == 1)
    assert np.all(strings(day, "Vehicle.LowVoltageSystemState")[sec][moving] == "ON")
    charging = col(day, "Vehicle.Powertrain.TractionBattery.Charging.IsCharging")[sec] == 1
    assert np.all(col(day, "Vehicle.Powertrain.Transmission.SelectedGear")[sec][charging] == 126)
    ign = col(day, "Vehicle.EDR.IgnitionCycle")[sec]
    assert np.all(np.diff(ign) >= 0) and ign[-1] - ign[0] == len(day.drives) - 1


# ------------------------------------------------------------------------------------------ incidents
def test_incident_events(incident: SimulatedDay) -> None:
    kinds = [e.kind for e in incident.events]
    assert kinds == list(SCRIPTED_EVENTS)
    ev = {e.kind: e for e in incident.events}
    last = incident.drives[-1]
    assert all(last.start_ms < e.t_ms <= last.end_ms for e in incident.events)
    assert ev["hard_braking"].t_ms < ev["abs"].t_ms < ev["aeb"].t_ms < ev["crash"].t_ms
    assert ev["crash"].t_ms - ev["hard_braking"].t_ms < 10_000


def test_hard_braking_and_abs(incident: SimulatedDay) -> None:
    ev = {e.kind: e for e in incident.events}
    t = t_ms(incident)
    assert at(incident, "Vehicle.Acceleration.Longitudinal", ev["hard_braking"].t_ms) <= -0.5 * G
    assert at(incident, "Vehicle.Chassis.Brake.PedalPosition", ev["hard_braking"].t_ms) > 30
    assert at(incident, "Vehicle.Chassis.Accelerator.PedalPosition", ev["hard_braking"].t_ms) == 0
    abs_on = col(incident, "Vehicle.ADAS.ABS.IsEngaged") == 1
    assert at(incident, "Vehicle.ADAS.ABS.IsEngaged", ev["abs"].t_ms) == 1
    assert 1.0 <= abs_on.sum() * 0.1 <= 2.0
    braking = (t >= ev["hard_braking"].t_ms) & (t < ev["crash"].t_ms)
    assert np.all(col(incident, "Vehicle.Acceleration.Longitudinal")[abs_on] < -0.5 * G)
    assert np.all(abs_on <= braking)


def test_aeb_raises_master_cylinder_pressure(incident: SimulatedDay) -> None:
    ev = {e.kind: e for e in incident.events}
    aeb, crash = ev["aeb"].t_ms, ev["crash"].t_ms
    assert crash - aeb == 1000  # the last second
    p = "Vehicle.EDR.BrakeMasterCylinderPressure"
    assert [at(incident, p, aeb), at(incident, p, aeb + 500), at(incident, p, crash)] == pytest.approx(
        list(AEB_PRESSURE_BAR), abs=0.05
    )
    t = t_ms(incident)
    window = (t >= aeb) & (t <= crash)
    assert np.all(np.diff(col(incident, p)[window]) > 0)
    assert np.all(col(incident, "Vehicle.EDR.AEB.IsEngaged")[window] == 1)
    assert at(incident, "Vehicle.EDR.AEB.IsEngaged", aeb - 100) == 0
    assert np.all(strings(incident, "Vehicle.Body.Lights.Brake.IsActive")[window] == "ACTIVE")


def test_crash(incident: SimulatedDay) -> None:
    crash = next(e for e in incident.events if e.kind == "crash").t_ms
    t = t_ms(incident)
    dv = col(incident, "Vehicle.EDR.DeltaV.Longitudinal")
    assert np.all(dv[t <= crash] == 0)
    assert abs(at(incident, "Vehicle.EDR.DeltaV.Longitudinal", crash + 100)) >= 8  # GB 39732: 8 km/h in 150 ms
    airbag = col(incident, "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed")
    assert np.all(airbag[t <= crash] == 0) and np.all(airbag[t > crash] == 1)
    assert np.all(col(incident, "Vehicle.Speed")[t >= crash + 200] == 0)
    assert at(incident, "Vehicle.Speed", crash) > 25
    assert at(incident, "Vehicle.Acceleration.Longitudinal", crash + 100) < -30
    hazard = col(incident, "Vehicle.Body.Lights.Hazard.IsSignaling")
    assert np.nanmax(hazard[t > crash]) == 1 and np.nanmax(hazard[t <= crash]) == 0
    assert incident.drives[-1].end_ms < crash + 3000 and t[-1] - crash < 200_000  # the day's driving ends


def test_ordinary_day_has_no_incident(normal: SimulatedDay) -> None:
    assert {e.kind for e in normal.events} <= {"hard_braking"}
    for p in (
        "Vehicle.ADAS.ABS.IsEngaged",
        "Vehicle.EDR.AEB.IsEngaged",
        "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed",
        "Vehicle.EDR.DeltaV.Longitudinal",
    ):
        assert np.all(col(normal, p) == 0), p


def test_ordinary_hard_braking_is_flagged() -> None:
    days = [simulate_day(VINS[i % 3], 100 + i, DAY) for i in range(6)]
    hard = [(d, e) for d in days for e in d.events if e.kind == "hard_braking"]
    assert hard, "no ordinary hard braking in six days"
    for d, e in hard:
        assert at(d, "Vehicle.Acceleration.Longitudinal", e.t_ms) <= -0.5 * G
        assert at(d, "Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected", e.t_ms) == 1
        assert at(d, "Vehicle.EDR.BrakeMasterCylinderPressure", e.t_ms) > 20


# ------------------------------------------------------------------------------------------- the fleet
def test_fleet_vins() -> None:
    vins = fleet_vins(50, 3)
    assert vins == fleet_vins(50, 3) and vins != fleet_vins(50, 4)
    assert len(set(vins)) == 50
    for v in vins:
        assert len(v) == 17 and v.startswith("LRW") and v.isascii() and v.isalnum() and v == v.upper()
        assert not set(v) & set("IOQ")
        assert is_valid_vin(v)
    assert vin_check_digit("1M8GDM9AXKP042788") == "X"  # the worked example of 49 CFR 565
    assert not is_valid_vin("1M8GDM9A1KP042788")


def test_a_fleet_day_is_fast() -> None:
    t0 = time.perf_counter()
    days = [simulate_day(v, 40 + i, DAY, incident=(i == 0)) for i, v in enumerate(VINS)]
    assert time.perf_counter() - t0 < 10.0
    assert all(d.samples > 100_000 for d in days)
    assert len({(d.vehicle.home_xy) for d in days}) == 3  # every car has its own home
