"""Data and consent: what the car collects, why, for how long and where, and switches to change it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.access.consents import RIGHTS_EMAIL, RIGHTS_PHONE
from carvault.web.views.base import FormError, Page, page
from carvault.web.views.vehicles import vehicle

router = APIRouter(include_in_schema=False)
MAX_CONSENT_DAYS = 3 * 365


async def _page(
    p: Page, vin: str, status: int = 200, error: str | None = None, failed: str | None = None
) -> HTMLResponse:
    car = await vehicle(p, vin)
    r = await p.api("GET", f"/api/v1/vehicles/{car['vin']}/consents")
    consents: dict[str, Any] | None = r.json() if r.status_code == 200 else None
    today = datetime.now(p.t.tz).date()
    return p.render(
        "consent.html",
        status=status,
        title=p.t("consent.title"),
        car=car,
        consents=consents,
        error=error,
        failed=failed,
        default_end=(today + timedelta(days=365)).isoformat(),
        min_end=(today + timedelta(days=1)).isoformat(),
        max_end=(today + timedelta(days=MAX_CONSENT_DAYS)).isoformat(),
        rights_email=RIGHTS_EMAIL,
        rights_phone=RIGHTS_PHONE,
        changed=p.request.query_params.get("changed") if p.request.query_params.get("notice") else None,
    )


@router.get("/vehicles/{vin}/consent")
async def consent(vin: str, request: Request) -> Response:
    return await _page(await page(request), vin)


@router.post("/vehicles/{vin}/consent/{category}")
async def change(vin: str, category: str, request: Request) -> Response:
    p = await page(request)
    car = await vehicle(p, vin)
    form = await p.form()
    path = f"/api/v1/vehicles/{car['vin']}/consents/{category}"
    if form.get("action") == "off":
        r = await p.api("DELETE", path)
        notice = "consent_off"
    else:
        try:
            # The consent lasts to the end of the chosen day in the owner's time zone.
            ends = p.time_input(form.get("ends"), "ends")
            end_of_day = datetime.fromtimestamp(ends / 1000, p.t.tz) + timedelta(days=1)
            body = {
                "enabled": True,
                "purpose": form.get("purpose", "").strip(),
                "ends": int(end_of_day.timestamp() * 1000) - 1,
                "lasting": form.get("lasting") == "on",
            }
        except FormError as e:
            return await _page(p, vin, 400, str(e), category)
        if not body["purpose"]:
            return await _page(p, vin, 400, p.t("consent.purpose_needed"), category)
        r = await p.api("PUT", path, json_body=body)
        notice = "consent_on"
    if r.status_code >= 400:
        return await _page(p, vin, 400, r.json().get("error", {}).get("message", ""), category)
    # The page confirms the change at the top and on the card itself (``changed``), and scrolls to the card.
    return p.redirect(f"/vehicles/{car['vin']}/consent?changed={category}#cat-{category}", notice)
