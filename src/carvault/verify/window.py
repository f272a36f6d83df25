"""Assembling a time window from signed batch tables, and its readable CSV form.

Pure (pyarrow + the catalogue): the package builder, the exports and the offline verifier all use it,
so the CSV in an incident package can be recomputed byte for byte from the signed batches.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from carvault.protocol.columns import TIME_TYPE
from carvault.signals import Catalogue


def assemble(tables: Sequence[pa.Table], start_ms: int, end_ms: int, catalogue: Catalogue) -> pa.Table:
    """Rows with start_ms <= t < end_ms from all tables, sorted by t, columns in catalogue order."""
    present: set[str] = set()
    for t in tables:
        present.update(c for c in t.column_names if c != "t")
    order = [p for p in catalogue.paths if p in present]
    schema = pa.schema(
        [pa.field("t", TIME_TYPE, nullable=False)] + [pa.field(p, catalogue[p].arrow_type) for p in order]
    )
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(list(tables), promote_options="default")
    t = table.column("t").cast(pa.int64())
    table = table.filter(pc.and_(pc.greater_equal(t, start_ms), pc.less(t, end_ms))).sort_by("t")
    cols = [table.column("t")] + [table.column(p) for p in order]
    out = pa.Table.from_arrays(cols, schema=schema)
    return _merge_instants(out) if out.num_rows else out


def _merge_instants(table: pa.Table) -> pa.Table:
    """One row per instant: where batches repeat an instant, each signal keeps its first non-null value.

    ``table`` is sorted by t (a stable sort, so rows of one instant keep their batch order). An event batch
    repeats instants a routine batch also holds; the earlier-seq batch's value wins, and a signal only the
    later batch carries fills in.
    """
    t = np.asarray(table.column("t").cast(pa.int64()).to_numpy(), dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
    if len(starts) == len(t):
        return table
    table = table.combine_chunks()
    merged = table.take(_indices(starts))  # each instant's first row; fixed below where it is null
    n = len(t)
    rows = np.arange(n, dtype=np.int64)
    for i, name in enumerate(table.column_names[1:], start=1):
        valid = _validity(table.column(name))
        if valid is None:
            continue  # no nulls: the first row of every instant has the value
        first = np.minimum.reduceat(np.where(valid, rows, n), starts)
        missing = first == n
        if np.array_equal(first[~missing], starts[~missing]):
            continue  # wherever an instant has a value, its first row has it
        merged = merged.set_column(i, name, table.column(name).take(_indices(np.where(missing, 0, first), missing)))
    return merged


def _validity(col: pa.ChunkedArray) -> np.ndarray | None:
    """Which rows of a one-chunk column are non-null, from its validity bitmap (None: no nulls)."""
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    bitmap = arr.buffers()[0]
    if arr.null_count == 0 or bitmap is None:
        return None if arr.null_count == 0 else np.zeros(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little", count=arr.offset + len(arr))
    return bits[arr.offset :].astype(bool)


def _indices(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    """An int64 Arrow array over ``values`` (null where ``missing``), built from buffers.

    ``pa.array`` on a NumPy array imports ``numpy.ma`` (about 15 ms), a cost the offline verifier avoids.
    """
    data = pa.py_buffer(np.ascontiguousarray(values, dtype=np.int64))
    validity = None if missing is None or not missing.any() else pa.py_buffer(np.packbits(~missing, bitorder="little"))
    return pa.Array.from_buffers(pa.int64(), len(values), [validity, data])


_ISO_LEN = len("2026-01-01T00:00:00.000")
#: Epoch ms of 0000-01-01 and 10000-01-01: between them every time is exactly _ISO_LEN characters.
_FIXED_WIDTH_MS = (-62167219200000, 253402300800000)


def iso_times(t: pa.ChunkedArray | pa.Array) -> pa.Array:
    """UTC timestamps as ISO 8601 strings with milliseconds, ``YYYY-MM-DDTHH:MM:SS.sssZ``."""
    ms = np.asarray(t.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    n = len(ms)
    if n and (ms.min() < _FIXED_WIDTH_MS[0] or ms.max() >= _FIXED_WIDTH_MS[1]):
        return pc.strftime(t, format="%Y-%m-%dT%H:%M:%SZ")  # the same text, the slow general way
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    chars = np.empty((n, _ISO_LEN + 1), dtype=np.uint8)
    chars[:, :_ISO_LEN] = text.astype(f"S{_ISO_LEN}").view(np.uint8).reshape(n, _ISO_LEN)
    chars[:, _ISO_LEN] = ord("Z")
    offsets = np.arange(0, (n + 1) * (_ISO_LEN + 1), _ISO_LEN + 1, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def to_csv(table: pa.Table, time_column: str = "t") -> bytes:
    """CSV with a header row: the time (``time_column``) in ISO 8601 UTC, then one column per signal path (empty =
    not sampled). Packages keep ``t`` (their data/window.csv is checked byte for byte); downloads say ``t_utc``."""
    out = table.set_column(0, time_column, iso_times(table.column("t")))
    sink = io.BytesIO()
    pcsv.write_csv(out, sink, pcsv.WriteOptions(quoting_style="needed", batch_size=16384))
    return sink.getvalue()
