"""Log append rate on both log backends (file, PostgreSQL) and the tile publisher's lag, measured the same way.

``bench_backends(work)`` appends through the real ``append`` of each backend: batches of leaves from one thread,
single leaves from many threads (the gateway's pattern: group commits), and — PostgreSQL only, since the file
log is one machine's — single leaves from two processes at once (two replicas). It then measures the time from
an acknowledged append to a published checkpoint that covers it (``TilePublisher`` into a local blob store).
PostgreSQL runs in a temporary cluster with ``fsync`` on, so both backends pay for durability.

Run alone: ``python -m carvault.bench.tlog_bench [leaves]`` prints the figures as JSON.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carvault.bench.ledger import BENCH_ORIGIN, bench_key, bench_leaf
from carvault.errors import Unavailable
from carvault.ledger.log import MerkleLog, TransparencyLog
from carvault.ledger.sequencer import PostgresLog
from carvault.ledger.tiles import TilePublisher
from carvault.store.blobs import LocalBlobStore

__all__ = ["append_figures", "bench_backends", "publish_lag"]


def append_figures(log: MerkleLog, leaves: int, *, batch_size: int = 1000, threads: int = 16) -> dict[str, Any]:
    """Batched and concurrent single-leaf append rates on ``log``."""
    start = log.size
    t0 = time.perf_counter()
    for first in range(start, start + leaves, batch_size):
        log.append([bench_leaf(i) for i in range(first, min(start + leaves, first + batch_size))])
    batched = time.perf_counter() - t0
    per_thread = max(1, leaves // (threads * 20))
    base = start + leaves

    def worker(t: int) -> None:
        for k in range(per_thread):
            log.append([bench_leaf(base + t * per_thread + k)])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    single = time.perf_counter() - t0
    return {
        "batch_size": batch_size,
        "batched_leaves_per_s": round(leaves / batched),
        "single_leaf_threads": threads,
        "single_leaf_appends_per_s": round(threads * per_thread / single),
    }


def publish_lag(log: MerkleLog, store_dir: Path, appends: int = 50) -> dict[str, Any]:
    """Milliseconds from an acknowledged 1-leaf append to a published checkpoint covering it (p50, p95)."""
    publisher = TilePublisher(log, LocalBlobStore(store_dir), exclusive=log.publishing)
    log.listeners.append(publisher.notify)
    publisher.start()
    lags = []
    try:
        for i in range(appends):
            first = log.append([bench_leaf(10**9 + i)])
            t0 = time.perf_counter()
            if not publisher.wait_published(first + 1, timeout=30):
                raise Unavailable("the tile publisher did not catch up within 30 s")
            lags.append((time.perf_counter() - t0) * 1000)
    finally:
        log.listeners.remove(publisher.notify)
        publisher.close()
    lags.sort()
    return {
        "publish_lag_ms_p50": round(statistics.median(lags), 2),
        "publish_lag_ms_p95": round(lags[int(0.95 * (len(lags) - 1))], 2),
    }


def _two_processes(url: str, seconds: float = 3.0) -> dict[str, Any]:
    """Single-leaf appends per second from two processes appending to one PostgreSQL log at once."""
    code = (
        "import sys, time\n"
        "from carvault.bench.ledger import BENCH_ORIGIN, bench_key, bench_leaf\n"
        "from carvault.ledger.sequencer import PostgresLog\n"
        "log = PostgresLog(sys.argv[1], BENCH_ORIGIN, bench_key(), BENCH_ORIGIN)\n"
        "tag, end, n = int(sys.argv[2]), time.monotonic() + float(sys.argv[3]), 0\n"
        "while time.monotonic() < end:\n"
        "    log.append([bench_leaf(tag * 10**8 + n)]); n += 1\n"
        "print(n)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(t + 2), str(seconds)], stdout=subprocess.PIPE, text=True)
        for t in range(2)
    ]
    counts = [int(p.communicate(timeout=120)[0].strip() or 0) for p in procs]
    return {"two_process_single_leaf_appends_per_s": round(sum(counts) / seconds)}


def _measure(open_log: Callable[[], MerkleLog], work: Path, leaves: int) -> dict[str, Any]:
    with open_log() as log:  # type: ignore[attr-defined]
        figures = append_figures(log, leaves)
        figures.update(publish_lag(log, work / "store"))
        figures["check_integrity_leaves"] = log.check_integrity()  # type: ignore[attr-defined]
    return figures


def bench_backends(work: Path, leaves: int = 20_000) -> dict[str, Any]:
    """Figures for the file log and (when a PostgreSQL server is installed) the PostgreSQL log."""
    from carvault.bench.pg_cluster import TemporaryPostgres

    out: dict[str, Any] = {"leaves": leaves}
    file_dir = work / "tlog-file"
    out["file"] = _measure(lambda: TransparencyLog(file_dir / "log", BENCH_ORIGIN, bench_key(), BENCH_ORIGIN),
                           file_dir, leaves)  # fmt: skip
    try:
        pg = TemporaryPostgres(fsync=True).start()
    except Unavailable as exc:
        out["postgres"] = {"skipped": str(exc)}
        return out
    try:
        url = pg.create_database("tlog_bench")
        out["postgres"] = _measure(lambda: PostgresLog(url, BENCH_ORIGIN, bench_key(), BENCH_ORIGIN),
                                   work / "tlog-pg", leaves)  # fmt: skip
        out["postgres"].update(_two_processes(url))
    finally:
        pg.stop()
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="carvault-tlog-bench-") as scratch:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
        print(json.dumps(bench_backends(Path(scratch), n), indent=2))
