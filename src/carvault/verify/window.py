"""Assembling a time window from signed batch tables, and its readable CSV form.

Pure (pyarrow + the catalogue): the package builder, the exports and the offline verifier all use it,
so the CSV in an incident package can be recomputed byte for byte from the signed batches.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

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
    if table.num_rows and pc.count_distinct(table.column("t")).as_py() < table.num_rows:
        # An event batch repeats instants a routine batch also holds: merge them, first value per signal.
        grouped = table.group_by("t", use_threads=False).aggregate([(p, "first") for p in order])
        table = grouped.select(["t", *[f"{p}_first" for p in order]]).rename_columns(["t", *order]).sort_by("t")
    cols = [table.column("t")] + [table.column(p) for p in order]
    return pa.Table.from_arrays(cols, schema=schema)


def iso_times(t: pa.ChunkedArray | pa.Array) -> pa.Array:
    """UTC timestamps as ISO 8601 strings with milliseconds."""
    return pc.strftime(t, format="%Y-%m-%dT%H:%M:%SZ")


def to_csv(table: pa.Table) -> bytes:
    """CSV with a header row: ``t`` in ISO 8601 UTC, then one column per signal path (empty = not sampled)."""
    out = table.set_column(0, "t", iso_times(table.column("t")))
    sink = io.BytesIO()
    pcsv.write_csv(out, sink, pcsv.WriteOptions(quoting_style="needed"))
    return sink.getvalue()
