"""What every portal page shares: the owner behind the browser, language, CSRF, templates, and the API.

The portal is a client of CarVault's own API: every page asks ``/api/v1`` for what it shows, in-process
(an ASGI call into the same app, with the owner's session as bearer token and the browser's address for
rate limits). So a page can never show more than the API would give the same owner, every read of
vehicle data is audited exactly as an API read is, and someone else's vehicle is a 404 here too.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from carvault import __version__
from carvault.access.audit import PORTAL_PAGE
from carvault.errors import Forbidden
from carvault.web import csrf
from carvault.web.deps import SESSION_COOKIE, client_address
from carvault.web.i18n import (
    DEFAULT_LANGUAGE,
    LANG_COOKIE,
    LANGUAGES,
    TZ_COOKIE,
    Translator,
    messages,
    negotiate,
    supported,
    translator,
)

WEB_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

# Portal pages are stricter than the API default: scripts, styles and connections only from here, forms
# post only here, and the Origin header is sent on same-site posts (the CSRF check reads it).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Permissions-Policy": "geolocation=(), camera=(), microphone=(), payment=()",
}
PAGE_HEADER = "X-CarVault-Page"  # "<page kind> <view id>" on the portal's in-process API calls
PAGE_VALUE = re.compile(r"([a-z][a-z0-9_-]{0,31}) ([0-9a-f]{8})")
NOTICES = {
    "place_added",
    "place_saved",
    "place_removed",
    "password_changed",
    "session_revoked",
    "vehicle_paired",
    "vehicle_renamed",
    "package_built",
    "consent_on",
    "consent_off",
    "deletion_requested",
    "deletion_done",
    "deletion_cancelled",
    "export_started",
    "export_cancelled",
    "language_changed",
    "signed_up",
    "grant_revoked",
    "rights_filed",
    "rights_withdrawn",
    "support_approved",
    "support_declined",
    "tariff_added",
    "tariff_removed",
}


class LoginRequired(Exception):
    """The page needs a logged-in owner."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """A page cannot be shown: rendered as an HTML error page with this status."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html", "svg"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["tojson_attr"] = lambda v: Markup(json.dumps(v, separators=(",", ":")).replace("<", "\\u003c"))


class PageResponses:
    """What the portal's and the console's page objects share: redirects and the cookies a request decided on."""

    request: Request
    new_presession: str | None
    cookies: dict[str, str]

    def redirect(self, url: str, notice: str | None = None) -> RedirectResponse:
        """A 303 to another page of the same site (portal or console), optionally with a notice to show there."""
        if notice:  # before any #fragment: a notice after it never reaches the server (nothing was confirmed)
            path, hash_, fragment = url.partition("#")
            url = path + ("&" if "?" in path else "?") + f"notice={notice}" + hash_ + fragment
        response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
        self.finish(response)
        return response

    def finish(self, response: Response) -> None:
        """Set the cookies this request decided on."""
        if self.new_presession:
            csrf.set_presession(response, self.request, self.new_presession)
        for name, value in self.cookies.items():
            response.set_cookie(
                name,
                value,
                max_age=365 * 86_400,
                httponly=True,
                samesite="lax",
                secure=self.request.url.scheme == "https",
                path="/",
            )


@dataclass
class Page(PageResponses):
    """One page request: who, in which language, with which form token."""

    request: Request
    t: Translator
    csrf_token: str
    me: dict[str, Any] | None
    secret: str | None
    new_presession: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def owner_id(self) -> int:
        """The logged-in owner's id."""
        assert self.me is not None
        return int(self.me["id"])

    @property
    def region(self) -> str:
        """The region this portal serves."""
        return str(self.request.app.state.region.name)

    # ------------------------------------------------------------------ the API, in-process
    async def api(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        secret: str | None = None,
    ) -> httpx.Response:
        """Call ``/api/v1`` as this owner (or anonymously when not logged in)."""
        return await call_api(
            self.request,
            method,
            path,
            json_body=json_body,
            params=params,
            secret=secret if secret is not None else self.secret,
        )

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET from the API; an error becomes the error page (a 404 stays a 404)."""
        r = await self.api("GET", path, params=params)
        if r.status_code == 401:
            raise LoginRequired(current_path(self.request))
        if r.status_code >= 400:
            raise PageError(r.status_code, api_message(r))
        return r.json()

    def error_text(self, r: httpx.Response) -> str:
        """An API error in the reader's language when its stable code has a message (``edges.code.<code>``,
        with the error's details as values), else the API's own message."""
        try:
            err = r.json().get("error", {})
        except ValueError:
            return api_message(r)
        code = str(err.get("code", ""))
        if f"edges.code.{code}" not in messages(self.t.language):
            return api_message(r)
        most = err.get("most_ms")
        return self.t(f"edges.code.{code}", most=self.t.period(int(most) // 1000) if isinstance(most, int) else "")

    # ------------------------------------------------------------------ rendering
    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """Render a template into a page response with the portal's headers."""
        notice = self.request.query_params.get("notice")
        body = env.get_template(template).render(
            t=self.t,
            lang=self.t.language,
            languages=LANGUAGES,
            me=self.me,
            csrf_token=self.csrf_token,
            csrf_field=csrf.FIELD,
            region=self.region,
            path=current_path(self.request),
            version=__version__,
            notice=notice if notice in NOTICES else None,
            **{"error": None, **context},
        )
        response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
        self.finish(response)
        return response

    async def form(self) -> dict[str, str]:
        """The posted form, after checking its CSRF token (``Forbidden`` otherwise)."""
        data = await self.request.form()
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        try:
            csrf.verify(self.request, values.get(csrf.FIELD))
        except Forbidden as e:
            raise PageError(403, e.message) from None
        return values

    def time_input(self, value: str | None, name: str) -> int:
        """Epoch ms from a ``datetime-local`` or ``date`` input, read in the display time zone."""
        if not value:
            raise FormError(self.t("error.time_missing", field=self.t(f"field.{name}")))
        try:
            d = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FormError(self.t("error.time_invalid", field=self.t(f"field.{name}"))) from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=self.t.tz)
        return int(d.timestamp() * 1000)


class FormError(Exception):
    """A form value the page itself refuses (shown next to the form)."""


def current_path(request: Request) -> str:
    """The request's path and query, without a one-time notice."""
    q = request.url.query
    q = "&".join(p for p in q.split("&") if p and not p.startswith("notice=")) if q else ""
    return request.url.path + (f"?{q}" if q else "")


def api_message(r: httpx.Response) -> str:
    """The human message of an API error answer."""
    try:
        err = r.json().get("error", {})
        return str(err.get("message") or err.get("code") or r.status_code)
    except (ValueError, AttributeError):
        return f"HTTP {r.status_code}"


async def call_api(
    request: Request,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, Any] | None = None,
    secret: str | None = None,
) -> httpx.Response:
    """One in-process API request on behalf of the browser behind ``request``."""
    headers = {
        "User-Agent": request.headers.get("user-agent", "")[:200] or "CarVault portal",
        "Accept-Language": request.headers.get("accept-language", ""),
    }
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if not hasattr(request.state, "page_view"):  # one id per page shown: the access log counts views, not calls
        request.state.page_view = secrets.token_hex(4)
    headers[PAGE_HEADER] = f"{page_kind(request)} {request.state.page_view}"
    client = (client_address(request) or "127.0.0.1", request.client.port if request.client else 0)
    transport = httpx.ASGITransport(app=request.app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://carvault.portal") as c:
        return await c.request(method, path, json=json_body, params=params, headers=headers)


async def page(request: Request, *, login: bool = True) -> Page:
    """The page context; raises ``LoginRequired`` when the page needs an owner and there is none."""
    secret = request.cookies.get(SESSION_COOKIE)
    me = None
    if secret:
        r = await call_api(request, "GET", "/api/v1/me", secret=secret)
        me = r.json() if r.status_code == 200 else None
    if login and me is None:
        raise LoginRequired(current_path(request))
    # The browser's explicit choice, then the account's (every account starts as "en", so only another
    # language counts as a choice), then what the browser asks for.
    chosen = supported(me.get("locale")) if me else None
    language = (
        supported(request.cookies.get(LANG_COOKIE))
        or (chosen if chosen != DEFAULT_LANGUAGE else None)
        or negotiate(request.headers.get("accept-language"))
    )
    t = translator(language, request.cookies.get(TZ_COOKIE), request.app.state.region.name)
    token, fresh = csrf.issue(request)
    return Page(request=request, t=t, csrf_token=token, me=me, secret=secret if me else None, new_presession=fresh)


def error_context(t: Translator, status: int, message: str) -> dict[str, Any]:
    """What an error page says besides its title: a sentence in the page's language, and the server's own detail.

    The detail is left out when it only repeats the HTTP status phrase ("Not Found"); API messages are English
    whatever the page's language, so an English detail on a Chinese page is marked as English (``message_lang``).
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    detail = "" if message.strip().lower() in ("", phrase.lower()) else message.strip()
    chinese = any("\u4e00" <= ch <= "\u9fff" for ch in detail)
    return {
        "status_code": status,
        "explanation": t.maybe(f"a11y.error.{status}", t("a11y.error.other")),
        "message": detail,
        "message_lang": "en" if t.zh and not chinese else t.language,
    }


def safe_next(value: str | None, default: str = "/vehicles") -> str:
    """A local path to go back to (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def page_kind(request: Request) -> str:
    """The kind of portal page a request shows, from its route: ``/vehicles/{vin}/drive`` -> ``drive``,
    ``/vehicles/{vin}`` -> ``timeline``, ``/access`` -> ``access``."""
    template = getattr(request.scope.get("route"), "path", "") or request.url.path
    if template == "/vehicles/{vin}":
        return "timeline"
    words = [w for w in template.split("/") if w and not w.startswith("{")]
    return words[-1] if words else "home"


class PortalPages:
    """Marks the API requests the portal makes in-process for a page (``PAGE_HEADER``: kind and view id), so the
    owner's own reads are recorded with the page they showed (``carvault.access.audit.PORTAL_PAGE``).

    A plain ASGI middleware; the value is checked (a short word and a hex id) and only ever labels the owner's own
    reads (``Grants.record_read``), so a client sending it can at most relabel its own owner's reads.
    """

    _HEADER = PAGE_HEADER.lower().encode()

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = (
            next((v for k, v in scope.get("headers", ()) if k == self._HEADER), None)
            if scope["type"] == "http"
            else None
        )
        match = PAGE_VALUE.fullmatch(raw.decode("latin-1")) if raw else None
        if match is None:
            await self.app(scope, receive, send)
            return
        token = PORTAL_PAGE.set((match[1], match[2]))
        try:
            await self.app(scope, receive, send)
        finally:
            PORTAL_PAGE.reset(token)


def install(app: FastAPI) -> None:
    """Serve the static files and turn portal exceptions into redirects and HTML error pages."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(PortalPages)

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, e: LoginRequired) -> RedirectResponse:
        return RedirectResponse(
            f"/login?next={quote(e.next_path, safe='/')}", status_code=303, headers={"Cache-Control": "no-store"}
        )

    async def html_error(request: Request, status: int, message: str) -> HTMLResponse:
        p = await page(request, login=False)
        key = {401: "error.401", 403: "error.403", 404: "error.404", 429: "error.429"}.get(status, "error.other")
        return p.render("error.html", status=status, title=p.t(key), **error_context(p.t, status, message))

    app.state.html_error = html_error

    @app.exception_handler(PageError)
    async def _error(request: Request, e: PageError) -> HTMLResponse:
        return await html_error(request, e.status, e.message)
