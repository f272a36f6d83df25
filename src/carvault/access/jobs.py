"""Background export jobs: a window or a vehicle's whole history as CSV, Parquet, JSON or GPX.

Made for several processes: a job's state lives in the metadata DB (``export_jobs``), its file in the
region's data folder (``exports/``), and whoever runs a job holds a *lease* on it. A worker claims a job
with one conditional UPDATE (queued, or running with an expired lease), so exactly one process runs it;
while it works it renews the lease with every progress update, and stops as soon as an update finds the
job no longer its own (cancelled, or taken over after the worker stalled). A job whose process died is
picked up again by any process when its lease runs out (``kick``, called when anyone looks at jobs).

A grant holder's job (``grant_id`` set) is built within that grant, re-read when the job runs: only the granted
signals, a window inside the grant's, and location coarsened after resampling unless precise location is granted
(compliance/sharing.py). A revoked or ended grant fails the job.

The file is built piece by piece (a UTC day of data per read; resampled, the last bucket of a piece waits for the
next piece so buckets are never split), which keeps memory flat and makes the result equal to what
``GET /api/v1/vehicles/{vin}/telemetry`` answers for the same window and format.

Fast (issue 12: a vehicle-year at ≥ 10 M samples/s as Parquet and CSV, ≥ 2 M/s as JSON): only the signals the
vehicle's batches carry are read (the others are empty columns the writers add for free); a reader thread fetches
the next piece while the current one is encoded; CSV blocks are encoded by a small thread pool (Arrow's kernels
release the GIL) and written in order; Parquet row groups hold up to about a million rows; JSON columns are
spooled to one temporary file and copied out column by column; the file is hashed while it is written; the job's
row is updated at most once a second.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import io
import json
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult, Result

from carvault.access.audit import AuditAction
from carvault.access.exports import csv_header, csv_rows, json_null_pieces, json_values
from carvault.access.gpx import ROUTE_SIGNALS, GpxWriter, gpx_name
from carvault.compliance.sharing import Scope, ScopedView
from carvault.errors import CarVaultError, Conflict, InvalidQuery, NotFound, Unavailable
from carvault.location import ACC, ALT, LAT, LON
from carvault.signals import Signal
from carvault.store.blobs import BlobNotFound
from carvault.store.metadata import BatchRecord, now_ms
from carvault.store.tables import ExportJob
from carvault.store.telemetry import resample
from carvault.windows import check_window

if TYPE_CHECKING:
    from carvault.region import Region

log = logging.getLogger("carvault.jobs")

FORMATS = ("csv", "parquet", "json", "gpx")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json",
    "gpx": "application/gpx+xml",
}
STATUSES = ("queued", "running", "done", "failed", "cancelled", "expired")
LEASE_MS = 60_000
CHUNK_MS = 86_400_000  # a UTC day per read
KEEP_MS = 7 * 24 * 3_600_000  # finished files are kept a week, then deleted
HEARTBEAT_S = 1.0  # progress (and the lease) is written at most this often
ROW_GROUP_ROWS = 1 << 17  # Parquet row groups of about 131,000 rows (DuckDB's own are 122,880)
CSV_BLOCK_ROWS = 1 << 16  # rows per CSV block for the pool (~29 MB of text); each distinct value is formatted once
# per block: 64 Ki rows cost about a tenth less CPU than 16 Ki in paired runs
ENCODE_THREADS = 2

T = TypeVar("T")


def job_json(j: ExportJob) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": j.id,
        "vin": j.vin,
        "start_ms": j.start_ms,
        "end_ms": j.end_ms,
        "whole_history": j.whole_history,
        "format": j.format,
        "signals": j.signals or None,
        "resample_ms": j.resample_ms,
        "grant_id": j.grant_id,
        "status": j.status,
        "progress": round(j.progress, 4),
        "rows": j.rows,
        "size": j.size,
        "sha256": j.sha256,
        "error": j.error,
        "created_ms": j.created_ms,
        "started_ms": j.started_ms,
        "finished_ms": j.finished_ms,
        "expires_ms": j.expires_ms,
        "download": f"/api/v1/exports/{j.id}/download" if j.status == "done" else None,
    }


class _LeaseLost(Exception):
    """The job was cancelled or taken over by another worker."""


def chunks(start_ms: int, end_ms: int, chunk_ms: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Windows [a, b) of at most ``chunk_ms`` with inner edges on multiples of it, keeping only those with data."""
    out: list[tuple[int, int]] = []
    a = start_ms
    while a < end_ms:
        b = min((a // chunk_ms + 1) * chunk_ms, end_ms)
        out.append((a, b))
        a = b
    if not spans:
        return []
    # Keep a chunk when any batch span [t0, t1] overlaps it (spans are sorted by t0 via seq order, not
    # necessarily by time, so sort).
    spans = sorted(spans)
    keep: list[tuple[int, int]] = []
    i = 0
    for a, b in out:
        while i < len(spans) and spans[i][1] < a:
            i += 1
        j = i
        while j < len(spans) and spans[j][0] < b:
            if spans[j][1] >= a:
                keep.append((a, b))
                break
            j += 1
    return keep


class ExportJobs:
    """Creates, runs and serves export jobs for one region (one instance per process)."""

    def __init__(
        self,
        region: Region,
        *,
        threads: int = 1,
        lease_ms: int = LEASE_MS,
        chunk_ms: int = CHUNK_MS,
        background: bool = True,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.region = region
        # Finished files are exports/<name> in the region's blob store; they are built in a local folder first
        # (the store's own exports/ folder when it is local, so finishing is a rename).
        self.blobs = region.blobs
        local = region.blobs.local_path("exports/x")
        self.folder = local.parent if local is not None else region.settings.data_dir / "exports-building"
        self.lease_ms = lease_ms
        self.chunk_ms = chunk_ms
        self.heartbeat_s = heartbeat_s
        self.worker_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.background = background
        self._queue: queue.Queue[int] = queue.Queue()
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"export-{i}", daemon=True)
            for i in range(threads if background else 0)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ owner-facing
    def create(
        self,
        owner_id: int,
        vin: str,
        *,
        start_ms: int | None,
        end_ms: int | None,
        fmt: str,
        signals: str | None = None,
        resample_ms: int | None = None,
        view: ScopedView | None = None,
        grant_id: int | None = None,
    ) -> ExportJob:
        """Queue an export of [start_ms, end_ms), or of everything when both are None.

        ``view`` and ``grant_id`` for a grant holder: the signals and the window must lie inside the grant (the
        whole history is cut to the grant's window), else ``OutOfScope``.
        """
        if fmt not in FORMATS:
            raise InvalidQuery(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", format=fmt)
        if (view is None or view.is_owner) != (grant_id is None):
            raise ValueError("a grant holder's export names its grant and its view, an owner's neither")
        self._signals(signals, fmt, view)  # fail now, not in the background
        whole = start_ms is None and end_ms is None
        if whole:
            with self.region.db.session() as s:
                lo, hi = s.execute(
                    select(func.min(BatchRecord.t0), func.max(BatchRecord.t1)).where(
                        BatchRecord.vin == vin, BatchRecord.kind == "telemetry"
                    )
                ).one()
            if lo is None:
                raise NotFound("this vehicle has not uploaded any data yet", vin=vin)
            start_ms, end_ms = int(lo), int(hi) + 1
            if view is not None:
                start_ms, end_ms = view.clip(start_ms, end_ms)
                if end_ms <= start_ms:
                    raise NotFound("this vehicle has no data within the grant's window", vin=vin)
        elif start_ms is None or end_ms is None:
            raise InvalidQuery("give both start and end, or neither for the whole history")
        elif view is not None:
            view.window(start_ms, end_ms)
        check_window(start_ms, end_ms)
        job = ExportJob(
            owner_id=owner_id,
            vin=vin,
            start_ms=start_ms,
            end_ms=end_ms,
            whole_history=whole,
            format=fmt,
            signals=(signals or "").strip(),
            resample_ms=resample_ms,
            grant_id=grant_id,
        )
        with self.region.db.session() as s:
            s.add(job)
        self.submit(job.id)
        return job

    def get(self, owner_id: int, job_id: int, grant_id: int | None = None) -> ExportJob:
        """One of the owner's jobs (``NotFound`` for anyone else's); a grant holder's own jobs only."""
        self.kick()
        with self.region.db.session() as s:
            j = s.get(ExportJob, job_id)
        if j is None or j.owner_id != owner_id or (grant_id is not None and j.grant_id != grant_id):
            raise NotFound("no such export")
        return j

    def for_owner(
        self, owner_id: int, vin: str | None = None, limit: int = 50, grant_id: int | None = None
    ) -> list[ExportJob]:
        """The owner's jobs (a grant holder: those made under its grant), newest first."""
        self.kick()
        q = select(ExportJob).where(ExportJob.owner_id == owner_id)
        if grant_id is not None:
            q = q.where(ExportJob.grant_id == grant_id)
        if vin:
            q = q.where(ExportJob.vin == vin)
        with self.region.db.session() as s:
            return list(s.scalars(q.order_by(ExportJob.id.desc()).limit(limit)))

    def cancel(self, owner_id: int, job_id: int, grant_id: int | None = None) -> ExportJob:
        """Stop a job (its worker notices at its next progress update) or delete a finished job's file."""
        j = self.get(owner_id, job_id, grant_id)
        with self.region.db.session() as s:
            s.execute(
                update(ExportJob)
                .where(ExportJob.id == j.id, ExportJob.status.in_(("queued", "running", "done", "failed")))
                .values(status="cancelled", finished_ms=now_ms(), lease_until_ms=None)
            )
        if j.file_name:
            self.blobs.delete(f"exports/{j.file_name}")
        return self.get(owner_id, job_id, grant_id)

    def open_file(self, job: ExportJob) -> Path:
        """The finished file of a job on this machine (local blob store only; see ``download``)."""
        found = self.download(job)
        if not isinstance(found, Path):
            raise Unavailable("the export is in object storage, not a file here; download it instead")
        return found

    def download(self, job: ExportJob) -> Path | Iterator[bytes]:
        """The finished file of a job: its path on the local store, or its bytes streamed from object storage."""
        if job.status != "done" or not job.file_name:
            raise Conflict(f"the export is {job.status}, not ready", status=job.status)
        key = f"exports/{job.file_name}"
        path = self.blobs.local_path(key)
        try:
            if path is None:
                return self.blobs.stream(key)
            if path.exists():
                return path
        except BlobNotFound:
            pass
        raise NotFound("the export file is gone (expired); request it again")

    def file_name(self, job: ExportJob) -> str:
        """The name a download is saved under."""
        return (
            f"{job.vin}-{'all' if job.whole_history else f'{job.start_ms}-{job.end_ms}'}"
            f"{f'-{job.resample_ms}ms' if job.resample_ms else ''}.{job.format}"
        )

    # ------------------------------------------------------------------ scheduling
    def submit(self, job_id: int) -> None:
        """Run a job in this process's background worker (or right away when there is none)."""
        if not self.background:
            return
        with self._lock:
            if job_id in self._inflight:
                return
            self._inflight.add(job_id)
        self._queue.put(job_id)

    def claimable(self) -> list[int]:
        """Jobs nobody is running: queued, or running under a lease that ran out."""
        now = now_ms()
        with self.region.db.session() as s:
            return list(
                s.scalars(
                    select(ExportJob.id)
                    .where(
                        (ExportJob.status == "queued")
                        | ((ExportJob.status == "running") & (ExportJob.lease_until_ms < now))
                    )
                    .order_by(ExportJob.id)
                )
            )

    def kick(self) -> None:
        """Take up orphaned jobs and delete expired files; cheap enough to call on every look."""
        for job_id in self.claimable():
            self.submit(job_id)
        now = now_ms()
        with self.region.db.session() as s:
            old = list(s.scalars(select(ExportJob).where(ExportJob.status == "done", ExportJob.expires_ms < now)))
            for j in old:
                j.status = "expired"
        for j in old:
            if j.file_name:
                self.blobs.delete(f"exports/{j.file_name}")

    def run_pending(self) -> int:
        """Run every claimable job here and now (a worker process, or tests); return how many ran."""
        return sum(self.run(job_id) for job_id in self.claimable())

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                self.run(job_id)
            except Exception:  # never let one job kill the worker
                log.exception("export job %s failed unexpectedly", job_id)
            finally:
                with self._lock:
                    self._inflight.discard(job_id)

    # ------------------------------------------------------------------ running
    def claim(self, job_id: int) -> bool:
        """Take the job for this worker if nobody holds it; True when this worker now owns it."""
        now = now_ms()
        with self.region.db.session() as s:
            res = _cursor(
                s.execute(
                    update(ExportJob)
                    .where(
                        ExportJob.id == job_id,
                        (ExportJob.status == "queued")
                        | ((ExportJob.status == "running") & (ExportJob.lease_until_ms < now)),
                    )
                    .values(
                        status="running",
                        worker=self.worker_id,
                        lease_until_ms=now + self.lease_ms,
                        started_ms=func.coalesce(ExportJob.started_ms, now),
                        attempts=ExportJob.attempts + 1,
                        progress=0.0,
                        rows=0,
                    )
                )
            )
            return bool(res.rowcount == 1)

    def _heartbeat(self, job_id: int, progress: float, rows: int) -> None:
        with self.region.db.session() as s:
            res = _cursor(
                s.execute(
                    update(ExportJob)
                    .where(
                        ExportJob.id == job_id,
                        ExportJob.worker == self.worker_id,
                        ExportJob.status == "running",
                    )
                    .values(progress=progress, rows=rows, lease_until_ms=now_ms() + self.lease_ms)
                )
            )
            if res.rowcount != 1:
                raise _LeaseLost()

    def run(self, job_id: int) -> bool:
        """Claim and build one job; False when another worker has it or it is not runnable."""
        if not self.claim(job_id):
            return False
        with self.region.db.session() as s:
            job = s.get(ExportJob, job_id)
        assert job is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        final = f"{job.id}-{secrets.token_hex(8)}.{job.format}"
        part = self.folder / (final + f".{self.worker_id}.part")
        try:
            with open(part, "wb") as out:
                sink = _Sink(out)
                try:
                    rows = self._build(job, sink)
                finally:
                    digest = sink.close()
                out.flush()
                os.fsync(out.fileno())
            size = part.stat().st_size
            if self.blobs.local_path(f"exports/{final}") is not None:
                os.replace(part, self.folder / final)
            else:
                self.blobs.put_file(f"exports/{final}", part)
                part.unlink()
            with self.region.db.session() as s:
                res = _cursor(
                    s.execute(
                        update(ExportJob)
                        .where(
                            ExportJob.id == job.id,
                            ExportJob.worker == self.worker_id,
                            ExportJob.status == "running",
                        )
                        .values(
                            status="done",
                            progress=1.0,
                            rows=rows,
                            size=size,
                            sha256=digest,
                            file_name=final,
                            finished_ms=now_ms(),
                            lease_until_ms=None,
                            expires_ms=now_ms() + KEEP_MS,
                        )
                    )
                )
                if res.rowcount != 1:
                    raise _LeaseLost()
            # A grant holder's export is recorded when it asks for it and when it downloads the file (routes/exports).
            if job.grant_id is None:
                self._record_done(job, rows, digest)
            return True
        except _LeaseLost:
            part.unlink(missing_ok=True)
            self.blobs.delete(f"exports/{final}")
            return False
        except Exception as e:
            part.unlink(missing_ok=True)
            message = e.message if isinstance(e, CarVaultError) else "the export failed on the server"
            if not isinstance(e, CarVaultError):
                log.exception("export job %s failed", job.id)
            with self.region.db.session() as s:
                s.execute(
                    update(ExportJob)
                    .where(ExportJob.id == job.id, ExportJob.worker == self.worker_id, ExportJob.status == "running")
                    .values(status="failed", error=message, finished_ms=now_ms(), lease_until_ms=None)
                )
            return True

    def _record_done(self, job: ExportJob, rows: int, digest: str) -> None:
        """The owner's own finished export, in their audit log."""
        self.region.audit.by_owner(
            job.owner_id,
            AuditAction.TELEMETRY_EXPORT,
            vin=job.vin,
            detail={
                "export_id": job.id,
                "start_ms": job.start_ms,
                "end_ms": job.end_ms,
                "format": job.format,
                "signals": job.signals or "*",
                "resample_ms": job.resample_ms,
                "rows": rows,
                "sha256": digest,
            },
        )

    # ------------------------------------------------------------------ building
    def _signals(self, selectors: str | None, fmt: str, view: ScopedView | None = None) -> list[Signal]:
        """The signals a job exports; within a grant's view only what it covers (``OutOfScope`` otherwise)."""
        cat = self.region.catalogue
        if fmt == "gpx":
            if view is not None:
                view.require(ROUTE_SIGNALS, "a GPX export")
            return [cat[p] for p in ROUTE_SIGNALS]
        wanted = selectors.split(",") if selectors else None
        return view.signals(wanted) if view is not None else cat.select(wanted)

    def _view(self, job: ExportJob) -> ScopedView | None:
        """A grant holder's job: the grant's view as it stands now (refused once revoked, ended or suspended)."""
        if job.grant_id is None:
            return None
        grant, _ = self.region.grants.in_force(job.grant_id)
        return ScopedView(self.region.catalogue, job.vin, Scope.of_grant(grant))

    def _plan(
        self, job: ExportJob, signals: list[Signal], view: ScopedView | None
    ) -> tuple[list[Signal], list[tuple[int, int]]]:
        """The signals to read (those the window's batches carry) and the windows to read them in.

        A piece lacks the columns of the other signals (all empty); the writers treat a missing column as a column
        of nulls (see ``_output_schema``), so nobody builds or scans them.
        """
        interval = job.resample_ms
        size = self.chunk_ms if not interval else max(1, -(-self.chunk_ms // interval)) * interval
        refs = self.region.telemetry.batches(job.vin, job.start_ms, job.end_ms - 1)
        carried = set().union(*(ref.columns for ref in refs)) if refs else set()
        keep = carried | ({LAT, LON, ALT, ACC} if view is not None else set())  # coarsening fills accuracy in
        wanted = signals if job.format == "gpx" else [s for s in signals if s.path in keep]
        return wanted, chunks(job.start_ms, job.end_ms, size, [(ref.t0, ref.t1) for ref in refs])

    def _tables(
        self,
        job: ExportJob,
        wanted: list[Signal],
        todo: list[tuple[int, int]],
        view: ScopedView | None = None,
    ) -> Iterator[tuple[pa.Table, float]]:
        """The window piece by piece, resampled and at the grant's location precision, with the fraction done.

        Pieces are read by a thread of their own, one ahead of the encoding. Resampled, the last bucket of a piece
        waits for the next piece, so a bucket is never split whatever the pieces' edges.
        """
        r = self.region
        interval = job.resample_ms

        def read() -> Iterator[tuple[pa.Table, float]]:
            scan = getattr(r.telemetry, "scan", None)
            if scan is not None and self.chunk_ms == CHUNK_MS and todo:
                # The store's stream over the whole span (pieces of at most a day, edges its own); the fraction
                # done is that of the windows with data up to the piece's last instant.
                starts = [a for a, _ in todo]
                for table in scan(job.vin, todo[0][0], todo[-1][1], wanted):
                    last = table.column("t")[table.num_rows - 1].value if table.num_rows else todo[0][0]
                    yield table, bisect.bisect_right(starts, last) / len(todo)
                return
            for k, (a, b) in enumerate(todo):
                yield r.telemetry.window(job.vin, a, b, wanted), (k + 1) / len(todo)

        held: pa.Table | None = None  # the last, maybe unfinished, resampling bucket of the previous piece
        for table, done in _prefetch(read()):
            if interval:
                if held is not None:
                    table = pa.concat_tables([held, table])
                held = None
                if table.num_rows:
                    t = table.column("t").cast(pa.int64())
                    last = t[len(t) - 1].as_py() // interval * interval
                    cut = int(np.searchsorted(t.to_numpy(), last))
                    held, table = table.slice(cut), table.slice(0, cut)
                    table = resample(table, interval) if table.num_rows else table
            yield self._shaped(table, view), done
        if held is not None and held.num_rows:
            yield self._shaped(resample(held, interval or 1), view), 1.0

    @staticmethod
    def _shaped(table: pa.Table, view: ScopedView | None) -> pa.Table:
        """A grant holder's location precision, after resampling so averaged positions are cell centres too."""
        if view is None or table.num_rows == 0:
            return table
        return view.location(table)

    def _output_schema(
        self, job: ExportJob, signals: list[Signal], view: ScopedView | None, meta: dict[str, Any]
    ) -> pa.Schema:
        """The columns of the file: what the window of every signal becomes once resampled and coarsened.

        Found by putting one row of nulls through the same steps, so the types are the steps' own (a resampled
        float32 is a float64 mean), whatever signals the vehicle carries.
        """
        full = self.region.telemetry.window(job.vin, 0, 1, signals).schema
        row = pa.table(
            [pa.array([0], pa.int64()).cast(full.field("t").type)] + [pa.nulls(1, f.type) for f in full][1:],
            schema=full,
        )
        if job.resample_ms:
            row = resample(row, job.resample_ms)
        if view is not None:
            row = view.location(row)
        return row.schema.with_metadata({b"carvault.export": json.dumps(meta).encode()})

    def _build(self, job: ExportJob, out: BinaryIO | _Sink) -> int:
        view = self._view(job)
        if view is not None:
            view.window(job.start_ms, job.end_ms)  # the grant may have been narrowed since; never widen it
        signals = self._signals(job.signals, job.format, view)
        meta = {
            "vin": job.vin,
            "start_ms": job.start_ms,
            "end_ms": job.end_ms,
            "resample_ms": job.resample_ms,
            "units": {s.path: s.unit or None for s in signals},
        }
        schema = self._output_schema(job, signals, view, meta)
        wanted, todo = self._plan(job, signals, view)
        rows = 0
        last = 0.0

        def progress(done: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= self.heartbeat_s:
                self._heartbeat(job.id, min(done, 0.999), rows)
                last = now

        writer: _Writer
        if job.format == "gpx":
            writer = _GpxOut(out, gpx_name(job.vin, job.start_ms, job.end_ms))
        elif job.format == "csv":
            writer = _CsvOut(out, schema)
        elif job.format == "parquet":
            writer = _ParquetOut(out, schema, {"t"} | {s.path for s in wanted})
        else:
            writer = _JsonOut(out, schema, meta, self.folder)
        pieces = self._tables(job, wanted, todo, view)
        try:
            for table, done in pieces:
                rows += writer.write(table)
                progress(done)
            writer.close()
        finally:
            pieces.close()  # stops the reader thread now when the job stops early (cancelled, failed)
            writer.abort()
        return rows


class _Sink:
    """The export file, written by one thread and hashed (SHA-256) by another, both in the order of ``write`` calls.

    Two threads (both release the GIL), so when the encoders are done the file's last blocks are written and hashed
    on both cores; together they are a large share of a CSV export's CPU (128 MB for a vehicle's 8 hours).
    """

    DEPTH = 16  # buffers queued for each thread
    SYNC_BYTES = 32 << 20  # written to disk in steps of this, so the job's final fsync has little left to wait for

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self._unsynced = 0
        try:
            self._fd: int | None = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):  # not a file (an in-memory buffer)
            self._fd = None
        self._queues: tuple[queue.Queue[Any], ...] = (queue.Queue(maxsize=self.DEPTH), queue.Queue(maxsize=self.DEPTH))
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(q, step), name=f"export-{name}", daemon=True)
            for q, step, name in zip(self._queues, (self._write, self.hash.update), ("write", "hash"), strict=True)
        ]
        for t in self._threads:
            t.start()

    def _write(self, data: bytes | pa.Buffer) -> None:
        self.out.write(data)
        self._unsynced += len(data)
        if self._unsynced >= self.SYNC_BYTES and self._fd is not None:  # the disk stores this while more is encoded
            self.out.flush()
            os.fdatasync(self._fd)
            self._unsynced = 0

    def _run(self, q: queue.Queue[Any], step: Any) -> None:
        while (data := q.get()) is not None:
            if self._error is None:
                try:
                    step(data)
                except BaseException as e:  # noqa: BLE001 - reported to the job by the next write or close
                    self._error = e

    def write(self, data: bytes | pa.Buffer) -> None:
        """Queue ``data`` (bytes or an Arrow buffer; never changed afterwards) for writing."""
        if self._error is not None:
            raise self._error
        if len(data):
            for q in self._queues:
                q.put(data)

    def close(self) -> str:
        """Wait for every write; the file's SHA-256 (hex)."""
        for q, t in zip(self._queues, self._threads, strict=True):
            if t.is_alive():
                q.put(None)
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error
        return self.hash.hexdigest()


class _Stream(io.RawIOBase):
    """A write-only file over a ``_Sink`` for writers that want one (pyarrow's Parquet writer); closing it leaves
    the sink open."""

    BLOCK = 1 << 22  # pages and their headers arrive as many small writes: handed on in blocks of 4 MiB

    def __init__(self, sink: BinaryIO | _Sink) -> None:
        self.sink = sink
        self.position = 0
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self.position += n
        if len(self.buffer) >= self.BLOCK:
            self.flush()
        return n

    def flush(self) -> None:
        if self.buffer:
            self.sink.write(bytes(self.buffer))
            self.buffer.clear()

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.flush()
        super().close()


class _Writer:
    """One format's encoder: ``write`` a piece (returns its rows), ``close`` to finish, ``abort`` to stop helpers."""

    def write(self, table: pa.Table) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop background work (after close, or when the job stops early)."""


class _GpxOut(_Writer):
    def __init__(self, out: BinaryIO | _Sink, name: str) -> None:
        self.gpx = GpxWriter(out, name, "Exported by CarVault")  # type: ignore[arg-type]

    def write(self, table: pa.Table) -> int:
        return self.gpx.write(table)

    def close(self) -> None:
        self.gpx.close()


class _CsvOut(_Writer):
    """CSV equal to ``exports.render`` (``t_utc`` first), blocks encoded in a small pool and written in order."""

    def __init__(self, out: BinaryIO | _Sink, schema: pa.Schema) -> None:
        self.out = out
        self.schema = schema
        self.pool = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="export-csv")
        self.pending: collections.deque[Future[pa.Buffer]] = collections.deque()
        out.write(csv_header(schema))

    def write(self, table: pa.Table) -> int:
        for start in range(0, table.num_rows, CSV_BLOCK_ROWS):
            block = table.slice(start, CSV_BLOCK_ROWS)
            self.pending.append(self.pool.submit(csv_rows, block, self.schema))
            while len(self.pending) > 2 * ENCODE_THREADS:
                self.out.write(self.pending.popleft().result())
        return table.num_rows

    def close(self) -> None:
        while self.pending:
            self.out.write(self.pending.popleft().result())

    def abort(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True)


class _ParquetOut(_Writer):
    """Parquet with the file's schema; pieces gathered into row groups of up to ``ROW_GROUP_ROWS`` rows.

    Columns no piece has (signals the vehicle does not carry) are added as nulls sharing one zeroed buffer and
    stored uncompressed (a page of nulls compresses to nothing anyway; compressing it costs time).
    """

    def __init__(self, out: BinaryIO | _Sink, schema: pa.Schema, present: set[str]) -> None:
        self.out = _Stream(out)
        self.schema = schema
        self.present = present
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.writer: pq.ParquetWriter | None = None
        # Row groups are encoded by a thread of their own (pyarrow releases the GIL) while the next is gathered.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-parquet")
        self.encoding: Future[None] | None = None

    def write(self, table: pa.Table) -> int:
        if table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows
            if self.rows >= ROW_GROUP_ROWS:
                self._flush()
        return table.num_rows

    def _flush(self) -> None:
        if not self.parts:
            return
        narrow = pa.concat_tables(self.parts, promote_options="default").combine_chunks()
        self.parts, self.rows = [], 0
        if self.writer is None:
            self.writer = _parquet_writer(self.out, self.schema, self.present)
        if self.encoding is not None:
            self.encoding.result()  # one row group in the works at a time: memory stays flat
        self.encoding = self.pool.submit(self.writer.write_table, _widen(narrow, self.schema), narrow.num_rows)

    def close(self) -> None:
        self._flush()
        if self.encoding is not None:
            self.encoding.result()
        if self.writer is None:
            self.writer = _parquet_writer(self.out, self.schema, self.present)
        self.writer.close()
        self.out.flush()

    def abort(self) -> None:
        self.pool.shutdown(wait=True)


class _JsonOut(_Writer):
    """Columnar JSON equal to ``exports.to_json``: each column's text spooled to one temporary file, then the
    columns copied out in order behind a head that knows the row count. Runs of nulls are counted, not spooled."""

    def __init__(self, out: BinaryIO | _Sink, schema: pa.Schema, meta: dict[str, Any], folder: Path) -> None:
        self.out = out
        self.schema = schema
        self.meta = meta
        self.names = [f.name for f in schema]
        self.rows = 0
        # Per column: its parts, each (offset, length) of spooled text or (-1, count) for a run of nulls.
        self.parts: dict[str, list[tuple[int, int]]] = {n: [] for n in self.names}
        self.spool = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by close/abort
        self.size = 0

    def write(self, table: pa.Table) -> int:
        n = table.num_rows
        if not n:
            return 0
        have = dict(zip(table.column_names, table.columns, strict=True))
        for name in self.names:
            col = have.get(name)
            parts = self.parts[name]
            if col is None or col.null_count == n:
                if parts and parts[-1][0] == -1:
                    parts[-1] = (-1, parts[-1][1] + n)
                else:
                    parts.append((-1, n))
                continue
            text = json_values(col)
            self.spool.write(text)
            parts.append((self.size, len(text)))
            self.size += len(text)
        self.rows += n
        return n

    def close(self) -> None:
        self.spool.flush()
        fd = self.spool.fileno()
        head = json.dumps({**self.meta, "rows": self.rows}, separators=(",", ":"), allow_nan=False)
        self.out.write(head[:-1].encode())
        for k, name in enumerate(self.names):
            if name == "t":
                self.out.write(b',"t":[')
            else:
                self.out.write((b',"signals":{' if k == 1 else b",") + json.dumps(name).encode() + b":[")
            for i, (offset, length) in enumerate(self.parts[name]):
                if i:
                    self.out.write(b",")
                if offset < 0:
                    for piece in json_null_pieces(length):
                        self.out.write(piece)
                else:
                    self.out.write(os.pread(fd, length, offset))
            self.out.write(b"]")
        self.out.write(b"}}" if len(self.names) > 1 else b',"signals":{}}')

    def abort(self) -> None:
        self.spool.close()


def _prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a thread of their own up to ``depth`` ahead of the consumer (reading while the
    previous piece is encoded); the thread stops when the consumer does, its errors are raised to the consumer."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))

    thread = threading.Thread(target=work, name="export-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        thread.join()


def _widen(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema`` in its order; a missing column is nulls over one shared zero buffer."""
    n = table.num_rows
    have = dict(zip(table.column_names, table.columns, strict=True))
    zeros = pa.py_buffer(bytes(8 * (n + 1)))
    columns = []
    for f in schema:
        col = have.get(f.name)
        if col is None:
            col = pa.Array.from_buffers(
                f.type, n, [zeros, zeros] if not _is_text(f.type) else [zeros, zeros, zeros], null_count=n
            )
        elif col.type != f.type:
            col = col.cast(f.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t))


def _parquet_writer(target: Any, schema: pa.Schema, present: set[str] | None = None) -> pq.ParquetWriter:
    """The export's Parquet writer: zstd at its fastest level, dictionaries for the columns that are not floats.

    Measured on a vehicle-hour of the benchmark's signals: 60 M samples/s and 0.84 bytes/sample, against 21 M/s and
    0.85 with pyarrow's defaults (dictionary pages for noisy floats only cost time). Columns outside ``present``
    (all null) are stored uncompressed: compressing pages of nulls cost a third of a whole export's encoding time.
    """
    names = [f.name for f in schema if present is None or f.name in present]
    dictionary = [n for n in names if n != "t" and not pa.types.is_floating(schema.field(n).type)]
    return pq.ParquetWriter(
        target,
        schema,
        compression={n: "zstd" for n in names},
        compression_level={n: 1 for n in names},
        use_dictionary=dictionary or False,
    )


def _cursor(result: Result[Any]) -> CursorResult[Any]:
    """An UPDATE's result, typed so that ``rowcount`` is known."""
    return cast("CursorResult[Any]", result)
