"""Ingest cost per batch (issue 10): samples/s and server CPU per batch with 60-second batches, one server process.

Live use means more, smaller batches, so what the region spends on a batch *whatever its size* decides how far
ingest falls as batches shrink. This measures it through the whole path: a real ``carvault serve`` subprocess
(one process, SQLite, its own data folder) takes the simulator's drives, signed and chained as the agent does,
from every vehicle at once over keep-alive HTTP, and the server's CPU is read from /proc before and after.

Two runs in fresh regions share the same drives:

- **60-second batches** (the figure): acknowledged samples per wall second and server CPU milliseconds per batch;
- **short batches** (5 seconds, the first minutes of the same drives): many more batches for the same samples.

Server CPU per batch against samples per batch is a straight line to a good approximation; through the two
runs its intercept is the *fixed* CPU per batch (HTTP, checks, database, log, receipt), its slope the cost per
sample (signature hash, Parquet decode, validation, consent, segment bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa

TARGET_SAMPLES_PER_S = 5_000_000.0  # issue 10: 60-second batches, one process, the 2-core machine
TARGET_FIXED_CPU_MS = 2.0  # issue 10: fixed server CPU per batch


@dataclass(frozen=True)
class IngestCostConfig:
    """What one measurement uses: vehicles sending at once, how much of their driving, and the two batch lengths."""

    vehicles: int = 20
    hours: float = 1.0
    batch_seconds: int = 60
    short_batch_seconds: int = 5
    short_minutes: float = 10.0  # of each vehicle's driving, sent again in short batches
    seed: int = 2021


def _line(x1: float, y1: float, x2: float, y2: float) -> tuple[float | None, float | None]:
    """Intercept and slope of the line through two points (None when the points share an x)."""
    if x1 == x2:
        return None, None
    slope = (y1 - y2) / (x1 - x2)
    return y2 - slope * x2, slope


def _run(
    work: Path,
    name: str,
    vins: Sequence[str],
    slices: Sequence[list[tuple[int, int, int, int, bytes]]],
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Provision a fresh region, sign the slices as each vehicle's chain, upload them all, and read the figures."""
    from carvault.bench import run as bench
    from carvault.server import free_port

    region_dir = work / f"region-{name}"
    keys, _ = bench._provision(region_dir, vins, work / f"vehicles-{name}", [])
    empty = pa.table({"t": pa.array([], pa.int64())})
    signed = [
        bench.sign_vehicle(vin, keys[vin], i, bench.VehicleData(vin, empty, 0, list(sl)))
        for i, (vin, sl) in enumerate(zip(vins, slices, strict=True))
    ]
    server = bench.ServerProcess(region_dir, free_port(), work / f"server-{name}.log").start()
    try:
        result = bench.upload(server, signed, len(signed), advance)
    finally:
        server.stop()
    shutil.rmtree(region_dir, ignore_errors=True)
    figures = result.to_json()
    figures["mean_batch_samples"] = round(result.samples / result.batches, 1)
    figures["mean_batch_bytes"] = round(sum(len(b) for v in signed for b in v.batches) / result.batches, 1)
    return figures


def _first_minutes(table: pa.Table, minutes: float) -> pa.Table:
    """The rows of a drive table within ``minutes`` of its first row."""
    if table.num_rows == 0:
        return table
    t = table.column("t").cast(pa.int64()).to_numpy()
    return table.slice(0, int((t < t[0] + int(minutes * 60_000)).sum()))


def measure_ingest_cost(
    work: Path | None = None,
    config: IngestCostConfig | None = None,
    advance: Callable[[int], None] = lambda n: None,
    *,
    tables: Sequence[tuple[str, pa.Table]] | None = None,
) -> dict[str, Any]:
    """Both runs and the fixed cost per batch they imply; ``advance`` is told of every acknowledged batch.

    ``tables`` are the drives to send, as (VIN, rows) (the bench passes its dataset's); without them, the
    simulator drives ``config.vehicles`` cars for ``config.hours`` each.
    """
    from carvault.bench import run as bench
    from carvault.vehicle.simulator import fleet_vins

    cfg = config or IngestCostConfig()
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="carvault-ingest-cost-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    try:
        if tables is None:
            vins = fleet_vins(cfg.vehicles, cfg.seed)
            bench_cfg = bench.BenchConfig(vehicles=cfg.vehicles, hours=cfg.hours, seed=cfg.seed)
            tables = [(v.vin, v.table) for v in bench.make_dataset(vins, bench_cfg, lambda n: None)]
        vins = [vin for vin, _ in tables]
        jobs = [(table, cfg.batch_seconds) for _, table in tables]
        jobs += [(_first_minutes(table, cfg.short_minutes), cfg.short_batch_seconds) for _, table in tables]
        with ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, len(jobs)), mp_context=get_context("spawn")) as p:
            encoded = list(p.map(bench._encode_slices, jobs))
        main = _run(work, f"{cfg.batch_seconds}s", vins, encoded[: len(vins)], advance)
        small = _run(work, f"{cfg.short_batch_seconds}s", vins, encoded[len(vins) :], advance)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    fixed, per_sample = _line(
        main["mean_batch_samples"],
        main["server_cpu_ms_per_batch"],
        small["mean_batch_samples"],
        small["server_cpu_ms_per_batch"],
    )
    return {
        "vehicles": len(vins),
        "server_processes": 1,
        "batch_seconds": cfg.batch_seconds,
        "samples_per_s": main["samples_per_s"],
        "server_cpu_ms_per_batch": main["server_cpu_ms_per_batch"],
        "fixed_cpu_ms_per_batch": None if fixed is None else round(fixed, 3),
        "cpu_us_per_1000_samples": None if per_sample is None else round(per_sample * 1000 * 1000, 2),
        "target_samples_per_s": TARGET_SAMPLES_PER_S,
        "target_fixed_cpu_ms": TARGET_FIXED_CPU_MS,
        "runs": {"main": main, "short": {"batch_seconds": cfg.short_batch_seconds, **small}},
    }


def main() -> None:
    """``python -m carvault.bench.ingest_cost``: both runs with the default configuration, as JSON, with the load."""
    import json

    before = os.getloadavg()
    figures = measure_ingest_cost()
    figures["load_average"] = {"start": round(before[0], 2), "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
