"""Assembling a time window from signed batch tables, and its readable CSV form.

Pure (pyarrow + the catalogue): the package builder, the exports and the offline verifier all use it,
so the CSV in an incident package can be recomputed byte for byte from the signed batches.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from carvault.protocol import kernels
from carvault.protocol.columns import TIME_TYPE
from carvault.signals import Catalogue


def assemble(tables: Sequence[pa.Table], start_ms: int, end_ms: int, catalogue: Catalogue) -> pa.Table:
    """Rows with start_ms <= t < end_ms from all tables, sorted by t, columns in catalogue order.

    The rows are chosen with NumPy on the time column alone, then every column is gathered once (one ``take``):
    a filter, a sort and the merge's take each copied all ~300 columns, which made this most of the offline
    verifier's run time. The rows are the ones a filter then a stable sort by t would give, in the same order, so
    the window is the same table.
    """
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
    table = pa.Table.from_arrays([table.column("t")] + [table.column(p) for p in order], schema=schema)
    # A row without a time (null t) is outside every window: filled with end_ms it fails t < end_ms.
    t = np.asarray(kernels.fill_null(kernels.cast(table.column("t"), pa.int64()), end_ms).to_numpy(), dtype=np.int64)
    rows = np.flatnonzero((t >= start_ms) & (t < end_ms))
    times = t[rows]
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():
        by_time = np.argsort(times, kind="stable")  # stable: rows of one instant keep their batch order
        rows, times = rows[by_time], times[by_time]
    return _merge_instants(table, rows, times)


def _merge_instants(table: pa.Table, rows: np.ndarray, times: np.ndarray) -> pa.Table:
    """The window's table: one row per instant, each signal's first non-null value among the instant's rows.

    ``rows`` are ``table``'s rows in the window, sorted by time (``times``), an instant's rows in batch order. An
    event batch repeats instants a routine batch also holds; the earlier-seq batch's value wins, and a signal only
    the later batch carries fills in. Each instant's first row is taken for every column at once; only the rows of
    repeated instants (a few hundred) are then looked at, per column, for a null a later row fills.
    """
    starts = np.flatnonzero(np.concatenate(([True], times[1:] != times[:-1]))) if len(times) else rows
    firsts = rows[starts]
    merged = _gather(table, firsts)
    if len(starts) == len(rows):
        return merged
    sizes = np.diff(np.append(starts, len(rows)))
    repeated = np.flatnonzero(sizes > 1)  # the instants with more than one row
    counts = sizes[repeated]
    local = np.concatenate(([0], np.cumsum(counts)[:-1]))  # where each repeated instant's rows start in ``member``
    member = np.repeat(starts[repeated] - local, counts) + np.arange(int(counts.sum()))  # their positions in rows
    members = kernels.take(table, _indices(rows[member]))
    positions = np.arange(len(member), dtype=np.int64)
    for i, name in enumerate(table.column_names[1:], start=1):
        valid = _validity(members.column(name))
        if valid is None:
            continue  # no nulls: the first row of every repeated instant has the value
        first = np.minimum.reduceat(np.where(valid, positions, len(member)), local)
        fills = (first != local) & (first != len(member))  # a later row holds the value the first row lacks
        if not fills.any():
            continue
        source = firsts.copy()
        source[repeated[fills]] = rows[member[first[fills]]]
        merged = merged.set_column(i, name, kernels.take(table.column(name), _indices(source)))
    return merged


#: Most runs of consecutive rows gathered as slices; past it, one ``take`` gathers the rows.
MAX_SLICED_RUNS = 64


def _gather(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)``, one chunk per column: as slices joined when the rows are a few runs of consecutive rows.

    A window's rows are each batch's rows in order, one run per batch or a few more around an event batch's repeated
    instants. Slicing those runs and joining each column's pieces copies whole buffers, where a take gathers every
    value of every column: 3-4 ms against 12-17 ms for a 30-minute window of 317 columns. The chunks are joined because
    the CSV writer renders a table of a few chunks per column about 8 ms slower than one of a single chunk.
    """
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(rows) == 0 or len(cuts) >= MAX_SLICED_RUNS:
        return kernels.take(table, _indices(rows))
    bounds = np.concatenate(([0], cuts, [len(rows)]))
    runs = [table.slice(int(rows[a]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return pa.concat_tables(runs).combine_chunks()


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
    ms = np.asarray(kernels.cast(t, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    n = len(ms)
    if n and (ms.min() < _FIXED_WIDTH_MS[0] or ms.max() >= _FIXED_WIDTH_MS[1]):
        return kernels.strftime(t, "%Y-%m-%dT%H:%M:%SZ")  # the same text, the slow general way
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    chars = np.empty((n, _ISO_LEN + 1), dtype=np.uint8)
    chars[:, :_ISO_LEN] = text.astype(f"S{_ISO_LEN}").view(np.uint8).reshape(n, _ISO_LEN)
    chars[:, _ISO_LEN] = ord("Z")
    offsets = np.arange(0, (n + 1) * (_ISO_LEN + 1), _ISO_LEN + 1, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def to_csv(table: pa.Table, time_column: str = "t") -> bytes:
    """CSV with a header row: the time (``time_column``) in ISO 8601 UTC, then one column per signal path (empty =
    not sampled). Packages keep ``t`` (their data/window.csv is checked byte for byte); downloads say ``t_utc``."""
    return _render(_with_iso_times(table, time_column), header=True).to_pybytes()


def csv_equals(table: pa.Table, data: bytes | None) -> bool:
    """Whether ``data`` is exactly ``to_csv(table)`` (a package's data/window.csv), the rows rendered on two threads.

    The CSV writer writes the header, then every row on its own: a cell's text depends on its value and its
    column's type (quoting "needed" quotes by type), never on another row, which is why ``to_csv`` of a table longer
    than one writer batch is the concatenation of its batches' texts. So ``to_csv(table)`` is the header and first
    rows' text followed by the other rows' text, and comparing those two pieces with the two consecutive parts of
    ``data`` is the same byte-for-byte comparison. The writer releases the GIL, so on two cores the halves render in
    about half the time, which is most of the offline verifier's check of the CSV.
    """
    if data is None:
        return False
    out = _with_iso_times(table, "t")
    half = out.num_rows // 2
    if half < 1024:  # too small to be worth a thread
        return _render(out, header=True).equals(pa.py_buffer(data))
    done: list[pa.Buffer | BaseException] = []

    def render_second() -> None:
        try:
            done.append(_render(out.slice(half), header=False))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread below
            done.append(e)

    worker = threading.Thread(target=render_second, name="csv-second-half")
    worker.start()
    try:
        first = _render(out.slice(0, half), header=True)
    finally:
        worker.join()
    second = done[0]
    if isinstance(second, BaseException):
        raise second
    view, cut = pa.py_buffer(data), first.size
    return cut + second.size == len(data) and first.equals(view.slice(0, cut)) and second.equals(view.slice(cut))


def _with_iso_times(table: pa.Table, time_column: str) -> pa.Table:
    """The table with its time column as the ISO 8601 text the CSV holds, named ``time_column``."""
    return table.set_column(0, time_column, iso_times(table.column("t")))


def _render(table: pa.Table, *, header: bool) -> pa.Buffer:
    """The CSV text of ``table`` (time already as text): the one place the writer's options are set."""
    sink = pa.BufferOutputStream()
    options = pcsv.WriteOptions(include_header=header, quoting_style="needed", batch_size=16384)
    pcsv.write_csv(table, sink, options)
    return sink.getvalue()
