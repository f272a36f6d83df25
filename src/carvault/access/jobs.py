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

The file is built chunk by chunk (an hour of data, or one resampling interval if longer, with edges on
multiples of the interval so resampled buckets are never split), which keeps memory flat and makes the
result equal to what ``GET /api/v1/vehicles/{vin}/telemetry`` answers for the same window and format.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult, Result

from carvault.access.audit import AuditAction
from carvault.access.exports import CSV_TIME_COLUMN, json_values
from carvault.access.gpx import ROUTE_SIGNALS, GpxWriter, gpx_name
from carvault.compliance.sharing import Scope, ScopedView
from carvault.errors import CarVaultError, Conflict, InvalidQuery, NotFound, Unavailable
from carvault.signals import Signal
from carvault.store.blobs import BlobNotFound
from carvault.store.metadata import BatchRecord, now_ms
from carvault.store.tables import ExportJob
from carvault.store.telemetry import resample
from carvault.verify.window import iso_times
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
CHUNK_MS = 3_600_000
KEEP_MS = 7 * 24 * 3_600_000  # finished files are kept a week, then deleted


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
    ) -> None:
        self.region = region
        # Finished files are exports/<name> in the region's blob store; they are built in a local folder first
        # (the store's own exports/ folder when it is local, so finishing is a rename).
        self.blobs = region.blobs
        local = region.blobs.local_path("exports/x")
        self.folder = local.parent if local is not None else region.settings.data_dir / "exports-building"
        self.lease_ms = lease_ms
        self.chunk_ms = chunk_ms
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
                rows = self._build(job, out)
                out.flush()
                os.fsync(out.fileno())
            digest = _sha256(part)
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

    def _tables(
        self, job: ExportJob, signals: list[Signal], view: ScopedView | None = None
    ) -> Iterator[tuple[pa.Table, float]]:
        """The window chunk by chunk, with the fraction done after each chunk."""
        r = self.region
        interval = job.resample_ms
        size = self.chunk_ms if not interval else max(1, -(-self.chunk_ms // interval)) * interval
        refs = r.telemetry.batches(job.vin, job.start_ms, job.end_ms - 1)
        todo = chunks(job.start_ms, job.end_ms, size, [(ref.t0, ref.t1) for ref in refs])
        for k, (a, b) in enumerate(todo):
            table = r.telemetry.window(job.vin, a, b, signals)
            if interval and table.num_rows:
                table = resample(table, interval)
            if view is not None:  # after resampling, so averaged positions are cell centres too
                table = view.location(table)
            yield table, (k + 1) / len(todo)

    def _build(self, job: ExportJob, out: BinaryIO) -> int:
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
        empty = self.region.telemetry.window(job.vin, 0, 1, signals).slice(0, 0)  # the schema, typed
        rows = 0

        def progress(done: float) -> None:
            self._heartbeat(job.id, min(done, 0.999), rows)

        if job.format == "csv":
            out.write(_csv(empty, header=True))
            for table, done in self._tables(job, signals, view):
                out.write(_csv(table, header=False))
                rows += table.num_rows
                progress(done)
        elif job.format == "gpx":
            gpx = GpxWriter(out, gpx_name(job.vin, job.start_ms, job.end_ms), "Exported by CarVault")
            for table, done in self._tables(job, signals, view):
                rows += gpx.write(table)
                progress(done)
            gpx.close()
        else:
            with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
                target = out if job.format == "parquet" else open(Path(tmp) / "data.parquet", "wb")  # noqa: SIM115
                writer: pq.ParquetWriter | None = None
                for table, done in self._tables(job, signals, view):
                    if table.num_rows:
                        if writer is None:
                            schema = table.schema.with_metadata({b"carvault.export": json.dumps(meta).encode()})
                            writer = _parquet_writer(target, schema)
                        writer.write_table(table.cast(writer.schema).combine_chunks())
                        rows += table.num_rows
                    progress(done * (0.9 if job.format == "json" else 1.0))
                if writer is None:
                    schema = empty.schema.with_metadata({b"carvault.export": json.dumps(meta).encode()})
                    writer = _parquet_writer(target, schema)
                writer.close()
                if job.format == "json":
                    target.close()
                    _parquet_to_json(Path(tmp) / "data.parquet", meta, out)
        return rows


def _parquet_writer(target: Any, schema: pa.Schema) -> pq.ParquetWriter:
    """The export's Parquet writer: zstd at its fastest level, dictionaries for the columns that are not floats.

    Measured on a vehicle-hour of the benchmark's signals: 60 M samples/s and 0.84 bytes/sample, against 21 M/s and
    0.85 with pyarrow's defaults (dictionary pages for noisy floats only cost time).
    """
    dictionary = [f.name for f in schema if f.name != "t" and not pa.types.is_floating(f.type)]
    return pq.ParquetWriter(target, schema, compression="zstd", compression_level=1, use_dictionary=dictionary or False)


def _csv(table: pa.Table, *, header: bool) -> bytes:
    """The same CSV as ``exports.render`` (``t_utc`` first), with or without its header row (for appending chunks)."""
    out = table.set_column(0, CSV_TIME_COLUMN, iso_times(table.column("t")))
    sink = io.BytesIO()
    pcsv.write_csv(out, sink, pcsv.WriteOptions(quoting_style="needed", include_header=header))
    return sink.getvalue()


def _parquet_to_json(path: Path, meta: dict[str, Any], out: BinaryIO) -> None:
    """Columnar JSON equal to ``exports.to_json``, written one column at a time from a Parquet file."""
    f = pq.ParquetFile(path)
    head = json.dumps({**meta, "rows": f.metadata.num_rows}, separators=(",", ":"), allow_nan=False)
    out.write(head[:-1].encode())

    def column(name: str) -> None:
        out.write(b"[")
        first = True
        for batch in f.iter_batches(columns=[name], batch_size=1 << 20):
            text = json_values(batch.column(0))
            if not text:
                continue
            if not first:
                out.write(b",")
            out.write(text)
            first = False
        out.write(b"]")

    out.write(b',"t":')
    column("t")
    out.write(b',"signals":{')
    for k, name in enumerate(n for n in f.schema_arrow.names if n != "t"):
        out.write((b"," if k else b"") + json.dumps(name).encode() + b":")
        column(name)
    out.write(b"}}")


def _cursor(result: Result[Any]) -> CursorResult[Any]:
    """An UPDATE's result, typed so that ``rowcount`` is known."""
    return cast("CursorResult[Any]", result)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
