"""Delete my data: request it (one vehicle or everything), see the deadline, status, receipt and holds."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.views.base import Page, page

router = APIRouter(include_in_schema=False)


async def _page(p: Page, status: int = 200, error: str | None = None, reason: str = "") -> HTMLResponse:
    cars = await p.get_json("/api/v1/vehicles")
    r = await p.api("GET", "/api/v1/deletion-requests")
    requests = r.json() if r.status_code == 200 else None
    if isinstance(requests, dict):
        requests = requests.get("requests", [])
    return p.render(
        "deletion.html",
        status=status,
        title=p.t("deletion.title"),
        vehicles=cars,
        requests=requests,
        error=error,
        reason=reason,
    )


@router.get("/deletion")
async def deletion(request: Request) -> Response:
    return await _page(await page(request))


@router.post("/deletion")
async def request_deletion(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    reason = form.get("reason", "").strip()
    if form.get("confirm") != "on":
        return await _page(p, 400, p.t("deletion.confirm_needed"), reason)
    scope = form.get("scope", "")
    r = await p.api(
        "POST",
        "/api/v1/deletion-requests",
        json_body={"vin": scope if scope and scope != "all" else None, "reason": reason},
    )
    if r.status_code >= 400:
        return await _page(p, 400, r.json().get("error", {}).get("message", ""), reason)
    return p.redirect("/deletion", "deletion_requested")
