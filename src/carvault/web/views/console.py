"""The operator console: log-in with a TOTP code, log-out, the language switch, and the dashboard over every area.

Each area is one ``console_<area>.py`` module with a ``SECTION`` (nav entry and the permission that opens it), a
``router`` and a ``tile(page)`` for the dashboard; ``AREAS`` below lists them in nav order. The dashboard shows the
tiles of the areas the role may open, nothing else.
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from carvault.errors import TooManyRequests, Unauthenticated
from carvault.web import csrf
from carvault.web.deps import STAFF_COOKIE
from carvault.web.i18n import LANG_COOKIE, LANGUAGES
from carvault.web.views import (
    console_apps,
    console_cases,
    console_deletions,
    console_holds,
    console_incidents,
    console_orders,
    console_records,
    console_reports,
    console_retention,
    console_rights,
    console_staff,
    console_transfers,
)
from carvault.web.views.console_base import (
    CONSOLE,
    ConsoleError,
    ConsolePage,
    Section,
    Tile,
    client_of,
    console_page,
    console_with,
    safe_console_next,
)
from carvault.web.views.console_base import (
    install as install_frame,
)

DASHBOARD = Section("dashboard", CONSOLE, None)
# The console's areas in nav order; each brings its SECTION, router and dashboard tile.
AREAS: tuple[ModuleType, ...] = (
    console_rights,
    console_deletions,
    console_holds,
    console_orders,
    console_cases,
    console_transfers,
    console_retention,
    console_incidents,
    console_records,
    console_reports,
    console_apps,
    console_staff,
)
SECTIONS: tuple[Section, ...] = (DASHBOARD, *(m.SECTION for m in AREAS))

router = APIRouter(include_in_schema=False)
Staff = Annotated[ConsolePage, Depends(console_with(None))]


# ---------------------------------------------------------------------------- log-in and log-out
def _login_form(p: ConsolePage, status: int = 200, username: str = "", error: str | None = None) -> HTMLResponse:
    next_path = safe_console_next(p.request.query_params.get("next"))
    return p.render(
        "console_login.html",
        status=status,
        title=p.t("console.login.title"),
        username=username,
        next=next_path,
        error=error,
    )


@router.get("/console/login")
async def login_page(request: Request) -> Response:
    p = await console_page(request, login=False)
    if p.staff:
        return p.redirect(safe_console_next(request.query_params.get("next")))
    return _login_form(p)


@router.post("/console/login")
async def login(request: Request) -> Response:
    p = await console_page(request, login=False)
    form = await p.form()
    username = form.get("username", "").strip()[:64]
    to = safe_console_next(form.get("next"))
    try:
        secret, _ = await run_in_threadpool(
            p.region.staff.login, username, form.get("password", ""), form.get("code", ""), client_of(request)
        )
    except TooManyRequests as e:
        minutes = max(1, int(e.details.get("retry_after_s", 900)) // 60)
        return _login_form(p, 429, username, p.t("console.login.too_many", minutes=minutes))
    except Unauthenticated:
        return _login_form(p, 401, username, p.t("console.login.failed"))
    response = p.redirect(to)
    # A browser-session cookie: the server ends the session after 30 idle minutes or 8 hours anyway, and Strict
    # keeps it off every request another site starts.
    response.set_cookie(
        STAFF_COOKIE, secret, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )
    response.delete_cookie(csrf.PRESESSION_COOKIE, path="/")
    return response


@router.post("/console/logout")
async def logout(request: Request) -> Response:
    p = await console_page(request, login=False)
    if p.staff:  # a session that already ended has nothing to end: no form check needed to forget its cookie
        await p.form()
        await p.call(p.region.staff.logout, p.staff)
    response = p.redirect(f"{CONSOLE}/login")
    response.delete_cookie(STAFF_COOKIE, path="/")
    return response


@router.post("/console/language")
async def language(request: Request) -> Response:
    p = await console_page(request, login=False)
    form = await p.form()
    lang = form.get("lang", "")
    if lang not in LANGUAGES:
        raise ConsoleError(400, p.t("console.bad_language"))
    p.cookies[LANG_COOKIE] = lang
    return p.redirect(safe_console_next(form.get("next")))


# ---------------------------------------------------------------------------- the dashboard
def _tiles(p: ConsolePage) -> list[Tile]:
    return [m.tile(p) for m in AREAS if p.may(m.SECTION.permission)]


@router.get("/console")
async def dashboard(p: Staff) -> Response:
    tiles = await p.call(_tiles, p)
    return p.render("console_dashboard.html", title=p.t("console.nav.dashboard"), section="dashboard", tiles=tiles)


for _area in AREAS:
    router.include_router(_area.router)


def permissions_of(area: ModuleType) -> list[str]:
    """The permissions an area's pages and forms need, its page's first (from each route's ``console_with``)."""
    found: list[str] = [area.SECTION.permission.value]
    for route in area.router.routes:
        for dep in route.dependant.dependencies:
            permission = getattr(dep.call, "permission", None) if getattr(dep.call, "console", False) else None
            if permission is not None and permission.value not in found:
                found.append(permission.value)
    return found


def sections_markdown() -> str:
    """The console's areas as the table in docs/operator.md ("Console"); a test keeps the two equal."""
    lines = ["| area | page | opens with | its forms need |", "| --- | --- | --- | --- |"]
    lines.append(f"| {DASHBOARD.key} | `{DASHBOARD.path}` | any staff member | — |")
    for area in AREAS:
        first, *rest = permissions_of(area)
        forms = ", ".join(f"`{p}`" for p in rest) or "—"
        lines.append(f"| {area.SECTION.key} | `{area.SECTION.path}` | `{first}` | {forms} |")
    return "\n".join(lines) + "\n"


def install(app: FastAPI) -> None:
    """Add the console's pages and error handling to an app."""
    install_frame(app, SECTIONS)
    app.include_router(router)
