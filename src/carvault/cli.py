"""The `carvault` command line. Thin: each command builds settings and the same Region the server uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from carvault.errors import CarVaultError
from carvault.logs import log_config
from carvault.settings import Settings

if TYPE_CHECKING:
    from carvault.region import Region

app = typer.Typer(
    help="CarVault: owners' access to their vehicle's data, signed, logged, kept in its region.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Region data folder (CARVAULT_DATA_DIR).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="Region served, e.g. cn (CARVAULT_REGION).")]
DbUrl = Annotated[str | None, typer.Option("--database-url", help="Metadata DB URL; default SQLite in data dir.")]


def _settings(
    data_dir: Path | None = None, region: str | None = None, database_url: str | None = None, **more: object
) -> Settings:
    try:
        return Settings.from_env(None, data_dir=data_dir, region=region, database_url=database_url, **more)
    except ValueError as e:
        console.print(f"[red]bad setting:[/] {e}")
        raise typer.Exit(2) from None


def _region_or_exit(s: Settings) -> Region:
    """Open the region; a setting that cannot work (a blob store that does not answer, say) is one line, exit 2."""
    from carvault.region import Region

    try:
        return Region(s)
    except ValueError as e:
        console.print(f"[red]bad setting:[/] {e}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the region's store.")] = 1,
) -> None:
    """Serve a region: the vehicle gateway, the owner API and the transparency log."""
    import os

    import uvicorn

    from carvault.server import run_region, uvicorn_config

    s = _settings(data_dir, region, database_url, host=host, port=port)
    if workers > 1:
        os.environ.update(
            {
                "CARVAULT_DATA_DIR": str(s.data_dir),
                "CARVAULT_REGION": s.region,
                "CARVAULT_DATABASE_URL": s.database_url,
                "CARVAULT_REGION_ENDPOINTS": ",".join(f"{k}={v}" for k, v in s.region_endpoints.items()),
            }
        )
        _region_or_exit(s).close()  # create keys, CA and schema once, before the workers race to
        if s.fleet_telemetry_port:
            console.print("the Fleet Telemetry listener runs with one worker: serve it from a --workers 1 replica")
        console.print(f"region [bold]{s.region}[/] serving on http://{s.host}:{s.port} with {workers} workers")
        uvicorn.run(
            "carvault.web.asgi:create_from_env",
            factory=True,
            host=s.host,
            port=s.port,
            workers=workers,
            log_level="info",
            log_config=log_config(s.log_format, s.region),
            access_log=False,
            timeout_keep_alive=30,
            limit_concurrency=5000,  # as uvicorn_config (server.py): a car or a VISS subscriber holds a connection
            ws_per_message_deflate=False,  # as uvicorn_config: the workers deflated every live event (~0.9 ms each)
            # A worker answers the supervisor's health check only once the app is imported, which takes seconds on a
            # busy machine; uvicorn's 5 s default killed and restarted such workers forever (load 10, 2 cores).
            timeout_worker_healthcheck=60,
        )
        return
    with _region_or_exit(s) as r:
        console.print(f"region [bold]{s.region}[/] serving on http://{s.host}:{s.port} (data in {s.data_dir})")
        if s.fleet_telemetry_port:
            console.print(f"Fleet Telemetry (mTLS WebSocket) on wss://{s.host}:{s.fleet_telemetry_port}")
        config = uvicorn_config(r, s.host, s.port, log_level="info", own_process=True)
        config.log_config = log_config(s.log_format, s.region)
        config.configure_logging()
        server = uvicorn.Server(config)
        run_region(server, r, s.host, s.fleet_telemetry_port)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Folder for the demo (wiped first).")] = Path("carvault-data/demo"),
    check: Annotated[bool, typer.Option("--check", help="Run every step, do not serve, exit 0 if all worked.")] = False,
    port: Annotated[int | None, typer.Option(help="Port of region cn (default 8400).")] = None,
    seed: int = 7,
) -> None:
    """Provision regions cn and eu, three cars and an owner; upload a simulated day; serve it."""
    from carvault.demo import run_demo

    result = run_demo(data_dir, serve=not check, console=console, seed=seed, port=port)
    if not result.ok:
        console.print("[red]some demo steps failed[/]")
        raise typer.Exit(1)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path("bench-results/bench.json"),
    docs: Annotated[Path, typer.Option(help="Markdown report to rewrite.")] = Path("docs/benchmarks.md"),
    vehicles: Annotated[int, typer.Option(help="Vehicles in the store.")] = 20,
    hours: Annotated[float, typer.Option(help="Hours of driving per vehicle.")] = 2.0,
    postgres: Annotated[bool, typer.Option(help="Also measure the PostgreSQL peer.")] = True,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Tiny run (2 vehicles x 5 min, no store growth), < 1 min; checks the machinery, figures mean nothing.",
        ),
    ] = False,
    batch_seconds: Annotated[int, typer.Option(help="Seconds of driving per signed batch.")] = 300,
    store_samples: Annotated[
        int | None, typer.Option(help="Grow the store to this many samples before timing windows (0: no growth).")
    ] = None,
    windows: Annotated[int | None, typer.Option(help="Random windows timed (p50/p95).")] = None,
    log_proof_leaves: Annotated[
        int | None, typer.Option(help="Size of the log bulk-built for the proof figures (0: skip).")
    ] = None,
    server_workers: Annotated[
        int | None, typer.Option(help="`carvault serve --workers` of the main ingest (default 1).")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the data here (default: a temp folder, deleted afterwards).")
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="Run one step alone: `live` (streaming cars and VISS subscribers), `retention` (purge rate) or "
            "`fleet` (two replicas behind HAProxy, exports, fleet jobs on DuckDB and Spark); updates its section."
        ),
    ] = None,
) -> None:
    """Measure ingest, storage and query figures; write them to JSON and docs/benchmarks.md."""
    from carvault.bench.run import run_bench

    if only == "fleet":
        from carvault.bench.fleet_bench import FleetBenchConfig, run_fleet_only

        run_fleet_only(out, docs, console, FleetBenchConfig.quick() if quick else None, work_dir)
        return
    if only == "retention":
        from carvault.bench.retention_bench import RetentionBenchConfig, run_retention_only

        run_retention_only(out, docs, console, RetentionBenchConfig.quick() if quick else None, work_dir)
        return
    if only is not None:
        if only != "live":
            console.print(f"[red]error:[/] --only takes `live` or `retention`, not {only!r}")
            raise typer.Exit(2)
        from carvault.bench.live_bench import LiveBenchConfig, run_live_only

        run_live_only(out, docs, console, LiveBenchConfig.quick() if quick else None, work_dir)
        return

    more = {
        k: v
        for k, v in {
            "store_samples": store_samples,
            "windows": windows,
            "log_proof_leaves": log_proof_leaves,
            "server_workers": server_workers,
            "work_dir": work_dir,
        }.items()
        if v is not None
    }
    run_bench(
        out=out,
        docs=docs,
        vehicles=vehicles,
        hours=hours,
        postgres=postgres,
        console=console,
        quick=quick,
        batch_seconds=batch_seconds,
        **more,
    )


@app.command("provision")
def provision_cmd(
    vin: str,
    vehicles_dir: Annotated[Path, typer.Option(help="Where the car keeps its key.")],
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
    model: str = "CarVault EV",
) -> None:
    """Provision one vehicle: make its key, register it with its home region, print its pairing code."""
    from carvault.provisioning import provision
    from carvault.region import Region

    with Region(_settings(data_dir, region, database_url)) as r:
        ident = provision(r, vin.upper(), vehicles_dir, model)
    console.print(f"vehicle {ident.vin} provisioned in region {ident.region}; pairing code {ident.pairing_code}")


@app.command("fleet-register")
def fleet_register(
    vin: str,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
    model: str = "Tesla",
) -> None:
    """Register a Fleet Telemetry car (a Tesla as it is): the region attests its data; print its pairing code."""
    from carvault.region import Region
    from carvault.vehicle.identity import new_pairing_code

    code = new_pairing_code()
    with Region(_settings(data_dir, region, database_url)) as r:
        r.fleet.register(vin.upper(), code, model=model)
    console.print(
        f"vehicle {vin.upper()} registered for Fleet Telemetry in region {r.name}; its data will be attested by the "
        f"region, not signed by the car; pairing code {code}"
    )


@app.command()
def simulate(
    vehicle_dir: Annotated[Path, typer.Argument(help="A provisioned vehicle's folder.")],
    endpoint: Annotated[str, typer.Option(help="The home region's gateway URL.")],
    day: Annotated[str | None, typer.Option(help="Date to simulate, YYYY-MM-DD (default yesterday).")] = None,
    seed: int = 1,
    incident: bool = False,
    batch_seconds: int = 300,
    live: Annotated[
        bool, typer.Option("--live", help="Also stream the day as live frames (1 Hz) before its batches commit them.")
    ] = False,
) -> None:
    """Simulate a day of driving for a provisioned vehicle and upload it."""
    from datetime import UTC, date, datetime, timedelta

    from rich.progress import Progress

    from carvault.vehicle.agent import UploadRefused, VehicleAgent
    from carvault.vehicle.identity import VehicleIdentity
    from carvault.vehicle.simulator import simulate_day

    ident = VehicleIdentity.load(vehicle_dir)
    d = date.fromisoformat(day) if day else (datetime.now(UTC) - timedelta(days=1)).date()
    sim = simulate_day(ident.vin, seed, d, incident=incident)
    agent = VehicleAgent(ident, vehicle_dir, endpoint)
    agent.fetch_policy()  # the owner's consents decide what leaves the car
    if live:  # docs/protocol.md §8: frames first, then the batches that commit to them
        import asyncio

        from carvault.vehicle.live import LiveSender, stream_frames

        sender = LiveSender(agent)
        report = asyncio.run(stream_frames(sender, endpoint, sender.frames(sim.table)))
        console.print(f"live frames: {report.acked} acknowledged, refused {report.refused}, dropped {report.dropped}")
    n = agent.process(sim.table, batch_seconds) + agent.finish()
    with Progress(console=console) as bar:
        task = bar.add_task(f"uploading {n} batches", total=len(agent.pending()))
        try:
            while agent.pending():
                bar.advance(task, len(agent.upload_pending(limit=10)))
        except UploadRefused as e:
            console.print(f"[red]refused:[/] {e}")
            raise typer.Exit(1) from None
    console.print(f"uploaded {n} batches for {ident.vin}; events: {[e.kind for e in sim.events]}")


@app.command()
def verify(
    package: Annotated[Path, typer.Argument(help="The incident package (ZIP).", exists=True, dir_okay=False)],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="A checkpoint you saved earlier: prove the log was not rewritten since."),
    ] = None,
    trust: Annotated[
        Path | None, typer.Option("--trust", help="The region's published trust file (GET /api/v1/region/trust).")
    ] = None,
    log_key: Annotated[str | None, typer.Option("--log-key", help="Pin the region's published log key.")] = None,
    ca_sha256: Annotated[str | None, typer.Option("--ca-sha256", help="Pin the published CA SHA-256.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    witness: Annotated[
        list[str] | None, typer.Option("--witness", help="A witness you trust (cosignature/v1 vkey); repeatable.")
    ] = None,
    quorum: Annotated[int | None, typer.Option("--quorum", help="How many --witness keys must have cosigned.")] = None,
) -> None:
    """Verify an incident package offline. Exit 0 verified, 1 a check failed, 2 NOT anchored, 3 unreadable, 4 usage.

    `carvault verify` itself runs carvault.verify.cli without loading this module (see carvault.__main__).
    """
    from carvault.verify.cli import run

    code = run(
        package,
        trust=trust,
        checkpoint=checkpoint,
        log_key=log_key,
        ca_sha256=ca_sha256,
        json_out=json_out,
        witnesses=witness or [],
        quorum=quorum,
    )
    raise typer.Exit(code)


@app.command()
def order(
    vin: str,
    start: Annotated[str, typer.Option(help="Window start (ISO 8601 or epoch ms).")],
    end: Annotated[str, typer.Option(help="Window end (ISO 8601 or epoch ms).")],
    authority: Annotated[str, typer.Option(help="Ordering authority, e.g. 'Zhengzhou market supervision'.")],
    reference: Annotated[str, typer.Option(help="The order's reference number.")],
    legal_basis: Annotated[str, typer.Option(help="Legal basis of the order.")] = "authority order",
    out: Annotated[Path | None, typer.Option(help="Also write the package here.")] = None,
    jurisdiction: Annotated[
        str | None,
        typer.Option(help="Where the authority sits (a region name); abroad needs a transfer record. Default: here."),
    ] = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record an authority's order to release a window of data to the vehicle's owner, and build the package."""
    from carvault.compliance.orders import release_to_owner
    from carvault.region import Region
    from carvault.web.deps import parse_time

    with Region(_settings(data_dir, region, database_url)) as r:
        pkg, blob = release_to_owner(
            r,
            vin.upper(),
            parse_time(start, "start"),
            parse_time(end, "end"),
            authority=authority,
            reference=reference,
            legal_basis=legal_basis,
            jurisdiction=jurisdiction,
        )
    if out:
        out.write_bytes(blob)
    console.print(
        f"order recorded; package {pkg.id} ({pkg.batches} batches, sha256 {pkg.sha256[:16]}…) "
        f"released to the owner{f', written to {out}' if out else ''}"
    )


@app.command("import-can")
def import_can_cmd(
    log: Annotated[
        Path,
        typer.Argument(
            help="CAN log: candump -L text (.log, .gz) or any format python-can reads (.asc, .blf, .trc ...).",
            exists=True,
            dir_okay=False,
        ),
    ],
    mapping: Annotated[
        str, typer.Option(help="Mapping file (TOML), or a shipped one: tesla_model3_party, toyota_rav4.")
    ],
    vehicle_dir: Annotated[Path, typer.Option(help="The provisioned vehicle's folder (key, spool).")],
    dbc: Annotated[
        str | None,
        typer.Option(
            help="DBC file, or opendbc:NAME for one in the opendbc package (default: the one the mapping names)."
        ),
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="The home region's gateway URL.")] = None,
    batch_seconds: Annotated[int, typer.Option(help="Seconds of data per signed batch.")] = 300,
    no_upload: Annotated[bool, typer.Option("--no-upload", help="Sign and spool only; upload later.")] = False,
    start: Annotated[
        str | None,
        typer.Option(help="UTC time of the first frame, for logs whose clock counts from boot (ISO 8601 or epoch ms)."),
    ] = None,
) -> None:
    """Import a CAN log: decode it with a DBC, map it to VSS, sign it as the car and upload it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from carvault.vehicle.agent import UploadRefused, VehicleAgent
    from carvault.vehicle.can import describe_ids, import_can
    from carvault.vehicle.identity import VehicleIdentity
    from carvault.web.deps import parse_time

    if not no_upload and not endpoint:
        console.print("[red]give --endpoint (the gateway URL), or --no-upload to only sign and spool[/]")
        raise typer.Exit(2)
    try:
        ident = VehicleIdentity.load(vehicle_dir)
        start_us = parse_time(start, "start") * 1000 if start else None
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"decoding {log.name}", total=log.stat().st_size)
            result = import_can(
                log,
                dbc=dbc,
                mapping=mapping,
                start_us=start_us,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        info = result.summary()
        console.print(
            f"{info['frames']:,} frames ({info['frames_per_s']:,} frames/s) -> {info['rows']:,} rows, "
            f"{info['samples']:,} samples of {len(result.table.column_names) - 1} signals"
        )
        if result.unknown_ids:
            console.print(
                f"[yellow]{len(result.unknown_ids)} IDs are not in the DBC:[/] {describe_ids(result.unknown_ids)}"
            )
        for path, n in info["out_of_range"].items():
            console.print(f"[yellow]{n} values of {path} outside the catalogue range were left out[/]")
        if result.table.num_rows == 0:
            console.print("[red]nothing to record: the mapped signals have no value in the log[/]")
            raise typer.Exit(1)
        agent = VehicleAgent(ident, vehicle_dir, endpoint or "")
        if not no_upload:
            agent.fetch_policy()  # the owner's current consents decide what leaves the car
        # The car's own pipeline: event recorder, consent filter, location precision, signing, spool.
        n = agent.process(result.table, batch_seconds) + agent.finish()
        status = agent.collection_status()
        held = sorted(
            {agent.catalogue[p].category for p in result.table.column_names[1:]}
            - {c for c, s in status.items() if s == "collecting"}
        )
        console.print(
            f"signed {n} batches for {ident.vin}" + (f"; not collected (no consent): {', '.join(held)}" if held else "")
        )
        if no_upload:
            console.print(f"{len(agent.pending())} batches wait in {agent.spool_dir}")
            return
        with Progress(console=console) as bar:
            task = bar.add_task(f"uploading {len(agent.pending())} batches", total=len(agent.pending()))
            while agent.pending():
                bar.advance(task, len(agent.upload_pending(limit=10)))
        console.print(f"uploaded {n} batches for {ident.vin}")
    except UploadRefused as e:
        console.print(f"[red]refused:[/] {e}")
        raise typer.Exit(1) from None
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise typer.Exit(1) from None


@app.command()
def hold(
    vin: str,
    authority: Annotated[str, typer.Option(help="Who orders the hold.")],
    reason: Annotated[str, typer.Option(help="Case or reason.")],
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Place a legal hold: the vehicle's data is kept (not deleted) until released."""
    from carvault.region import Region

    with Region(_settings(data_dir, region, database_url)) as r:
        h = r.deletions.place_hold(vin.upper(), authority, reason)
    console.print(f"legal hold {h.id} placed on {vin.upper()}")


@app.command()
def compact(data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None) -> None:
    """Move closed days' payloads into their Parquet parts, evidence and query copy at once (store/day_copies.py)."""
    from rich.progress import Progress

    from carvault.region import Region

    with Region(_settings(data_dir, region, database_url)) as r, Progress(console=console) as bar:
        task = bar.add_task("compacting closed days", total=None)
        done = r.telemetry.compact(
            limit=1_000_000, progress=lambda n, total: bar.update(task, completed=n, total=total) if total else None
        )
    size = sum(c.bytes for c in done)
    batches = sum(c.batches for c in done)
    console.print(f"{len(done)} vehicle-days compacted ({batches} batches, {size:,} payload bytes)")


@app.command("copy-blobs")
def copy_blobs_cmd(
    to: Annotated[str, typer.Option("--to", help="Blob store to copy into: s3://bucket/prefix or file:///path.")],
    s3_endpoint_url: Annotated[str, typer.Option(help="URL of the target S3 server when it is not AWS.")] = "",
    delete_extra: Annotated[
        bool, typer.Option("--delete-extra", help="Delete what the target holds that the region no longer does.")
    ] = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
) -> None:
    """Copy the region's blobs (evidence, frames, packages, exports, log tiles, query copies) into another blob
    store before switching `blob_store` to it; run it again to resume (docs/operations.md, Blob store).

    Exits 1 while the target still holds blobs the region has erased or purged since an earlier copy: they would
    outlive their erasure; `--delete-extra` removes them.
    """
    from rich.progress import Progress

    from carvault.store.blobs import blob_store_of, copy_blobs

    settings = _settings(data_dir, region)
    try:
        where = {"region_name": settings.s3_region}
        src = blob_store_of(settings.blob_store, settings.data_dir, endpoint_url=settings.s3_endpoint_url, **where)
        dst = blob_store_of(to, settings.data_dir, endpoint_url=s3_endpoint_url or settings.s3_endpoint_url, **where)
    except ValueError as e:
        console.print(f"[red]bad setting:[/] {e}")
        raise typer.Exit(2) from None
    try:
        with Progress(console=console) as bar:
            task = bar.add_task(f"copying blobs to {to}", total=None)
            done = copy_blobs(
                src,
                dst,
                delete_extra=delete_extra,
                progress=lambda n, total: bar.update(task, completed=n, total=total),
            )
    finally:
        src.close()
        dst.close()
    console.print(
        f"{done.copied} blobs copied ({done.bytes_copied:,} bytes); {done.skipped} were there already, byte for byte"
    )
    if done.deleted:
        console.print(f"{done.deleted} blobs the region no longer holds deleted from the target")
    elif done.extra:
        console.print(
            f"[red]{len(done.extra)} blobs in the target are no longer in the region[/] (erased or purged since an "
            f"earlier copy), e.g. {done.extra[0]}: run again with --delete-extra before switching to it"
        )
        raise typer.Exit(1)


@app.command("release-hold")
def release_hold(hold_id: int, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None) -> None:
    """Release a legal hold; deletion requests it held are carried out."""
    from carvault.region import Region

    with Region(_settings(data_dir, region, database_url)) as r:
        done = r.deletions.release_hold(hold_id)
    console.print(f"hold {hold_id} released; {len(done)} waiting deletion request(s) processed")


from carvault.apps_cli import apps  # noqa: E402 - the sub-app reuses the options above

app.add_typer(apps, name="apps")

from carvault.portability_cli import portability  # noqa: E402 - the sub-app reuses the options above

app.add_typer(portability, name="portability")

from carvault.admin import admin  # noqa: E402 - the operator's sub-app (issue 11)

app.add_typer(admin, name="admin")

from carvault.witness.cli import witness  # noqa: E402 - an independent witness anyone can run (issue 12)

app.add_typer(witness, name="witness")


def main() -> None:
    """Entry point: CarVault errors become a message and exit code 1."""
    try:
        app()
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
