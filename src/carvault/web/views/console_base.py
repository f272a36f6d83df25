"""What every operator-console page shares: the staff member behind the browser, the role-aware nav, CSRF, errors.

The console (``/console``) is the operator's side of the portal, separate from the owners': its own log-in
(username, password and a TOTP code, access/staff.py), its own session cookie (``carvault_staff``: HttpOnly,
SameSite=Strict, a browser-session cookie; the server ends it after 30 idle minutes or 8 hours), and a nav that
shows only the areas the role may use. What a role may do is read from compliance/roles.py (``allows``), never
restated here: each page names the ``Permission`` it needs through ``console_with``, and the nav is built from the
same ``Section`` entries the pages are guarded by.

Pages are thin over the services the operator API uses (``region.<service>``), called with the staff member's
audit actor. No page reads an owner's telemetry except through a case (compliance/cases.py).
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from carvault import __version__
from carvault.access.audit import Actor
from carvault.access.staff import StaffPrincipal
from carvault.compliance.roles import Permission, allows
from carvault.errors import CarVaultError, Forbidden, RoleForbidden, Unauthenticated
from carvault.web import csrf
from carvault.web.deps import STAFF_COOKIE, client_address
from carvault.web.i18n import (
    DEFAULT_LANGUAGE,
    LANG_COOKIE,
    LANGUAGES,
    TZ_COOKIE,
    Translator,
    negotiate,
    supported,
    translator,
)
from carvault.web.views.base import PAGE_HEADERS, PageResponses, current_path, env, error_context

if TYPE_CHECKING:
    from carvault.region import Region

P = ParamSpec("P")
T = TypeVar("T")

CONSOLE = "/console"
# Notices a console page may show after a redirect (``?notice=<name>``, text ``console.notice.<name>``).
NOTICES = {
    "logged_in",
    "language_changed",
    "rights_started",
    "rights_done",
    "rights_refused",
    "hold_placed",
    "hold_released",
    "order_released",
    "app_decided",
    "staff_created",
    "staff_changed",
    "case_opened",
    "case_closed",
    "transfer_recorded",
    "transfer_changed",
    "retention_ran",
    "retention_dry_run",
    "incident_recorded",
    "incident_notified",
    "incident_closed",
    "record_saved",
    "report_finalised",
    "profile_saved",
}


@dataclass(frozen=True)
class Section:
    """One area of the console: its nav entry, its address and the permission that opens it."""

    key: str  # message ``console.nav.<key>``
    path: str
    permission: Permission | None  # None: every staff member (the dashboard)


@dataclass(frozen=True)
class Figure:
    """One number on a dashboard tile; ``level`` is "" (plain), "warn" or "bad"."""

    label: str
    value: str | int
    level: str = ""


@dataclass(frozen=True)
class Tile:
    """An area's summary on the dashboard: a few figures and warnings, linking to the area's page."""

    section: Section
    figures: tuple[Figure, ...]
    warnings: tuple[str, ...] = ()


class StaffLoginRequired(Exception):
    """The console page needs a logged-in staff member."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class ConsoleError(Exception):
    """A console page cannot be shown: rendered as the console's HTML error page with this status."""

    def __init__(self, status: int, message: str = "", code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ConsoleFormError(Exception):
    """A form value the console refuses before calling a service (shown next to the form, status 400)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass
class ConsolePage(PageResponses):
    """One console request: which staff member, in which language, with which form token."""

    request: Request
    t: Translator
    staff: StaffPrincipal | None
    secret: str | None
    csrf_token: str
    new_presession: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()

    @property
    def region(self) -> Region:
        """The region this console runs."""
        region: Region = self.request.app.state.region
        return region

    @property
    def me(self) -> StaffPrincipal:
        """The logged-in staff member (pages behind ``console_with`` always have one)."""
        assert self.staff is not None
        return self.staff

    @property
    def actor(self) -> Actor:
        """The staff member as the audit log names them: ``staff:<role>:<username>``."""
        return self.me.actor

    def may(self, permission: Permission | None) -> bool:
        """Whether the staff member's role carries ``permission`` (None: any staff member)."""
        return self.staff is not None and (permission is None or allows(self.staff.role, permission))

    def require(self, permission: Permission) -> None:
        """Refuse (403, the console's error page) unless the role carries ``permission``."""
        if not self.may(permission):
            raise ConsoleError(403, self.t("console.forbidden", permission=permission.value), code=RoleForbidden.code)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a (blocking) service call off the event loop; a refusal becomes the console's error page."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except CarVaultError as e:
            raise ConsoleError(e.status, self.error_text(e), code=e.code) from None

    async def attempt(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T | None, str | None, int]:
        """Run a service call that may refuse: (result, None, 200) or (None, the refusal for people, its status)."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs), None, 200
        except CarVaultError as e:
            return None, self.error_text(e), e.status

    def time_input(self, value: str | None, label: str) -> int:
        """Epoch ms from a ``datetime-local`` or ``date`` input, read in the display time zone."""
        if not value or not value.strip():
            raise ConsoleFormError(self.t("console.form.time_missing", field=label))
        try:
            d = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConsoleFormError(self.t("console.form.time_invalid", field=label)) from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=self.t.tz)
        return int(d.timestamp() * 1000)

    def error_text(self, e: CarVaultError) -> str:
        """A service's refusal for people. Services word their messages in English (they also answer the API and
        the CLI); in another language the catalogue's text for the code leads and the service's detail follows."""
        if self.t.language == DEFAULT_LANGUAGE:
            return e.message
        general = self.t.maybe(f"console.error.{e.code}", "")
        return f"{general}（{e.message}）" if general else e.message

    # ------------------------------------------------------------------ rendering
    def nav(self) -> list[Section]:
        """The areas this staff member may open, in console order."""
        return [s for s in self.sections if self.may(s.permission)]

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """Render a console template with the console's layout values and the portal's security headers."""
        notice = self.request.query_params.get("notice")
        body = env.get_template(template).render(
            t=self.t,
            lang=self.t.language,
            languages=LANGUAGES,
            staff=self.staff,
            nav=self.nav() if self.staff else [],
            csrf_token=self.csrf_token,
            csrf_field=csrf.FIELD,
            region=self.region.name,
            path=current_path(self.request),
            version=__version__,
            notice=notice if notice in NOTICES else None,
            P=Permission,
            may=self.may,
            **{"error": None, "section": "", **context},
        )
        response = HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
        self.finish(response)
        return response

    async def form(self) -> dict[str, str]:
        """The posted form after its CSRF check: bound to the staff session, or the pre-session before log-in."""
        data = await self.request.form()
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        token = values.get(csrf.FIELD)
        try:
            if self.secret:
                if not csrf.same_origin(self.request):
                    raise Forbidden("this form was sent from another site")
                if not token or not hmac.compare_digest(csrf.token_for(self.secret), token):
                    raise Forbidden("the form has expired or was not sent from CarVault; reload the page and try again")
            else:
                csrf.verify(self.request, token)
        except Forbidden as e:
            raise ConsoleError(403, e.message, code=e.code) from None
        return values


def safe_console_next(value: str | None) -> str:
    """A console path to go back to after log-in (never another site, never the owner portal)."""
    if value and value.startswith(CONSOLE) and "//" not in value and "\\" not in value:
        return value
    return CONSOLE


def _staff_of(request: Request) -> tuple[StaffPrincipal | None, str | None]:
    """The live staff session behind the ``carvault_staff`` cookie (an owner's session never counts)."""
    secret = request.cookies.get(STAFF_COOKIE)
    if not secret:
        return None, None
    try:
        return request.app.state.region.staff.resolve(secret), secret
    except Unauthenticated:
        return None, None


def _language(request: Request) -> str:
    return supported(request.cookies.get(LANG_COOKIE)) or negotiate(request.headers.get("accept-language"))


async def console_page(request: Request, permission: Permission | None = None, *, login: bool = True) -> ConsolePage:
    """The console context; ``StaffLoginRequired`` without a staff session, 403 when the role lacks ``permission``."""
    staff, secret = await run_in_threadpool(_staff_of, request)
    if login and staff is None:
        raise StaffLoginRequired(current_path(request))
    t = translator(_language(request), request.cookies.get(TZ_COOKIE), request.app.state.region.name)
    fresh = None
    if secret:
        token = csrf.token_for(secret)
    else:
        token, fresh = csrf.issue(request)
    p = ConsolePage(
        request=request,
        t=t,
        staff=staff,
        secret=secret,
        csrf_token=token,
        new_presession=fresh,
        sections=getattr(request.app.state, "console_sections", ()),
    )
    if login and permission is not None:
        p.require(permission)
    return p


def console_with(permission: Permission | None) -> Callable[[Request], Awaitable[ConsolePage]]:
    """A dependency giving the console page of a staff member whose role carries ``permission``.

    The permission is kept on the dependency (``.permission``) so tests walk every console route × role.
    """

    async def dependency(request: Request) -> ConsolePage:
        return await console_page(request, permission)

    dependency.permission = permission  # type: ignore[attr-defined]
    dependency.console = True  # type: ignore[attr-defined]
    return dependency


def client_of(request: Request) -> str:
    """The browser's address, for log-in rate limits."""
    return client_address(request)


def install(app: FastAPI, sections: tuple[Section, ...]) -> None:
    """Turn console exceptions into log-in redirects and the console's HTML error page; keep the nav sections."""
    app.state.console_sections = sections

    @app.exception_handler(StaffLoginRequired)
    async def _login(_: Request, e: StaffLoginRequired) -> RedirectResponse:
        return RedirectResponse(
            f"{CONSOLE}/login?next={quote(e.next_path, safe='/')}",
            status_code=303,
            headers={"Cache-Control": "no-store"},
        )

    @app.exception_handler(ConsoleError)
    async def _error(request: Request, e: ConsoleError) -> HTMLResponse:
        return await console_error_page(request, e.status, e.message)

    # Framework errors under /console (an unknown page, a wrong method) get the console's page, not the portal's.
    portal_error = getattr(app.state, "html_error", None)

    async def html_error(request: Request, status: int, message: str) -> HTMLResponse:
        if request.url.path == CONSOLE or request.url.path.startswith(CONSOLE + "/") or portal_error is None:
            return await console_error_page(request, status, message)
        response: HTMLResponse = await portal_error(request, status, message)
        return response

    app.state.html_error = html_error

    # A path or query value a console route refuses (an id out of range) is a page too, not the API's JSON.
    api_validation = app.exception_handlers.get(RequestValidationError)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> Response:
        if request.url.path.startswith(CONSOLE + "/") or api_validation is None:
            return await console_error_page(request, 400, "; ".join(str(x.get("msg", "")) for x in e.errors()[:3]))
        answer = api_validation(request, e)
        return await answer if inspect.isawaitable(answer) else answer


async def console_error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The console's error page (with the nav when a staff member is logged in)."""
    p = await console_page(request, login=False)
    key = {401: "error.401", 403: "error.403", 404: "error.404", 429: "error.429"}.get(
        status, "console.cannot" if 400 <= status < 500 else "error.other"
    )
    return p.render("console_error.html", status=status, title=p.t(key), **error_context(p.t, status, message))
