"""Console: cross-border transfers — the records that let a foreign principal read this region's data (route,
recipient, purpose, data types, scale, period, approval), the per-year person counters with their warnings, and the
logged transfers (compliance/transfers.py, the gate every foreign read passes)."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.roles import Permission
from carvault.compliance.transfers import THRESHOLDS, RecipientKind, Route, event_json, record_json
from carvault.signals import CATEGORIES
from carvault.store.metadata import now_ms
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsoleFormError, ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("transfers", "/console/transfers", Permission.TRANSFERS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.TRANSFERS_MANAGE))]
FIRST_YEAR = 2000


def _year(p: ConsolePage) -> int:
    now = p.region.transfers.year()  # the region's civil year, as the counters and the annual report count
    raw = p.request.query_params.get("year", "")
    return int(raw) if raw.isascii() and raw.isdigit() and FIRST_YEAR <= int(raw) <= now + 1 else now


def tile(p: ConsolePage) -> Tile:
    """This year's persons transferred (sensitive and not), approved records, and the counters that warn."""
    year = p.region.transfers.year()
    counters = p.region.transfers.counters(year)
    active = len(p.region.transfers.list(status="approved"))
    warnings = counters["warnings"]
    figures = (
        Figure(p.t("console.transfers.sensitive_persons"), counters["region"]["sensitive"]["persons"]),
        Figure(p.t("console.transfers.personal_persons"), counters["region"]["personal"]["persons"]),
        Figure(p.t("console.transfers.records_active"), active),
    )
    notes = tuple(_warning_text(p, w) for w in warnings[:3])
    return Tile(SECTION, figures, notes)


def _warning_text(p: ConsolePage, w: dict[str, Any]) -> str:
    key = "console.transfers.reached" if w["level"] == "reached" else "console.transfers.warning"
    return p.t(key, scope=w["scope"], persons=w["persons"], limit=f"{w['limit']:,}", what=_limit_name(p, w["what"]))


def _limit_name(p: ConsolePage, what: str) -> str:
    return p.t.maybe(f"console.transfers.limit.{what.replace(' ', '_')}", what)


def _overview(p: ConsolePage, year: int) -> dict[str, Any]:
    now = now_ms()
    return {
        "year": year,
        "counters": p.region.transfers.counters(year),
        "records": [record_json(r, now) for r in p.region.transfers.list()],
        # (cast: Transfers defines a method named ``list``, which mypy reads into its ``-> list[...]`` annotations)
        "events": [event_json(e) for e in cast(list[Any], p.region.transfers.events(year=year, limit=100))],
    }


async def _page(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> HTMLResponse:
    year = _year(p)
    data = await p.call(_overview, p, year)
    warnings = [_warning_text(p, w) for w in data["counters"]["warnings"]]
    return p.render(
        "console_transfers.html",
        status=status,
        title=p.t("console.nav.transfers"),
        section=SECTION.key,
        routes=list(Route),
        recipient_kinds=list(RecipientKind),
        categories=list(CATEGORIES.values()),
        thresholds=list(THRESHOLDS.values()),
        limit_name=lambda what: _limit_name(p, what),
        warnings=warnings,
        form=form or {},
        error=error,
        **data,
    )


@router.get("/console/transfers")
async def transfers(p: Viewer) -> Response:
    return await _page(p)


@router.post("/console/transfers")
async def create(p: Manager) -> Response:
    data = await p.request.form()
    form = await p.form()
    categories = [c for c in data.getlist("categories") if isinstance(c, str)]
    shown = {**form, "categories": categories}
    try:
        raw = form.get("max_persons", "").strip().replace(",", "")
        if not (raw.isascii() and raw.isdigit()):
            raise ConsoleFormError(p.t("console.transfers.persons_invalid"), "max_persons")
        start = p.time_input(form.get("from"), p.t("console.transfers.from"))
        end = p.time_input(form.get("to"), p.t("console.transfers.to"))
    except ConsoleFormError as e:
        return await _page(p, 400, e.message, shown)
    _, error, status = await p.attempt(
        p.region.transfers.create,
        route=form.get("route", ""),
        recipient_kind=form.get("recipient_kind", ""),
        recipient=form.get("recipient", ""),
        recipient_jurisdiction=form.get("recipient_jurisdiction", "").strip().lower(),
        purpose=form.get("purpose", ""),
        categories=categories,
        max_persons=int(raw),
        from_ms=start,
        to_ms=end,
        approval_reference=form.get("approval_reference", ""),
        by=p.actor,
    )
    if error:
        return await _page(p, status, error, shown)
    return p.redirect(SECTION.path, "transfer_recorded")


@router.post("/console/transfers/{record_id}/suspend")
async def suspend(record_id: RowId, p: Manager) -> Response:
    form = await p.form()
    _, error, status = await p.attempt(p.region.transfers.suspend, record_id, reason=form.get("reason", ""), by=p.actor)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "transfer_changed")
