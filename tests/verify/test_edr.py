"""Part 563 EDR elements from a synthetic crash whose every value is known."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from carvault.signals import catalogue
from carvault.verify.edr import (
    CLIPPED,
    CSV_COLUMNS,
    NOT_RECORDED,
    OK,
    EdrElement,
    edr_csv,
    edr_elements,
    parse_edr_csv,
    part563_elements,
)

EVENT_MS = 1_762_999_980_000 + 60_000
# Samples sit 30 ms past each 100 ms step, so every 2 Hz instant falls 70 ms after one sample and 30 ms before the
# next: "latest at or before" and "nearest" give different answers, and the test can tell which one was used.
PHASE_MS = 30

SPEED = "Vehicle.Speed"
ACCEL = "Vehicle.Chassis.Accelerator.PedalPosition"
PEDAL = "Vehicle.Chassis.Brake.PedalPosition"
LIGHT = "Vehicle.Body.Lights.Brake.IsActive"
PRESSURE = "Vehicle.EDR.BrakeMasterCylinderPressure"
ABS = "Vehicle.ADAS.ABS.IsEngaged"
AEB = "Vehicle.EDR.AEB.IsEngaged"
DV_LON = "Vehicle.EDR.DeltaV.Longitudinal"
DV_LAT = "Vehicle.EDR.DeltaV.Lateral"
IGNITION = "Vehicle.EDR.IgnitionCycle"
BELT = "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted"
BAG_DRIVER = "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed"
BAG_PASSENGER = "Vehicle.Cabin.Seat.Row1.PassengerSide.Airbag.IsDeployed"
RPM = "Vehicle.Powertrain.ElectricMotor.Speed"
STEERING = "Vehicle.Chassis.SteeringWheel.Angle"

Columns = dict[str, np.ndarray]


def _step(x: np.ndarray, at: dict[float, float]) -> np.ndarray:
    """Piecewise-constant values: ``at`` maps a relative time (s) to the value from then on; 0 before the first."""
    out = np.zeros(len(x))
    for start, value in sorted(at.items()):
        out[x >= start - 1e-9] = value
    return out


def crash_columns(x: np.ndarray) -> Columns:
    """The crash: 60.4 km/h, throttle released at -3 s, brake from -2.5 s, ABS from -1 s, AEB from -0.5 s."""
    speed = np.where(x <= -3.0, 60.4, 60.4 - 10.0 * (x + 3.0))
    speed = np.where(x > 0, 5.0, speed)
    pedal = np.where(x >= -2.5, 40.0, 0.0)
    return {
        SPEED: speed,
        ACCEL: np.where(x < -3.0, 20.0, 0.0),
        PEDAL: pedal,
        LIGHT: np.where(pedal > 0, "ACTIVE", "INACTIVE"),
        PRESSURE: np.clip((x + 2.5) * 56.0, 0.0, 140.0),
        ABS: x >= -1.0,
        AEB: x >= -0.5,
        DV_LON: _step(x, {0.0: -3.2, 0.1: -15.6, 0.2: -27.5, 0.3: -26.0}),
        DV_LAT: _step(x, {0.0: 1.0, 0.1: 4.0, 0.2: 2.0}),
        IGNITION: np.full(len(x), 1234.0),
        BELT: np.ones(len(x), dtype=bool),
        BAG_DRIVER: x >= 0.05,
        BAG_PASSENGER: np.zeros(len(x), dtype=bool),
        RPM: np.full(len(x), 5012.0),
    }


def crash_table(
    event_ms: int = EVENT_MS,
    *,
    before_s: int = 60,
    after_s: int = 5,
    phase_ms: int = PHASE_MS,
    edit: Callable[[np.ndarray, Columns], Columns] | None = None,
) -> pa.Table:
    """A 10 Hz table (1 Hz signals null except once a second) around a crash at ``event_ms``."""
    rel = np.arange(-before_s * 1000 + phase_ms, after_s * 1000, 100, dtype=np.int64)
    x = rel / 1000.0
    cols = crash_columns(x)
    if edit is not None:
        cols = edit(x, cols)
    cat = catalogue()
    once_a_second = (rel - phase_ms) % 1000 == 0
    arrays: dict[str, pa.Array] = {"t": pa.array(event_ms + rel).cast(pa.timestamp("ms", tz="UTC"))}
    for path, values in cols.items():
        sig = cat[path]
        # NaN in a column means "the vehicle sent nothing here": it becomes a null, as on the wire.
        mask = ~once_a_second if sig.rate_hz == 1 else np.zeros(len(rel), dtype=bool)
        if values.dtype.kind == "f":
            mask |= np.isnan(values)
        if sig.datatype == "string":
            arr = pa.array(values.tolist(), pa.string(), mask=mask)
        else:
            arr = pa.array(values, mask=mask).cast(sig.arrow_type, safe=False)
        arrays[path] = arr
    return pa.table(arrays)


def rows(elements: list[EdrElement], name: str) -> list[EdrElement]:
    return [e for e in elements if e.name == name]


def values(elements: list[EdrElement], name: str) -> list[str]:
    return [e.value for e in rows(elements, name)]


def offsets(elements: list[EdrElement], name: str) -> list[float | None]:
    return [e.offset_s for e in rows(elements, name)]


PRE_CRASH = [-5.0, -4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0]


@pytest.fixture(scope="module")
def crash() -> list[EdrElement]:
    return edr_elements(crash_table(), EVENT_MS, ignition_cycle_download=1240)


def test_element_list_is_part563_in_order() -> None:
    specs = part563_elements()
    names = [s.name for s in specs]
    assert names[:4] == [
        "Delta-V longitudinal",
        "Maximum delta-V longitudinal",
        "Time to maximum delta-V longitudinal",
        "Speed vehicle indicated",
    ]
    assert {s.table for s in specs} == {"I", "II"}
    assert len([s for s in specs if s.table == "I"]) == 15
    for s in specs:
        for p in s.sources:
            assert p in catalogue(), f"{s.name}: {p} is not a catalogue path"


def test_speed_is_eleven_samples_at_2_hz_latest_at_or_before(crash: list[EdrElement]) -> None:
    speed = rows(crash, "Speed vehicle indicated")
    assert [e.offset_s for e in speed] == PRE_CRASH
    # Nearest-sample would give 55 at -2.5 s (the sample 30 ms after); at-or-before takes the one 70 ms before.
    assert [e.value for e in speed] == ["60", "60", "60", "60", "60", "56", "51", "46", "41", "36", "31"]
    assert {(e.unit, e.resolution, e.status, e.source, e.rate_hz, e.table) for e in speed} == {
        ("km/h", "1", OK, SPEED, 2.0, "I")
    }


def test_accelerator_percent(crash: list[EdrElement]) -> None:
    accel = rows(crash, "Engine throttle or accelerator pedal % full")
    assert [e.value for e in accel] == ["20"] * 5 + ["0"] * 6
    assert {e.unit for e in accel} == {"percent"}


def test_service_brake_transitions(crash: list[EdrElement]) -> None:
    brake = rows(crash, "Service brake on/off")
    assert [e.offset_s for e in brake] == PRE_CRASH
    assert [e.value for e in brake] == ["off"] * 6 + ["on"] * 5
    assert brake[0].source.startswith("derived: ") and PEDAL in brake[0].source and LIGHT in brake[0].source
    assert {e.unit for e in brake} == {""} and {e.resolution for e in brake} == {""}


def test_service_brake_from_brake_light_alone() -> None:
    def lights_only(x: np.ndarray, cols: Columns) -> Columns:
        del cols[PEDAL]
        cols[LIGHT] = np.where(x >= -1.0, "ADAPTIVE", np.where(x >= -2.5, "ACTIVE", "INACTIVE"))
        return cols

    elements = edr_elements(crash_table(edit=lights_only), EVENT_MS)
    brake = rows(elements, "Service brake on/off")
    assert [e.value for e in brake] == ["off"] * 6 + ["on"] * 5
    assert all(PEDAL in e.note for e in brake)


def test_delta_v_series_at_the_rate_it_has(crash: list[EdrElement]) -> None:
    dv = rows(crash, "Delta-V longitudinal")
    assert [e.offset_s for e in dv] == [0.03, 0.13, 0.23]
    assert [e.value for e in dv] == ["-3", "-16", "-28"]  # -27.5 rounds half away from zero
    assert {e.rate_hz for e in dv} == {10.0}
    assert all("10 Hz" in e.note and "100 Hz" in e.note for e in dv)


def test_max_delta_v_and_time_to_max(crash: list[EdrElement]) -> None:
    assert values(crash, "Maximum delta-V longitudinal") == ["-28"]
    assert values(crash, "Time to maximum delta-V longitudinal") == ["230.0"]
    assert rows(crash, "Time to maximum delta-V longitudinal")[0].unit == "ms"
    assert rows(crash, "Time to maximum delta-V longitudinal")[0].resolution == "2.5"
    assert values(crash, "Maximum delta-V lateral") == ["4"]
    assert values(crash, "Time to maximum delta-V lateral") == ["130.0"]
    assert values(crash, "Time to maximum delta-V resultant") == ["230.0"]
    assert "true maximum may fall between samples" in rows(crash, "Maximum delta-V longitudinal")[0].note


def test_single_instant_and_download_elements(crash: list[EdrElement]) -> None:
    assert values(crash, "Ignition cycle crash") == ["1234"]
    assert offsets(crash, "Ignition cycle crash") == [-1.0]
    assert values(crash, "Ignition cycle download") == ["1240"]
    assert values(crash, "Safety belt status driver") == ["on"]
    assert values(crash, "Safety belt status right front passenger") == []  # Table II, source absent: omitted
    assert values(crash, "Frontal air bag deployment time driver") == ["130"]
    assert "after 30 ms and by 130 ms" in rows(crash, "Frontal air bag deployment time driver")[0].note
    assert values(crash, "Frontal air bag deployment time right front passenger") == ["not deployed"]


def test_table_two_only_when_source_present(crash: list[EdrElement]) -> None:
    names = {e.name for e in crash if e.table == "II"}
    assert names == {
        "Delta-V lateral",
        "Maximum delta-V lateral",
        "Time to maximum delta-V lateral",
        "Time to maximum delta-V resultant",
        "Engine rpm",
        "ABS activity",
    }
    assert values(crash, "ABS activity") == ["off"] * 9 + ["on"] * 2
    assert values(crash, "Engine rpm") == ["5000"] * 11  # resolution 100 rpm


def test_not_recorded_for_absent_sources(crash: list[EdrElement]) -> None:
    for name in (
        "Frontal air bag warning lamp",
        "Multi-event number of events",
        "Time from event 1 to 2",
        "Complete file recorded",
    ):
        (e,) = rows(crash, name)
        assert (e.status, e.value, e.offset_s) == (NOT_RECORDED, "", None)

    def no_accel(x: np.ndarray, cols: Columns) -> Columns:
        del cols[ACCEL], cols[DV_LON]
        return cols

    elements = edr_elements(crash_table(edit=no_accel), EVENT_MS)
    for name in (
        "Engine throttle or accelerator pedal % full",
        "Delta-V longitudinal",
        "Maximum delta-V longitudinal",
        "Time to maximum delta-V longitudinal",
        "Ignition cycle download",
    ):
        (e,) = rows(elements, name)
        assert e.status == NOT_RECORDED, name
    assert "Time to maximum delta-V resultant" not in {e.name for e in elements}


def test_gap_makes_instants_not_recorded() -> None:
    def gap(x: np.ndarray, cols: Columns) -> Columns:
        cols[SPEED] = np.where((x > -4.0) & (x < -0.9), np.nan, cols[SPEED])
        return cols

    speed = rows(edr_elements(crash_table(edit=gap), EVENT_MS), "Speed vehicle indicated")
    # -3.5 still has the -4.07 s sample (0.57 s old); -1.0 would need one older than 1 s; -0.5 has -0.87 s.
    assert [e.status for e in speed] == [OK] * 4 + [NOT_RECORDED] * 5 + [OK] * 2
    assert speed[5].note.startswith("no sample in the 1 s")


def test_clipping_is_flagged() -> None:
    def wild(x: np.ndarray, cols: Columns) -> Columns:
        cols[SPEED] = np.where(x < -4.2, 251.3, cols[SPEED])
        cols[STEERING] = np.where(x < -2.0, -400.0, 12.4)
        cols[RPM] = np.where(x < 0, -800.0, 5000.0)  # reversing motor: below the 0 rpm floor
        return cols

    elements = edr_elements(crash_table(edit=wild), EVENT_MS)
    speed = rows(elements, "Speed vehicle indicated")
    assert [(e.value, e.status) for e in speed[:3]] == [("200", CLIPPED), ("200", CLIPPED), ("60", OK)]
    assert "251.3" in speed[0].note and "0..200" in speed[0].note
    steering = rows(elements, "Steering input")
    # The -2.0 s instant still takes the -2.07 s sample.
    assert [e.value for e in steering] == ["-250"] * 7 + ["12"] * 4
    assert [e.status for e in steering] == [CLIPPED] * 7 + [OK] * 4
    assert {(e.value, e.status) for e in rows(elements, "Engine rpm")} == {("0", CLIPPED)}


def test_unsorted_and_chunked_input_gives_the_same_answer(crash: list[EdrElement]) -> None:
    table = crash_table()
    perm = np.random.default_rng(1).permutation(table.num_rows)
    shuffled = pa.concat_tables([table.take(perm[:500]), table.take(perm[500:])])
    assert edr_csv(edr_elements(shuffled, EVENT_MS, ignition_cycle_download=1240)) == edr_csv(crash)


def test_rows_in_part563_order_then_offset(crash: list[EdrElement]) -> None:
    order = {s.name: i for i, s in enumerate(part563_elements())}
    keys = [(order[e.name], -1e9 if e.offset_s is None else e.offset_s) for e in crash]
    assert keys == sorted(keys)


def test_csv_round_trip_is_deterministic(crash: list[EdrElement]) -> None:
    data = edr_csv(crash)
    again = edr_csv(edr_elements(crash_table(), EVENT_MS, ignition_cycle_download=1240))
    assert data == again
    assert data.splitlines()[0].decode() == ",".join(CSV_COLUMNS)
    parsed = parse_edr_csv(data)
    assert parsed == [e.to_row() for e in crash]
    first_speed = next(r for r in parsed if r["element"] == "Speed vehicle indicated")
    assert first_speed == {
        "element": "Speed vehicle indicated",
        "table": "I",
        "offset_s": "-5.000",
        "value": "60",
        "unit": "km/h",
        "resolution": "1",
        "rate_hz": "2",
        "status": "ok",
        "source": SPEED,
        "note": "",
    }
    with pytest.raises(ValueError, match="header"):
        parse_edr_csv(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_edr_csv(data.splitlines()[0] + b"\nonly,three,fields\n")


def test_empty_table_reports_everything_not_recorded() -> None:
    empty = crash_table().slice(0, 0)
    elements = edr_elements(empty, EVENT_MS)
    assert elements
    assert {e.status for e in elements} == {NOT_RECORDED}


def test_timing_30_minutes_at_10_hz() -> None:
    table = crash_table(before_s=1795, after_s=5)
    start = time.perf_counter()
    elements = edr_elements(table, EVENT_MS, ignition_cycle_download=1240)
    data = edr_csv(elements)
    took = time.perf_counter() - start
    print(
        f"\nEDR elements + CSV for {table.num_rows} rows x {table.num_columns} columns: {took * 1000:.1f} ms, "
        f"{len(elements)} rows, {len(data)} bytes"
    )


def test_air_bag_deployed_before_time_zero_is_clipped_not_negative() -> None:
    def early(x: np.ndarray, cols: Columns) -> Columns:
        cols[BAG_DRIVER] = x >= -0.5
        cols[BAG_PASSENGER] = np.where(x > 0, np.nan, 0.0)  # nothing sent after time zero
        return cols

    elements = edr_elements(crash_table(edit=early), EVENT_MS)
    (driver,) = rows(elements, "Frontal air bag deployment time driver")
    assert (driver.value, driver.status) == ("0", CLIPPED)
    assert "before time zero" in driver.note
    (passenger,) = rows(elements, "Frontal air bag deployment time right front passenger")
    assert passenger.status == NOT_RECORDED


def test_nan_values_count_as_missing() -> None:
    table = crash_table()
    speed = table.column(SPEED).to_numpy().copy()
    t = table.column("t").cast(pa.int64()).to_numpy()
    speed[(t > EVENT_MS - 4000) & (t < EVENT_MS - 900)] = np.nan  # a NaN sent as a value, not a null
    table = table.set_column(table.schema.get_field_index(SPEED), SPEED, pa.array(speed, pa.float32()))
    statuses = [e.status for e in rows(edr_elements(table, EVENT_MS), "Speed vehicle indicated")]
    assert statuses == [OK] * 4 + [NOT_RECORDED] * 5 + [OK] * 2
