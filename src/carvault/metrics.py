"""What a region tells its operator's monitoring: Prometheus metrics, read at ``/metrics``.

Events are counted where they happen (a counter increment, no I/O): batches accepted and their samples, refusals by
stable code and entry point, group-commit size and latency, HTTP answers by route and status class. Levels are read
when Prometheus scrapes (``RegionCollector``): log size and how many accepted batches still wait for their leaf,
live connections, queue depths (export jobs, deletions, the erasure queue, query copies waiting), the last
retention purge, and the witnesses' lag when witnesses are configured. The process's garbage collections
(``python_gc_*``) and its frozen start-up heap show whether collections pause the event loop. Each region has its
own registry, so several regions in one process (tests, the demo) never mix their figures. docs/operations.md lists
every metric and a dashboard built on them.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

if TYPE_CHECKING:
    from carvault.region import Region

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_COMMIT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_COMMIT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def entry_of(path: str) -> str:
    """Which entry point a request path belongs to, as the ``entry`` label (bounded: never the raw path)."""
    if path.startswith("/api/v1/ingest"):
        return "batch"
    if path.startswith("/api/v1/live"):
        return "live"
    if path.startswith("/api/v1/viss"):
        return "viss"
    if path.startswith("/api/v1/admin"):
        return "admin"
    if path.startswith("/api/"):
        return "api"
    return "portal"


class Metrics:
    """The region's counters and histograms, and the registry ``/metrics`` exposes."""

    def __init__(self, region: Region | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batches = Counter("carvault_batches_accepted", "Batches accepted and acknowledged.", registry=r)
        self.samples = Counter("carvault_samples_accepted", "Samples in accepted batches.", registry=r)
        self.refusals = Counter(
            "carvault_refusals",
            "Requests answered with an error, by stable code and entry point.",
            ["code", "entry"],
            registry=r,
        )
        self.group_batches = Histogram(
            "carvault_group_commit_batches", "Batches stored per group commit.", buckets=_COMMIT_BATCHES, registry=r
        )
        self.group_seconds = Histogram(
            "carvault_group_commit_seconds",
            "Time of one group commit: evidence write and sync, database, log append.",
            buckets=_COMMIT_SECONDS,
            registry=r,
        )
        self.http = Counter(
            "carvault_http_responses",
            "HTTP responses by route template and status class.",
            ["route", "status"],
            registry=r,
        )
        GCCollector(registry=r)  # the process's garbage collections by generation (python_gc_*)
        if region is not None:
            r.register(RegionCollector(region))

    def committed(self, batches: int, samples: int, seconds: float) -> None:
        """One group commit stored ``batches`` batches holding ``samples`` samples in ``seconds``."""
        self.group_batches.observe(batches)
        self.group_seconds.observe(seconds)
        if batches:
            self.batches.inc(batches)
            self.samples.inc(samples)

    def refused(self, code: str, path: str) -> None:
        """A request was answered with the error ``code``."""
        self.refusals.labels(code=code, entry=entry_of(path)).inc()

    def answered(self, route: str, status: int) -> None:
        """An HTTP response went out (``route`` is the route's template, never the raw path)."""
        self.http.labels(route=route, status=f"{status // 100}xx").inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _seconds(ms: int) -> float | None:
    """Milliseconds as Unix seconds; None (gauge left out) when nothing happened yet."""
    return ms / 1000 if ms else None


class RegionCollector(Collector):
    """Levels read at scrape time from the region's stores (a few indexed counts; nothing on the hot path)."""

    def __init__(self, region: Region) -> None:
        self.region = region

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not read the stores (the region is still being built)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Each gauge; a store that cannot be read leaves its gauge out (readiness reports the failure)."""
        for name, help_text, read in self._gauges():
            started = time.perf_counter()
            try:
                value = read()
            except Exception as e:  # noqa: BLE001 - one unreadable level must not break the scrape
                log.warning("metric %s not read: %s", name, e)
                continue
            if value is None:
                continue
            g = GaugeMetricFamily(name, help_text)
            g.add_metric([], float(value))
            yield g
            if time.perf_counter() - started > 0.5:
                log.warning("metric %s took %.2f s to read", name, time.perf_counter() - started)
        yield from self._labelled()

    def _gauges(self) -> list[tuple[str, str, Any]]:
        from carvault.store.metadata import BatchRecord, RetentionRun
        from carvault.store.tables import ExportJob

        region = self.region

        def count(query: Any) -> int:
            with region.db.session() as s:
                return int(s.scalar(query) or 0)

        return [
            ("carvault_log_size", "Leaves in the region's transparency log.", lambda: region.log.size),
            (
                "carvault_log_integration_lag",
                "Accepted batches not yet given their log leaf (the reconciler catches them up).",
                lambda: count(select(func.count()).select_from(BatchRecord).where(BatchRecord.log_index.is_(None))),
            ),
            (
                "carvault_export_jobs_waiting",
                "Export jobs queued or running.",
                lambda: count(
                    select(func.count()).select_from(ExportJob).where(ExportJob.status.in_(("queued", "running")))
                ),
            ),
            (
                "carvault_live_subscriptions",
                "Live subscriptions (VISS and the portal's Live page) open on this replica.",
                lambda: region.live.subscription_count(),
            ),
            (
                "carvault_live_cars",
                "Cars with a live channel open to this replica.",
                lambda: region.live_channel.connections,
            ),
            (
                "carvault_gc_frozen_objects",
                "Start-up objects taken out of the garbage collector's view (0: this process is not a carvault serve).",
                gc.get_freeze_count,
            ),
            (
                "carvault_retention_last_run_timestamp_seconds",
                "When the last retention purge finished (Unix time).",
                lambda: _seconds(
                    count(select(func.max(RetentionRun.finished_ms)).where(RetentionRun.dry_run.is_(False)))
                ),
            ),
        ]

    def _labelled(self) -> Iterator[Metric]:
        """Gauges with labels: deletions by status, witnesses' lag."""
        from carvault.store.metadata import DeletionRequest

        try:
            with self.region.db.session() as s:
                q = select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)
                by_status = {status: int(n) for status, n in s.execute(q).all()}
        except Exception as e:  # noqa: BLE001 - one unreadable level must not break the scrape
            log.warning("deletion counts not read: %s", e)
            by_status = {}
        g = GaugeMetricFamily("carvault_deletions", "Deletion requests by status.", labels=["status"])
        for status, n in sorted(by_status.items()):
            g.add_metric([status], float(n))
        yield g
        witnessing = getattr(self.region, "witnessing", None)
        lag = getattr(witnessing, "lag", None)
        if callable(lag):
            w = GaugeMetricFamily(
                "carvault_witness_lag_leaves", "Leaves the witness has not cosigned yet.", labels=["witness"]
            )
            for name, leaves in sorted(lag().items()):
                w.add_metric([name], float(leaves))
            yield w
            status = getattr(witnessing, "status", {})
            ok = GaugeMetricFamily(
                "carvault_witness_last_success_seconds",
                "Unix time of the witness's last cosignature (0: none since start).",
                labels=["witness"],
            )
            failures = GaugeMetricFamily(
                "carvault_witness_failures", "Failed submissions to the witness since start.", labels=["witness"]
            )
            for name, st in sorted(status.items()):
                ok.add_metric([name], st.last_success_ms / 1000)
                failures.add_metric([name], float(st.failures))
            yield ok
            yield failures
