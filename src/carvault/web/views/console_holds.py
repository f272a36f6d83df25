"""Console: legal holds — the vehicles whose data is frozen (kept, not served, not deleted) for an authority, placed
and released here on the authority's word (compliance/deletion.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.roles import Permission
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("holds", "/console/holds", Permission.HOLDS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.HOLDS_MANAGE))]


def tile(p: ConsolePage) -> Tile:
    """Holds in force, and deletion requests they stop."""
    holds = p.region.deletions.holds()
    waiting = sum(1 for d in p.region.deletions.queue() if d["status"] == "held")
    figures = (
        Figure(p.t("console.holds.active"), len(holds)),
        Figure(p.t("console.holds.waiting"), waiting, "warn" if waiting else ""),
    )
    return Tile(SECTION, figures)


async def _page(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    active = await p.call(p.region.deletions.holds)
    released = [h for h in await p.call(p.region.deletions.holds, active=False, limit=100) if h.released_ms]
    return p.render(
        "console_holds.html",
        status=status,
        title=p.t("console.nav.holds"),
        section=SECTION.key,
        active=active,
        released=released[:50],
        form=form or {},
        error=error,
    )


@router.get("/console/holds")
async def holds(p: Viewer) -> Response:
    return await _page(p)


@router.post("/console/holds")
async def place(p: Manager) -> Response:
    form = await p.form()
    vin = form.get("vin", "").strip().upper()
    if len(vin) != 17:
        return await _page(p, 400, p.t("console.form.vin_invalid"), form)
    _, error, status = await p.attempt(
        p.region.deletions.place_hold, vin, form.get("authority", ""), form.get("reason", ""), by=p.actor
    )
    if error:
        return await _page(p, status, error, form)
    return p.redirect(SECTION.path, "hold_placed")


@router.post("/console/holds/{hold_id}/release")
async def release(hold_id: RowId, p: Manager) -> Response:
    await p.form()
    _, error, status = await p.attempt(p.region.deletions.release_hold, hold_id, by=p.actor)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "hold_released")
