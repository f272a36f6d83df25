"""Console: cases — the one way staff read an owner's data. Open a case (the kinds the role may open), see its state
(a support ticket waits for the owner's approval), close it, and read a vehicle's window under it: the read goes
through ``Cases.access`` and the owner's own telemetry code, and lands in the owner's access log named by role and
case (compliance/cases.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.cases import KINDS, MAX_CASE_MS, case_json, case_state
from carvault.compliance.roles import Permission, may_open
from carvault.store.metadata import now_ms
from carvault.web.deps import RowId
from carvault.web.routes.vehicles import serve_telemetry
from carvault.web.views.console_base import (
    ConsoleError,
    ConsoleFormError,
    ConsolePage,
    Figure,
    Section,
    Tile,
    console_with,
)

SECTION = Section("cases", "/console/cases", Permission.CASES_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Opener = Annotated[ConsolePage, Depends(console_with(Permission.CASES_OPEN))]
Reader = Annotated[ConsolePage, Depends(console_with(Permission.CASE_READ))]
STATES = ("open", "awaiting_owner", "declined", "ended", "closed")
READ_FORMATS = ("csv", "json", "parquet")
WEEK_MS = 7 * 86_400_000


def tile(p: ConsolePage) -> Tile:
    """Open cases, support tickets awaiting the owner, and cases ending within a week."""
    now = now_ms()
    live = [c for c in p.region.cases.list(limit=1000) if c.closed_ms is None]
    states = [case_state(c, now) for c in live]
    ending = sum(1 for c, s in zip(live, states, strict=True) if s == "open" and c.ends_ms - now < WEEK_MS)
    figures = (
        Figure(p.t("console.cases.state.open"), states.count("open")),
        Figure(p.t("console.cases.state.awaiting_owner"), states.count("awaiting_owner")),
        Figure(p.t("console.cases.ending"), ending, "warn" if ending else ""),
    )
    return Tile(SECTION, figures)


async def _list(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    state = p.request.query_params.get("state", "")
    state = state if state in STATES else ""
    cases = await p.call(p.region.cases.list, state=state or None, limit=300)
    now = now_ms()
    default_end = p.t.dt(now + MAX_CASE_MS // 3, "input_date")
    return p.render(
        "console_cases.html",
        status=status,
        title=p.t("console.nav.cases"),
        section=SECTION.key,
        cases=[case_json(c, now=now) for c in cases],
        states=STATES,
        state=state,
        kinds=[k for k in KINDS if may_open(p.me.role, k)],
        form=form or {"ends": default_end},
        error=error,
    )


@router.get("/console/cases")
async def cases(p: Viewer) -> Response:
    return await _list(p)


@router.post("/console/cases")
async def open_case(p: Opener) -> Response:
    form = await p.form()
    try:
        ends = p.time_input(form.get("ends"), p.t("console.cases.ends"))
        if form.get("ends", "").strip() and "T" not in form["ends"]:
            ends += int(timedelta(days=1).total_seconds() * 1000) - 1  # a date ends at the end of that day
        start = p.time_input(form["from"], p.t("console.cases.from")) if form.get("from") else None
        end = p.time_input(form["to"], p.t("console.cases.to")) if form.get("to") else None
    except ConsoleFormError as e:
        return await _list(p, 400, e.message, form)
    case, error, status = await p.attempt(
        p.region.cases.open,
        p.me,
        kind=form.get("kind", ""),
        vins=form.get("vins", "").replace(",", " ").split(),
        legal_basis=form.get("legal_basis", ""),
        ends_ms=ends,
        reference=form.get("reference", ""),
        subject=form.get("subject", ""),
        authority=form.get("authority") or None,
        from_ms=start,
        to_ms=end,
    )
    if error or case is None:
        return await _list(p, status, error, form)
    return p.redirect(f"{SECTION.path}/{case.id}", "case_opened")


async def _detail(p: ConsolePage, case_id: int, status: int = 200, error: str | None = None) -> HTMLResponse:
    case = await p.call(p.region.cases.get, case_id)
    body = case_json(case)
    now = now_ms()
    start = max(case.from_ms or now - 3_600_000, now - 86_400_000 * 30)
    end = min(case.to_ms or now, start + 3_600_000)
    return p.render(
        "console_case.html",
        status=status,
        title=p.t("console.cases.detail_title", id=case_id),
        section=SECTION.key,
        c=body,
        works_kind=may_open(p.me.role, case.kind),
        formats=READ_FORMATS,
        window={"start": p.t.dt(start, "input"), "end": p.t.dt(end, "input")},
        error=error,
    )


@router.get("/console/cases/{case_id}")
async def detail(case_id: RowId, p: Viewer) -> Response:
    return await _detail(p, case_id)


@router.post("/console/cases/{case_id}/close")
async def close(case_id: RowId, p: Opener) -> Response:
    form = await p.form()
    _, error, status = await p.attempt(p.region.cases.close, p.me, case_id, form.get("outcome", ""))
    if error:
        return await _detail(p, case_id, status, error)
    return p.redirect(f"{SECTION.path}/{case_id}", "case_closed")


def _read(p: ConsolePage, case_id: int, q: dict[str, Any]) -> Response:
    access = p.region.cases.access(p.me, case_id, q["vin"])
    response = serve_telemetry(p.region, access, str(q["start"]), str(q["end"]), q["signals"], q["format"], None)
    name = f"case-{case_id}-{access.vehicle.vin}.{q['format']}"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/console/cases/{case_id}/read")
async def read(case_id: RowId, p: Reader) -> Response:
    """A window of one covered vehicle's telemetry, as a file (recorded in the owner's access log)."""
    q = p.request.query_params
    fmt = q.get("format", "csv")
    if fmt not in READ_FORMATS:
        raise ConsoleError(400, p.t("console.cases.bad_format"))
    try:
        start = p.time_input(q.get("start"), p.t("console.cases.from"))
        end = p.time_input(q.get("end"), p.t("console.cases.to"))
    except ConsoleFormError as e:
        raise ConsoleError(400, e.message) from None
    signals = q.get("signals", "").strip() or None
    return await p.call(
        _read, p, case_id, {"vin": q.get("vin", ""), "start": start, "end": end, "signals": signals, "format": fmt}
    )
