"""Column value checks of ``validate_payload`` on the shapes real batches have: 1 Hz columns mostly null, several
chunks, values at the very edge of a range, and schemas seen before (their checks are kept per schema)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from carvault.errors import UnknownSignal, ValueOutOfRange, WrongSignalType
from carvault.ingest.validation import validate_payload
from carvault.protocol import BatchHeader
from carvault.signals import catalogue
from tests.factories import BASE_MS, drive_table, vin_for

SPEED = "Vehicle.Speed"  # float, 10 Hz, ranged
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
BRAKE = "Vehicle.Body.Lights.Brake.IsActive"  # enumerated text
PATHS = [SPEED, SOC, BRAKE, "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted"]


def _check(table: pa.Table) -> int:
    t = table.column("t").cast(pa.int64())
    header = BatchHeader(
        vin=vin_for(1), region="cn", seq=1, prev="0" * 64, t0=t[0].as_py(), t1=t[-1].as_py(), rows=table.num_rows
    )
    summary = validate_payload(
        header, table, catalogue(), now_ms=BASE_MS + 3_600_000, max_future_skew_ms=300_000, max_rows=100_000
    )
    return summary.samples


def _set(table: pa.Table, name: str, make: Callable[[pa.ChunkedArray], pa.Array | pa.ChunkedArray]) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), make(table.column(name)))


def _with_value(col: pa.ChunkedArray, row: int, value: object) -> pa.Array:
    values = col.to_pylist()
    values[row] = value
    return pa.array(values, col.type)


def _sparse(col: pa.ChunkedArray, value: object) -> pa.Array:
    """Nulls everywhere but two rows: one ordinary value and ``value``."""
    values: list[object] = [None] * len(col)
    values[10], values[20] = col[0].as_py(), value
    return pa.array(values, col.type)


def test_a_sound_table_passes_in_one_chunk_and_in_many() -> None:
    table = drive_table(seconds=60, paths=PATHS)
    samples = _check(table)
    assert samples == sum(len(c) - c.null_count for c in table.columns[1:])
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100, 250), table.slice(350)])
    assert chunked.column(SPEED).num_chunks == 3
    assert _check(chunked) == samples
    assert _check(table) == samples  # the schema's kept checks give the same answer


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_single_non_finite_value_is_refused_wherever_it_is(bad: float) -> None:
    table = drive_table(seconds=60, paths=PATHS)
    for row in (0, 299, 599):
        with pytest.raises(ValueOutOfRange, match="NaN or infinite"):
            _check(_set(table, SPEED, functools.partial(_with_value, row=row, value=bad)))
    with pytest.raises(ValueOutOfRange, match="NaN or infinite"):  # among nulls, next to a sound value
        _check(_set(table, SPEED, lambda c: _sparse(c, bad)))
    chunked = pa.concat_tables([table.slice(0, 300), _set(table, SPEED, lambda c: _with_value(c, 450, bad)).slice(300)])
    with pytest.raises(ValueOutOfRange, match="NaN or infinite"):  # in a later chunk
        _check(chunked)


def test_range_edges_pass_and_one_step_past_them_is_refused() -> None:
    sig = catalogue()[SPEED]
    assert sig.min is not None and sig.max is not None
    low, high = sig.min, sig.max
    table = drive_table(seconds=60, paths=PATHS)
    _check(_set(table, SPEED, lambda c: _with_value(_with_value(c, 3, low), 4, high)))
    above = float(np.nextafter(np.float32(sig.max), np.float32(np.inf)))
    with pytest.raises(ValueOutOfRange) as err:
        _check(_set(table, SPEED, lambda c: _sparse(c, above)))
    assert err.value.details["got_max"] == pytest.approx(above) and err.value.details["max"] == sig.max
    with pytest.raises(ValueOutOfRange) as err:
        _check(_set(table, SPEED, lambda c: _with_value(c, 7, low - 1)))
    assert err.value.details["got_min"] == low - 1


def test_a_mostly_null_integer_column_is_range_checked_on_its_values() -> None:
    sig = catalogue()[SOC]
    table = drive_table(seconds=60, paths=PATHS)
    assert table.column(SOC).null_count > 500  # a 1 Hz signal in 10 Hz rows
    with pytest.raises(ValueOutOfRange, match=SOC):
        _check(_set(table, SOC, lambda c: _sparse(c, (sig.max or 100) + 1)))


def test_enumerated_values_are_checked_among_nulls() -> None:
    table = drive_table(seconds=60, paths=PATHS)
    with pytest.raises(ValueOutOfRange, match="outside"):
        _check(_set(table, BRAKE, lambda c: _sparse(c, "BLINKING")))


def test_kept_schema_checks_never_pass_a_different_schema() -> None:
    table = drive_table(seconds=60, paths=PATHS)
    _check(table)  # its checks are now kept
    retyped = table.set_column(
        table.schema.get_field_index(SPEED), pa.field(SPEED, pa.float64()), table.column(SPEED).cast(pa.float64())
    )
    with pytest.raises(WrongSignalType):
        _check(retyped)
    renamed = table.rename_columns(["t", SPEED, SOC, BRAKE, "Vehicle.Cabin.Secret"])
    with pytest.raises(UnknownSignal):
        _check(renamed)
    _check(table)  # and the sound schema still passes
