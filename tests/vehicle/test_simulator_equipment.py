"""The whole car in the simulator: body, locks, charge port, wear, service, trouble codes and lamps agree with
the motion and energy the simulator models, and on-change signals stay sparse."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from carvault.dtc import DTC_COUNT_SIGNAL, DTC_SIGNAL, LAMP_BRANCH, parse_dtcs
from carvault.protocol import encode_payload
from carvault.signals import catalogue
from carvault.vehicle.agent import without_empty_columns
from carvault.vehicle.equipment import FAULTS, SERVICE_KM, release_name
from carvault.vehicle.simulator import SimulatedDay, fleet_vins, simulate_day

DAY = dt.date(2025, 7, 14)
VINS = fleet_vins(3, 5)
PORT = "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition."
DOORS = ("Row1.DriverSide", "Row1.PassengerSide", "Row2.DriverSide", "Row2.PassengerSide")


@pytest.fixture(scope="module")
def day() -> SimulatedDay:
    return simulate_day(VINS[0], 3, DAY)


@pytest.fixture(scope="module")
def faulty() -> SimulatedDay:
    """The first simulated day of the fleet with a trouble code (about one day in three has one)."""
    for i in range(40):
        d = simulate_day(VINS[i % 3], 100 + i, DAY + dt.timedelta(days=i))
        s = seconds(d)
        active = np.array(['"active"' in (v or "") for v in held(s, DTC_SIGNAL)])
        ready = s.column("Vehicle.LowVoltageSystemState").to_numpy(zero_copy_only=False) == "ON"
        if (active & ready).any():  # confirmed while the instrument cluster was on, so its lamp shows
            return d
    pytest.fail("no simulated day in 40 had a trouble code confirmed while the car was on")


def seconds(d: SimulatedDay) -> pa.Table:
    """The whole-second rows, where every 1 Hz and on-change signal lives."""
    t = d.table.column("t").cast(pa.int64()).to_numpy()
    return d.table.take(pa.array(np.flatnonzero(t % 1000 == 0)))


def held(t: pa.Table, path: str) -> np.ndarray:
    """An on-change column with each value held until the next one (what a dashboard shows)."""
    values = t.column(path).to_pylist()
    out, last = [], None
    for v in values:
        last = v if v is not None else last
        out.append(last)
    return np.array(out, dtype=object)


def test_every_signal_of_the_car_has_values(day: SimulatedDay) -> None:
    cat = catalogue()
    simulated = [s for s in cat if s.category != "exterior_camera" and ".CombustionEngine." not in s.path]
    assert len(simulated) >= 250
    empty = [s.path for s in simulated if day.table.column(s.path).null_count == day.table.num_rows]
    assert not empty


def test_doors_open_only_at_a_standstill_and_lock_while_driving(day: SimulatedDay) -> None:
    s = seconds(day)
    speed = s.column("Vehicle.Speed").to_numpy()
    for pos in DOORS:
        opened = s.column(f"Vehicle.Cabin.Door.{pos}.IsOpen").to_numpy(zero_copy_only=False)
        assert not (opened & (speed > 0)).any(), pos
        locked = held(s, f"Vehicle.Cabin.Door.{pos}.IsLocked").astype(bool)
        assert locked[speed > 5].all(), pos
        assert not (locked & opened).any(), pos  # a locked door is a shut one
    assert held(s, "Vehicle.Body.Mirrors.DriverSide.IsFolded").astype(bool)[speed > 5].sum() == 0


def test_charge_port_is_open_only_around_charging(day: SimulatedDay) -> None:
    s = seconds(day)
    charging = s.column("Vehicle.Powertrain.TractionBattery.Charging.IsCharging").to_numpy(zero_copy_only=False)
    assert charging.any(), "the day has a charging session"
    flap = held(s, PORT + "IsFlapOpen").astype(bool)
    cable = held(s, PORT + "IsChargingCableConnected").astype(bool)
    speed = s.column("Vehicle.Speed").to_numpy()
    assert flap[charging].all() and cable[charging].all()
    assert not (flap & (speed > 0)).any() and not (cable & ~flap).any()
    state = held(s, "Vehicle.CarVault.Charging.State")
    assert set(state[charging]) == {"CHARGING"} and set(state[~flap]) == {"DISCONNECTED"}
    energy = s.column("Vehicle.CarVault.Charging.EnergyAdded").to_numpy(zero_copy_only=False)
    assert np.nanmax(energy) == pytest.approx(sum(c.energy_kwh for c in day.charges), rel=0.15)


def test_service_distance_falls_with_the_odometer(day: SimulatedDay) -> None:
    s = seconds(day)
    odo_km = s.column("Vehicle.TraveledDistance").to_numpy() / 1000.0
    left = held(s, "Vehicle.Service.DistanceToService").astype(float)
    phase = np.mod(odo_km + left, SERVICE_KM)
    # Whole kilometres: what is left plus what was driven stays a multiple of the interval.
    assert np.minimum(phase, SERVICE_KM - phase).max() <= 2.0
    assert left[-1] < left[0]
    due = held(s, "Vehicle.Service.IsServiceDue").astype(bool)
    days_left = held(s, "Vehicle.Service.TimeToService").astype(float) / 86_400
    assert np.array_equal(due, (left < 1_000) | (days_left < 30))
    brakes = held(s, "Vehicle.CarVault.Service.DistanceToBrakeService").astype(float)
    assert brakes[-1] < brakes[0] and np.all(np.diff(brakes) <= 0)  # pads wear as the car drives
    fluid = held(s, "Vehicle.CarVault.Service.TimeToBrakeFluidChange").astype(float)
    assert fluid.min() >= 0 and fluid.max() <= 2 * 365 * 86_400 and np.ptp(fluid) <= 86_400


def test_tyre_pressure_follows_tyre_temperature(day: SimulatedDay) -> None:
    s = seconds(day)
    for w in ("Row1.Wheel.Left", "Row2.Wheel.Right"):
        p = s.column(f"Vehicle.Chassis.Axle.{w}.Tire.Pressure").to_numpy().astype(float)
        temp = s.column(f"Vehicle.Chassis.Axle.{w}.Tire.Temperature").to_numpy().astype(float)
        cold = p / (temp + 273.15)  # ideal gas at constant volume: p/T is the cold pressure's measure
        assert np.ptp(cold) / cold.mean() < 0.03, w
        assert np.corrcoef(p, temp)[0, 1] > 0.8, w


def test_on_change_signals_stay_sparse_and_cheap(day: SimulatedDay) -> None:
    cat = catalogue()
    rows_1hz = int(np.sum(day.table.column("t").cast(pa.int64()).to_numpy() % 1000 == 0))
    on_change = [s.path for s in cat if s.on_change and s.path in day.table.column_names]
    assert len(on_change) >= 150
    sent = sum(day.table.num_rows - day.table.column(p).null_count for p in on_change)
    assert sent < 0.02 * rows_1hz * len(on_change)  # under 2 % of what 1 Hz sampling would send
    # Bytes: a minute's batch leaves out the columns with nothing in them (the agent does), so the on-change
    # signals add little to it.
    minute = day.table.slice(day.table.num_rows // 2, 600)
    narrow = minute.select([n for n in minute.column_names if n not in on_change])
    sent_batch = without_empty_columns(minute)
    assert sent_batch.num_columns < minute.num_columns
    assert len(encode_payload(sent_batch)) < 1.3 * len(encode_payload(narrow))


def test_a_trouble_code_appears_confirms_and_clears_with_its_lamp(faulty: SimulatedDay) -> None:
    s = seconds(faulty)
    values = held(s, DTC_SIGNAL)
    records = [parse_dtcs(v) for v in values]
    statuses = [r[0].status if r else None for r in records]
    seen = [x for i, x in enumerate(statuses) if x and (i == 0 or statuses[i - 1] != x)]
    assert seen[:2] == ["pending", "active"] and seen[-1] == "stored"
    code = next(r[0].code for r in records if r)
    fault = next(f for f in FAULTS if f.code == code)
    first = next(r[0] for r in records if r)
    assert all(r[0].first_seen == first.first_seen for r in records if r)
    count = held(s, DTC_COUNT_SIGNAL).astype(float)
    active = np.array([x == "active" for x in statuses])
    assert np.array_equal(count == 1, active)
    if fault.lamp is not None:
        lamp = held(s, LAMP_BRANCH + fault.lamp)
        awake_active = active & (s.column("Vehicle.LowVoltageSystemState").to_numpy(zero_copy_only=False) == "ON")
        assert awake_active.any() and set(lamp[awake_active]) == {fault.lamp_state}
        stored = np.array([x == "stored" for x in statuses])
        if fault.lamp not in ("TirePressure", "StabilityControl"):  # lit by other conditions too
            assert "ON" not in set(lamp[stored])
    for path in fault.errors:
        assert held(s, path).astype(bool)[active].all(), path


def test_software_version_moves_on_only_by_an_update() -> None:
    # Over four weeks a car installs one release: the version changes once, at the end of an install.
    versions, states = [], set()
    for i in range(30):
        d = simulate_day(
            VINS[1],
            9,
            DAY + dt.timedelta(days=i),
            signals=[
                "Vehicle.Speed",
                "Vehicle.CarVault.Software.Version",
                "Vehicle.CarVault.Software.UpdateState",
            ],
        )
        s = seconds(d)
        versions += [v for v in held(s, "Vehicle.CarVault.Software.Version").tolist() if v]
        states |= {v for v in held(s, "Vehicle.CarVault.Software.UpdateState").tolist() if v}
        speed = s.column("Vehicle.Speed").to_numpy()
        installing = held(s, "Vehicle.CarVault.Software.UpdateState") == "INSTALLING"
        assert not (installing & (speed > 0)).any()  # installs happen parked
    changes = [b for a, b in zip(versions, versions[1:], strict=False) if a != b]
    assert len(changes) == 1 and changes[0] in {release_name(k) for k in range(40)}
    assert {"DOWNLOADING", "INSTALLING", "SUCCEEDED"} <= states
