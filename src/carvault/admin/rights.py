"""`carvault admin rights …`: the rights desk on the command line (list, show, assign, start, verify, complete, refuse).

Thin over ``compliance.rights.Rights``, the service the API and the console use. The CLI runs on the region's machine
with its keys, so by default it acts as the local operator (audit actor ``staff:cli:<login name>``); ``--as
<username>`` acts as that staff member instead, and then the role matrix applies as it does on the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from carvault.compliance.rights import CLI_ROLE, HANDLING_BASIS, Kind, Status, actor_of, request_json
from carvault.compliance.roles import Permission
from carvault.errors import ValidationFailed

if TYPE_CHECKING:
    from carvault.region import Region

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
rights = typer.Typer(help="The rights desk: owners' requests and their legal deadlines.", no_args_is_help=True)

from carvault.admin.common import As, AsJson, cli_principal, local_operator, print_json, region_of, when  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402

RequestId = Annotated[int, typer.Argument(min=1, help="The request's id.")]


@dataclass(frozen=True)
class CliHandler:
    """Who acts from the command line: a named staff member, or the local operator."""

    username: str
    role: str


def handler_of(r: Region, as_: str | None, permission: Permission) -> CliHandler:
    """``--as`` resolved to an enabled staff member whose role carries ``permission``; else the local operator."""
    if as_ is None:
        return CliHandler(local_operator(), CLI_ROLE)
    p = cli_principal(r, as_, permission)
    return CliHandler(p.username, p.role.value)


def _show(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(body)
        return
    for k, v in body.items():
        console.print(f"[bold]{k}[/]: {v if not k.endswith('_ms') else when(v)}", highlight=False)


@rights.command("list")
def list_requests(
    status: Annotated[Status | None, typer.Option(help="Only this status.")] = None,
    kind: Annotated[Kind | None, typer.Option(help="Only this kind.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only open requests past their deadline.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Requests, soonest deadline first, with the counts per status."""
    with region_of(data_dir, region, database_url) as r:
        rows = r.rights.list(status=status, kind=kind, overdue=True if overdue else None, limit=limit)
        counts = r.rights.counts()
    if as_json:
        print_json({"counts": counts, "requests": [request_json(x, operator=True) for x in rows]})
        return
    table = Table("id", "kind", "status", "received", "deadline", "handler", "owner")
    for x in rows:
        late = " [red](overdue)[/]" if request_json(x)["overdue"] else ""
        table.add_row(
            str(x.id),
            x.kind,
            x.status,
            when(x.received_ms),
            when(x.deadline_ms) + late,
            f"{x.handler_role}:{x.handler}" if x.handler else "—",
            str(x.owner_id or "?"),
        )
    console.print(table)
    console.print(" · ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)


@rights.command("show")
def show(
    request_id: RequestId,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """One request with its deadline, handler, outcome and what it produced."""
    with region_of(data_dir, region, database_url) as r:
        body = request_json(r.rights.get(request_id), operator=True)
    _show(body, as_json)


@rights.command("assign")
def assign(
    request_id: RequestId,
    to: Annotated[str, typer.Option("--to", help="The staff member who will handle it.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Give an open request to a handler."""
    with region_of(data_dir, region, database_url) as r:
        by = handler_of(r, as_, Permission.RIGHTS_HANDLE)
        m = r.staff.by_username(to)
        if m.disabled_ms is not None:
            raise ValidationFailed(f"{m.username} is disabled", field="username")
        req = r.rights.assign(request_id, by, CliHandler(m.username, m.role))
    console.print(f"request {req.id} assigned to {req.handler_role}:{req.handler}", highlight=False)


@rights.command("start")
def start(
    request_id: RequestId,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Begin handling a received request."""
    with region_of(data_dir, region, database_url) as r:
        req = r.rights.start(request_id, handler_of(r, as_, Permission.RIGHTS_HANDLE))
    console.print(f"request {req.id}: {req.status}, due {when(req.deadline_ms)}", highlight=False)


@rights.command("verify")
def verify(
    request_id: RequestId,
    note: Annotated[str, typer.Option("--note", help="How the next-of-kin evidence was checked.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record that a next-of-kin request's evidence holds."""
    with region_of(data_dir, region, database_url) as r:
        req = r.rights.verify(request_id, handler_of(r, as_, Permission.RIGHTS_HANDLE), note)
    console.print(f"request {req.id}: evidence verified {when(req.verified_ms)}", highlight=False)


@rights.command("complete")
def complete(
    request_id: RequestId,
    outcome: Annotated[str, typer.Option("--outcome", help="What was done, as the owner will read it.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Close a request in progress as done."""
    with region_of(data_dir, region, database_url) as r:
        req = r.rights.complete(request_id, handler_of(r, as_, Permission.RIGHTS_HANDLE), outcome)
    console.print(f"request {req.id}: {req.status}", highlight=False)


@rights.command("refuse")
def refuse(
    request_id: RequestId,
    reason: Annotated[str, typer.Option("--reason", help="Why (required), as the owner will read it.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Refuse an open request with a written reason."""
    with region_of(data_dir, region, database_url) as r:
        req = r.rights.refuse(request_id, handler_of(r, as_, Permission.RIGHTS_HANDLE), reason)
    console.print(f"request {req.id}: {req.status}", highlight=False)


@rights.command("delete-data")
def delete_data(
    request_id: RequestId,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Carry out the deletion a request asks for (a verified next-of-kin request, PIPL Art. 49)."""
    with region_of(data_dir, region, database_url) as r:
        by = handler_of(r, as_, Permission.RIGHTS_HANDLE)
        req = r.rights.deletion_due(request_id)
        assert req.owner_id is not None
        d = r.deletions.request(
            req.owner_id,
            req.vin,
            f"rights request {req.id} ({req.kind})",
            by=actor_of(by),
            legal_basis=HANDLING_BASIS,
            immediately=True,  # a verified next-of-kin request: no owner is left to change their mind
        )
        r.rights.link(req.id, deletion_request_id=d.id)
    console.print(f"request {request_id}: deletion {d.id} {d.status}", highlight=False)
