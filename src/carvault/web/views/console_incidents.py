"""Console: personal-information security incidents (PIPL Art. 57) — record one with its scope and the notification
text in English and Chinese, see the owners it affects (computed from the records), tell them in the portal, record
the authority's notification, close it (compliance/incidents.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.incidents import FIELDS, LANGUAGE_CODES, Status, incident_json
from carvault.compliance.roles import Permission
from carvault.signals import CATEGORIES
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsoleFormError, ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("incidents", "/console/incidents", Permission.INCIDENTS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.INCIDENTS_MANAGE))]
PREFIX = {"en": "en", "zh-CN": "zh"}  # form field prefixes of each language's notification parts
_SPLIT = re.compile(r"[\s,;]+")


def tile(p: ConsolePage) -> Tile:
    """Incidents open (owners not told yet) and notified but not closed."""
    open_ = len(p.region.incidents.list(status=Status.OPEN, limit=1000))
    notified = len(p.region.incidents.list(status=Status.NOTIFIED, limit=1000))
    figures = (
        Figure(p.t("console.incidents.open"), open_, "bad" if open_ else ""),
        Figure(p.t("console.incidents.notified"), notified, "warn" if notified else ""),
    )
    warnings = (p.t("console.incidents.open_warning", n=p.t.count(open_, "incident")),) if open_ else ()
    return Tile(SECTION, figures, warnings)


def content_of(form: dict[str, str]) -> dict[str, dict[str, str]]:
    """The notification parts per language from the form (a language left wholly empty is left out)."""
    out = {}
    for lang in LANGUAGE_CODES:
        parts = {f: form.get(f"{PREFIX[lang]}_{f}", "") for f in FIELDS}
        if lang == "en" or any(v.strip() for v in parts.values()):
            out[lang] = parts
    return out


def form_of(content: dict[str, dict[str, str]]) -> dict[str, str]:
    """The form fields of stored notification parts."""
    return {f"{PREFIX[lang]}_{f}": v for lang, parts in content.items() for f, v in parts.items()}


async def _list(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> HTMLResponse:
    incidents = await p.call(p.region.incidents.list, limit=200)
    return p.render(
        "console_incidents.html",
        status=status,
        title=p.t("console.nav.incidents"),
        section=SECTION.key,
        incidents=[incident_json(i) for i in incidents],
        categories=list(CATEGORIES.values()),
        fields=FIELDS,
        prefixes=PREFIX,
        form=form or {},
        error=error,
    )


@router.get("/console/incidents")
async def incidents(p: Viewer) -> Response:
    return await _list(p)


@router.post("/console/incidents")
async def record(p: Manager) -> Response:
    data = await p.request.form()
    form = await p.form()
    categories = [c for c in data.getlist("categories") if isinstance(c, str)]
    shown: dict[str, Any] = {**form, "categories": categories}
    try:
        detected = p.time_input(form.get("detected"), p.t("console.incidents.detected"))
        start = p.time_input(form["from"], p.t("console.incidents.from")) if form.get("from") else None
        end = p.time_input(form["to"], p.t("console.incidents.to")) if form.get("to") else None
        vins = [v.upper() for v in _SPLIT.split(form.get("vins", "")) if v]
        raw_owners = [o for o in _SPLIT.split(form.get("owner_ids", "")) if o]
        if not all(o.isascii() and o.isdigit() and len(o) < 19 for o in raw_owners):
            raise ConsoleFormError(p.t("console.incidents.owners_invalid"), "owner_ids")
    except ConsoleFormError as e:
        return await _list(p, 400, e.message, shown)
    inc, error, status = await p.attempt(
        p.region.incidents.record,
        p.me,
        title=form.get("title", ""),
        detected_ms=detected,
        content=content_of(form),
        vins=vins,
        owner_ids=[int(o) for o in raw_owners],
        categories=categories,
        occurred_from_ms=start,
        occurred_to_ms=end,
    )
    if error or inc is None:
        return await _list(p, status, error, shown)
    return p.redirect(f"{SECTION.path}/{inc.id}", "incident_recorded")


async def _detail(
    p: ConsolePage, incident_id: int, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    inc = await p.call(p.region.incidents.get, incident_id)
    affected = await p.call(p.region.incidents.affected, incident_id)
    body = incident_json(inc)
    return p.render(
        "console_incident.html",
        status=status,
        title=p.t("console.incidents.detail_title", id=incident_id),
        section=SECTION.key,
        i=body,
        affected=affected,
        fields=FIELDS,
        prefixes=PREFIX,
        form=form if form is not None else form_of(body["content"]),
        error=error,
    )


@router.get("/console/incidents/{incident_id}")
async def detail(incident_id: RowId, p: Viewer) -> Response:
    return await _detail(p, incident_id)


@router.post("/console/incidents/{incident_id}/text")
async def update_text(incident_id: RowId, p: Manager) -> Response:
    form = await p.form()
    _, error, status = await p.attempt(
        p.region.incidents.update, incident_id, p.me, title=form.get("title"), content=content_of(form)
    )
    if error:
        return await _detail(p, incident_id, status, error, form)
    return p.redirect(f"{SECTION.path}/{incident_id}", "incident_recorded")


@router.post("/console/incidents/{incident_id}/notify")
async def notify(incident_id: RowId, p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.incidents.notify_owners, incident_id, p.me)
    if error:
        return await _detail(p, incident_id, status, error)
    return p.redirect(f"{SECTION.path}/{incident_id}", "incident_notified")


@router.post("/console/incidents/{incident_id}/authority")
async def authority(incident_id: RowId, p: Manager) -> Response:
    form = await p.form()
    try:
        when = p.time_input(form["notified"], p.t("console.incidents.authority_when")) if form.get("notified") else None
    except ConsoleFormError as e:
        return await _detail(p, incident_id, 400, e.message)
    _, error, status = await p.attempt(
        p.region.incidents.notify_authority,
        incident_id,
        p.me,
        authority=form.get("authority", ""),
        reference=form.get("reference", ""),
        content=form.get("content", ""),
        notified_ms=when,
    )
    if error:
        return await _detail(p, incident_id, status, error)
    return p.redirect(f"{SECTION.path}/{incident_id}", "incident_notified")


@router.post("/console/incidents/{incident_id}/close")
async def close(incident_id: RowId, p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.incidents.close, incident_id, p.me)
    if error:
        return await _detail(p, incident_id, status, error)
    return p.redirect(f"{SECTION.path}/{incident_id}", "incident_closed")
