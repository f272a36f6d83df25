"""For app developers: the purposes a recipient may declare, how the flows work, and the self-service sign-up
(``POST /api/v1/apps``; the app stays pending until the operator approves it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from carvault.compliance.sharing import MAX_GRANT_DAYS, PURPOSES
from carvault.web.views.base import Page, api_message, page

router = APIRouter(include_in_schema=False)
# A developer's own scripts use personal tokens, and portability has its own flow: neither is an app's purpose
# to pick here, though the API accepts them.
SIGNUP_PURPOSES = [p for p in PURPOSES if p not in ("personal", "portability")]
FIELDS = ("name", "legal_entity", "jurisdiction", "contact", "website", "description", "redirect_uris")


def _render(
    p: Page, status: int = 200, error: str | None = None, form: dict[str, Any] | None = None, app: Any = None
) -> HTMLResponse:
    return p.render(
        "developers.html",
        status=status,
        title=p.t("developers.title"),
        error=error,
        purposes=[(name, p.t(f"purpose.{name}")) for name in PURPOSES],
        signup_purposes=SIGNUP_PURPOSES,
        form=form or {"jurisdiction": p.region, "client": "confidential"},
        app=app,
        max_days=MAX_GRANT_DAYS,
    )


@router.get("/developers")
async def developers(request: Request) -> Response:
    return _render(await page(request, login=False))


def signup_error(p: Page, r: Any) -> str:
    """The API's refusal, named by its field in the page's language where it has one."""
    if r.status_code == 429:
        return p.t("developers.too_many")
    try:
        field = r.json().get("error", {}).get("field")
    except ValueError:
        field = None
    if field in FIELDS + ("purposes",):
        return p.t("developers.bad_field", field=p.t(f"developers.field.{field}"), detail=api_message(r))
    return api_message(r)


@router.post("/developers")
async def sign_up(request: Request) -> Response:
    p = await page(request, login=False)
    data = await request.form()
    form: dict[str, Any] = dict(await p.form())
    form["purposes"] = [v for v in data.getlist("purposes") if isinstance(v, str)]
    body = {
        "name": form.get("name", "").strip(),
        "legal_entity": form.get("legal_entity", "").strip(),
        "jurisdiction": form.get("jurisdiction", "").strip(),
        "contact": form.get("contact", "").strip(),
        "purposes": form["purposes"],
        "redirect_uris": [u.strip() for u in form.get("redirect_uris", "").splitlines() if u.strip()],
        "confidential": form.get("client", "confidential") != "public",
        "gatekeeper": form.get("gatekeeper") == "on",
        "description": form.get("description", "").strip(),
        "website": form.get("website", "").strip(),
    }
    if not body["purposes"]:
        return _render(p, 400, p.t("developers.purposes_needed"), form)
    r = await p.api("POST", "/api/v1/apps", json_body=body, secret="")
    if r.status_code != 201:
        return _render(p, 429 if r.status_code == 429 else 400, signup_error(p, r), form)
    # The client secret appears on this response only.
    return _render(p, app=r.json())
