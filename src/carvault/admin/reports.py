"""`carvault admin reports …`: the annual report (JSON, PDF), finalising it, the 15 December reminder, the operator.

Thin over ``compliance.annual_report.AnnualReports`` and ``compliance.operator_profile.OperatorProfiles``, the
services the API and the console use. The CLI runs on the region's machine with its keys, so it acts as the local
operator: the audit actor is ``staff:cli:<login name>`` unless ``--as`` names the staff member.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from carvault.compliance import report_pdf
from carvault.compliance.operator_profile import FIELDS

if TYPE_CHECKING:
    pass

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
reports = typer.Typer(
    help="The annual report (Several Provisions Art. 13-14) and the operator's identity (docs/annual-report.md).",
    no_args_is_help=True,
)

from carvault.admin.common import As, cli_actor, region_of  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402
from carvault.compliance.roles import Permission  # noqa: E402

YearOpt = Annotated[int, typer.Option("--year", help="The calendar year reported, e.g. 2026.")]
Lang = Annotated[str, typer.Option("--lang", help="Language of the PDF: zh-CN (primary) or en.")]


def _messages(lang: str) -> dict[str, str]:
    from carvault.web.i18n import messages

    if lang not in report_pdf.LANGUAGES:
        console.print(f"[red]--lang must be one of {', '.join(report_pdf.LANGUAGES)}[/]")
        raise typer.Exit(2)
    return messages(lang)


def _summary(report: dict[str, Any]) -> Table:
    """The report's headline figures, one row each (their sources are in the JSON)."""
    table = Table(title=f"Annual report {report['year']} — region {report['region']}")
    table.add_column("section")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, section in report["sections"].items():
        if section.get("status"):
            table.add_row(name, "—", section["status"])
            continue
        for key, fig in section.items():
            if isinstance(fig, dict) and "value" in fig and not isinstance(fig["value"], dict | list):
                value = fig["value"]
                table.add_row(name, key, f"{value:,}" if isinstance(value, int) else str(value))
    return table


@reports.command("annual")
def annual(
    year: YearOpt,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Write the PDF here.")] = None,
    lang: Lang = "zh-CN",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the signed JSON here.")] = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Compute (or, once finalised, read back) a year's report; print its figures, write JSON and/or PDF."""
    text = _messages(lang) if pdf is not None else None
    with region_of(data_dir, region, database_url) as r:
        report = r.reports.report(year)
        body = report_pdf.render(report, text) if text is not None else None
    if json_out is not None:
        json_out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        console.print(f"JSON written to {json_out}")
    if pdf is not None and body is not None:
        pdf.write_bytes(body)
        console.print(f"PDF ({lang}) written to {pdf}")
    console.print(_summary(report))
    state = "finalised" if report.get("finalised") else "draft (not finalised)"
    console.print(f"{state}; signed by {report['signature']['signed_by']}")


@reports.command("finalise")
def finalise(
    year: YearOpt,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Store the year's signed report; later records no longer change it (exit 1 if already finalised)."""
    with region_of(data_dir, region, database_url) as r:
        actor = cli_actor(r, as_, Permission.REPORTS_MANAGE)
        report = r.reports.finalise(year, actor)
        filed = r.reports.filings()
    sha = next(f["sha256"] for f in filed if f["year"] == year)
    console.print(f"annual report {year} finalised by {actor}; sha256 {sha}")
    console.print(_summary(report))


@reports.command("due")
def due(
    lang: Lang = "en",
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Print the filing reminder ("report for YEAR due by 15 Dec, N days left"); exit 3 when it is overdue."""
    with region_of(data_dir, region, database_url) as r:
        state = r.reports.due()
    if lang not in state["message"]:
        console.print(f"[red]--lang must be one of {', '.join(state['message'])}[/]")
        raise typer.Exit(2)
    console.print(
        state["message"][lang]
        if state["state"] != "not_yet"
        else f"{state['message'][lang]} (reminders start on 1 November)"
    )
    if state["state"] == "overdue":
        raise typer.Exit(3)


@reports.command("operator")
def operator(
    operator_name: Annotated[str | None, typer.Option(help=FIELDS["operator_name"][1])] = None,
    security_lead: Annotated[str | None, typer.Option(help=FIELDS["security_lead"][1])] = None,
    security_lead_contact: Annotated[str | None, typer.Option(help=FIELDS["security_lead_contact"][1])] = None,
    rights_contact: Annotated[str | None, typer.Option(help=FIELDS["rights_contact"][1])] = None,
    rights_contact_contact: Annotated[str | None, typer.Option(help=FIELDS["rights_contact_contact"][1])] = None,
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Show the operator's identity and contacts, or save them (give all five options)."""
    values = {
        "operator_name": operator_name,
        "security_lead": security_lead,
        "security_lead_contact": security_lead_contact,
        "rights_contact": rights_contact,
        "rights_contact_contact": rights_contact_contact,
    }
    given = {k: v for k, v in values.items() if v is not None}
    with region_of(data_dir, region, database_url) as r:
        actor = cli_actor(r, as_, Permission.REPORTS_MANAGE) if given else None
        profile = r.operator_profile.save(given, actor) if actor is not None else r.operator_profile.get()
    if profile is None:
        console.print("no operator profile yet: give all five options to save one")
        raise typer.Exit(1)
    for key, value in profile.to_json().items():
        console.print(f"{key}: {value}")
