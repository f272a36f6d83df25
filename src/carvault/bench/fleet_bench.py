"""``carvault bench --only fleet``: one region on several machines, exports, and fleet jobs on DuckDB and Spark.

1. **Two replicas behind the balancer.** ``LocalCluster`` (bench/cluster.py: PostgreSQL for metadata and the log,
   moto's S3 server for evidence, NATS, HAProxy) takes the fleet's signed batches through HAProxy; then the same
   batches (re-signed for fresh VINs) go to one replica of that cluster directly, and to an embedded region
   (SQLite, local folder) — the per-replica comparison issue 12 asks for.
2. **Exports** of one vehicle's history through the export job's own writers (access/jobs.py): Parquet, CSV and
   JSON, samples per second.
3. **Fleet jobs** (fleet/jobs.py) on the compacted copies of the embedded region: the same job on DuckDB and on
   Spark (local mode), seconds each, and whether the answers agree.

Figures go to the ``fleet`` key of the bench JSON and to the section between ``<!-- fleet:start -->`` and
``<!-- fleet:end -->`` of docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from carvault.bench.sections import save_section, splice_section

SECTION_START = "<!-- fleet:start (written by carvault bench --only fleet) -->"
SECTION_END = "<!-- fleet:end -->"


@dataclass(frozen=True)
class FleetBenchConfig:
    """Sizes of the fleet section."""

    vehicles: int = 8
    hours: float = 0.5
    batch_seconds: int = 60
    spark: bool = True
    export_hours: float = 8.0  # one vehicle's driving for the export step (8 h: about 6.3 M samples)

    @classmethod
    def quick(cls) -> FleetBenchConfig:
        """A tiny run that checks the machinery (figures mean nothing)."""
        return cls(vehicles=2, hours=0.05, spark=False, export_hours=0.05)


class _Front:
    """What ``bench.run.upload`` needs of a server: its port and the CPU its processes used."""

    def __init__(self, port: int, pids: list[int]) -> None:
        self.port = port
        self.pids = pids

    def cpu_seconds(self) -> float:
        from carvault.bench.run import _cpu_seconds

        return sum(_cpu_seconds(p) for p in self.pids)


def _signed(data: list[Any], settings: Any, vehicles_dir: Path, offset: int, sets: int = 1) -> list[list[Any]]:
    """Provision ``sets`` fresh VINs per vehicle in the region ``settings`` names; each set signs the whole dataset."""
    from carvault.bench.run import _provision, sign_vehicle

    vins = [[f"BFLT{offset + k * 1000 + i:013d}" for i in range(len(data))] for k in range(sets)]
    keys, _ = _provision(settings, [v for group in vins for v in group], vehicles_dir, [])
    return [
        [sign_vehicle(vin, keys[vin], i, v) for i, (vin, v) in enumerate(zip(group, data, strict=True))]
        for group in vins
    ]


def _ingest_cluster(work: Path, data: list[Any], console: Console) -> dict[str, Any]:
    from carvault.bench.cluster import LocalCluster
    from carvault.bench.run import upload
    from carvault.settings import Settings

    out: dict[str, Any] = {}
    with LocalCluster(work / "cluster", replicas=2, settings={"log_backend": "postgres"}) as cluster:
        env = cluster.settings_env(work / "cluster-operator")
        shutil.copytree(cluster.root / "r1" / "keys", work / "cluster-operator" / "keys")
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            settings = Settings.from_env()
            both, one = _signed(data, settings, work / "cars-cluster", 1000, sets=2)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        pids = [cluster.replica(n).proc.pid for n in ("r1", "r2")]  # type: ignore[union-attr]
        console.print("fleet: ingest through HAProxy into two replicas")
        r = upload(_Front(cluster.port, pids), both, len(both), lambda n: None)  # type: ignore[arg-type]
        out["two_replicas"] = r.to_json()
        console.print("fleet: ingest into one replica of the same cluster")
        r1 = cluster.replica_ports["r1"]
        r = upload(_Front(r1, pids[:1]), one, len(one), lambda n: None)  # type: ignore[arg-type]
        out["one_replica_postgres_s3"] = r.to_json()
    return out


def _ingest_embedded(work: Path, data: list[Any], console: Console) -> tuple[dict[str, Any], Path]:
    from carvault.bench.run import REGION, ServerProcess, upload
    from carvault.server import free_port
    from carvault.settings import Settings

    data_dir = work / "embedded"
    (signed,) = _signed(data, Settings(data_dir=data_dir, region=REGION), work / "cars-embedded", 5000)
    server = ServerProcess(data_dir, free_port(), work / "embedded.log").start()
    try:
        console.print("fleet: ingest into one embedded replica (SQLite, local folder)")
        r = upload(server, signed, len(signed), lambda n: None)
    finally:
        server.stop()
    return r.to_json(), data_dir


def _exports(data_dir: Path, formats: tuple[str, ...] = ("parquet", "csv", "json"), repeats: int = 2) -> dict[str, Any]:
    """Each format of an owner's whole-history export of the first vehicle, run by the export job, samples/s.

    Besides the wall clock, the CPU seconds of this process during the job (all its threads: the job encodes in a
    small pool) and the load average around it: on a shared machine the wall clock alone says little.
    """
    from sqlalchemy import func, select

    from carvault.access.jobs import ExportJobs
    from carvault.bench.run import REGION, _loadavg, machine_busy_seconds
    from carvault.region import Region
    from carvault.settings import Settings
    from carvault.store.metadata import BatchRecord, Owner
    from carvault.store.tables import ExportJob

    out: dict[str, Any] = {}
    with Region(Settings(data_dir=data_dir, region=REGION)) as region:
        with region.db.session() as s:
            vin, samples = s.execute(
                select(BatchRecord.vin, func.sum(BatchRecord.samples)).group_by(BatchRecord.vin).limit(1)
            ).one()
            owner_id = s.scalar(select(Owner.id).limit(1))
        jobs = ExportJobs(region, background=False)
        for fmt in formats:
            for _ in range(repeats):  # the best of a few: the first run also pays for fresh memory
                job = jobs.create(owner_id, vin, start_ms=None, end_ms=None, fmt=fmt)
                load, busy = _loadavg(), machine_busy_seconds()
                c0, t0 = time.process_time(), time.perf_counter()
                if not jobs.run(job.id):
                    raise RuntimeError(f"the {fmt} export did not run")
                seconds = time.perf_counter() - t0
                cpu = time.process_time() - c0
                other = machine_busy_seconds() - busy - cpu
                with region.db.session() as s:
                    done = s.get(ExportJob, job.id)
                    assert done is not None
                    size = done.size
                if fmt in out and out[fmt]["seconds"] <= seconds:
                    continue
                out[fmt] = {
                    "samples": int(samples),
                    "seconds": round(seconds, 3),
                    "bytes": size,
                    "samples_per_s": int(samples / seconds),
                    "cpu_s": round(cpu, 3),
                    "other_cpu_s": round(max(other, 0.0), 2),  # every other process on the machine meanwhile
                    "load_average": [load, _loadavg()],
                }
    return out


def _jobs(data_dir: Path, spark: bool) -> dict[str, Any]:
    """The monthly statistics job on DuckDB and on Spark over the compacted copies."""
    from carvault.bench.run import REGION
    from carvault.fleet.engines import DuckDBEngine, SparkEngine, dataset_of
    from carvault.fleet.jobs import monthly_statistics
    from carvault.region import Region
    from carvault.settings import Settings

    out: dict[str, Any] = {}
    with Region(Settings(data_dir=data_dir, region=REGION)) as region:
        t0 = time.perf_counter()
        done = region.telemetry.compact(now=2**61, limit=1_000_000)
        out["compaction"] = {"days": len(done), "seconds": round(time.perf_counter() - t0, 2)}
        assert region.telemetry.days is not None and region.telemetry.withheld is not None
        data = dataset_of(region.db, region.telemetry.days, region.catalogue, region.telemetry.withheld())
        year = time.gmtime().tm_year
        catalogue = region.catalogue
    answers = {}
    engines: list[tuple[str, Any]] = [("duckdb", lambda: DuckDBEngine(data))]
    if spark:
        engines.append(("spark", lambda: SparkEngine(data)))
    for name, make in engines:
        t0 = time.perf_counter()
        engine = make()
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        answers[name] = monthly_statistics(engine, catalogue, year).to_pylist()
        ran = time.perf_counter() - t1
        engine.close()
        out[name] = {"start_s": round(started, 2), "job_s": round(ran, 2)}
    if "spark" in answers:
        out["same_answer"] = answers["spark"] == answers["duckdb"]
    return out


def fleet_figures(
    cfg: FleetBenchConfig | None = None, console: Console | None = None, work: Path | None = None
) -> dict:
    """Measure the section; return its figures."""
    from carvault.bench.run import BenchConfig, _loadavg, make_dataset

    cfg = cfg or FleetBenchConfig()
    console = console or Console()
    own = work is None
    work = work or Path(tempfile.mkdtemp(prefix="carvault-fleet-bench-"))
    load = _loadavg()
    try:
        bc = BenchConfig.quick_config(vehicles=cfg.vehicles, hours=cfg.hours, batch_seconds=cfg.batch_seconds)
        vins = [f"BENCHFLEET{i:07d}" for i in range(cfg.vehicles)]
        console.print(f"fleet: simulating {cfg.vehicles} vehicles × {cfg.hours:g} h")
        data = make_dataset(vins, bc, lambda n: None)
        fig: dict[str, Any] = {"vehicles": cfg.vehicles, "hours": cfg.hours, "batch_seconds": cfg.batch_seconds}
        fig["cluster"] = _ingest_cluster(work, data, console)
        fig["embedded"], data_dir = _ingest_embedded(work, data, console)
        console.print(f"fleet: exports of one vehicle's {cfg.export_hours:g} h of driving")
        fig["exports"] = _exports(export_history(work / "export-history", cfg.export_hours, console))
        fig["export_hours"] = cfg.export_hours
        console.print("fleet: jobs on DuckDB" + (" and Spark" if cfg.spark else ""))
        fig["jobs"] = _jobs(data_dir, cfg.spark)
        fig["load_average"] = {"start": load, "end": _loadavg()}
        return fig
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def fleet_lines(fig: dict[str, Any]) -> list[str]:
    """The docs section."""
    c, e = fig["cluster"], fig["embedded"]

    def rate(r: dict[str, Any]) -> str:
        return f"{r['samples_per_s'] / 1e6:.2f} M samples/s"

    lines = [
        "## Fleet scale (issue 12)",
        "",
        f"{fig['vehicles']} simulated vehicles × {fig['hours']:g} h, {fig['batch_seconds']} s batches; load average "
        f"{fig['load_average']['start']} at the start, {fig['load_average']['end']} at the end.",
        "",
        "| measurement | figure |",
        "|---|---|",
        "| ingest through HAProxy into two replicas (PostgreSQL metadata and log, S3 evidence) | "
        f"{rate(c['two_replicas'])} |",
        f"| ingest into one replica of that cluster | {rate(c['one_replica_postgres_s3'])} |",
        f"| ingest into one embedded replica (SQLite, local folder) | {rate(e)} |",
    ]
    for fmt, x in fig["exports"].items():
        extra = ""
        if "cpu_s" in x:
            load = x["load_average"]
            extra = (
                f" (wall {x['seconds']} s, CPU {x['cpu_s']} s = {x['samples'] / max(x['cpu_s'], 1e-9) / 1e6:.1f} M "
                f"samples per CPU-second; load {load[0]}→{load[1]}, other processes {x.get('other_cpu_s', '?')} "
                "CPU-s meanwhile)"
            )
        hours = f", {fig['export_hours']:g} h of driving" if "export_hours" in fig else ""
        lines.append(
            f"| export of one vehicle's history as {fmt} ({x['samples']:,} samples{hours}) | "
            f"{x['samples_per_s'] / 1e6:.2f} M samples/s{extra} |"
        )
    j = fig["jobs"]
    lines.append(
        f"| compaction into per-day copies | {j['compaction']['days']} vehicle-days in {j['compaction']['seconds']} s |"
    )
    for name in ("duckdb", "spark"):
        if name in j:
            lines.append(
                f"| monthly statistics job on {name} | start {j[name]['start_s']} s, job {j[name]['job_s']} s |"
            )
    if "same_answer" in j:
        lines.append(f"| DuckDB and Spark give the same answer | {'yes' if j['same_answer'] else 'NO'} |")
    lines += [
        "",
        "All processes share the 2-core machine: two replicas cannot be faster than one there (they split the same "
        "cores); the figure shows what the balancer and the shared PostgreSQL and S3 cost, not a scaling curve. moto "
        "is a Python S3 server keeping objects in memory: a lower bound for a real object store.",
    ]
    return lines


def splice(markdown: str, fig: dict[str, Any]) -> str:
    """Put the section into the benchmarks page (replacing an earlier one, else before ``## Targets missed``)."""
    return splice_section(
        markdown, "\n".join([SECTION_START, *fleet_lines(fig), SECTION_END]), SECTION_START, SECTION_END
    )


def run_fleet_only(
    out: Path, docs: Path, console: Console | None = None, cfg: FleetBenchConfig | None = None, work: Path | None = None
) -> dict[str, Any]:
    """``carvault bench --only fleet``: measure, set ``fleet`` in ``out``, rewrite its docs section."""
    fig = fleet_figures(cfg, console, work)
    save_section(out, docs, "fleet", fig, lambda page: splice(page, fig))
    return fig


def _pid_tree_cpu(pid: int) -> float:
    from carvault.bench.run import _cpu_seconds

    return _cpu_seconds(pid)


def replica_costs(work: Path, hours: float, vehicles: int, rounds: int, console: Console) -> list[dict[str, Any]]:
    """``--replica-only``: issue 12's per-replica comparison alone, with the scale backend's two costs apart.

    Four ``carvault serve`` processes over the same signed batches (fresh VINs each run): PostgreSQL metadata and
    log with evidence on S3 (moto served with keep-alive, as LocalCluster serves it), the same on moto_server's own
    server (a new connection per request), the same with evidence in the local folder, and the embedded region
    (SQLite, local folder). For each run: the server's CPU per batch, and the CPU per batch of the PostgreSQL server
    (the postmaster and its backends) and of moto, which share the machine's cores with it. Runs alternate
    (``rounds`` times the four) so that a load change on the shared machine touches every variant alike.
    """
    import boto3

    from carvault.bench.cluster import S3_ENV, Service, _boto_keys, _wait, s3_server_args
    from carvault.bench.pg_cluster import TemporaryPostgres
    from carvault.bench.run import REGION, BenchConfig, ServerProcess, _loadavg, make_dataset, upload
    from carvault.server import free_port
    from carvault.settings import Settings

    bc = BenchConfig.quick_config(vehicles=vehicles, hours=hours, batch_seconds=60)
    console.print(f"replica costs: simulating {vehicles} vehicles × {hours:g} h")
    data = make_dataset([f"BENCHREPL{i:08d}" for i in range(vehicles)], bc, lambda n: None)
    work.mkdir(parents=True, exist_ok=True)
    pg = TemporaryPostgres().start()
    # Two S3 servers over the same moto application: the cluster's (keep-alive) and moto_server's own, which
    # closes the connection after every request (what the fleet bench used before; bench/cluster.py).
    s3_servers: dict[bool, tuple[Service, str]] = {}
    results: list[dict[str, Any]] = []
    try:
        import httpx

        for keep_alive in (True, False):
            port = free_port()
            log = work / f"s3-{'keepalive' if keep_alive else 'close'}.log"
            svc = Service("s3", s3_server_args(port, keep_alive=keep_alive), log, S3_ENV).start()
            s3_servers[keep_alive] = (svc, f"http://127.0.0.1:{port}")
        for svc, url in s3_servers.values():
            _wait("s3 server", lambda url=url: httpx.get(url + "/", timeout=2).status_code < 500, svc.proc, svc.log, 60)
            boto3.client("s3", endpoint_url=url, region_name="us-east-1", **_boto_keys()).create_bucket(
                Bucket="carvault-bench"
            )
        postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])

        def on_s3(database: str, keep_alive: bool) -> dict[str, str]:
            return {
                "CARVAULT_DATABASE_URL": pg.create_database(database),
                "CARVAULT_BLOB_STORE": f"s3://carvault-bench/{database}",
                "CARVAULT_S3_ENDPOINT_URL": s3_servers[keep_alive][1],
                "CARVAULT_LOG_BACKEND": "postgres",
                "CARVAULT_RETENTION_INTERVAL_S": "0",
                **S3_ENV,
                "AWS_DEFAULT_REGION": "us-east-1",
            }

        variants: dict[str, Any] = {  # each run a fresh region: its own database, bucket prefix and folder
            "pg_s3": lambda db: on_s3(db, True),
            "pg_s3_closing": lambda db: on_s3(db, False),
            "pg_local": lambda db: {
                "CARVAULT_DATABASE_URL": pg.create_database(db),
                "CARVAULT_LOG_BACKEND": "postgres",
                "CARVAULT_RETENTION_INTERVAL_S": "0",
            },
            "embedded": lambda db: {"CARVAULT_RETENTION_INTERVAL_S": "0"},
        }
        for rnd in range(rounds):
            for name, make_env in variants.items():
                env = make_env(f"bench_{name}_{rnd}")
                data_dir = work / f"{name}-{rnd}"
                saved = dict(os.environ)
                os.environ.update(env)
                try:
                    settings = Settings.from_env(env, data_dir=str(data_dir), region=REGION)
                    (signed,) = _signed(data, settings, work / f"cars-{name}-{rnd}", 10_000 + 1000 * rnd)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                server = ServerProcess(data_dir, free_port(), work / f"{name}-{rnd}.log", extra_env=env)
                server.start(timeout=240)  # a shared machine at load 15 takes over a minute to start it
                moto_pids = [svc.proc.pid for svc, _ in s3_servers.values() if svc.proc is not None]
                try:
                    load0 = _loadavg()
                    pg0, moto0 = _pid_tree_cpu(postmaster), sum(_pid_tree_cpu(p) for p in moto_pids)
                    r = upload(server, signed, len(signed), lambda n: None).to_json()
                    pg_s = _pid_tree_cpu(postmaster) - pg0
                    moto_s = sum(_pid_tree_cpu(p) for p in moto_pids) - moto0
                finally:
                    server.stop()
                n = r["batches"]
                row = {
                    "variant": name,
                    "round": rnd,
                    "samples_per_s": r["samples_per_s"],
                    "batches": n,
                    "server_cpu_ms_per_batch": r["server_cpu_ms_per_batch"],
                    "postgres_cpu_ms_per_batch": round(pg_s * 1000 / n, 3),
                    "moto_cpu_ms_per_batch": round(moto_s * 1000 / n, 3),
                    "other_cpu_s": round(max(0.0, r["other_processes_cpu_seconds"] - pg_s - moto_s), 2),
                    "load_average": [load0, _loadavg()],
                }
                results.append(row)
                console.print(row)
    finally:
        for svc, _ in s3_servers.values():
            svc.stop()
        pg.stop()
    return results


def export_history(work: Path, hours: float, console: Console, *, compact: bool = True) -> Path:
    """An embedded region in ``work`` holding ``hours`` of one vehicle's driving (made once, reused after)."""
    from carvault.bench.run import BenchConfig, make_dataset

    data_dir = work / "embedded"
    if (work / "embedded.done").exists():
        return data_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bc = BenchConfig.quick_config(vehicles=1, hours=hours, batch_seconds=300)
    console.print(f"export bench: simulating one vehicle × {hours:g} h")
    data = make_dataset(["BENCHEXPORT0000001"], bc, lambda n: None)
    _, data_dir = _ingest_embedded(work, data, console)
    if compact:
        from carvault.bench.run import REGION
        from carvault.region import Region
        from carvault.settings import Settings

        with Region(Settings(data_dir=data_dir, region=REGION)) as region:
            region.telemetry.compact(now=2**61, limit=1_000_000)
    (work / "embedded.done").touch()
    return data_dir


def main(argv: list[str] | None = None) -> None:
    """``python -m carvault.bench.fleet_bench --export-only``: the export step alone, on a longer history;
    ``--replica-only``: the per-replica ingest comparison alone (PostgreSQL + S3, PostgreSQL + local, embedded)."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    step = p.add_mutually_exclusive_group(required=True)
    step.add_argument("--export-only", action="store_true")
    step.add_argument(
        "--replica-only",
        action="store_true",
        help="issue 12's per-replica comparison alone: PostgreSQL + S3, PostgreSQL + local blobs, embedded",
    )
    p.add_argument("--vehicles", type=int, default=8, help="--replica-only: vehicles uploading at once")
    p.add_argument("--rounds", type=int, default=2, help="--replica-only: alternating runs of the three variants")
    p.add_argument("--hours", type=float, default=8.0, help="hours of one vehicle's driving (8 h: about 6 M samples)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "carvault-export-bench")
    p.add_argument("--formats", default="parquet,csv,json")
    p.add_argument("--no-compact", action="store_true", help="leave the days uncompacted (read batch by batch)")
    a = p.parse_args(argv)
    console = Console()
    if a.replica_only:
        work = Path(tempfile.mkdtemp(prefix="carvault-replica-bench-"))
        try:
            rows = replica_costs(work, a.hours if a.hours != 8.0 else 0.5, a.vehicles, a.rounds, console)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rows))
        return
    data_dir = export_history(a.work, a.hours, console, compact=not a.no_compact)
    out = _exports(data_dir, tuple(a.formats.split(",")))
    for fmt, x in out.items():
        console.print(
            f"{fmt}: {x['samples']:,} samples in {x['seconds']} s wall, {x['cpu_s']} s CPU: "
            f"{x['samples_per_s'] / 1e6:.2f} M samples/s wall, "
            f"{x['samples'] / x['cpu_s'] / 1e6:.2f} M/s per CPU-second, load {x['load_average']}, "
            f"other processes {x['other_cpu_s']} CPU-s"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
