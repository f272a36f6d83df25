"""Delete my data: request it (one vehicle or everything), see when it happens, cancel it in its grace period,
see the deadline, status, receipt and holds."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.deps import RowId
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
        names={v["vin"]: v["display_name"] for v in cars},
        requests=requests,
        grace=p.t.period(p.request.app.state.region.settings.deletion_grace_s),
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
    now = form.get("immediately") == "on"  # the owner's explicit choice to skip the grace period
    r = await p.api(
        "POST",
        "/api/v1/deletion-requests",
        json_body={"vin": scope if scope and scope != "all" else None, "reason": reason, "immediately": now},
    )
    if r.status_code >= 400:
        return await _page(p, 400, p.error_text(r), reason)
    return p.redirect("/deletion", "deletion_done" if now else "deletion_requested")


@router.post("/deletion/{request_id}/cancel")
async def cancel_deletion(request_id: RowId, request: Request) -> Response:
    p = await page(request)
    r = await p.api("POST", f"/api/v1/deletion-requests/{request_id}/cancel")
    if r.status_code >= 400:
        return await _page(p, 409 if r.status_code == 409 else 400, p.error_text(r))
    return p.redirect("/deletion", "deletion_cancelled")
