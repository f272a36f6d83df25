"""Bench section "blob store": the same ingest with evidence on the local folder and on S3-compatible storage.

The fleet's signed batches are uploaded twice into fresh regions, by the same client and concurrency: once with
the embedded default (segment files, append + fsync per group commit) and once with ``blob_store=s3://…`` (one
object PUT per group commit) against moto's standalone server on loopback, which ships with the dev extras. moto
is a Python test server keeping objects in memory, so the S3 figure is what CarVault's side costs plus a slow
server: a lower bound for a real object store on a network, not a forecast for one. Both runs' evidence is then
read back batch by batch (the ranged GET against the ``pread``) to show the read side too.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from sqlalchemy import select

from carvault.bench.cluster import S3_ENV, Service, _wait, moto_binary
from carvault.bench.run import REGION, ServerProcess, SignedVehicle, _step, upload
from carvault.errors import Unavailable
from carvault.server import free_port

#: Batches read back per backend for the read figure.
READS = 200


def _read_back_ms(data_dir: Path, env: dict[str, str], n: int = READS) -> dict[str, float]:
    """p50/p95 of reading single batches by their index entry, in this process, like the window path does."""
    import os

    from carvault.region import Region
    from carvault.settings import Settings
    from carvault.store.metadata import BatchRecord

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings.from_env({**os.environ, "CARVAULT_DATA_DIR": str(data_dir), "CARVAULT_REGION": REGION})
        with Region(settings) as region:
            with region.db.session() as s:
                recs = list(s.execute(select(BatchRecord.segment, BatchRecord.offset, BatchRecord.length)).all())
            picks = random.Random(7).sample(recs, min(n, len(recs)))
            times = []
            for seg, off, length in picks:
                t0 = time.perf_counter()
                region.segment_reader.read(seg, off, length)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    times.sort()
    return {
        "read_batch_ms_p50": round(statistics.median(times), 3),
        "read_batch_ms_p95": round(times[int(0.95 * (len(times) - 1))], 3),
    }


def _ingest(
    work: Path,
    name: str,
    signed_for: Any,
    env: dict[str, str],
    console: Console,
    bar: Progress,
    concurrency: int,
) -> dict[str, Any]:
    """Provision a fresh region, upload every vehicle's batches, return the figures (and read some back)."""
    data_dir = work / f"region-cn-blobs-{name}"
    signed: Sequence[SignedVehicle] = signed_for(data_dir, work / f"vehicles-blobs-{name}")
    server = ServerProcess(data_dir, free_port(), work / f"server-blobs-{name}.log", 1, extra_env=env).start()
    try:
        n = sum(len(v.batches) for v in signed)
        with _step(console, bar, f"ingest with evidence on the {name} blob store", n) as adv:
            result = upload(server, signed, concurrency, adv)
    finally:
        server.stop()
    out = {"blob_store": name, **result.to_json(), **_read_back_ms(data_dir, env)}
    shutil.rmtree(data_dir, ignore_errors=True)
    return out


def blob_store_figures(
    work: Path, signed_for: Any, console: Console, bar: Progress, concurrency: int
) -> dict[str, Any]:
    """Ingest on the local store and on S3 (moto on loopback) with the same data; ``signed_for(data_dir, vehicles)``
    provisions a region in ``data_dir`` and returns its signed vehicles."""
    local = _ingest(work, "local", signed_for, {}, console, bar, concurrency)
    try:
        exe = moto_binary()
    except Unavailable as e:
        return {"local": local, "s3": None, "s3_skipped": e.message}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    moto = Service("s3", [exe, "-H", "127.0.0.1", "-p", str(port)], work / "blobs-s3.log", S3_ENV).start()
    try:
        import boto3
        import httpx

        _wait("moto_server", lambda: httpx.get(url + "/", timeout=2).status_code < 500, moto.proc, moto.log, 60)
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="carvault-bench")
        env = {
            **S3_ENV,
            "AWS_DEFAULT_REGION": "us-east-1",
            "CARVAULT_BLOB_STORE": f"s3://carvault-bench/{REGION}",
            "CARVAULT_S3_ENDPOINT_URL": url,
        }
        s3 = _ingest(work, "s3", signed_for, env, console, bar, concurrency)
    finally:
        moto.stop()
    s3["server"] = "moto (Python, in memory, loopback): a lower bound for real object storage"
    ratio = s3["samples_per_s"] / local["samples_per_s"] if local["samples_per_s"] else None
    return {"local": local, "s3": s3, "s3_over_local_ingest": round(ratio, 3) if ratio else None}


def blob_store_lines(fig: dict[str, Any]) -> list[str]:
    """The section in the bench's Markdown."""
    local, s3 = fig["local"], fig.get("s3")
    lines = [
        "### Blob store: ingest with evidence on the local folder and on S3",
        "",
        "| backend | samples/s | batches/s | receipt p50 ms | receipt p95 ms | read one batch p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for f in (local, s3):
        if f is None:
            continue
        lines.append(
            f"| {f['blob_store']} | {f['samples_per_s']:,} | {f['batches_per_s']} | {f['receipt_latency_ms_p50']} "
            f"| {f['receipt_latency_ms_p95']} | {f['read_batch_ms_p50']} |"
        )
    lines.append("")
    if s3 is None:
        lines.append(f"S3 not measured: {fig.get('s3_skipped')}")
    else:
        lines.append(
            "S3 is moto's standalone server on loopback (Python, objects in memory): one PUT per group commit, "
            "ranged GETs to read; a lower bound for real object storage."
        )
    return lines
