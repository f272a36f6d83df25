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
    n = len(t)
    rows = np.arange(n, dtype=np.int64)
    cols = [table.column("t").take(pa.array(starts))]
    for name in table.column_names[1:]:
        col = table.column(name)
        valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        first = np.minimum.reduceat(np.where(valid, rows, n), starts)
        missing = first == n
        cols.append(col.take(pa.array(np.where(missing, 0, first), mask=missing)))
    return pa.Table.from_arrays(cols, schema=table.schema)


def iso_times(t: pa.ChunkedArray | pa.Array) -> pa.Array:
    """UTC timestamps as ISO 8601 strings with milliseconds, ``YYYY-MM-DDTHH:MM:SS.sssZ``."""
    ms = np.asarray(t.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64).astype("datetime64[ms]")
    return pa.array(np.datetime_as_string(ms, unit="ms").astype(object) + "Z", pa.string())


def to_csv(table: pa.Table) -> bytes:
    """CSV with a header row: ``t`` in ISO 8601 UTC, then one column per signal path (empty = not sampled)."""
    out = table.set_column(0, "t", iso_times(table.column("t")))
    sink = io.BytesIO()
    pcsv.write_csv(out, sink, pcsv.WriteOptions(quoting_style="needed", batch_size=16384))
    return sink.getvalue()
