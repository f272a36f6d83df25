"""Retention purge rate (issue 11): how fast a purge plans, withholds and erases over a store of realistic size.

One region in a fresh folder (SQLite, in process) takes a fleet's signed batches through the real gateway: every
vehicle drives an hour a day for some weeks, in 5-minute batches carrying the benchmark signals that need no
opt-in (driving dynamics, driver assistance, powertrain and battery: 3 years; body and cabin: 1 year; event
recorder: 10 years). Every batch's query copy is built (a read of each vehicle's whole span), as on a server
that has been read. Then three runs of ``Retention.run`` are timed on the same store, each with its own time:

- **dry run** at the time every batch has expired: the plan and the per category figures from each batch's
  Parquet footer, nothing changed;
- **withhold** a year and a day after the last batch: body and cabin are past their period in every batch, so
  each batch is marked and its query copy dropped (the next read rebuilds it without those columns);
- **purge** ten years and a day after the last batch: every batch is erased (evidence zeroed and fsynced, index
  row, query copy).

Figures: batches per second and MB per second (evidence bytes of the batches the run handled) for each run.
``python -m carvault.bench.retention_bench`` prints them; ``carvault bench --only retention`` also writes them
to the results file and the "Retention purge" section of docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console

from carvault.bench.run import BENCH_SIGNALS, machine_info
from carvault.bench.sections import save_section, splice_section
from carvault.compliance.consent import default_on
from carvault.compliance.retention import DAY_MS, longest_ms, period_ms
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, BatchHeader, encode_envelope, encode_payload, sha256_hex
from carvault.signals import Signal, catalogue

SECTION_START = "<!-- retention:start (written by carvault bench --only retention) -->"
SECTION_END = "<!-- retention:end -->"
NOTES_START = "<!-- retention-notes:start (hand-written, kept by re-runs) -->"
NOTES_END = "<!-- retention-notes:end -->"


@dataclass(frozen=True)
class RetentionBenchConfig:
    """The fleet the store is built from."""

    vehicles: int = 10
    days: int = 30
    drive_minutes: int = 60  # a day's driving per vehicle
    batch_seconds: int = 300
    seed: int = 2021

    @classmethod
    def quick(cls) -> RetentionBenchConfig:
        """A tiny store that checks the machinery in seconds (figures mean nothing)."""
        return cls(vehicles=2, days=2, drive_minutes=10)


def bench_signals() -> list[Signal]:
    """The benchmark signals a car sends without an opt-in (the gateway would refuse the others unconsented)."""
    cat = catalogue()
    return [cat[p] for p in BENCH_SIGNALS if default_on(cat[p].category)]


def drive(signals: list[Signal], start_ms: int, seconds: int, seed: int) -> pa.Table:
    """One drive at 10 Hz (1 Hz signals on whole seconds), every value inside its signal's range."""
    n = seconds * 10
    rng = np.random.default_rng(seed)
    t = start_ms + np.arange(n, dtype=np.int64) * 100
    whole = (t % 1000) == 0
    cols: list[pa.Array] = [pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
    for s in signals:
        if s.allowed:
            vals = pa.array(np.array(s.allowed)[rng.integers(0, len(s.allowed), n)].tolist(), pa.string())
        elif s.datatype == "boolean":
            vals = pa.array(rng.random(n) < 0.05)
        else:
            lo = s.min if s.min is not None else 0.0
            hi = s.max if s.max is not None else 100.0
            walk = np.cumsum(rng.normal(0, 0.01, n))
            x = np.clip((lo + hi) / 2 + (hi - lo) / 4 * np.sin(np.arange(n) / 300.0 + walk), lo, hi)
            if s.resolution:
                x = np.round(x / s.resolution) * s.resolution
            vals = pa.array(np.clip(x, lo, hi)).cast(s.arrow_type, safe=False)
        if s.rate_hz == 1:
            vals = pa.array(vals.to_numpy(zero_copy_only=False), type=s.arrow_type, mask=~whole)
        cols.append(vals)
    return pa.Table.from_arrays(cols, schema=catalogue().arrow_schema([s.path for s in signals]))


def _signed_batches(vin: str, key: Any, cfg: RetentionBenchConfig, first_day_ms: int, index: int) -> list[bytes]:
    """A vehicle's days of driving, cut into batches, chained and signed as the agent does."""
    from carvault.vehicle.agent import time_slices

    signals = bench_signals()
    prev, seq, out = GENESIS_PREV, 0, []
    for day in range(cfg.days):
        start = first_day_ms + day * DAY_MS + (7 + index % 10) * 3_600_000
        table = drive(signals, start, cfg.drive_minutes * 60, cfg.seed + index * 1000 + day)
        for t0, t1, part in time_slices(table, cfg.batch_seconds * 1000):
            seq += 1
            header = BatchHeader(vin=vin, region="cn", seq=seq, prev=prev, t0=t0, t1=t1, rows=part.num_rows)
            blob = encode_envelope(header, encode_payload(part), key)
            prev = sha256_hex(blob)
            out.append(blob)
    return out


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(region: Any, now: int, *, dry_run: bool) -> dict[str, Any]:
    started = time.perf_counter()
    run = region.retention.run(now=now, dry_run=dry_run)
    seconds = time.perf_counter() - started
    summary = json.loads(run.summary)
    planned = summary["batches_planned"]
    handled = planned["erase"] + planned["withhold"]
    return {
        "seconds": round(seconds, 3),
        "batches": handled,
        "batches_erased": summary["batches_erased"],
        "batches_withheld": summary["batches_withheld"],
        "bytes_overwritten": summary["bytes_overwritten"],
        "query_copy_bytes_removed": summary["query_copy_bytes_removed"],
        "errors": len(summary["errors"]),
    }


def retention_figures(
    cfg: RetentionBenchConfig | None = None, console: Console | None = None, work: Path | None = None
) -> dict[str, Any]:
    """Build the store, time the three runs, return the figures."""
    from carvault.provisioning import provision
    from carvault.region import Region
    from carvault.settings import Settings

    cfg = cfg or RetentionBenchConfig()
    say = console.print if console else (lambda *_: None)
    own = work is None
    folder = Path(tempfile.mkdtemp(prefix="carvault-retention-")) if work is None else work
    if (folder / "region").exists():
        shutil.rmtree(folder / "region")
    try:
        settings = Settings(data_dir=folder / "region", region="cn", retention_interval_s=0)
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        first_day_ms = int(today.timestamp() * 1000) - (cfg.days + 2) * DAY_MS
        with Region(settings) as region:
            vins = [f"LRWRETN{i:010d}" for i in range(cfg.vehicles)]
            keys = [provision(region, vin, folder / "vehicles").key for vin in vins]
            say(f"retention bench: signing {cfg.vehicles} vehicles x {cfg.days} days")
            fleets = [
                _signed_batches(v, k, cfg, first_day_ms, i) for i, (v, k) in enumerate(zip(vins, keys, strict=True))
            ]

            def ingest(blobs: list[bytes]) -> None:
                for blob in blobs:
                    region.gateway.accept(blob, BATCH_MEDIA_TYPE)

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=min(8, cfg.vehicles)) as pool:
                list(pool.map(ingest, fleets))
            ingest_s = time.perf_counter() - started
            signals = bench_signals()
            end_ms = first_day_ms + cfg.days * DAY_MS
            for vin in vins:  # every batch gets its query copy, as on a server that has been read
                for day in range(cfg.days):
                    a = first_day_ms + day * DAY_MS
                    region.telemetry.window(vin, a, a + DAY_MS, signals)
            batches = sum(len(f) for f in fleets)
            evidence = _dir_bytes(settings.data_dir / "segments")
            copies = _dir_bytes(settings.data_dir / "derived")
            last_t1 = end_ms
            everything = last_t1 + longest_ms({s.category for s in signals}) + DAY_MS
            a_year = last_t1 + period_ms("body") + DAY_MS
            say(f"retention bench: {batches} batches, {evidence / 1e6:.1f} MB evidence; timing the runs")
            dry = _timed(region, everything, dry_run=True)
            withhold = _timed(region, a_year, dry_run=False)
            purge = _timed(region, everything, dry_run=False)
        for r in (dry, withhold, purge):
            r["batches_per_s"] = round(r["batches"] / r["seconds"], 1) if r["seconds"] else None
            r["mb_per_s"] = (
                round(evidence * r["batches"] / max(batches, 1) / 1e6 / r["seconds"], 1) if r["seconds"] else None
            )
        purge["evidence_mb_per_s_overwritten"] = (
            round(purge["bytes_overwritten"] / 1e6 / purge["seconds"], 1) if purge["seconds"] else None
        )
        return {
            "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "config": asdict(cfg),
            "machine": machine_info(),
            "load_average": round(os.getloadavg()[0], 2),
            "store": {
                "batches": batches,
                "signals": len(signals),
                "evidence_bytes": evidence,
                "query_copy_bytes": copies,
                "ingest_seconds": round(ingest_s, 1),
            },
            "dry_run": dry,
            "withhold": withhold,
            "purge": purge,
        }
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def retention_lines(fig: dict[str, Any]) -> list[str]:
    """The "Retention purge" section of docs/benchmarks.md."""
    st, c = fig["store"], fig["config"]
    lines = [
        "## Retention purge",
        "",
        f"Written by `carvault bench --only retention` on {fig['finished']} (load average {fig['load_average']}; "
        "one process, SQLite, the shared 2-core machine). The store: "
        f"{c['vehicles']} vehicles × {c['days']} days × {c['drive_minutes']} min of driving in "
        f"{c['batch_seconds']} s batches of {st['signals']} signals = {st['batches']:,} batches, "
        f"{st['evidence_bytes'] / 1e6:,.1f} MB of evidence and {st['query_copy_bytes'] / 1e6:,.1f} MB of query "
        "copies. Each run is `Retention.run` at its own time over the same store (docs/retention.md). MB/s counts "
        "the evidence bytes of the batches the run handled.",
        "",
        "| run | batches handled | seconds | batches/s | MB/s | what changed |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = (
        ("dry run (all expired)", fig["dry_run"], "nothing (footers read for the figures)"),
        (
            "withhold (a year on: body, cabin)",
            fig["withhold"],
            f"{fig['withhold']['batches_withheld']:,} batches marked, "
            f"{fig['withhold']['query_copy_bytes_removed'] / 1e6:,.1f} MB of query copies dropped",
        ),
        (
            "purge (ten years on: all)",
            fig["purge"],
            f"{fig['purge']['batches_erased']:,} batches erased, "
            f"{fig['purge']['bytes_overwritten'] / 1e6:,.1f} MB of evidence zeroed and fsynced",
        ),
    )
    for name, r, what in rows:
        lines.append(
            f"| {name} | {r['batches']:,} | {r['seconds']} | {r['batches_per_s']} | {r['mb_per_s']} | {what}"
            + (f"; {r['errors']} errors" if r["errors"] else "")
            + " |"
        )
    return lines


def splice(markdown: str, fig: dict[str, Any]) -> str:
    """Put the section into the benchmarks page (replacing an earlier one, else before ``## Targets missed``)."""
    a, b = markdown.find(NOTES_START), markdown.find(NOTES_END)
    notes = markdown[a + len(NOTES_START) : b].strip() if 0 <= a < b else "_No notes yet._"
    block = "\n".join([SECTION_START, *retention_lines(fig), "", NOTES_START, notes, NOTES_END, SECTION_END])
    return splice_section(markdown, block, SECTION_START, SECTION_END)


def run_retention_only(
    out: Path,
    docs: Path,
    console: Console | None = None,
    cfg: RetentionBenchConfig | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """``carvault bench --only retention``: measure, set ``retention`` in ``out``, rewrite its docs section."""
    fig = retention_figures(cfg, console, work)
    save_section(out, docs, "retention", fig, lambda page: splice(page, fig))
    return fig


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    figures = retention_figures(RetentionBenchConfig.quick() if quick else None, Console())
    print("\n".join(retention_lines(figures)))
