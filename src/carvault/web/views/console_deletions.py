"""Console: the deletion queue — owners' deletion requests not yet carried out, their deadlines and the holds that
stop them (compliance/deletion.py), and what was completed last."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from carvault.compliance.roles import Permission
from carvault.store.metadata import now_ms
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("deletions", "/console/deletions", Permission.RIGHTS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]


def _queue(p: ConsolePage) -> dict[str, Any]:
    now = now_ms()
    queue = p.region.deletions.queue()
    for d in queue:
        d["overdue"] = d["deadline_ms"] < now
    return {"queue": queue, "recent": p.region.deletions.recent(), "now": now}


def tile(p: ConsolePage) -> Tile:
    """Open deletion requests, overdue ones and those waiting for a hold."""
    data = _queue(p)
    queue = data["queue"]
    overdue = sum(1 for d in queue if d["overdue"])
    held = sum(1 for d in queue if d["status"] == "held")
    figures = (
        Figure(p.t("console.deletions.open"), len(queue)),
        Figure(p.t("console.deletions.overdue"), overdue, "bad" if overdue else ""),
        Figure(p.t("console.deletions.held"), held, "warn" if held else ""),
    )
    warnings = (p.t("console.deletions.overdue_warning", n=p.t.count(overdue, "deletion")),) if overdue else ()
    return Tile(SECTION, figures, warnings)


@router.get("/console/deletions")
async def deletions(p: Viewer) -> Response:
    data = await p.call(_queue, p)
    return p.render("console_deletions.html", title=p.t("console.nav.deletions"), section=SECTION.key, **data)
