"""Machine-readable copies of telemetry: JSON, CSV and Parquet, free of charge and complete."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
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


_JSON_CHUNK = 1 << 20  # values per joined piece: one piece's text stays far below Arrow's 2 GiB string limit


def json_values(col: pa.Array | pa.ChunkedArray) -> bytes:
    """The values as the inside of a JSON array (``1,12.3,null,true,"P"``), encoded by Arrow's kernels.

    No Python object per value (issue 12: JSON exports at millions of samples per second): numbers go through
    orjson's numpy path (shortest round-trip text: a float32 12.3 is written ``12.3``; a missing float is a NaN
    there, which orjson writes as ``null``), times as epoch milliseconds, integers and booleans with gaps through
    Arrow's kernels, text through ``json.dumps`` once per distinct value. NaN and infinity are not JSON: ValueError.
    """
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) == 0:
        return b""
    t = col.type
    if pa.types.is_timestamp(t):
        col, t = col.cast(pa.int64()), pa.int64()
    if pa.types.is_floating(t):
        if not pc.all(pc.is_finite(col.fill_null(0))).as_py():
            raise ValueError("NaN or infinity cannot be written as JSON")
        return orjson.dumps(col.to_numpy(zero_copy_only=False), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    if (pa.types.is_integer(t) or pa.types.is_boolean(t)) and col.null_count == 0:
        return orjson.dumps(col.to_numpy(zero_copy_only=False), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    if pa.types.is_boolean(t):
        text = pc.if_else(col, "true", "false")
    elif pa.types.is_integer(t):
        text = pc.cast(col, pa.string())
    else:
        encoded = col.cast(pa.string()).dictionary_encode()
        words = pa.array([json.dumps(v, ensure_ascii=False) for v in encoded.dictionary.to_pylist()], pa.string())
        text = words.take(encoded.indices)
    text = pc.fill_null(text, "null")
    pieces = []
    for start in range(0, len(text), _JSON_CHUNK):
        part = text.slice(start, _JSON_CHUNK)
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(part)], pa.int32()), part), ",")
        pieces.append(joined[0].as_buffer().to_pybytes())
    return b",".join(pieces)


def to_json(table: pa.Table, meta: dict[str, Any]) -> bytes:
    """Columnar JSON: ``t`` as epoch milliseconds and one array per signal (null = not sampled)."""
    head = json.dumps({**meta, "rows": table.num_rows}, separators=(",", ":"), allow_nan=False)
    parts = [head[:-1].encode(), b',"t":[', json_values(table.column("t")), b'],"signals":{']
    for k, name in enumerate(n for n in table.column_names if n != "t"):
        parts += [b"," if k else b"", json.dumps(name).encode(), b":[", json_values(table.column(name)), b"]"]
    parts.append(b"}}")
    return b"".join(parts)


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
