"""CSV rows written from each column's distinct values (``exports.csv_rows``) stay byte-identical to the renderer.

The writer formats each distinct value once, folds a column with one value in a block into the next column's text
and gathers every row with one ``take``; these tables hit each of those paths: constant columns (alone, beside
nulls, last in the row), columns in several chunks, large text, -0 beside 0, and blocks cut at random rows.
"""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pytest

from carvault.access import jobs as export_jobs
from carvault.access.exports import csv_header, csv_rows, render
from carvault.protocol.columns import TIME_TYPE
from tests.factories import BASE_MS

META = {"vin": "TESTVIN0000000001", "start_ms": 0, "end_ms": 1, "resample_ms": None, "units": {}}


def _table(seed: int, n: int) -> pa.Table:
    rng = random.Random(seed)
    t = pa.array([BASE_MS + 100 * i for i in range(n)], pa.int64()).cast(TIME_TYPE)
    some = [None if rng.random() < 0.5 else rng.choice([0.0, -0.0, 1.5, 2.0]) for _ in range(n)]
    cols = {
        "t": t,
        "a.constant": pa.array([False] * n, pa.bool_()),
        "b.empty": pa.nulls(n, pa.float32()),
        "c.constant_or_null": pa.array([None if i % 3 else 7 for i in range(n)], pa.int16()),
        "d.floats": pa.array(some, pa.float64()),
        "e.large_text": pa.array([rng.choice(['a "q"', "x,y", None, "z"]) for _ in range(n)], pa.large_string()),
        "f.constant_text": pa.array(['say "hi"'] * n, pa.string()),
        "g.one_value_last": pa.array([3] * n, pa.uint8()),
    }
    return pa.table(cols)


@pytest.mark.parametrize("seed", range(3))
def test_rows_from_distinct_values_equal_the_renderer(seed: int) -> None:
    full = _table(seed, 400)
    want = render(full, "csv", META)[0]
    assert csv_header(full.schema) + bytes(csv_rows(full, full.schema)) == want
    # The same rows in several chunks per column, and cut into blocks at random rows.
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, 400), 6))
    chunked = pa.concat_tables([full.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, 400], strict=True)])
    assert chunked.column("d.floats").num_chunks == 7
    assert csv_header(full.schema) + bytes(csv_rows(chunked, full.schema)) == want
    blocks = [chunked.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, 400], strict=True)]
    assert csv_header(full.schema) + b"".join(bytes(csv_rows(b, full.schema)) for b in blocks) == want


def test_the_job_writer_with_blocks_of_a_few_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_jobs, "CSV_BLOCK_ROWS", 7)
    full = _table(5, 300)
    schema = full.schema.with_metadata({b"carvault.export": json.dumps(META).encode()})
    buf = io.BytesIO()
    sink = export_jobs._Sink(buf)  # type: ignore[arg-type]
    writer = export_jobs._CsvOut(sink, schema)
    assert writer.write(full.slice(0, 100)) + writer.write(full.slice(100)) == 300
    writer.close()
    writer.abort()
    sink.close()
    assert buf.getvalue() == render(full, "csv", META)[0]


def test_times_outside_the_fast_range_in_several_chunks() -> None:
    t = pa.array([-86_400_001, -1, 0, 253_402_300_799_999], pa.int64()).cast(TIME_TYPE)
    table = pa.table(
        {
            "t": pa.chunked_array([t.slice(0, 2), t.slice(2)]),
            "a": pa.chunked_array([pa.array([1.5, None], pa.float32()), pa.array([-0.0, 0.0], pa.float32())]),
            "b": pa.array([True] * 4),
        }
    )
    assert csv_header(table.schema) + bytes(csv_rows(table, table.schema)) == render(table, "csv", META)[0]
