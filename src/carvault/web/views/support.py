"""Support tickets, the owner's side: what support asks to read and why, approved or declined here.

A support ticket (compliance/cases.py) reads nothing until the owner approves it on this page; the reads then
appear in the owner's access log, naming the staff member and the ticket.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.web.deps import RowId
from carvault.web.views.base import Page, api_message, page

router = APIRouter(include_in_schema=False)


async def _page(p: Page, status: int = 200, error: str | None = None) -> HTMLResponse:
    tickets = await p.get_json("/api/v1/support-tickets")
    return p.render(
        "support.html",
        status=status,
        title=p.t("support.title"),
        pending=[t for t in tickets if t["state"] == "awaiting_owner"],
        decided=[t for t in tickets if t["state"] != "awaiting_owner"],
        error=error,
    )


@router.get("/support")
async def support(request: Request) -> Response:
    return await _page(await page(request))


@router.post("/support/{case_id}")
async def decide(case_id: RowId, request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    choice = form.get("decision", "")
    if choice not in ("approve", "decline", "withdraw"):  # withdraw: take back an approval given earlier
        return await _page(p, 400, p.t("support.choose"))
    r = await p.api("POST", f"/api/v1/support-tickets/{case_id}/{choice}")
    if r.status_code >= 400:
        return await _page(p, r.status_code if r.status_code in (404, 409) else 400, api_message(r))
    return p.redirect("/support", "support_approved" if choice == "approve" else "support_declined")
