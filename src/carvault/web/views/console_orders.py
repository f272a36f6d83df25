"""Console: authority orders — every order recorded, and a form that records a new one and releases the ordered
window to the vehicle's owner as an incident package (compliance/orders.py, the same builder owners use)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.orders import orders, release_to_owner
from carvault.compliance.roles import Permission
from carvault.store.metadata import now_ms
from carvault.web.views.console_base import ConsoleFormError, ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("orders", "/console/orders", Permission.ORDERS_VIEW)
router = APIRouter(include_in_schema=False)
Viewer = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
Manager = Annotated[ConsolePage, Depends(console_with(Permission.ORDERS_MANAGE))]


def tile(p: ConsolePage) -> Tile:
    """Orders this calendar year and the latest one."""
    rows = orders(p.region.db)
    year = datetime.fromtimestamp(now_ms() / 1000, p.t.tz).year
    this_year = sum(1 for o, _ in rows if datetime.fromtimestamp(o.created_ms / 1000, p.t.tz).year == year)
    latest = p.t.dt(rows[0][0].created_ms, "date") if rows else "—"
    return Tile(
        SECTION,
        (Figure(p.t("console.orders.this_year", year=year), this_year), Figure(p.t("console.orders.latest"), latest)),
    )


async def _page(
    p: ConsolePage, status: int = 200, error: str | None = None, form: dict[str, str] | None = None
) -> HTMLResponse:
    rows = await p.call(orders, p.region.db)
    return p.render(
        "console_orders.html",
        status=status,
        title=p.t("console.nav.orders"),
        section=SECTION.key,
        orders=rows,
        form=form or {},
        error=error,
    )


@router.get("/console/orders")
async def list_orders(p: Viewer) -> Response:
    return await _page(p)


@router.post("/console/orders")
async def release(p: Manager) -> Response:
    form = await p.form()
    vin = form.get("vin", "").strip().upper()
    try:
        if len(vin) != 17:
            raise ConsoleFormError(p.t("console.form.vin_invalid"), "vin")
        start = p.time_input(form.get("start"), p.t("console.orders.start"))
        end = p.time_input(form.get("end"), p.t("console.orders.end"))
    except ConsoleFormError as e:
        return await _page(p, 400, e.message, form)
    _, error, status = await p.attempt(
        release_to_owner,
        p.region,
        vin,
        start,
        end,
        authority=form.get("authority", "").strip(),
        reference=form.get("reference", "").strip(),
        legal_basis=form.get("legal_basis", "").strip(),
        by=p.actor,
    )
    if error:
        return await _page(p, status, error, form)
    return p.redirect(SECTION.path, "order_released")
