"""Value checks read straight from Arrow's buffers (issue 10, round 4): null slots never count, whatever bytes they
hold; integers are reported as integers; a schema is checked by itself even when its text reads like a kept one's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from carvault.errors import UnknownSignal, ValueOutOfRange
from carvault.ingest.validation import PayloadSummary, validate_payload
from carvault.protocol import TIME_TYPE, BatchHeader
from carvault.signals import catalogue
from tests.factories import BASE_MS, vin_for

SPEED = "Vehicle.Speed"  # float32, -60..300
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"  # int8, -1..127
RANGE = "Vehicle.Powertrain.Range"  # uint32, 0..2,000,000
ROWS = 8


def _times(rows: int = ROWS) -> pa.Array:
    return pa.array(np.arange(rows, dtype=np.int64) * 100 + BASE_MS, pa.int64()).cast(TIME_TYPE)


def _validate(table: pa.Table) -> PayloadSummary:
    header = BatchHeader(
        vin=vin_for(4), region="cn", seq=1, prev="0" * 64, t0=BASE_MS, t1=BASE_MS + 100 * (ROWS - 1), rows=ROWS
    )
    return validate_payload(
        header, table, catalogue(), now_ms=BASE_MS + 3_600_000, max_future_skew_ms=300_000, max_rows=100_000
    )


def _with_null_slots(values: np.ndarray, present: list[bool], type_: pa.DataType) -> pa.Array:
    """An array whose null slots hold ``values`` too (Arrow leaves them undefined: any bytes may be there)."""
    bitmap = np.packbits(np.array(present, dtype=np.bool_), bitorder="little")
    return pa.Array.from_buffers(
        type_, len(values), [pa.py_buffer(bitmap.tobytes()), pa.py_buffer(values.tobytes())], null_count=-1
    )


def test_values_in_null_slots_are_not_checked() -> None:
    present = [True, False, True, True, False, True, True, False]
    speed = _with_null_slots(np.array([10, 1e9, 12, 13, np.nan, 15, 16, -1e9], dtype=np.float32), present, pa.float32())
    gear = _with_null_slots(np.array([1, -100, 2, 3, 127, 4, 5, -128], dtype=np.int8), present, pa.int8())
    table = pa.table({"t": _times(), SPEED: speed, GEAR: gear})
    assert _validate(table).samples == 2 * 5


def test_a_present_value_out_of_range_among_nulls_is_refused_with_integer_bounds() -> None:
    present = [True, False, True, True, False, True, True, False]
    gear = _with_null_slots(np.array([1, 0, 2, -5, 0, 4, 5, 0], dtype=np.int8), present, pa.int8())
    table = pa.table({"t": _times(), SPEED: pa.array([10.0] * ROWS, pa.float32()), GEAR: gear})
    with pytest.raises(ValueOutOfRange) as refused:
        _validate(table)
    assert refused.value.details["signal"] == GEAR
    assert refused.value.details["got_min"] == -5 and type(refused.value.details["got_min"]) is int
    assert refused.value.details["got_max"] == 5 and type(refused.value.details["got_max"]) is int


def test_a_present_nan_among_nulls_is_refused() -> None:
    present = [True, False, True, True, True, True, True, True]
    speed = _with_null_slots(np.array([10, 0, 12, np.nan, 14, 15, 16, 17], dtype=np.float32), present, pa.float32())
    table = pa.table({"t": _times(), SPEED: speed})
    with pytest.raises(ValueOutOfRange, match="NaN or infinite"):
        _validate(table)


def test_an_unsigned_column_at_its_edge_and_one_past_it() -> None:
    at_edge = pa.table({"t": _times(), RANGE: pa.array([0] * (ROWS - 1) + [2_000_000], pa.uint32())})
    assert _validate(at_edge).samples == ROWS
    past = pa.table({"t": _times(), RANGE: pa.array([2_000_001] + [0] * (ROWS - 1), pa.uint32())})
    with pytest.raises(ValueOutOfRange) as refused:
        _validate(past)
    assert refused.value.details["got_max"] == 2_000_001


def test_a_schema_whose_text_reads_like_a_kept_one_is_checked_by_itself() -> None:
    """A field name may hold a line break and read, as schema text, like two catalogue fields."""
    sound = pa.table(
        {"t": _times(), SPEED: pa.array([10.0] * ROWS, pa.float32()), GEAR: pa.array([1] * ROWS, pa.int8())}
    )
    assert _validate(sound).samples == 2 * ROWS  # its plan is kept now
    look_alike = f"{SPEED}: float\n{GEAR}"
    forged = pa.table({"t": _times(), look_alike: pa.array([1] * ROWS, pa.int8())})
    text = forged.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    assert text == sound.schema.to_string(show_field_metadata=False, show_schema_metadata=False)
    with pytest.raises(UnknownSignal):
        _validate(forged)


_NUMBERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


@pytest.mark.parametrize("seed", range(4))
def test_bounds_agree_with_arrow_for_every_number_type(seed: int) -> None:
    """The one-matrix reduction (``_bounds``) against Arrow's own min_max, column by column: every catalogue number
    type at its extremes (a 32-bit integer past 2**24 is not exact as a float32), nulls, present NaNs and
    infinities, sliced tables and columns cut into chunks at different rows."""
    import pyarrow.compute as pc

    from carvault.ingest.validation import _NUMPY_TYPES, _bounds, _ColumnCheck

    rng = np.random.default_rng(seed)
    for _ in range(150):
        rows = int(rng.integers(2, 40))
        arrays, checks = [], []
        for k, type_ in enumerate(_NUMBERS + [pa.float32(), pa.float64()] * 2):
            if pa.types.is_floating(type_):
                values = rng.normal(size=rows) * 1e6
                for special in (np.nan, np.inf, -np.inf):
                    if rng.random() < 0.15:
                        values[int(rng.integers(rows))] = special
            else:
                info = np.iinfo(type_.to_pandas_dtype())
                values = rng.integers(info.min, info.max, size=rows, endpoint=True, dtype=info.dtype)
                values[int(rng.integers(rows))] = info.max - int(rng.integers(0, 3))
            missing = rng.random(rows) < rng.random() * 0.8
            missing[int(rng.integers(rows))] = False
            arrays.append(pa.array(values.astype(type_.to_pandas_dtype()), type=type_, mask=missing))
            checks.append(
                _ColumnCheck(
                    f"c{k}", catalogue().get(SPEED), pa.types.is_floating(type_), True, None, dtype=_NUMPY_TYPES[type_]
                )
            )
        table = pa.table([_times(rows)] + arrays, names=["t"] + [c.name for c in checks])
        cut = int(rng.integers(0, rows - 1))
        table = table.slice(cut)
        if rng.random() < 0.5:  # chunks cut at different rows per column
            table = pa.table(
                [table.column(0)]
                + [_cut(c.combine_chunks(), int(rng.integers(len(c) + 1))) for c in table.columns[1:]],
                names=table.column_names,
            )
        nulls = [c.null_count for c in table.columns]
        wanted = [(c, i) for i, c in enumerate(checks, start=1) if nulls[i] < table.num_rows]
        got = _bounds(table, wanted, nulls)
        for check, i in wanted:
            column = table.column(i)
            if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column.drop_null())).as_py():
                assert all(np.isnan(got[check.name])), (column.type, got[check.name])
                continue
            expected = pc.min_max(column).as_py()
            assert got[check.name] == (expected["min"], expected["max"]), (column.type, got[check.name], expected)
            assert type(got[check.name][0]) is type(expected["min"])


def _cut(array: pa.Array, at: int) -> pa.ChunkedArray:
    return pa.chunked_array([array.slice(0, at), array.slice(at)], type=array.type)
