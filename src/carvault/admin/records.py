"""`carvault admin records …`: the records of processing (NDSMR Art. 12) on the command line.

Thin over ``compliance.records.Records``: list, show, sync (activities from the catalogue, recipients from the
grants), add, change and retire entrusted processors, delete a record past its three years. Actor: as in
``carvault admin rights``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from carvault.compliance.records import KINDS, record_json
from carvault.compliance.roles import Permission
from carvault.errors import ValidationFailed

# Defined before the imports of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
records = typer.Typer(help="Records of processing: activities, recipients, entrusted processors.", no_args_is_help=True)

from carvault.admin.common import As, AsJson, print_json, region_of, when  # noqa: E402
from carvault.admin.rights import handler_of  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402

RecordId = Annotated[int, typer.Argument(min=1, help="The record's id.")]


def _fields(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationFailed(f"cannot read the processor's fields from {path}: {e}") from None
    if not isinstance(value, dict):
        raise ValidationFailed("the file holds a JSON object: name, purpose, legal_basis, retention, jurisdiction ...")
    return value


@records.command("list")
def list_records(
    kind: Annotated[str | None, typer.Option(help=f"One of {', '.join(KINDS)}.")] = None,
    retired: Annotated[bool | None, typer.Option("--retired/--current", help="Only retired, or only current.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """The records, by kind and key."""
    with region_of(data_dir, region, database_url) as r:
        rows = r.records.list(kind=kind, current=None if retired is None else not retired)
    if as_json:
        print_json([record_json(x) for x in rows])
        return
    table = Table("id", "kind", "key", "name", "jurisdiction", "updated", "retired")
    for x in rows:
        table.add_row(str(x.id), x.kind, x.key, x.name, x.jurisdiction or "—", when(x.updated_ms), when(x.retired_ms))
    console.print(table)


@records.command("show")
def show(record_id: RecordId, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None) -> None:
    """One record (JSON)."""
    with region_of(data_dir, region, database_url) as r:
        print_json(record_json(r.records.get(record_id)))


@records.command("sync")
def sync(as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None) -> None:
    """Bring activities (catalogue) and recipients (grants) up to date."""
    with region_of(data_dir, region, database_url) as r:
        result = r.records.sync(handler_of(r, as_, Permission.RECORDS_MANAGE))
    print(", ".join(f"{k} {v}" for k, v in result.items()))


@records.command("add-processor")
def add_processor(
    key: Annotated[str, typer.Argument(help="A short slug naming the processor.")],
    fields: Annotated[
        Path,
        typer.Option("--file", help="JSON: name, purpose, legal_basis, retention, jurisdiction, categories, detail."),
    ],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Record an entrusted processor."""
    with region_of(data_dir, region, database_url) as r:
        values = _fields(fields)
        rec = r.records.add_processor(handler_of(r, as_, Permission.RECORDS_MANAGE), key=key, fields=values)
    print(f"record {rec.id}: processor {rec.key}")


@records.command("update-processor")
def update_processor(
    record_id: RecordId,
    fields: Annotated[Path, typer.Option("--file", help="JSON with the fields to change.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Change an entrusted processor's record."""
    with region_of(data_dir, region, database_url) as r:
        values = _fields(fields)
        rec = r.records.update_processor(record_id, handler_of(r, as_, Permission.RECORDS_MANAGE), values)
    print(f"record {rec.id} updated")


@records.command("retire")
def retire(
    record_id: RecordId, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """End an entrusted processor's engagement (kept three more years)."""
    with region_of(data_dir, region, database_url) as r:
        rec = r.records.retire(record_id, handler_of(r, as_, Permission.RECORDS_MANAGE))
    print(f"record {rec.id} retired {when(rec.retired_ms)}")


@records.command("delete")
def delete(
    record_id: RecordId, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Delete a record retired more than three years ago (refused otherwise: record_retained)."""
    with region_of(data_dir, region, database_url) as r:
        r.records.delete(record_id, handler_of(r, as_, Permission.RECORDS_MANAGE))
    print(f"record {record_id} deleted")
