"""`carvault admin cases …`: open, list, show and close operator cases (compliance/cases.py) from the region's machine.

A case is opened by a staff member whose role opens that kind, so ``open`` and ``close`` need ``--as <username>``;
reads under a case go through the API (``GET /api/v1/admin/cases/{id}/vehicles/{vin}/telemetry``), where the
owner's access log records them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from carvault.compliance.cases import KINDS, case_json
from carvault.compliance.roles import Permission

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
cases = typer.Typer(help="Operator cases: the only way staff read an owner's data.", no_args_is_help=True)

from carvault.admin.common import AsJson, cli_principal, region_of, when  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402

AsStaff = Annotated[str, typer.Option("--as", help="The staff member acting (their role must open this kind).")]
CaseId = Annotated[int, typer.Argument(help="The case number.", min=1, max=2**63 - 1)]
DAY_MS = 86_400_000


def _print(body: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    for k, v in body.items():
        shown = when(v) if k.endswith("_ms") and isinstance(v, int) else v  # type: ignore[arg-type]
        console.print(f"[bold]{k}[/]: {shown}", highlight=False)


@cases.command("open")
def open_case(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    vin: Annotated[list[str], typer.Option("--vin", help="A vehicle the case covers (repeat for more).")],
    legal_basis: Annotated[str, typer.Option("--legal-basis", help="Why the law allows this read.")],
    as_: AsStaff,
    days: Annotated[int, typer.Option("--days", min=1, max=90, help="Days until the case ends (≤ 90).")] = 30,
    reference: Annotated[str, typer.Option("--reference", help="Ticket, order or request reference.")] = "",
    subject: Annotated[str, typer.Option("--subject", help="What and why, as the owner reads it.")] = "",
    authority: Annotated[str | None, typer.Option("--authority", help="For an authority order.")] = None,
    jurisdiction: Annotated[str | None, typer.Option("--jurisdiction", help="The authority's.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Open a case (recorded in the region's and the owner's audit chains)."""
    with region_of(data_dir, region, database_url) as r:
        staff = cli_principal(r, as_, Permission.CASES_OPEN)
        ends = int(dt.datetime.now(dt.UTC).timestamp() * 1000) + days * DAY_MS
        case = r.cases.open(
            staff,
            kind=kind,
            vins=vin,
            legal_basis=legal_basis,
            ends_ms=ends,
            reference=reference,
            subject=subject,
            authority=authority,
            jurisdiction=jurisdiction,
        )
        _print(case_json(case), as_json)


@cases.command("list")
def list_cases(
    state: Annotated[str | None, typer.Option("--state", help="open, awaiting_owner, declined, ended, closed.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Cases, newest first."""
    with region_of(data_dir, region, database_url) as r:
        found = [case_json(c) for c in r.cases.list(state=state, kind=kind)]
    if as_json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return
    table = Table("id", "kind", "state", "owner", "vehicles", "opened by", "ends", "reference")
    for c in found:
        table.add_row(
            str(c["id"]),
            str(c["kind"]),
            str(c["state"]),
            str(c["owner_id"]),
            ", ".join(c["vins"]),  # type: ignore[arg-type]
            str(c["opened_by"]),
            when(c["ends_ms"]),  # type: ignore[arg-type]
            str(c["reference"]),
        )
    console.print(table)


@cases.command("show")
def show(
    case_id: CaseId,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """One case."""
    with region_of(data_dir, region, database_url) as r:
        _print(case_json(r.cases.get(case_id)), as_json)


@cases.command("close")
def close(
    case_id: CaseId,
    as_: AsStaff,
    outcome: Annotated[str, typer.Option("--outcome", help="What came of it.")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Close a case: nothing is read under it after this."""
    with region_of(data_dir, region, database_url) as r:
        staff = cli_principal(r, as_, Permission.CASES_OPEN)
        _print(case_json(r.cases.close(staff, case_id, outcome)), as_json)
