"""The `carvault` command line. Thin: each command builds settings and the same Region the server uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from carvault.errors import CarVaultError
from carvault.settings import Settings

app = typer.Typer(help="CarVault: owners' access to their vehicle's data, signed, logged, kept in its region.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Region data folder (CARVAULT_DATA_DIR).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="Region served, e.g. cn (CARVAULT_REGION).")]
DbUrl = Annotated[str | None, typer.Option("--database-url", help="Metadata DB URL; default SQLite in data dir.")]


def _settings(data_dir: Path | None = None, region: str | None = None, database_url: str | None = None,
              **more: object) -> Settings:
    try:
        return Settings.from_env(data_dir=data_dir, region=region, database_url=database_url, **more)
    except ValueError as e:
        console.print(f"[red]bad setting:[/] {e}")
        raise typer.Exit(2) from None


@app.command()
def serve(data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None,
          host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
          port: Annotated[int | None, typer.Option(help="Listen port.")] = None) -> None:
    """Serve a region: the vehicle gateway, the owner API and the transparency log."""
    import uvicorn

    from carvault.region import Region
    from carvault.server import uvicorn_config

    s = _settings(data_dir, region, database_url, host=host, port=port)
    with Region(s) as r:
        console.print(f"region [bold]{s.region}[/] serving on http://{s.host}:{s.port} (data in {s.data_dir})")
        uvicorn.Server(uvicorn_config(r, s.host, s.port, log_level="info")).run()


@app.command()
def demo(data_dir: Annotated[Path, typer.Option(help="Folder for the demo (wiped first).")] = Path(
             "carvault-data/demo"),
         check: Annotated[bool, typer.Option("--check", help="Run every step, do not serve, exit 0 if all worked.")]
         = False,
         port: Annotated[int | None, typer.Option(help="Port of region cn (default 8400).")] = None,
         seed: int = 7) -> None:
    """Provision regions cn and eu, three cars and an owner; upload a simulated day; serve it."""
    from carvault.demo import run_demo

    result = run_demo(data_dir, serve=not check, console=console, seed=seed, port=port)
    if not result.ok:
        console.print("[red]some demo steps failed[/]")
        raise typer.Exit(1)


@app.command()
def bench(out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path("bench-results/bench.json"),
          docs: Annotated[Path, typer.Option(help="Markdown report to rewrite.")] = Path("docs/benchmarks.md"),
          vehicles: Annotated[int, typer.Option(help="Vehicles in the store.")] = 20,
          hours: Annotated[float, typer.Option(help="Hours of driving per vehicle.")] = 2.0,
          postgres: Annotated[bool, typer.Option(help="Also measure the PostgreSQL peer.")] = True) -> None:
    """Measure ingest, storage and query figures; write them to JSON and docs/benchmarks.md."""
    from carvault.bench import run_bench

    run_bench(out=out, docs=docs, vehicles=vehicles, hours=hours, postgres=postgres, console=console)


@app.command("provision")
def provision_cmd(vin: str, vehicles_dir: Annotated[Path, typer.Option(help="Where the car keeps its key.")],
                  data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None,
                  model: str = "CarVault EV") -> None:
    """Provision one vehicle: make its key, register it with its home region, print its pairing code."""
    from carvault.provisioning import provision
    from carvault.region import Region

    with Region(_settings(data_dir, region, database_url)) as r:
        ident = provision(r, vin.upper(), vehicles_dir, model)
    console.print(f"vehicle {ident.vin} provisioned in region {ident.region}; pairing code {ident.pairing_code}")


@app.command()
def simulate(vehicle_dir: Annotated[Path, typer.Argument(help="A provisioned vehicle's folder.")],
             endpoint: Annotated[str, typer.Option(help="The home region's gateway URL.")],
             day: Annotated[str | None, typer.Option(help="Date to simulate, YYYY-MM-DD (default yesterday).")]
             = None,
             seed: int = 1, incident: bool = False, batch_seconds: int = 60) -> None:
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
    n = agent.record(sim.table, batch_seconds)
    with Progress(console=console) as bar:
        task = bar.add_task(f"uploading {n} batches", total=len(agent.pending()))
        try:
            while agent.pending():
                bar.advance(task, len(agent.upload_pending(limit=10)))
        except UploadRefused as e:
            console.print(f"[red]refused:[/] {e}")
            raise typer.Exit(1) from None
    console.print(f"uploaded {n} batches for {ident.vin}; events: {[e.kind for e in sim.events]}")


def main() -> None:
    """Entry point: CarVault errors become a message and exit code 1."""
    try:
        app()
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
