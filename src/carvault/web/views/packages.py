"""Incident packages: pick an event or a window, request one, download it, see the verification result."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.deps import RowId
from carvault.web.views.base import FormError, Page, PageError, page
from carvault.web.views.vehicles import events, vehicle

router = APIRouter(include_in_schema=False)


async def _page(
    p: Page, vin: str, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None
) -> HTMLResponse:
    car = await vehicle(p, vin)
    packages = await p.get_json(f"/api/v1/vehicles/{car['vin']}/packages")
    evs = list(reversed(await events(p, car["vin"])))
    q = p.request.query_params
    chosen = q.get("event", "")
    defaults = {
        "mode": "window" if q.get("from") and not chosen else "event",
        "event": chosen,
        "from": q.get("from", ""),
        "to": q.get("to", ""),
        "minutes_before": "30",
        "minutes_after": "1",
    }
    return p.render(
        "packages.html",
        status=status,
        title=p.t("packages.title"),
        car=car,
        packages=packages,
        events=evs,
        error=error,
        form={**defaults, **(form or {})},
    )


@router.get("/vehicles/{vin}/packages")
async def packages(vin: str, request: Request) -> Response:
    return await _page(await page(request), vin)


@router.post("/vehicles/{vin}/packages")
async def request_package(vin: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    form = await p.form()
    body: dict[str, Any]
    try:
        if form.get("mode") == "window":
            body = {"start": p.time_input(form.get("from"), "from"), "end": p.time_input(form.get("to"), "to")}
        else:
            kind, _, t_ms = form.get("event", "").partition("@")
            if not (t_ms.isascii() and t_ms.isdigit() and len(t_ms) <= 19):
                raise FormError(p.t("packages.pick_event"))
            body = {
                "event_time": int(t_ms),
                "event_kind": kind[:32] or "incident",
                "minutes_before": float(form.get("minutes_before") or 30),
                "minutes_after": float(form.get("minutes_after") or 1),
            }
    except (FormError, ValueError) as e:
        return await _page(p, vin, 400, str(e) if isinstance(e, FormError) else p.t("error.window"), form)
    r = await p.api("POST", f"/api/v1/vehicles/{car['vin']}/packages", json_body=body)
    if r.status_code != 201:
        return await _page(p, vin, 400 if r.status_code < 500 else 503, p.error_text(r), form)
    return p.redirect(f"/vehicles/{car['vin']}/packages/{r.json()['id']}", "package_built")


@router.get("/vehicles/{vin}/packages/{package_id}")
async def package(vin: str, package_id: RowId, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    found = [x for x in await p.get_json(f"/api/v1/vehicles/{car['vin']}/packages") if x["id"] == package_id]
    if not found:
        raise PageError(404, p.t("error.404"))
    verdict = await p.get_json(f"/api/v1/vehicles/{car['vin']}/packages/{package_id}/verification")
    checks = [{**c, "title": p.t.maybe(f"check.{c['name']}", c["name"])} for c in verdict["checks"]]
    return p.render(
        "package.html", title=p.t("package.title", id=package_id), car=car, pkg=found[0], verdict=verdict, checks=checks
    )
