"""Window assembly: one row per instant, each signal's first non-null value in batch order (docs §5)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from carvault.signals import catalogue
from carvault.verify.window import _gather, assemble, csv_equals, iso_times, to_csv

T0 = 1_700_000_000_000


def random_batches(seed: int, batches: int = 3) -> list[pa.Table]:
    """Overlapping batches of a few signals each, with nulls, at 100 ms steps."""
    rng = np.random.default_rng(seed)
    cat = catalogue()
    paths = [p for p in cat.paths if not cat[p].allowed][:30]
    out = []
    for _ in range(batches):
        n = int(rng.integers(1, 40))
        cols: dict[str, pa.Array] = {
            "t": pa.array(np.sort(rng.integers(0, 30, n)) * 100 + T0, pa.timestamp("ms", tz="UTC"))
        }
        for p in rng.choice(paths, 4, replace=False):
            typ = cat[p].arrow_type
            mask = rng.random(n) < 0.4
            if pa.types.is_boolean(typ):
                vals = rng.integers(0, 2, n).astype(bool)
            elif pa.types.is_integer(typ):
                vals = rng.integers(0, 100, n)
            else:
                vals = rng.normal(size=n)
            cols[p] = pa.array(vals, mask=mask).cast(typ, safe=False)
        out.append(pa.table(cols))
    return out


def reference(tables: list[pa.Table], start: int, end: int) -> dict[int, dict[str, object]]:
    """The rule in plain Python: instants in [start, end), first non-null value per signal in batch order."""
    rows: dict[int, dict[str, object]] = {}
    for table in tables:
        for row in table.to_pylist():
            ms = int(row.pop("t").timestamp() * 1000)
            if start <= ms < end:
                merged = rows.setdefault(ms, {})
                for k, v in row.items():
                    if merged.get(k) is None:
                        merged[k] = v
    return rows


@pytest.mark.parametrize("seed", range(40))
def test_assemble_keeps_the_first_non_null_value_of_each_instant(seed: int) -> None:
    tables = random_batches(seed)
    start, end = T0 + 500, T0 + 2500
    window = assemble(tables, start, end, catalogue())
    want = reference(tables, start, end)
    got = {int(r.pop("t").timestamp() * 1000): r for r in window.to_pylist()}
    assert list(got) == sorted(want)
    for ms, row in got.items():
        assert {k: v for k, v in row.items() if v is not None} == {
            k: v for k, v in want[ms].items() if v is not None
        }, ms
    order = [p for p in catalogue().paths if p in window.column_names]
    assert window.column_names == ["t", *order]


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (T0 + 123, "2023-11-14T22:13:20.123Z"),
        (-62167219200000, "0000-01-01T00:00:00.000Z"),
        (253402300799999, "9999-12-31T23:59:59.999Z"),
        (253402300800000, "10000-01-01T00:00:00.000Z"),
    ],
)
def test_iso_times(ms: int, text: str) -> None:
    assert iso_times(pa.array([ms], pa.timestamp("ms", tz="UTC"))).to_pylist() == [text]


def test_csv_format() -> None:
    table = pa.table(
        {
            "t": pa.array([T0, T0 + 100], pa.timestamp("ms", tz="UTC")),
            "Vehicle.Speed": pa.array([-0.0, 1e-7], pa.float32()),
            "Vehicle.Body.Lights.Brake.IsActive": pa.array(['say "hi"', None]),
            "Vehicle.ADAS.ABS.IsEngaged": pa.array([True, None]),
        }
    )
    assert to_csv(table) == (
        b'"t","Vehicle.Speed","Vehicle.Body.Lights.Brake.IsActive","Vehicle.ADAS.ABS.IsEngaged"\n'
        b'"2023-11-14T22:13:20.000Z",-0,"say ""hi""",true\n'
        b'"2023-11-14T22:13:20.100Z",1e-7,,\n'
    )


@pytest.mark.parametrize("seed", range(20))
def test_assemble_sorts_rows_out_of_order_and_drops_rows_without_a_time(seed: int) -> None:
    """A hostile batch may hold its rows in any order, or a row with no time; the rule stays the same."""
    rng = np.random.default_rng(1000 + seed)
    tables = []
    for table in random_batches(seed):
        shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
        t = shuffled.column("t").to_pylist()
        t[0] = None  # a row without a time is in no window
        tables.append(shuffled.set_column(0, "t", pa.array(t, pa.timestamp("ms", tz="UTC"))))
    start, end = T0 + 500, T0 + 2500
    window = assemble(tables, start, end, catalogue())
    want = reference([t.filter(t.column("t").is_valid()) for t in tables], start, end)
    got = {int(r.pop("t").timestamp() * 1000): r for r in window.to_pylist()}
    assert list(got) == sorted(want)
    for ms, row in got.items():
        assert {k: v for k, v in row.items() if v is not None} == {
            k: v for k, v in want[ms].items() if v is not None
        }, ms


def _table_of(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    text = np.array(['say "hi"', "a,b", "plain", "x\ny"], dtype=object)[rng.integers(0, 4, rows)]
    return pa.table(
        {
            "t": pa.array(T0 + np.arange(rows) * 100, pa.timestamp("ms", tz="UTC")),
            "Vehicle.Speed": pa.array(rng.normal(size=rows), mask=rng.random(rows) < 0.5).cast(pa.float32()),
            "Vehicle.Body.Lights.Brake.IsActive": pa.array(list(text), mask=rng.random(rows) < 0.3),
            "Vehicle.ADAS.ABS.IsEngaged": pa.array(rng.random(rows) < 0.5, mask=rng.random(rows) < 0.2),
        }
    )


@pytest.mark.parametrize("rows", [0, 1, 2047, 2048, 5001, 40_000])
def test_csv_equals_is_the_byte_comparison_with_to_csv(rows: int) -> None:
    """csv_equals renders the rows in two halves; it must answer exactly data == to_csv(table)."""
    table = _table_of(rows)
    text = to_csv(table)
    assert csv_equals(table, text)
    assert not csv_equals(table, None)
    assert not csv_equals(table, text + b"\n")
    assert not csv_equals(table, text[:-1])
    for at in {0, len(text) // 2, len(text) - 1}:  # one byte changed: header, the middle, the last row
        changed = bytearray(text)
        changed[at] ^= 0x01
        assert not csv_equals(table, bytes(changed)), at


@pytest.mark.parametrize("seed", range(12))
def test_gather_is_take_in_one_chunk(seed: int) -> None:
    """Rows in a few runs (joined slices) or in many (one take): the same table as a take, one chunk per column."""
    rng = np.random.default_rng(seed)
    parts = [_table_of(int(rng.integers(1, 300)), seed=seed * 10 + i) for i in range(4)]
    table = pa.concat_tables(parts)  # a column per batch: chunked as a window's input is
    n = table.num_rows
    cases = [
        np.arange(0, dtype=np.int64),
        np.arange(n, dtype=np.int64),
        np.concatenate([np.arange(a, b) for a, b in sorted({tuple(sorted(rng.integers(0, n, 2))) for _ in range(5)})]),
        rng.permutation(n),  # scattered: hundreds of runs, past MAX_SLICED_RUNS
        np.sort(rng.choice(n, size=min(n, 150), replace=False)),
    ]
    for rows in cases:
        got = _gather(table, rows.astype(np.int64))
        assert got.equals(table.take(pa.array(rows, pa.int64()))), rows[:10]
        assert all(column.num_chunks <= 1 for column in got.columns)
