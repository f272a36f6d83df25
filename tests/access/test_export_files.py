"""The export job's fast writers give the same bytes as the small in-memory renderer (access/exports.py).

CSV and JSON byte for byte, Parquet as equal tables with the same metadata; across piece edges, empty pieces,
pieces that lack columns (signals a vehicle never sent), nulls, text that needs quoting, awkward floats and times.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carvault.access import jobs as export_jobs
from carvault.access.exports import csv_header, csv_rows, quoted_iso_times, render, to_json
from carvault.access.jobs import ExportJob, ExportJobs
from carvault.protocol.columns import TIME_TYPE
from carvault.region import Region
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.window import iso_times
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table

TYPES = {
    "a.float": pa.float32(),
    "b.double": pa.float64(),
    "c.missing": pa.float32(),  # never in any piece
    "d.bool": pa.bool_(),
    "e.text": pa.string(),
    "f.uint8": pa.uint8(),
    "g.int16": pa.int16(),
    "h.missing_text": pa.string(),
    "i.uint32": pa.uint32(),
    "j.int8": pa.int8(),
}
META = {"vin": "TESTVIN0000000001", "start_ms": 0, "end_ms": 1, "resample_ms": None, "units": {"a.float": "km/h"}}
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e-7, 3.0e38, 12.3, 1 / 3, 123456789.0, 5e-324]
TEXTS = ["P", "D", 'say "hi"', "a,b", "line\nbreak", "逗号，引号“", "", " space "]


def _schema() -> pa.Schema:
    return pa.schema([pa.field("t", TIME_TYPE, nullable=False)] + [pa.field(n, t) for n, t in TYPES.items()])


def _column(rng: random.Random, name: str, t: pa.DataType, n: int, null_share: float) -> pa.Array:
    def value() -> object:
        if rng.random() < null_share:
            return None
        if pa.types.is_floating(t):
            x = rng.choice(FLOATS) if rng.random() < 0.5 else rng.uniform(-1e4, 1e4)
            return x if pa.types.is_float64(t) else float(pa.scalar(x, pa.float32()).as_py())
        if pa.types.is_boolean(t):
            return rng.random() < 0.5
        if pa.types.is_string(t):
            return rng.choice(TEXTS)
        return rng.randint(0, 100) if pa.types.is_unsigned_integer(t) else rng.randint(-100, 100)

    return pa.array([value() for _ in range(n)], t)


def _table(seed: int, n: int, start_ms: int = BASE_MS) -> pa.Table:
    """A full-width table like a window's: strictly increasing times crossing UTC days, every kind of column."""
    rng = random.Random(seed)
    times, t = [], start_ms
    for _ in range(n):
        t += rng.choice([1, 100, 100, 999, 86_399_000])
        times.append(t)
    cols = [pa.array(times, pa.int64()).cast(TIME_TYPE)]
    for name, typ in TYPES.items():
        share = 1.0 if "missing" in name else rng.choice([0.0, 0.3, 0.9])
        cols.append(_column(rng, name, typ, n, share))
    return pa.Table.from_arrays(cols, schema=_schema())


def _pieces(full: pa.Table, seed: int) -> list[pa.Table]:
    """``full`` cut at random edges, with empty pieces between, each without the columns it holds no value of."""
    rng = random.Random(seed)
    out, a = [full.slice(0, 0)], 0
    while a < full.num_rows:
        b = min(full.num_rows, a + rng.choice([1, 2, 7, 50, 300]))
        piece = full.slice(a, b - a)
        empty = [c for c in piece.column_names if c != "t" and piece.column(c).null_count == piece.num_rows]
        out += [piece.drop_columns(empty), piece.slice(0, 0)]
        a = b
    return out


def _write(writer_cls: type, pieces: list[pa.Table], schema: pa.Schema, tmp_path: Path) -> bytes:
    buf = io.BytesIO()
    sink = export_jobs._Sink(buf)  # type: ignore[arg-type]
    args: tuple = (sink, schema)
    if writer_cls is export_jobs._ParquetOut:
        args = (sink, schema, {"t", *(n for p in pieces if p.num_rows for n in p.column_names)})
    elif writer_cls is export_jobs._JsonOut:
        args = (sink, schema, META, tmp_path)
    writer = writer_cls(*args)
    rows = sum(writer.write(p) for p in pieces)
    writer.close()
    writer.abort()
    digest = sink.close()
    assert rows == sum(p.num_rows for p in pieces)
    import hashlib

    assert digest == hashlib.sha256(buf.getvalue()).hexdigest()
    return buf.getvalue()


def test_quoted_times_equal_iso_times() -> None:
    rng = random.Random(7)
    ms = [0, 1, 86_399_999, 86_400_000, 951_782_400_000, 4_102_444_799_999, 253_402_300_799_999]
    ms += [rng.randrange(0, 253_402_300_800_000) for _ in range(2000)]
    t = pa.array(ms, pa.int64()).cast(TIME_TYPE)
    assert quoted_iso_times(t).to_pylist() == [f'"{s}"' for s in iso_times(t).to_pylist()]
    # Before 1970 the general (slower) way gives the same text.
    early = pa.array([-1, -86_400_001, -62_135_596_800_000], pa.int64()).cast(TIME_TYPE)
    assert quoted_iso_times(early).to_pylist() == [f'"{s}"' for s in iso_times(early).to_pylist()]
    assert quoted_iso_times(t.slice(0, 0)).to_pylist() == []


@pytest.mark.parametrize("seed", range(4))
def test_csv_rows_equal_the_renderer(seed: int) -> None:
    full = _table(seed, 700)
    want, _ = render(full, "csv", META)
    got = csv_header(full.schema) + b"".join(bytes(csv_rows(p, full.schema)) for p in _pieces(full, seed))
    assert got == want
    # NaN and infinities are written as Arrow's CSV writer writes them.
    odd = full.slice(0, 4).set_column(
        1, "a.float", pa.array([float("nan"), float("inf"), -float("inf"), None], pa.float32())
    )
    assert csv_header(odd.schema) + bytes(csv_rows(odd, odd.schema)) == render(odd, "csv", META)[0]


@pytest.mark.parametrize("seed", range(3))
def test_each_writer_equals_the_renderer(seed: int, tmp_path: Path) -> None:
    full = _table(100 + seed, 1500)
    pieces = _pieces(full, seed)
    schema = full.schema.with_metadata({b"carvault.export": json.dumps(META).encode()})
    assert _write(export_jobs._CsvOut, pieces, schema, tmp_path) == render(full, "csv", META)[0]
    full_json = full.set_column(1, "a.float", full.column("a.float"))  # JSON: no NaN in these tables
    assert _write(export_jobs._JsonOut, pieces, schema, tmp_path) == to_json(full_json, META)
    got = pq.read_table(io.BytesIO(_write(export_jobs._ParquetOut, pieces, schema, tmp_path)))
    want = pq.read_table(io.BytesIO(render(full, "parquet", META)[0]))
    assert got.equals(want) and got.schema.metadata == want.schema.metadata
    assert not list(tmp_path.iterdir())  # the JSON spool is gone


def test_writers_with_no_rows_at_all(tmp_path: Path) -> None:
    full = _table(1, 0)
    schema = full.schema.with_metadata({b"carvault.export": json.dumps(META).encode()})
    pieces = [full, full.select(["t"])]
    assert _write(export_jobs._CsvOut, pieces, schema, tmp_path) == render(full, "csv", META)[0]
    assert _write(export_jobs._JsonOut, pieces, schema, tmp_path) == to_json(full, META)
    got = pq.read_table(io.BytesIO(_write(export_jobs._ParquetOut, pieces, schema, tmp_path)))
    assert got.equals(pq.read_table(io.BytesIO(render(full, "parquet", META)[0])))


def test_parquet_row_groups_and_uncompressed_absent_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_jobs, "ROW_GROUP_ROWS", 500)
    full = _table(9, 1600)
    pieces = _pieces(full, 9)
    schema = full.schema.with_metadata({b"carvault.export": json.dumps(META).encode()})
    data = _write(export_jobs._ParquetOut, pieces, schema, tmp_path)
    f = pq.ParquetFile(io.BytesIO(data))
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
    assert sum(sizes) == 1600 and all(s >= 500 for s in sizes[:-1]) and len(sizes) >= 3
    names = f.schema_arrow.names
    codecs = {names[i]: f.metadata.row_group(0).column(i).compression for i in range(len(names))}
    assert codecs["c.missing"] == "UNCOMPRESSED" and codecs["a.float"] == "ZSTD" and codecs["t"] == "ZSTD"
    assert f.read().equals(pq.read_table(io.BytesIO(render(full, "parquet", META)[0])))


def test_a_failed_write_fails_the_sink() -> None:
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    sink = export_jobs._Sink(Full())  # type: ignore[arg-type]
    sink.write(b"x")
    with pytest.raises(OSError, match="No space"):
        sink.close()


def test_the_sink_hashes_what_it_writes_and_syncs_as_it_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written and hashed by two threads in the order given; on disk in steps, so the job's last fsync is short."""
    import hashlib
    import os

    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.fstat(fd).st_size), real(fd))[1])
    monkeypatch.setattr(export_jobs._Sink, "SYNC_BYTES", 1000)
    pieces = [bytes([i]) * (300 + 37 * i) for i in range(40)]
    path = tmp_path / "export.part"
    with open(path, "wb") as out:
        sink = export_jobs._Sink(out)
        for i, piece in enumerate(pieces):
            sink.write(piece if i % 2 else pa.py_buffer(piece))
        digest = sink.close()
    data = path.read_bytes()
    assert data == b"".join(pieces)
    assert digest == hashlib.sha256(data).hexdigest()
    assert len(synced) >= len(data) // 2000 and synced == sorted(synced) and synced[-1] <= len(data)


def test_progress_is_written_at_most_once_a_second(
    region: Region, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    agent.record(drive_table(seconds=300, paths=["Vehicle.Speed"]), batch_seconds=60)
    agent.upload_pending()
    jobs = ExportJobs(region, background=False, chunk_ms=30_000, heartbeat_s=3600)
    seen: list[float] = []
    real = jobs._heartbeat

    def spy(job_id: int, progress: float, rows: int) -> None:
        seen.append(progress)
        real(job_id, progress, rows)

    jobs._heartbeat = spy  # type: ignore[method-assign]
    job = jobs.create(owner.owner_id, vehicle.vin, start_ms=BASE_MS, end_ms=BASE_MS + 300_000, fmt="csv")
    assert jobs.run(job.id)
    assert len(seen) == 1  # ten chunks, one update (the first); the finish writes the rest
    with region.db.session() as s:
        done = s.get(ExportJob, job.id)
        assert done is not None and done.status == "done" and done.rows == 3000 and done.progress == 1.0


def test_the_store_stream_and_small_chunks_give_the_same_files(
    region: Region, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    # Four minutes across a UTC midnight: the store's stream cuts there, the small chunks every 70 s.
    midnight = (BASE_MS // 86_400_000 + 1) * 86_400_000
    paths = ["Vehicle.Speed", "Vehicle.Powertrain.Transmission.SelectedGear", "Vehicle.IsMoving"]
    agent.record(drive_table(start_ms=midnight - 120_000, seconds=240, paths=paths), batch_seconds=50)
    agent.upload_pending()
    stream = ExportJobs(region, background=False)
    small = ExportJobs(region, background=False, chunk_ms=70_000)
    for fmt in ("csv", "json", "parquet"):
        for resample_ms in (None, 30_000, 45_000, 7_000):
            files = []
            for jobs in (stream, small):
                job = jobs.create(
                    owner.owner_id, vehicle.vin, start_ms=None, end_ms=None, fmt=fmt, resample_ms=resample_ms
                )
                assert jobs.run(job.id)
                done = jobs.get(owner.owner_id, job.id)
                assert done.status == "done", done.error
                files.append(jobs.open_file(done).read_bytes())
            if fmt == "parquet":
                assert pq.read_table(io.BytesIO(files[0])).equals(pq.read_table(io.BytesIO(files[1])))
            else:
                assert files[0] == files[1], (fmt, resample_ms)
            # 30 s buckets: 8 (the span starts on one); 45 s: 6 (midnight is on one, the start is not); 7 s: 35,
            # one of them across midnight, which the store's stream cuts.
            assert done.rows == {None: 2400, 30_000: 8, 45_000: 6, 7_000: 35}[resample_ms]
