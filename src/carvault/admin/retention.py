"""`carvault admin retention …`: run a purge (or a dry run), list runs, show the policy — the cron job's command.

Thin over ``compliance.retention.Retention``, the service the API, the console and the in-process scheduler use.
The CLI runs on the region's machine with its keys, so it acts as the local operator: the audit actor is
``staff:cli:<login name>`` unless ``--as`` names the staff member.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from carvault.compliance.retention import run_json

if TYPE_CHECKING:
    pass

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
retention = typer.Typer(
    help="Retention purges: each category's period enforced (docs/retention.md).", no_args_is_help=True
)

from carvault.admin.common import As, AsJson, cli_actor, region_of, when  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402
from carvault.compliance.roles import Permission  # noqa: E402


@retention.command("run")
def run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and count only; erase nothing.")] = False,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Run a purge now; exit 1 if another replica's purge is running (code retention_running)."""
    with (
        region_of(data_dir, region, database_url) as r,
        Progress(
            TextColumn("[bold]retention[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=as_json,
        ) as bar,
    ):
        task = bar.add_task("dry run" if dry_run else "purge", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        actor = cli_actor(r, as_, Permission.RETENTION_RUN)
        result = run_json(r.retention.run(dry_run=dry_run, actor=actor, progress=advance))
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    _print_run(result)


def _print_run(run: dict[str, Any]) -> None:
    s = run["summary"]
    kind = "dry run" if run["dry_run"] else "purge"
    console.print(
        f"run {run['id']} ({kind}, {run['status']}): {s.get('batches_erased', 0)} batches erased, "
        f"{s.get('batches_withheld', 0)} withheld, planned {s.get('batches_planned')}, "
        f"{s.get('bytes_overwritten', 0):,} evidence bytes overwritten, {len(s.get('errors', []))} errors"
    )
    t = Table("category", "days", "erased batches", "erased samples", "withheld batches", "withheld samples", "held")
    for name, c in s.get("categories", {}).items():
        t.add_row(
            name,
            str(c["retention_days"]),
            str(c["erased_batches"]),
            f"{c['erased_samples']:,}",
            str(c["withheld_batches"]),
            f"{c['withheld_samples']:,}",
            str(c["held_batches"]),
        )
    console.print(t)
    for h in s.get("skipped_by_hold", []):
        console.print(f"[yellow]skipped[/] {h['vin']}: legal hold {', '.join(map(str, h['holds']))}")
    for e in s.get("errors", []):
        console.print(f"[red]error[/] {e['vin']} seq {e.get('seq')} (batch {e.get('batch_id')}): {e['error']}")


@retention.command("runs")
def runs(
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Recent runs: when, who, dry or not, what they erased and withheld."""
    with region_of(data_dir, region, database_url) as r:
        rows = [run_json(x) for x in r.retention.runs(limit)]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    t = Table("id", "started (UTC)", "kind", "status", "by", "erased", "withheld", "held", "errors")
    for x in rows:
        s = x["summary"]
        t.add_row(
            str(x["id"]),
            when(x["started_ms"]),
            "dry run" if x["dry_run"] else "purge",
            x["status"],
            x["actor"],
            str(s.get("batches_erased", "—")),
            str(s.get("batches_withheld", "—")),
            str(s.get("batches_planned", {}).get("held", "—")),
            str(len(s.get("errors", []))),
        )
    console.print(t)


@retention.command("policy")
def policy(
    as_json: AsJson = False, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Periods per category (from the signal catalogue), the cutoffs in force and when the next run is due."""
    with region_of(data_dir, region, database_url) as r:
        p = r.retention.policy(due=True)
    if as_json:
        print(json.dumps(p, indent=2, ensure_ascii=False))
        return
    t = Table("category", "privacy", "retention days", "withheld before (UTC)", "signals")
    for c in p["categories"]:
        t.add_row(
            c["category"], c["privacy"], str(c["retention_days"]), when(c["withheld_before_ms"]), str(c["signals"])
        )
    console.print(t)
    last, due = p["last_run"], p["due_now"]
    console.print(
        f"due now: {due['batches_to_erase']} batches to erase, {due['batches_to_withhold']} to withhold, "
        f"{due['batches_held']} held" + (f" (holds {', '.join(map(str, due['holds']))})" if due["holds"] else "")
    )
    console.print(
        f"scheduler {p['scheduler']} (every {p['interval_s']} s); last purge: "
        f"{when(last['finished_ms']) if last else 'never'}; next due: {when(p['next_due_ms'])}"
    )
