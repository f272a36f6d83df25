"""Machine-readable copies of telemetry: JSON, CSV and Parquet, free of charge and complete."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from carvault.errors import InvalidQuery
from carvault.verify.window import to_csv

FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def _json_values(col: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_float32(col.type):
        # float32 -> shortest decimal text -> float64 keeps "12.3" instead of 12.300000190734863.
        return pc.cast(pc.cast(col, pa.string()), pa.float64()).to_pylist()
    return col.to_pylist()


def to_json(table: pa.Table, meta: dict[str, Any]) -> bytes:
    """Columnar JSON: ``t`` as epoch milliseconds and one array per signal (null = not sampled)."""
    body = {
        **meta,
        "rows": table.num_rows,
        "t": table.column("t").cast(pa.int64()).to_pylist(),
        "signals": {name: _json_values(table.column(name)) for name in table.column_names if name != "t"},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def to_parquet(table: pa.Table, meta: dict[str, Any]) -> bytes:
    """Parquet (zstd) with the query description in the file's key-value metadata."""
    sink = io.BytesIO()
    schema = table.schema.with_metadata({b"carvault.export": json.dumps(meta).encode()})
    pq.write_table(table.cast(schema), sink, compression="zstd")
    return sink.getvalue()


CSV_TIME_COLUMN = "t_utc"  # the time column of every telemetry CSV offered for download: ISO 8601, UTC


def render(table: pa.Table, fmt: str, meta: dict[str, Any]) -> tuple[bytes, str]:
    """Encode a table in the requested format; return (body, media type)."""
    if fmt == "json":
        return to_json(table, meta), FORMATS["json"]
    if fmt == "csv":  # the column says its times are UTC (pages show local time): issue 13
        return to_csv(table, CSV_TIME_COLUMN), FORMATS["csv"]
    if fmt == "parquet":
        return to_parquet(table, meta), FORMATS["parquet"]
    raise InvalidQuery(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", format=fmt)
