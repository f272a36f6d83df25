"""`carvault admin incidents …`: the incident register (PIPL Art. 57) on the command line.

Thin over ``compliance.incidents.Incidents``. The notification text comes from a JSON file
``{"en": {"what", "cause", "harm", "measures", "actions", "contact"}, "zh-CN": {...}}``. Actor: as in
``carvault admin rights`` (``--as`` a staff member, else the local operator).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from carvault.compliance.incidents import incident_json
from carvault.compliance.roles import Permission
from carvault.errors import ValidationFailed
from carvault.web.deps import parse_time

# Defined before the imports of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
incidents = typer.Typer(
    help="Security incidents: scope, affected owners, notices, the authority.", no_args_is_help=True
)

from carvault.admin.common import As, AsJson, print_json, region_of, when  # noqa: E402
from carvault.admin.rights import handler_of  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402

IncidentId = Annotated[int, typer.Argument(min=1, help="The incident's id.")]


def _content(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationFailed(f"cannot read the notification text from {path}: {e}", field="content") from None
    if not isinstance(value, dict):
        raise ValidationFailed("the notification file holds a JSON object keyed by language", field="content")
    return value


def _time(value: str | None, name: str) -> int | None:
    return None if value is None else parse_time(value, name)


@incidents.command("record")
def record(
    title: Annotated[str, typer.Option("--title")],
    detected: Annotated[str, typer.Option("--detected", help="When it was detected (ISO 8601 or epoch ms).")],
    content: Annotated[Path, typer.Option("--content", help="JSON file with the notification text per language.")],
    vin: Annotated[list[str] | None, typer.Option("--vin", help="A vehicle concerned (repeat).")] = None,
    owner: Annotated[list[int] | None, typer.Option("--owner", help="An owner id concerned (repeat).")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="A signal category (repeat).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start of the window the breach touched.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End of that window (exclusive).")] = None,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record an incident."""
    with region_of(data_dir, region, database_url) as r:
        by = handler_of(r, as_, Permission.INCIDENTS_MANAGE)
        inc = r.incidents.record(
            by,
            title=title,
            detected_ms=parse_time(detected, "detected"),
            content=_content(content),
            vins=vin or [],
            owner_ids=owner or [],
            categories=category or [],
            occurred_from_ms=_time(start, "from"),
            occurred_to_ms=_time(end, "to"),
        )
        affected = r.incidents.affected(inc.id)
    print(f"incident {inc.id} recorded; {len(affected)} owners affected")


@incidents.command("list")
def list_incidents(
    as_json: AsJson = False, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Incidents, newest first."""
    with region_of(data_dir, region, database_url) as r:
        rows = r.incidents.list(limit=1000)
    if as_json:
        print_json([incident_json(i) for i in rows])
        return
    table = Table("id", "title", "status", "detected", "owners told", "authority told")
    for i in rows:
        table.add_row(
            str(i.id),
            i.title,
            i.status,
            when(i.detected_ms),
            str(i.affected_owners or 0),
            when(i.authority_notified_ms),
        )
    console.print(table)


@incidents.command("show")
def show(
    incident_id: IncidentId, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """One incident (JSON)."""
    with region_of(data_dir, region, database_url) as r:
        print_json(incident_json(r.incidents.get(incident_id)))


@incidents.command("affected")
def affected(
    incident_id: IncidentId, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """The affected owners' ids, computed from the records (one per line)."""
    with region_of(data_dir, region, database_url) as r:
        for o in r.incidents.affected(incident_id):
            print(o)


@incidents.command("notify-owners")
def notify_owners(
    incident_id: IncidentId,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Send the notice to every affected owner's portal (each once)."""
    with region_of(data_dir, region, database_url) as r:
        sent = r.incidents.notify_owners(incident_id, handler_of(r, as_, Permission.INCIDENTS_MANAGE))
    print(f"{sent} owners notified")


@incidents.command("authority")
def authority(
    incident_id: IncidentId,
    name: Annotated[str, typer.Option("--authority", help="Which authority was told.")],
    content: Annotated[Path, typer.Option("--content", help="Text file: what was reported.")],
    reference: Annotated[str, typer.Option("--reference")] = "",
    at: Annotated[str | None, typer.Option("--at", help="When (default: now).")] = None,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record the notification of the authority."""
    try:
        text = content.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"cannot read {content}: {e}") from None
    with region_of(data_dir, region, database_url) as r:
        r.incidents.notify_authority(
            incident_id,
            handler_of(r, as_, Permission.INCIDENTS_MANAGE),
            authority=name,
            reference=reference,
            content=text,
            notified_ms=_time(at, "at"),
        )
    print(f"incident {incident_id}: authority notification recorded")


@incidents.command("close")
def close(
    incident_id: IncidentId,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Close an incident."""
    with region_of(data_dir, region, database_url) as r:
        r.incidents.close(incident_id, handler_of(r, as_, Permission.INCIDENTS_MANAGE))
    print(f"incident {incident_id} closed")
