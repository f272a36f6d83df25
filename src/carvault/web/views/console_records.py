"""Console: records of processing (kept ≥ 3 years, Network Data Security Management Regulations Art. 12) —
activities generated from the catalogue, recipients from the grants, entrusted processors added and retired by
hand (compliance/records.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.records import KEEP_YEARS, KINDS, record_json
from carvault.compliance.roles import Permission
from carvault.signals import CATEGORIES
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("records", "/console/records", Permission.RECORDS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.RECORDS_MANAGE))]


def tile(p: ConsolePage) -> Tile:
    """Entries in force by kind."""
    rows = p.region.records.list(current=True)
    return Tile(SECTION, tuple(Figure(p.t(f"console.records.kind.{k}"), sum(r.kind == k for r in rows)) for k in KINDS))


async def _page(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> HTMLResponse:
    rows = await p.call(p.region.records.list)
    records = [record_json(r) for r in rows]
    return p.render(
        "console_records.html",
        status=status,
        title=p.t("console.nav.records"),
        section=SECTION.key,
        groups=[(k, [r for r in records if r["kind"] == k]) for k in KINDS],
        keep_years=KEEP_YEARS,
        categories=list(CATEGORIES.values()),
        form=form or {},
        error=error,
    )


@router.get("/console/records")
async def records(p: Viewer) -> Response:
    return await _page(p)


@router.post("/console/records/sync")
async def sync(p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.records.sync, p.me)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "record_saved")


@router.post("/console/records")
async def add_processor(p: Manager) -> Response:
    data = await p.request.form()
    form = await p.form()
    categories = [c for c in data.getlist("categories") if isinstance(c, str)]
    fields = {
        "name": form.get("name", ""),
        "purpose": form.get("purpose", ""),
        "legal_basis": form.get("legal_basis", ""),
        "retention": form.get("retention", ""),
        "jurisdiction": form.get("jurisdiction", "").strip().lower(),
        "categories": categories,
        "detail": {"contact": form.get("contact", "").strip()[:300]} if form.get("contact", "").strip() else {},
    }
    _, error, status = await p.attempt(
        p.region.records.add_processor, p.me, key=form.get("key", "").strip().lower(), fields=fields
    )
    if error:
        return await _page(p, status, error, {**form, "categories": categories})
    return p.redirect(SECTION.path, "record_saved")


@router.post("/console/records/{record_id}/retire")
async def retire(record_id: RowId, p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.records.retire, record_id, p.me)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "record_saved")
