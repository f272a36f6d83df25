"""Drives and charging sessions derived from telemetry, checked against the simulator's own record of its day."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from carvault.access.trips import IS_MOVING, ODOMETER, SPEED, TIMELINE_SIGNALS, detect
from carvault.store.telemetry import resample
from carvault.vehicle.simulator import SimulatedDay, fleet_vins, simulate_day

DAY = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def days() -> list[SimulatedDay]:
    vins = fleet_vins(3, 7)
    return [
        simulate_day(vin, 7 + i, DAY, incident=(i == 0), signals=list(TIMELINE_SIGNALS)) for i, vin in enumerate(vins)
    ]


def test_drives_and_charges_match_the_simulated_day(days: list[SimulatedDay]) -> None:
    for day in days:
        found = detect(day.table)
        assert len(found.drives) == len(day.drives), day.vin
        for got, want in zip(found.drives, day.drives, strict=True):
            assert abs(got.start_ms - want.start_ms) <= 1000
            assert abs(got.end_ms - want.end_ms) <= 1000
            assert got.distance_m == pytest.approx(want.distance_m, abs=2)
            assert got.energy_kwh == pytest.approx(want.energy_kwh, rel=0.05)
            assert got.soc_start == pytest.approx(want.soc_start, abs=0.2)
            assert got.soc_end == pytest.approx(want.soc_end, abs=0.2)
            assert 20 < got.top_speed_kmh < 200 and got.duration_s > 0
            assert got.start_lat is not None and 22 < got.start_lat < 23
        assert len(found.charges) == len(day.charges)
        for got_c, want_c in zip(found.charges, day.charges, strict=True):
            assert abs(got_c.start_ms - want_c.start_ms) <= 1000 and abs(got_c.end_ms - want_c.end_ms) <= 1000
            assert got_c.energy_kwh == pytest.approx(want_c.energy_kwh, rel=0.02)
            assert got_c.kind == want_c.kind
            assert got_c.max_power_kw == pytest.approx(want_c.max_power_kw, rel=0.1)


@pytest.mark.parametrize("interval_ms", [1000, 10_000])
def test_resampled_windows_give_the_same_drives(days: list[SimulatedDay], interval_ms: int) -> None:
    for day in days:
        raw = detect(day.table)
        coarse = detect(resample(day.table, interval_ms))
        assert len(coarse.drives) == len(raw.drives) and len(coarse.charges) == len(raw.charges)
        for a, b in zip(coarse.drives, raw.drives, strict=True):
            assert abs(a.start_ms - b.start_ms) <= interval_ms and abs(a.end_ms - b.end_ms) <= interval_ms
            assert a.distance_m == pytest.approx(b.distance_m, abs=2)
            assert a.energy_kwh == pytest.approx(b.energy_kwh, rel=0.02)


def _trace(speeds_kmh: list[float], t0: int = 1_700_000_000_000, step_ms: int = 1000) -> pa.Table:
    t = t0 + np.arange(len(speeds_kmh), dtype=np.int64) * step_ms
    return pa.table({"t": pa.array(t).cast(pa.timestamp("ms", tz="UTC")), SPEED: pa.array(speeds_kmh, pa.float32())})


def test_speed_alone_is_enough_and_short_stops_do_not_split_a_drive() -> None:
    # 10 min at 36 km/h, a 2-minute red light, 10 more minutes: one drive of 12 km.
    found = detect(_trace([36.0] * 600 + [0.0] * 120 + [36.0] * 600 + [0.0] * 10))
    assert len(found.drives) == 1
    d = found.drives[0]
    assert d.distance_m == pytest.approx(12_000, rel=0.01)
    assert d.duration_s == pytest.approx(1320, abs=1)
    assert d.energy_kwh is None and d.top_speed_kmh == pytest.approx(36.0)
    # A stop longer than max_stop_s ends the drive.
    assert len(detect(_trace([36.0] * 600 + [0.0] * 400 + [36.0] * 600 + [0.0])).drives) == 2


def test_a_sleep_between_two_drives_splits_them_and_nothing_is_counted_across_it() -> None:
    a = _trace([50.0] * 300 + [0.0] * 5)
    b = _trace([50.0] * 300 + [0.0] * 5, t0=1_700_000_000_000 + 400_000)  # 95 s later the car was asleep
    found = detect(pa.concat_tables([a, b]))
    assert len(found.drives) == 2
    assert all(d.distance_m == pytest.approx(300 * 50 / 3.6, rel=0.01) for d in found.drives)


def test_parking_manoeuvres_odometer_and_empty_windows() -> None:
    assert detect(_trace([5.0] * 20 + [0.0] * 5)).drives == []  # 28 m: not a drive
    assert detect(_trace([])).drives == [] and detect(_trace([])).charges == []
    t = 1_700_000_000_000 + np.arange(400, dtype=np.int64) * 1000
    odo = 10_000 + np.concatenate([np.zeros(50), np.arange(300) * 10.0, np.full(50, 2990.0)])
    table = pa.table(
        {
            "t": pa.array(t).cast(pa.timestamp("ms", tz="UTC")),
            IS_MOVING: pa.array(np.r_[np.zeros(50), np.ones(300), np.zeros(50)].astype(bool)),
            ODOMETER: pa.array(odo.astype(np.uint32)),
        }
    )
    (d,) = detect(table).drives
    assert d.distance_m == 2990 and d.start_ms == t[50] and d.end_ms == t[350]
    assert d.to_json()["kind"] == "drive" and d.to_json()["top_speed_kmh"] is None
