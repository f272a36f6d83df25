"""`carvault admin fleet …`: the fleet-wide jobs of fleet/jobs.py on DuckDB (the embedded default) or Apache Spark.

The same SQL runs on either engine over the payload parts the metadata DB lists (``fleet.engines.dataset_of``):
withheld values are null, frozen vehicles (a legal hold a deletion request waits on) are left out. Each run is
recorded in the region's audit log with who ran it, the engine, the parameters and what it produced; no job names a
vehicle in its answer (a vehicle-year export is the owner's, through the API, never an operator's command).

- ``statistics``: per month of a year, vehicles with data, rows and samples per category (the annual report's
  volume figures);
- ``retention-scan``: per category, the samples a purge run now would withhold, and the vehicles holding them;
- ``research``: de-identified aggregates per ~1 km cell and hour of day, cells seen by fewer than ``k`` vehicles
  left out, written to a Parquet or CSV file for a research partner.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pyarrow as pa
import typer
from rich.table import Table

if TYPE_CHECKING:
    from carvault.access.audit import Actor
    from carvault.fleet.engines import Engine
    from carvault.region import Region

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
fleet = typer.Typer(
    help="Fleet-wide jobs on DuckDB or Apache Spark: annual statistics, retention scan, research aggregates.",
    no_args_is_help=True,
)

from carvault.access.audit import LEGAL_OBLIGATION, AuditAction  # noqa: E402
from carvault.admin.common import As, AsJson, cli_actor, print_json, region_of  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402
from carvault.compliance.roles import Permission  # noqa: E402
from carvault.errors import ValidationFailed  # noqa: E402

RESEARCH_BASIS = "statistical purposes: de-identified aggregates, each cell seen by at least k vehicles"
SHOWN_ROWS = 40  # rows a table on the terminal shows; --out or --json give them all

EngineOpt = Annotated[
    str, typer.Option("--engine", help="duckdb (in this process) or spark (pyspark; local mode by default).")
]
MasterOpt = Annotated[
    str, typer.Option("--spark-master", help="Spark master URL for --engine spark, e.g. spark://host:7077.")
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write every row to this file: .parquet or .csv.", dir_okay=False)
]


def _engine(region: Region, name: str, master: str) -> Engine:
    """The engine over every live part of the region (withheld values null, frozen vehicles left out)."""
    from carvault.fleet.engines import dataset_of, engine_of, spark_session

    if name not in ("duckdb", "spark"):
        raise ValidationFailed(f"unknown engine {name!r}; choose duckdb or spark", field="engine")
    assert region.telemetry.days is not None and region.telemetry.withheld is not None
    data = dataset_of(region.db, region.telemetry.days, region.catalogue, region.telemetry.withheld())
    if name == "spark":
        return engine_of("spark", data, session=spark_session(master))
    return engine_of("duckdb", data)


_COMMON = ("engine", "spark_master", "out", "as_", "as_json", "data_dir", "region", "database_url")


def _common(values: dict[str, Any]) -> dict[str, Any]:
    """The options every command takes, picked by name from the command's own parameters."""
    return {name: values[name] for name in _COMMON}


def _check_out(out: Path | None) -> None:
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise ValidationFailed("--out names a .parquet or .csv file", field="out")


def _write(table: pa.Table, out: Path) -> None:
    """The whole answer to ``out`` (Parquet or CSV by its suffix), written whole or not at all."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".csv":
        pcsv.write_csv(table, tmp)
    else:
        pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)


def _run(
    job: str,
    params: dict[str, Any],
    permission: Permission,
    legal_basis: str,
    work: Any,
    *,
    engine: str,
    spark_master: str,
    out: Path | None,
    as_: str | None,
    as_json: bool,
    data_dir: Any,
    region: str | None,
    database_url: str | None,
) -> None:
    """Check who acts, run ``work(region, engine)`` to an Arrow table, record the run, then show or write it."""
    with region_of(data_dir, region, database_url) as r:
        _check_out(out)
        actor: Actor = cli_actor(r, as_, permission)
        started = time.perf_counter()
        status = nullcontext() if as_json else console.status(f"[bold]{job}[/] on {engine} …", spinner="dots")
        with status, _engine(r, engine, spark_master) as e:
            table: pa.Table = work(r, e)
            frozen = len(e.data.frozen)
        seconds = round(time.perf_counter() - started, 2)
        if out is not None:
            _write(table, out)
        r.audit.record(
            owner_id=None,
            actor=actor,
            action=AuditAction.FLEET_JOB,
            legal_basis=legal_basis,
            detail={
                "job": job,
                "engine": engine,
                **params,
                "rows": table.num_rows,
                "frozen_vehicles_left_out": frozen,
                "out": str(out) if out is not None else None,
            },
        )
    if as_json:
        print_json({"job": job, "engine": engine, **params, "seconds": seconds, "rows": table.to_pylist()})
        return
    shown = Table(title=f"{job} ({engine}, {seconds} s, {table.num_rows} rows)")
    for name in table.column_names:
        shown.add_column(name, justify="right")
    for row in table.slice(0, SHOWN_ROWS).to_pylist():
        shown.add_row(*(_cell(v) for v in row.values()))
    console.print(shown)
    if table.num_rows > SHOWN_ROWS:
        console.print(f"… {table.num_rows - SHOWN_ROWS} more rows" + ("" if out else " (--out FILE writes them all)"))
    if frozen:
        console.print(f"{frozen} vehicle(s) left out: their data is frozen by a legal hold (kept, not served).")
    if out is not None:
        console.print(f"[green]written[/] {out}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return json.dumps(v)
    return "—" if v is None else str(v)


@fleet.command("statistics")
def statistics(
    year: Annotated[int, typer.Option("--year", min=2000, max=9999, help="The calendar year (UTC).")],
    engine: EngineOpt = "duckdb",
    spark_master: MasterOpt = "local[2]",
    out: OutOpt = None,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Per month: vehicles with data, rows and samples per category (the annual report's volume figures)."""
    from carvault.fleet.jobs import monthly_statistics

    _run(
        "statistics",
        {"year": year},
        Permission.REPORTS_MANAGE,
        LEGAL_OBLIGATION,
        lambda r, e: monthly_statistics(e, r.catalogue, year),
        **_common(locals()),
    )


@fleet.command("retention-scan")
def retention_scan(
    engine: EngineOpt = "duckdb",
    spark_master: MasterOpt = "local[2]",
    out: OutOpt = None,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Per category: the samples a purge run now would withhold, the vehicles holding them, the oldest one."""
    from carvault.compliance.retention import cutoffs_at
    from carvault.fleet.jobs import retention_scan as scan

    now = int(time.time() * 1000)
    _run(
        "retention-scan",
        {"at_ms": now},
        Permission.RETENTION_VIEW,
        LEGAL_OBLIGATION,
        lambda r, e: scan(e, r.catalogue, cutoffs_at(now)),
        **_common(locals()),
    )


@fleet.command("research")
def research(
    k: Annotated[int, typer.Option("--k", min=2, help="Leave out cells seen by fewer than k vehicles.")] = 5,
    engine: EngineOpt = "duckdb",
    spark_master: MasterOpt = "local[2]",
    out: OutOpt = None,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """De-identified aggregates per ~1 km cell and UTC hour: vehicles, samples, mean speed; k-anonymous."""
    from carvault.fleet.jobs import research_aggregate

    _run(
        "research",
        {"k": k},
        Permission.REPORTS_MANAGE,
        RESEARCH_BASIS,
        lambda r, e: research_aggregate(e, k),
        **_common(locals()),
    )
