"""`carvault apps …`: the operator's face of the app registry (register, list, show, approve, suspend, reject).

Every registration and decision is recorded in the region's audit chain (``owner_id=None``, chain ``region``).
A decision takes effect on the app's next request: ``Grants.access`` re-checks the app every time.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from carvault.access.apps import APP_STATUSES, app_facts, app_purposes, app_redirect_uris
from carvault.access.audit import CONTRACT, Actor, AuditAction
from carvault.errors import CarVaultError
from carvault.store.metadata import now_ms

if TYPE_CHECKING:
    from carvault.region import Region

# Defined before the import of carvault.cli below: when `python -m carvault.cli` runs, carvault.cli is imported
# a second time by this module and takes `apps` from it while this module is still loading.
apps = typer.Typer(help="The registry of third-party apps (data recipients).", no_args_is_help=True)

from carvault.cli import DataDir, DbUrl, RegionOpt, _settings, console  # noqa: E402

ClientIdArg = Annotated[str, typer.Argument(help="The app's client id (app_…).")]
By = Annotated[str | None, typer.Option("--by", help="Who decides (default: the login name).")]
MAX_BY = 100  # audit actors and apps.decided_by are bounded columns (200 characters)
Reason = Annotated[str, typer.Option("--reason", help="Why, recorded in the region audit chain.")]


@contextmanager
def _region(data_dir: Any, region: str | None, database_url: str | None) -> Iterator[Region]:
    """The region, with CarVault errors printed as ``code: message`` and exit code 1."""
    from carvault.region import Region

    try:
        with Region(_settings(data_dir, region, database_url)) as r:
            yield r
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise typer.Exit(1) from None


def _operator(by: str | None) -> str:
    """Who acts: ``--by`` or the login name, refused (exit 2) when empty or too long for the records."""
    name = (by if by is not None else getpass.getuser()).strip()
    if not name or len(name) > MAX_BY:
        console.print(f"[red]--by names the operator in 1 to {MAX_BY} characters[/]")
        raise typer.Exit(2)
    return name


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC") if ms else "—"


_facts = app_facts  # what the audit chain records about an app (one home: access/apps.py)


@apps.command("add")
def add(
    name: Annotated[str, typer.Option(help="Name owners see on the consent screen.")],
    legal_entity: Annotated[str, typer.Option(help="Legal entity responsible for the data it receives.")],
    jurisdiction: Annotated[str, typer.Option(help="Region where it processes data (cn, eu, us …).")],
    contact: Annotated[str, typer.Option(help="Contact email address.")],
    purpose: Annotated[list[str], typer.Option("--purpose", help="A declared purpose (repeat for more).")],
    redirect_uri: Annotated[
        list[str] | None, typer.Option("--redirect-uri", help="An exact redirect URI (repeat for more).")
    ] = None,
    gatekeeper: Annotated[
        bool, typer.Option("--gatekeeper", help="A designated gatekeeper (refused as a recipient).")
    ] = False,
    public: Annotated[bool, typer.Option("--public", help="Public client (PKCE only, no client secret).")] = False,
    description: Annotated[str, typer.Option(help="What the app does.")] = "",
    website: Annotated[str, typer.Option(help="The app's website.")] = "",
    by: By = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Register an app (pending until approved); prints its client id and, once, its client secret."""
    operator = _operator(by)
    with _region(data_dir, region, database_url) as r:
        app, secret = r.apps.register(
            name=name,
            legal_entity=legal_entity,
            jurisdiction=jurisdiction,
            contact=contact,
            purposes=purpose,
            redirect_uris=redirect_uri or [],
            gatekeeper=gatekeeper,
            confidential=not public,
            description=description,
            website=website,
        )
        r.audit.record(
            owner_id=None,
            actor=Actor("operator", operator),
            action=AuditAction.APP_REGISTER,
            legal_basis=CONTRACT,
            detail={**_facts(app), "via": "operator"},
        )
    console.print(f"registered [bold]{app.name}[/] ({app.status})")
    console.print(f"client id:     {app.client_id}")
    if secret:
        console.print(f"client secret: {secret}", soft_wrap=True)
        console.print("[yellow]the secret is shown only now; it is stored as a hash and cannot be shown again[/]")
    else:
        console.print("public client: no secret; it must use PKCE")


@apps.command("list")
def list_apps(
    status: Annotated[str | None, typer.Option(help=f"Only apps of one status: {', '.join(APP_STATUSES)}.")] = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Every registered app (of one status), oldest first."""
    if status is not None and status not in APP_STATUSES:
        console.print(f"[red]--status is one of {', '.join(APP_STATUSES)}[/]")
        raise typer.Exit(2)
    with _region(data_dir, region, database_url) as r:
        found = r.apps.list(status)
    table = Table(title=f"apps{f' ({status})' if status else ''}: {len(found)}")
    for column in ("client id", "name", "legal entity", "where", "purposes", "status", "client", "registered"):
        table.add_column(column, overflow="fold")
    for a in found:
        table.add_row(
            a.client_id,
            a.name + (" [red](gatekeeper)[/]" if a.gatekeeper else ""),
            a.legal_entity,
            a.jurisdiction,
            ", ".join(app_purposes(a)),
            a.status,
            "public" if a.client_secret_hash is None else "confidential",
            _when(a.created_ms),
        )
    console.print(table)


@apps.command("show")
def show(
    client_id: ClientIdArg, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Everything the registry holds on one app (never its secret)."""
    with _region(data_dir, region, database_url) as r:
        a = r.apps.get(client_id)
        held = r.grants.of_app(client_id)
    live = [g for g in held if g.revoked_ms is None and g.expires_ms > now_ms()]
    rows = [
        ("client id", a.client_id),
        ("name", a.name),
        ("legal entity", a.legal_entity),
        ("jurisdiction", a.jurisdiction),
        ("contact", a.contact),
        ("purposes", ", ".join(app_purposes(a))),
        ("redirect URIs", "\n".join(app_redirect_uris(a)) or "—"),
        ("client", "public (PKCE only)" if a.client_secret_hash is None else "confidential (secret on file, hashed)"),
        ("gatekeeper", "yes: refused as a recipient" if a.gatekeeper else "no"),
        ("status", a.status),
        ("decided", f"{_when(a.decided_ms)} by {a.decided_by}" if a.decided_ms else "—"),
        ("description", a.description or "—"),
        ("website", a.website or "—"),
        ("registered", _when(a.created_ms)),
        ("grants", f"{len(live)} live of {len(held)}"),
    ]
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _decide(client_id: str, status: str, by: str | None, reason: str, settings: tuple[Any, Any, Any]) -> None:
    """Record the operator's decision on an app and say what it means for its tokens."""
    operator = _operator(by)
    with _region(*settings) as r:
        a, before = r.apps.decide_recorded(r.audit, client_id, status, Actor("operator", operator), reason)
        region_name = r.name
    console.print(f"{a.name} ({a.client_id}): {before} → [bold]{a.status}[/]")
    if status == "approved" and a.gatekeeper:
        console.print("[yellow]note: a gatekeeper is still refused as a recipient (EU Data Act Art. 5(3))[/]")
    if status == "approved" and a.jurisdiction != region_name:
        console.print(
            f"[yellow]note: it processes data in {a.jurisdiction!r}, outside region {region_name!r}; "
            "its requests are refused as a cross-border transfer[/]"
        )
    if status != "approved":
        console.print("its tokens stop working on their next request")


@apps.command("approve")
def approve(
    client_id: ClientIdArg,
    by: By = None,
    reason: Reason = "",
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Approve an app: owners may then grant it access."""
    _decide(client_id, "approved", by, reason, (data_dir, region, database_url))


@apps.command("suspend")
def suspend(
    client_id: ClientIdArg,
    by: By = None,
    reason: Reason = "",
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Suspend an app: every token of it is refused from its next request on (approve again to resume)."""
    _decide(client_id, "suspended", by, reason, (data_dir, region, database_url))


@apps.command("reject")
def reject(
    client_id: ClientIdArg,
    by: By = None,
    reason: Reason = "",
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Reject an app for good (it must register again)."""
    _decide(client_id, "rejected", by, reason, (data_dir, region, database_url))


@apps.command("grants")
def grants(
    client_id: ClientIdArg, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """How many grants an app holds, how many owners gave them, and when it last read data (no data shown)."""
    with _region(data_dir, region, database_url) as r:
        a = r.apps.get(client_id)
        held = r.grants.of_app(client_id)
    now = now_ms()
    live = [g for g in held if g.revoked_ms is None and g.expires_ms > now]
    revoked = sum(1 for g in held if g.revoked_ms is not None)
    last = max((g.last_access_ms for g in held if g.last_access_ms), default=None)
    console.print(f"[bold]{a.name}[/] ({a.client_id}), {a.status}")
    console.print(f"live grants:   {len(live)} (from {len({g.owner_id for g in live})} owners)")
    console.print(f"ended grants:  {len(held) - len(live)} ({revoked} revoked by their owners)")
    console.print(f"reads:         {sum(g.reads for g in held):,} ({sum(g.rows_served for g in held):,} rows served)")
    console.print(f"last access:   {_when(last)}")
