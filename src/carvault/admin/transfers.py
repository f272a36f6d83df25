"""`carvault admin transfers …`: approved cross-border transfer records, their counters per year, the log.

Thin over ``compliance.transfers.Transfers``, the service the API and the console use. The CLI runs on the region's
machine with its keys, so it acts as the local operator: the audit actor is ``staff:cli:<login name>`` unless
``--as`` names the staff member.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from carvault.compliance.transfers import RecipientKind, RecordStatus, Route, event_json, record_json
from carvault.errors import CarVaultError
from carvault.store.metadata import now_ms

if TYPE_CHECKING:
    pass

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
transfers = typer.Typer(
    help="Cross-border transfers: records that let a principal abroad read (docs/operator.md).", no_args_is_help=True
)

from carvault.admin.common import As, AsJson, cli_actor, region_of, when  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402
from carvault.compliance.roles import Permission  # noqa: E402

YearOpt = Annotated[
    int | None, typer.Option("--year", min=2000, max=9999, help="Calendar year (the region's civil time); default now.")
]


def _time(value: str, name: str) -> int:
    """ISO 8601 or epoch ms (the API's parser); exit 2 with its message when it is neither."""
    from carvault.web.deps import parse_time

    try:
        return parse_time(value, name)
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise typer.Exit(2) from None


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


@transfers.command("add")
def add(
    route: Annotated[str, typer.Option(help=f"One of {', '.join(Route)}.")],
    recipient: Annotated[str, typer.Option(help="client_id, staff username, authority or legal entity name.")],
    jurisdiction: Annotated[str, typer.Option(help="Where the recipient is, a region name, e.g. eu.")],
    purpose: Annotated[str, typer.Option(help="What the data is transferred for.")],
    category: Annotated[list[str], typer.Option(help="A data category (signals catalogue); repeat for more.")],
    max_persons: Annotated[int, typer.Option(help="Persons per calendar year the approval covers.")],
    to: Annotated[str, typer.Option("--to", help="End of the approved period (ISO 8601 or epoch ms).")],
    reference: Annotated[str, typer.Option(help="The approval's reference (assessment, filing, certificate).")],
    recipient_kind: Annotated[str, typer.Option(help=f"One of {', '.join(RecipientKind)}.")] = "app",
    from_: Annotated[str | None, typer.Option("--from", help="Start of the period (default now).")] = None,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record an approved transfer; important data only on a security assessment (exit 1 with the reason)."""
    start = _time(from_, "from") if from_ else now_ms()
    end = _time(to, "to")
    with region_of(data_dir, region, database_url) as r:
        actor = cli_actor(r, as_, Permission.TRANSFERS_MANAGE)
        record = r.transfers.create(
            route=route,
            recipient_kind=recipient_kind,
            recipient=recipient,
            recipient_jurisdiction=jurisdiction,
            purpose=purpose,
            categories=category,
            max_persons=max_persons,
            from_ms=start,
            to_ms=end,
            approval_reference=reference,
            by=actor,
        )
        shown = record_json(record)
    if as_json:
        _print(shown)
        return
    console.print(
        f"transfer record {shown['id']}: {shown['route']} to {shown['recipient_kind']} {shown['recipient']} "
        f"({shown['recipient_jurisdiction']}), {', '.join(shown['categories'])}, until {when(shown['to_ms'])} UTC"
    )


@transfers.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help=f"One of {', '.join(RecordStatus)}.")] = None,
    recipient: Annotated[str | None, typer.Option(help="Only records naming this recipient.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Transfer records, newest first, with their status now."""
    with region_of(data_dir, region, database_url) as r:
        rows = [record_json(x) for x in r.transfers.list(status=status, recipient=recipient)]
    if as_json:
        _print(rows)
        return
    t = Table("id", "status", "route", "recipient", "where", "categories", "max persons", "until (UTC)", "reference")
    for x in rows:
        t.add_row(
            str(x["id"]),
            x["status"],
            x["route"],
            f"{x['recipient_kind']} {x['recipient']}",
            x["recipient_jurisdiction"],
            ", ".join(x["categories"]),
            f"{x['max_persons']:,}",
            when(x["to_ms"]),
            x["approval_reference"],
        )
    console.print(t)


@transfers.command("show")
def show(
    record_id: Annotated[int, typer.Argument(min=1, help="The record's id.")],
    year: YearOpt = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """One record, its persons counted this year and its latest transfers."""
    with region_of(data_dir, region, database_url) as r:
        y = year or r.transfers.year()
        record = r.transfers.get(record_id)
        shown = {
            **record_json(record),
            "year": y,
            "counters": r.transfers.record_counters(record, y),
            "events": [event_json(e) for e in r.transfers.events(record_id=record_id, limit=20)],
        }
    if as_json:
        _print(shown)
        return
    for key in ("id", "status", "route", "recipient_kind", "recipient", "recipient_jurisdiction", "purpose"):
        console.print(f"{key}: {shown[key]}")
    console.print(f"categories: {', '.join(shown['categories'])}")
    console.print(
        f"period: {when(shown['from_ms'])} – {when(shown['to_ms'])} UTC; reference {shown['approval_reference']}"
    )
    if shown["suspended_ms"]:
        console.print(f"suspended {when(shown['suspended_ms'])} by {shown['suspended_by']}: {shown['suspend_reason']}")
    c = shown["counters"]
    console.print(
        f"{y}: {c['all']['persons']:,} persons of {shown['max_persons']:,} "
        f"({c['sensitive']['persons']:,} sensitive, {c['personal']['persons']:,} non-sensitive)"
    )
    for e in shown["events"]:
        console.print(f"  {when(e['at_ms'])} {e['action']} {e['principal']} owner {e['owner_id']} {e['vin'] or ''}")


@transfers.command("suspend")
def suspend(
    record_id: Annotated[int, typer.Argument(min=1, help="The record's id.")],
    reason: Annotated[str, typer.Option(help="Why it stops covering transfers.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Suspend a record: transfers under it are refused from the next request on."""
    with region_of(data_dir, region, database_url) as r:
        record = r.transfers.suspend(record_id, reason=reason, by=cli_actor(r, as_, Permission.TRANSFERS_MANAGE))
    console.print(f"transfer record {record.id} suspended")


@transfers.command("counters")
def counters(
    year: YearOpt = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Persons transferred abroad in a year: region-wide against each threshold, and per record."""
    with region_of(data_dir, region, database_url) as r:
        c = r.transfers.counters(year or r.transfers.year())
    if as_json:
        _print(c)
        return
    t = Table("scope", "class", "persons", "limit", "warns at", "level", "what")
    for klass, entry in c["region"].items():
        for lim in entry["limits"]:
            t.add_row(
                "region",
                klass,
                f"{entry['persons']:,}",
                f"{lim['limit']:,}",
                f"{lim['warn_at']:,}",
                lim["level"],
                lim["what"],
            )
    for rec in c["records"]:
        entry = rec["all"]
        for lim in entry["limits"]:
            t.add_row(
                f"record {rec['record_id']}",
                "all",
                f"{entry['persons']:,}",
                f"{lim['limit']:,}",
                f"{lim['warn_at']:,}",
                lim["level"],
                f"{rec['route']} to {rec['recipient']}",
            )
    console.print(f"cross-border transfers in {c['year']}")
    console.print(t)
    for w in c["warnings"]:
        colour = "red" if w["level"] == "reached" else "yellow"
        console.print(
            f"[{colour}]{w['level']}[/]: {w['scope']} {w['klass']} {w['persons']:,} of {w['limit']:,} ({w['what']})"
        )
