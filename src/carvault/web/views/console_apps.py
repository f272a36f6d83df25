"""Console: the app registry — third-party apps waiting for the operator's decision, and approving, suspending or
rejecting one (access/apps.py; each decision recorded in the region's audit chain with who decided and why)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import HTMLResponse, Response

from carvault.access.apps import APP_STATUSES, app_purposes
from carvault.compliance.roles import Permission
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("apps", "/console/apps", Permission.APPS_DECIDE)
router = APIRouter(include_in_schema=False)
Decider = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
ClientId = Annotated[str, Path(min_length=1, max_length=64)]
DECISIONS = tuple(s for s in APP_STATUSES if s != "pending")


def tile(p: ConsolePage) -> Tile:
    """Apps waiting for a decision, and approved ones."""
    apps = p.region.apps.list()
    pending = sum(1 for a in apps if a.status == "pending")
    approved = sum(1 for a in apps if a.status == "approved")
    return Tile(
        SECTION,
        (
            Figure(p.t("console.apps.pending"), pending, "warn" if pending else ""),
            Figure(p.t("console.apps.approved"), approved),
        ),
    )


async def _page(p: ConsolePage, status: int = 200, error: str | None = None) -> HTMLResponse:
    apps = await p.call(p.region.apps.list)
    order = {s: i for i, s in enumerate(APP_STATUSES)}
    apps.sort(key=lambda a: (order.get(a.status, 9), -a.created_ms))
    return p.render(
        "console_apps.html",
        status=status,
        title=p.t("console.nav.apps"),
        section=SECTION.key,
        apps=[(a, app_purposes(a)) for a in apps],
        decisions=DECISIONS,
        region_name=p.region.name,
        error=error,
    )


@router.get("/console/apps")
async def apps(p: Decider) -> Response:
    return await _page(p)


@router.post("/console/apps/{client_id}/decide")
async def decide(client_id: ClientId, p: Decider) -> Response:
    form = await p.form()
    decision = form.get("status", "")
    if decision not in DECISIONS:
        return await _page(p, 400, p.t("console.apps.bad_decision"))
    _, error, status = await p.attempt(
        p.region.apps.decide_recorded, p.region.audit, client_id, decision, p.actor, form.get("reason", "").strip()
    )
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "app_decided")
