"""The car's event recorder: hard braking from the accelerometer, or from speed when the car reports none."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from carvault.signals import catalogue
from carvault.vehicle import can_encode
from carvault.vehicle.can import import_can
from carvault.vehicle.edr import EventRecorder, G, detect, speed_acceleration
from carvault.vehicle.simulator import simulate_day

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "can"
RAV4_LOG = ASSETS / "comma2k19_rav4_2018-08-02_seg40_bus0.candump.log.gz"
RAV4_DBC = ASSETS / "toyota_new_mc_pt_generated.dbc"
SPEED = "Vehicle.Speed"
ACC = "Vehicle.Acceleration.Longitudinal"
STOP_ROW = 300  # the synthetic stop starts 30 s into the real 60 s RAV4 segment


def _ms(table: pa.Table) -> np.ndarray:
    return table.column("t").cast(pa.int64()).to_numpy()


@pytest.fixture(scope="module")
def rav4() -> pa.Table:
    """The real comma2k19 RAV4 log, imported: 10 Hz speed from the wheel speeds."""
    return import_can(RAV4_LOG, dbc=RAV4_DBC, mapping="toyota_rav4").table


@pytest.mark.parametrize("with_accelerometer", [True, False])
def test_the_real_rav4_drive_has_no_hard_braking(rav4: pa.Table, with_accelerometer: bool) -> None:
    """A real highway drive with ordinary braking (down to -2.4 m/s^2): no trigger from either source."""
    table = rav4 if with_accelerometer else rav4.drop_columns([ACC])
    assert (ACC in table.column_names) is with_accelerometer
    assert [x for x in detect(table) if x.kind == "hard_braking"] == []


def test_speed_acceleration_agrees_with_a_fit_of_comma_reference_speed(rav4: pa.Table) -> None:
    """Our 10 Hz estimate against a least-squares slope of comma's own 83 Hz speed over the same second."""
    with gzip.open(ASSETS / "comma2k19_rav4_seg40_can_decoded_reference.csv.gz", "rt") as f:
        ref = np.array(list(csv.reader(f))[1:], dtype=np.float64)
    ref_ms, ref_mps = ref[:, 0] * 1000, ref[:, 1]
    t = _ms(rav4)
    ours = speed_acceleration(t, rav4.column(SPEED).to_numpy(zero_copy_only=False).astype(np.float64))
    fitted = np.full(len(t), np.nan)
    for i, ti in enumerate(t):
        m = (ref_ms > ti - 1000) & (ref_ms <= ti)
        if m.sum() > 50:
            fitted[i] = np.polyfit((ref_ms[m] - ti) / 1000, ref_mps[m], 1)[0]
    both = ~np.isnan(ours) & ~np.isnan(fitted)
    assert both.sum() > 550
    assert np.nanmin(fitted) < -2.0  # the segment has real braking to compare on
    assert np.abs(ours[both] - fitted[both]).max() < 0.3


def _stop(
    rav4: pa.Table,
    decel_g: float,
    noise_kmh: float = 0.0,
    jitter_ms: int = 0,
    drop: float = 0.0,
    gap_s: tuple[float, float] | None = None,
    jump_kmh: float = 0.0,
    accel: str | None = None,
) -> pa.Table:
    """The real RAV4 speed trace up to 30 s, then a stop at ``decel_g``; optional noise, jitter, gaps, accelerometer."""
    rng = np.random.default_rng(7)
    t = _ms(rav4)
    real = rav4.column(SPEED).to_numpy(zero_copy_only=False).astype(np.float64)
    since = (t - t[STOP_ROW]) / 1000.0
    v = np.where(since > 0, np.maximum(real[STOP_ROW] - decel_g * G * 3.6 * since, 0.0), real)
    v = v + rng.normal(0.0, noise_kmh, len(v)) if noise_kmh else v
    t = t + rng.integers(-jitter_ms, jitter_ms + 1, len(t)) if jitter_ms else t
    if gap_s is not None:
        v = np.where((since >= gap_s[0]) & (since < gap_s[1]), np.nan, v)
        v = np.where(since >= gap_s[1], np.maximum(v - jump_kmh, 0.0), v)  # the sensor re-reads lower after it
    keep = rng.random(len(t)) >= drop
    keep[STOP_ROW - 20 : STOP_ROW + 60 : 10] = True  # dropping keeps the window's ends
    cols = {"t": pa.array(t[keep], pa.int64()).cast(pa.timestamp("ms", tz="UTC")), SPEED: pa.array(v[keep])}
    if accel is not None:
        a = {"hard": -decel_g * G, "calm": -1.0, "null": np.nan}[accel]
        acc = np.where(since > 0, a, 0.0)[keep]
        cols[ACC] = pa.array(acc, mask=np.isnan(acc))
    return pa.table(cols)


@pytest.mark.parametrize(
    ("case", "kwargs", "signal"),
    [
        ("0.57 g stop, no accelerometer", {"decel_g": 0.57}, SPEED),
        ("0.47 g stop, no accelerometer", {"decel_g": 0.47}, SPEED),
        ("0.35 g stop is not hard braking", {"decel_g": 0.35}, None),
        ("0.57 g stop, 0.5 km/h noise", {"decel_g": 0.57, "noise_kmh": 0.5}, SPEED),
        ("0.30 g stop, 0.5 km/h noise: no false alarm", {"decel_g": 0.30, "noise_kmh": 0.5}, None),
        ("0.57 g stop, ±40 ms jitter, 15 % rows lost", {"decel_g": 0.57, "jitter_ms": 40, "drop": 0.15}, SPEED),
        ("0.30 g stop, ±40 ms jitter, 15 % rows lost", {"decel_g": 0.30, "jitter_ms": 40, "drop": 0.15}, None),
        ("speed missing for the first second of the stop", {"decel_g": 0.57, "gap_s": (0.0, 1.0)}, SPEED),
        ("speed missing through the whole stop", {"decel_g": 0.57, "gap_s": (-0.5, 6.0)}, None),
        ("0.30 g stop, 8 km/h step across a 0.4 s gap", {"decel_g": 0.3, "gap_s": (1.0, 1.4), "jump_kmh": 8.0}, None),
        ("accelerometer reports the stop", {"decel_g": 0.57, "accel": "hard"}, ACC),
        ("accelerometer says calm: it wins over speed", {"decel_g": 0.57, "accel": "calm"}, None),
        ("accelerometer column all null: speed", {"decel_g": 0.57, "accel": "null"}, SPEED),
    ],
)
def test_hard_braking_source(rav4: pa.Table, case: str, kwargs: dict[str, object], signal: str | None) -> None:
    table = _stop(rav4, **kwargs)  # type: ignore[arg-type]
    found = [x for x in detect(table) if x.kind == "hard_braking"]
    if signal is None:
        assert found == [], case
        return
    assert len(found) == 1, case
    start = int(_ms(rav4)[STOP_ROW])
    assert start < found[0].t_ms <= start + 2500 and found[0].detail["signal"] == signal, case
    assert found[0].detail["deceleration_g"] >= 0.45, case


@pytest.mark.parametrize("seed", [2, 3, 5])
def test_a_simulated_stop_through_tesla_can_is_recorded(tmp_path: Path, seed: int) -> None:
    """An ordinary emergency stop, encoded as Tesla party-bus frames (no accelerometer) and imported, is recorded."""
    sim = simulate_day("LRWCANTEST0000001", seed, dt.date(2025, 6, 2), incident=False)
    truth = next(e for e in sim.events if e.kind == "hard_braking")
    t = _ms(sim.table)
    a, b = np.searchsorted(t, [truth.t_ms - 40_000, truth.t_ms + 20_000])
    log = tmp_path / "tesla.candump.log"
    can_encode.write_candump(
        can_encode.simulate_frames(sim.table.slice(a, b - a), gear_ratio=sim.vehicle.gear_ratio), log
    )
    imported = import_can(log, mapping="tesla_model3_party").table
    assert ACC not in imported.column_names
    recorder = EventRecorder(catalogue())
    records = [r for i in range(0, imported.num_rows, 37) for r in recorder.feed(imported.slice(i, 37))]
    records += recorder.flush()
    assert [r.kind for r in records] == ["hard_braking"]
    trig = records[0].triggers[0]
    assert trig.detail["signal"] == SPEED and 0 <= trig.t_ms - truth.t_ms <= 1000
    assert abs(trig.detail["deceleration_g"] - 0.47) <= 0.05


@pytest.mark.parametrize(
    ("case", "t_ms", "speed", "last"),
    [
        ("no speed at all", [0, 100, 200], [np.nan] * 3, None),
        ("one sample", [5], [50.0], None),
        ("constant 20 km/h/s, duplicated timestamps", [0, 0, *range(100, 1100, 100)], None, -20 / 3.6),
        ("constant 20 km/h/s at 50 Hz", list(range(0, 1020, 20)), None, -20 / 3.6),
        ("constant 20 km/h/s at 2 Hz: too few samples per half", list(range(0, 3000, 500)), None, None),
    ],
)
def test_speed_acceleration_edge_cases(
    case: str, t_ms: list[int], speed: list[float] | None, last: float | None
) -> None:
    t = np.array(t_ms, dtype=np.int64)
    v = np.array(speed, dtype=np.float64) if speed is not None else 100 - 20 * t / 1000
    got = speed_acceleration(t, v)
    assert len(got) == len(t), case
    if last is None:
        assert np.isnan(got[-1]), case
    else:
        assert got[-1] == pytest.approx(last, abs=1e-9), case
