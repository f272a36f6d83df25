"""Console: the rights desk — owners' requests (access, correction, deletion, portability, restriction, explanation,
complaint, next of kin) against their legal deadlines; start, verify, assign, complete with an outcome, or refuse
with a written reason (compliance/rights.py). The owner sees the status, the handler's role and the reason."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.rights import DEADLINES, OPEN, Kind, Status, request_json
from carvault.compliance.roles import Permission, Role, allows
from carvault.store.metadata import now_ms
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("rights", "/console/rights", Permission.RIGHTS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Handler = Annotated[ConsolePage, Depends(console_with(Permission.RIGHTS_HANDLE))]
# What each action needs from the form: (service method, form field with the text, notice after it).
ACTIONS: dict[str, tuple[str, str | None, str]] = {
    "start": ("start", None, "rights_started"),
    "complete": ("complete", "outcome", "rights_done"),
    "refuse": ("refuse", "reason", "rights_refused"),
    "verify": ("verify", "note", "rights_started"),
}


def tile(p: ConsolePage) -> Tile:
    """Open requests, overdue ones and the nearest deadline."""
    counts = p.region.rights.counts()
    open_ = counts[Status.RECEIVED] + counts[Status.IN_PROGRESS]
    nearest = p.region.rights.list(overdue=False, limit=50)
    due = next((r.deadline_ms for r in nearest if r.status in OPEN), None)
    late = counts["overdue"]
    figures = (
        Figure(p.t("console.rights.open"), open_),
        Figure(p.t("console.rights.overdue"), late, "bad" if late else ""),
        Figure(p.t("console.rights.next_deadline"), p.t.dt(due, "date")),
    )
    warnings = (p.t("console.rights.overdue_warning", n=p.t.count(late, "request")),) if late else ()
    return Tile(SECTION, figures, warnings)


def _filters(p: ConsolePage) -> dict[str, str]:
    """The list's filters from the query, unknown values replaced by the defaults."""
    status, kind = p.request.query_params.get("status", "open"), p.request.query_params.get("kind", "")
    return {
        "status": status if status in ("open", "all", *(s.value for s in Status)) else "open",
        "kind": kind if kind in {k.value for k in Kind} else "",
    }


def _list(p: ConsolePage, filters: dict[str, str]) -> dict[str, Any]:
    now = now_ms()
    kind = Kind(filters["kind"]) if filters["kind"] else None
    if filters["status"] == "open":
        rows = [
            r
            for s in (Status.RECEIVED, Status.IN_PROGRESS)
            for r in p.region.rights.list(status=s, kind=kind, limit=500)
        ]
        rows.sort(key=lambda r: (r.deadline_ms, r.id))
    else:
        status = None if filters["status"] == "all" else Status(filters["status"])
        rows = p.region.rights.list(status=status, kind=kind, limit=500)
    return {"requests": [request_json(r, operator=True, now=now) for r in rows], "counts": p.region.rights.counts()}


@router.get("/console/rights")
async def rights(p: Viewer) -> Response:
    filters = _filters(p)
    data = await p.call(_list, p, filters)
    return p.render(
        "console_rights.html",
        title=p.t("console.nav.rights"),
        section=SECTION.key,
        filters=filters,
        kinds=list(Kind),
        statuses=list(Status),
        **data,
    )


def _handlers(p: ConsolePage) -> list[Any]:
    return [m for m in p.region.staff.list(include_disabled=False) if allows(Role(m.role), Permission.RIGHTS_HANDLE)]


async def _detail(
    p: ConsolePage, request_id: int, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    r = await p.call(p.region.rights.get, request_id)
    handlers = await p.call(_handlers, p) if p.may(Permission.RIGHTS_HANDLE) else []
    rule = DEADLINES.get(r.deadline_rule)
    return p.render(
        "console_rights_detail.html",
        status=status,
        title=p.t("console.rights.detail_title", id=r.id),
        section=SECTION.key,
        r=request_json(r, operator=True),
        rule=rule,
        is_open=r.status in OPEN,
        handlers=handlers,
        form=form or {},
        error=error,
    )


@router.get("/console/rights/{request_id}")
async def detail(request_id: RowId, p: Viewer) -> Response:
    return await _detail(p, request_id)


@router.post("/console/rights/{request_id}/assign")
async def assign(request_id: RowId, p: Handler) -> Response:
    form = await p.form()
    to, error, status = await p.attempt(p.region.staff.by_username, form.get("username", ""))
    if to is not None:
        _, error, status = await p.attempt(p.region.rights.assign, request_id, p.me, to)
    if error:
        return await _detail(p, request_id, status, error, form)
    return p.redirect(f"{SECTION.path}/{request_id}", "rights_started")


@router.post("/console/rights/{request_id}/{action}")
async def act(request_id: RowId, action: str, p: Handler) -> Response:
    form = await p.form()
    if action not in ACTIONS:
        return await _detail(p, request_id, 404, p.t("console.rights.bad_action"))
    method, text_field, notice = ACTIONS[action]
    args: list[Any] = [request_id, p.me]
    if text_field:
        args.append(form.get(text_field, ""))
    _, error, status = await p.attempt(getattr(p.region.rights, method), *args)
    if error:
        return await _detail(p, request_id, status, error, form)
    return p.redirect(f"{SECTION.path}/{request_id}", notice)
