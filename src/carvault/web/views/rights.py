"""My requests (the rights desk, owner side) and security-incident notices (PIPL Art. 57), built on the API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.rights import Kind
from carvault.web.deps import MAX_DB_INT
from carvault.web.views.base import Page, PageError, api_message, page

router = APIRouter(include_in_schema=False)
TEXT_FIELDS = ("kind", "vin", "details", "evidence", "subject_email", "name", "legal_entity", "jurisdiction")
# Kinds that act on data at once (deletion erases, portability sends a copy out): the owner confirms first.
CONFIRM = {Kind.DELETION.value, Kind.PORTABILITY.value}


async def _page(
    p: Page, status: int = 200, error: str | None = None, form: dict[str, str] | None = None, made: Any = None
) -> HTMLResponse:
    cars = await p.get_json("/api/v1/vehicles")
    requests = await p.get_json("/api/v1/rights-requests")
    values = {"kind": "access", "jurisdiction": p.region, **(form or {})}
    return p.render(
        "rights.html",
        status=status,
        title=p.t("rights.title"),
        section="rights",
        vehicles=cars,
        requests=requests,
        kinds=[k.value for k in Kind],
        error=error,
        form={k: values.get(k, "") for k in (*TEXT_FIELDS, "include_sensitive")},
        made=made,
    )


@router.get("/requests")
async def requests_page(request: Request) -> Response:
    return await _page(await page(request))


@router.post("/requests")
async def file_request(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    values = {k: form.get(k, "").strip() for k in TEXT_FIELDS} | {
        "include_sensitive": form.get("include_sensitive", "")
    }
    kind = values["kind"]
    if kind in CONFIRM and form.get("confirm") != "on":
        return await _page(p, 400, p.t("rights.confirm_needed"), values)
    body: dict[str, Any] = {"kind": kind, "details": values["details"], "vin": values["vin"] or None}
    if kind == Kind.NEXT_OF_KIN:
        body |= {"evidence": values["evidence"], "subject_email": values["subject_email"] or None, "vin": None}
    if kind == Kind.PORTABILITY:
        body["recipient"] = {k: values[k] for k in ("name", "legal_entity", "jurisdiction")}
        body["include_sensitive"] = values["include_sensitive"] == "on"
    r = await p.api("POST", "/api/v1/rights-requests", json_body=body)
    if r.status_code >= 400:
        return await _page(p, r.status_code if r.status_code < 500 else 400, api_message(r), values)
    made = r.json()
    if "portability" in made:  # the one-time fetch token and import code: shown on this answer only
        return await _page(p, 201, made=made)
    return p.redirect("/requests", "rights_filed")


def _id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_DB_INT:
        raise PageError(404)
    return int(value)


@router.post("/requests/{request_id}/withdraw")
async def withdraw(request: Request, request_id: str) -> Response:
    p = await page(request)
    await p.form()
    r = await p.api("POST", f"/api/v1/rights-requests/{_id(request_id)}/withdraw")
    if r.status_code >= 400:
        return await _page(p, r.status_code if r.status_code < 500 else 400, api_message(r))
    return p.redirect("/requests", "rights_withdrawn")


# ---------------------------------------------------------------------------------------------- notices
@router.get("/notices")
async def notices(request: Request) -> Response:
    p = await page(request)
    items = await p.get_json("/api/v1/notices", params={"lang": p.t.language})
    return p.render("rights_notices.html", title=p.t("notices.title"), section="notices", notices=items)


@router.get("/notices/{notice_id}")
async def notice(request: Request, notice_id: str) -> Response:
    """One notice, in the page's language; opening it marks it read."""
    p = await page(request)
    nid = _id(notice_id)
    item = await p.get_json(f"/api/v1/notices/{nid}", params={"lang": p.t.language})
    if item["read_ms"] is None:
        await p.api("POST", f"/api/v1/notices/{nid}/read")
    return p.render("rights_notice.html", title=p.t("notices.title"), section="notices", item=item)
