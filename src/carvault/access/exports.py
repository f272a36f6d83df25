"""Machine-readable copies of telemetry: JSON, CSV and Parquet, free of charge and complete."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from carvault.errors import InvalidQuery
from carvault.verify.window import iso_times, to_csv

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
    if col.null_count == len(col):  # a signal the vehicle does not carry: no kernel needed
        return json_nulls(len(col))
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


_NULLS = b"null," * 65536


def json_nulls(n: int) -> bytes:
    """``n`` JSON nulls as the inside of an array (``null,null``)."""
    return b"".join(json_null_pieces(n))


def json_null_pieces(n: int) -> Iterator[bytes]:
    """``json_nulls(n)`` in pieces of at most 320 KiB, most of them one shared constant (nothing to allocate)."""
    if n <= 0:
        return
    whole, rest = divmod(n - 1, 65536)
    for _ in range(whole):
        yield _NULLS
    if rest:
        yield _NULLS[: 5 * rest]
    yield b"null"


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


def window_parquet(table: pa.Table, meta: dict[str, Any]) -> bytes:
    """Parquet for a window answered at once (``GET .../telemetry?format=parquet``), meant to be cheap at both ends.

    Snappy, plain encodings and no column statistics: for a 30-minute window about 2.7 ms to write and 3 ms to read
    instead of 5.6 and 4 (zstd with dictionaries and statistics), for ~40 % more bytes (≈ 175 kB against 125 kB),
    which a local or fast link carries in less time than zstd saves (issue 12). Files to keep are ``to_parquet``'s.
    """
    sink = io.BytesIO()
    pq.write_table(
        table.replace_schema_metadata({b"carvault.export": json.dumps(meta).encode()}),
        sink,
        compression="snappy",
        use_dictionary=False,
        write_statistics=False,
    )
    return sink.getvalue()


CSV_TIME_COLUMN = "t_utc"  # the time column of every telemetry CSV offered for download: ISO 8601, UTC

_DAY_MS = 86_400_000
_MAX_MS = 253402300800000  # 10000-01-01: below it, and from 1970 on, every time has the same fixed width


def quoted_iso_times(t: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The CSV text of a time column: ``"YYYY-MM-DDTHH:MM:SS.sssZ"`` with its quotes (as Arrow's CSV writer quotes
    text), the same characters as ``verify.window.iso_times``.

    Built from digits with NumPy (one date string per distinct day, the time of day by integer arithmetic): about
    ten times faster than formatting every instant as a datetime, which dominated a CSV export's time.
    """
    ms = np.asarray(t.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    n = len(ms)
    if n and (ms.min() < 0 or ms.max() >= _MAX_MS):
        return pc.binary_join_element_wise('"', iso_times(t), '"', "")
    days, inverse = np.unique(ms // _DAY_MS, return_inverse=True)
    dates = np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype("S10").view(np.uint8)
    rest = ms - (ms // _DAY_MS) * _DAY_MS
    chars = np.empty((n, 26), dtype=np.uint8)
    chars[:, 0] = chars[:, 25] = ord('"')
    chars[:, 1:11] = dates.reshape(-1, 10)[inverse.reshape(-1)]
    chars[:, 11], chars[:, 14], chars[:, 17], chars[:, 20], chars[:, 24] = map(ord, "T::.Z")
    for col, unit, width in ((12, 3_600_000, 2), (15, 60_000, 2), (18, 1000, 2), (21, 1, 3)):
        value = rest // unit
        rest = rest - value * unit
        for k in range(width - 1, -1, -1):
            chars[:, col + k] = value % 10 + 48
            value //= 10
    offsets = np.arange(0, (n + 1) * 26, 26, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def _csv_words(values: pa.Array) -> pa.Array | None:
    """Distinct values as CSV text the way Arrow's writer renders them (null stays null); None for a type it cannot."""
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):  # text is always quoted, quotes doubled
        return pc.binary_join_element_wise('"', pc.replace_substring(values.cast(pa.string()), '"', '""'), '"', "")
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pc.cast(values, pa.string())  # the cast Arrow's writer applies to numbers and booleans
    return None


def csv_rows(table: pa.Table, schema: pa.Schema) -> pa.Buffer:
    """The data rows of ``to_csv(table, CSV_TIME_COLUMN)`` (no header) for the columns of ``schema``, byte for byte.

    ``table`` may lack columns of ``schema`` (a signal the vehicle never sent): they are empty fields, like a
    column of nulls. Every value is written from its column's *words*: each distinct value formatted once (a signal
    repeats few distinct values, quantised by the car; formatting a float is the costly step), with the commas
    before it in the row (a null is its commas alone). A column with one word in the whole block is folded into
    the next column's words. The rows are then one ``take`` from all the words in row order: the taken strings'
    bytes are the CSV text. Joining each row from its fields with separators instead
    (``binary_join_element_wise``) cost twice as much: a row is about 40 fields and 330 commas.
    A column of another type falls back to Arrow's CSV writer.
    """
    n = table.num_rows
    if n == 0:
        return pa.py_buffer(b"")
    have = dict(zip(table.column_names, table.columns, strict=True))
    times = quoted_iso_times(have["t"])
    words: list[pa.Array] = [times.combine_chunks() if isinstance(times, pa.ChunkedArray) else times]
    codes: list[np.ndarray] = [np.arange(n, dtype=np.int32)]  # per column, each row's word in ``words``
    size = n  # words so far
    before = ""  # the text between the last column with words and the next one
    for field in schema:
        if field.name == "t":
            continue
        before += ","
        col = have.get(field.name)
        if col is None or col.null_count == n:
            continue
        encoded = (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).dictionary_encode(
            null_encoding="encode"  # distinct means distinct bits: 0 and -0 stay apart, as the cast keeps them
        )
        text = _csv_words(encoded.dictionary)
        if text is None:
            return _csv_fallback(table, schema)
        if len(text) == 1:  # the same value in every row
            before += text[0].as_py()
            continue
        words.append(pc.binary_join_element_wise(before, text, "", null_handling="replace", null_replacement=""))
        codes.append(encoded.indices.to_numpy() + np.int32(size))
        size += len(text)
        before = ""
    words.append(pa.array([before + "\n"], pa.string()))
    codes.append(np.full(n, size, dtype=np.int32))  # the row's end
    rows = pa.concat_arrays(words).take(pa.array(np.stack(codes, axis=1).reshape(-1)))
    _, offsets, data = rows.buffers()
    ends = np.frombuffer(offsets, dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    return data[int(ends[0]) : int(ends[-1])]


def _csv_fallback(table: pa.Table, schema: pa.Schema) -> pa.Buffer:
    have = set(table.column_names)
    columns = [
        iso_times(table.column("t"))
        if f.name == "t"
        else (table.column(f.name) if f.name in have else pa.nulls(table.num_rows, f.type))
        for f in schema
    ]
    sink = io.BytesIO()
    names = [CSV_TIME_COLUMN if f.name == "t" else f.name for f in schema]
    pcsv.write_csv(
        pa.table(columns, names=names), sink, pcsv.WriteOptions(quoting_style="needed", include_header=False)
    )
    return pa.py_buffer(sink.getvalue())


def csv_header(schema: pa.Schema) -> bytes:
    """The header row of a telemetry CSV download with the columns of ``schema`` (``t`` named ``t_utc``)."""
    names = [CSV_TIME_COLUMN if f.name == "t" else f.name for f in schema]
    sink = io.BytesIO()
    pcsv.write_csv(pa.table([pa.array([], pa.string())] * len(names), names=names), sink)
    return sink.getvalue()


def render(table: pa.Table, fmt: str, meta: dict[str, Any]) -> tuple[bytes, str]:
    """Encode a table in the requested format; return (body, media type)."""
    if fmt == "json":
        return to_json(table, meta), FORMATS["json"]
    if fmt == "csv":  # the column says its times are UTC (pages show local time): issue 13
        return to_csv(table, CSV_TIME_COLUMN), FORMATS["csv"]
    if fmt == "parquet":
        return to_parquet(table, meta), FORMATS["parquet"]
    raise InvalidQuery(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", format=fmt)
