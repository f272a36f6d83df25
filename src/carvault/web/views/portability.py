"""Move my data: have a full, verifiable copy of a vehicle's data sent to a processor I name (docs/portability.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.views.base import Page, api_message, page

router = APIRouter(include_in_schema=False)
FIELDS = ("vin", "name", "legal_entity", "jurisdiction")


async def _page(
    p: Page, status: int = 200, error: str | None = None, form: dict[str, str] | None = None, made: Any = None
) -> HTMLResponse:
    cars = await p.get_json("/api/v1/vehicles")
    bundles = []
    for v in cars:
        bundles += await p.get_json(f"/api/v1/vehicles/{v['vin']}/portability")
    bundles.sort(key=lambda b: b["created_ms"], reverse=True)
    values = {"jurisdiction": p.region, **(form or {})}
    return p.render(
        "portability.html",
        status=status,
        title=p.t("portability.title"),
        vehicles=cars,
        bundles=bundles,
        error=error,
        form={k: values.get(k, "") for k in (*FIELDS, "include_sensitive")},
        made=made,
        base_url=str(p.request.base_url).rstrip("/"),
    )


@router.get("/portability")
async def portability(request: Request) -> Response:
    return await _page(await page(request))


@router.post("/portability")
async def request_transfer(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    values = {k: form.get(k, "").strip() for k in FIELDS} | {"include_sensitive": form.get("include_sensitive", "")}
    if form.get("confirm") != "on":
        return await _page(p, 400, p.t("portability.confirm_needed"), values)
    r = await p.api(
        "POST",
        f"/api/v1/vehicles/{values['vin']}/portability",
        json_body={
            "recipient": {k: values[k] for k in ("name", "legal_entity", "jurisdiction")},
            "include_sensitive": values["include_sensitive"] == "on",
        },
    )
    if r.status_code >= 400:
        return await _page(p, r.status_code if r.status_code < 500 else 400, api_message(r), values)
    # The one-time token is shown on this answer only; it is stored nowhere but as a hash.
    return await _page(p, 201, made=r.json())
