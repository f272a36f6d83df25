"""The consent screen (``/oauth/authorize``) and the device page (``/device``): where an owner approves an app.

Both show the same screen: who asks (app, legal entity, where it processes data, contact), for what purpose,
exactly which signals in plain words with their privacy class, live access, location precision, the history
window, the end date, and the recipient's duties. The owner may only narrow what the app asked for (fewer
signals, chosen vehicles, a shorter window, no live, coarse location, an earlier end) before approving; the
grant is made by ``Grants.create``, which applies every sharing rule again. Denying is one click.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.oauth2 import OAuth2Error
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from carvault.access.oauth import (
    PATHS,
    VERIFICATION_PATH,
    Approval,
    ConsentRequest,
    HttpRequest,
    OAuthServer,
    RecipientRefused,
    normal_user_code,
)
from carvault.compliance.sharing import DAY_MS, DEFAULT_GRANT_DAYS, MAX_GRANT_DAYS, narrowed
from carvault.errors import CarVaultError
from carvault.signals import CATEGORIES, Signal
from carvault.store.metadata import now_ms
from carvault.web.deps import client_address
from carvault.web.routes.oauth import http_request, oauth_server, to_response
from carvault.web.views.base import PAGE_HEADERS, FormError, Page, page

router = APIRouter(include_in_schema=False)
AUTHORIZE = PATHS["authorization_endpoint"]
_ORIGIN = re.compile(r"[A-Za-z0-9.\-:\[\]]+")


# ------------------------------------------------------------------------------------------- what is shown
def _label(signal: Signal, p: Page) -> str:
    """A signal in plain words: its description (in Chinese for zh-CN), or its path's last parts spelled out."""
    if p.t.zh:
        return signal.description_zh.split("；")[0].split("（")[0]
    if signal.description:
        return signal.description.split(";")[0].split(" (")[0]
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", " ".join(signal.path.split(".")[1:]))
    return words[:1].upper() + words[1:].lower()


def _groups(consent: ConsentRequest, p: Page) -> list[dict[str, Any]]:
    """The requested signals grouped by category, each group with its title and privacy class."""
    groups: dict[str, dict[str, Any]] = {}
    for s in consent.signals:
        cat = CATEGORIES[s.category]
        g = groups.setdefault(
            s.category,
            {"name": s.category, "title": p.t.maybe(f"category.{s.category}", cat.title), "privacy": cat.privacy.value},
        )
        g.setdefault("signals", []).append({"path": s.path, "label": _label(s, p)})
    return list(groups.values())


async def _consent_page(
    p: Page,
    consent: ConsentRequest,
    *,
    action: str,
    hidden: dict[str, str],
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    cars = await p.get_json("/api/v1/vehicles")
    today = datetime.now(p.t.tz).date()
    response = p.render(
        "oauth_consent.html",
        status=status,
        title=p.t("oauth.title", app=consent.app.name),
        app=consent.app,
        consent=consent,
        groups=_groups(consent, p),
        cars=cars,
        action=action,
        hidden=hidden,
        error=error,
        today=today.isoformat(),
        default_end=(today + timedelta(days=DEFAULT_GRANT_DAYS)).isoformat(),
        max_end=(today + timedelta(days=MAX_GRANT_DAYS - 1)).isoformat(),
        min_end=(today + timedelta(days=1)).isoformat(),
    )
    origin = _redirect_origin(consent.redirect_uri)
    if origin:  # the approval's redirect back to the app follows a form post: form-action must allow it
        csp = PAGE_HEADERS["Content-Security-Policy"].replace("form-action 'self'", f"form-action 'self' {origin}")
        response.headers["Content-Security-Policy"] = csp
    return response


def _redirect_origin(uri: str | None) -> str | None:
    parts = urlsplit(uri or "")
    if parts.scheme in ("http", "https") and _ORIGIN.fullmatch(parts.netloc):
        return f"{parts.scheme}://{parts.netloc}"
    return None


async def _refusal(request: Request, server: OAuthServer, e: OAuth2Error) -> Response:
    """An authorization request that fails: back to the app when that is safe, else a page saying why."""
    if e.redirect_uri and not isinstance(e, RecipientRefused):
        return to_response(server.redirect_error(e))
    p = await page(request, login=False)
    back = None
    if isinstance(e, RecipientRefused):
        message, status = e.refusal.message, 403
        if e.redirect_uri:  # the owner is told why, and can let the app know
            back = (
                e.redirect_uri
                + ("&" if "?" in e.redirect_uri else "?")
                + urlencode([*e.get_body(), ("iss", server.issuer)])
            )
    else:
        message, status = e.description or e.error, 400
    return p.render(
        "oauth_error.html",
        status=status,
        title=p.t("oauth.refused_title"),
        message=message,
        oauth_error=e.error,
        code=getattr(getattr(e, "refusal", None), "code", e.error),
        back=back,
    )


# --------------------------------------------------------------------------------------- what is decided
def _day(value: str | None, p: Page, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise FormError(p.t("oauth.bad_date", field=p.t(f"oauth.{field}"))) from None


def _ms(d: date, p: Page, *, end_of_day: bool = False) -> int:
    start = datetime.combine(d + timedelta(days=1 if end_of_day else 0), time(), p.t.tz)
    return int(start.timestamp() * 1000) - (1 if end_of_day else 0)


def _chosen_signals(consent: ConsentRequest, ticked: list[str], p: Page) -> list[str]:
    """The ticked signals, a requested branch kept whole when all of it stays ticked; only ever narrower."""
    offered = [s.path for s in consent.signals]
    ticked_set = set(ticked) & set(offered)
    if not ticked_set:
        raise FormError(p.t("oauth.no_signals"))
    chosen: list[str] = []
    for r in consent.scope.signals:
        members = [path for path in offered if path == r or path.startswith(r + ".")]
        if members and all(m in ticked_set for m in members):
            chosen.append(r)
        else:
            chosen.extend(m for m in members if m in ticked_set)
    return list(narrowed(consent.scope, list(dict.fromkeys(chosen))))


async def _choice(p: Page, consent: ConsentRequest) -> dict[str, Any]:
    """The owner's narrowing of the request, as ``Grants.create`` arguments."""
    form = await p.request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    vins = [v for v in form.getlist("vin") if isinstance(v, str)]
    if not vins:
        raise FormError(p.t("oauth.no_vehicles"))
    signals = _chosen_signals(consent, [s for s in form.getlist("signal") if isinstance(s, str)], p)
    now = now_ms()
    from_ms = to_ms = None
    if not consent.scope.history or values.get("history") == "now":
        from_ms = now
    else:
        start, end = (
            _day(values.get("history_from"), p, "history_from"),
            _day(values.get("history_to"), p, "history_to"),
        )
        from_ms = _ms(start, p) if start else None
        to_ms = _ms(end, p, end_of_day=True) if end else None
        if from_ms is not None and to_ms is not None and to_ms <= from_ms:
            raise FormError(p.t("oauth.bad_window"))
    ends = _day(values.get("ends"), p, "ends")
    expires_ms = _ms(ends, p, end_of_day=True) if ends else now + DEFAULT_GRANT_DAYS * DAY_MS
    return {
        "vins": vins,
        "signals": signals,
        "purpose": consent.purpose,
        "client_id": consent.app.client_id,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "live": consent.scope.live and values.get("live") == "on",
        "precise_location": consent.scope.precise_location and values.get("precise") == "on",
        "expires_ms": expires_ms,
        "label": consent.app.name,
    }


async def _approve(p: Page, consent: ConsentRequest) -> int:
    """Make the grant the owner approved; ``FormError`` with the reason when a rule refuses it."""
    choice = await _choice(p, consent)
    region = p.request.app.state.region
    try:
        grant = await run_in_threadpool(lambda: region.grants.create(p.owner_id, kind="app", **choice))
    except CarVaultError as e:
        raise FormError(e.message) from None
    return int(grant.id)


# ------------------------------------------------------------------------------------------- the endpoint
def _authorization_request(request: Request, server: OAuthServer, query: str) -> HttpRequest:
    return HttpRequest(
        method="GET",
        url=f"{server.issuer}{AUTHORIZE}?{query}",
        headers=request.headers,
        query=parse_qsl(query, keep_blank_values=True),
    )


@router.get(AUTHORIZE)
async def authorize(request: Request) -> Response:
    server = oauth_server(request)
    http = http_request(request, server.issuer, [])
    try:
        consent, _ = await run_in_threadpool(server.consent_request, http)
    except OAuth2Error as e:
        return await _refusal(request, server, e)
    p = await page(request)  # not logged in: the log-in page, and back here after it
    return await _consent_page(p, consent, action=AUTHORIZE, hidden={"oauth_request": request.url.query})


@router.post(AUTHORIZE)
async def decide(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    server = oauth_server(request)
    query = form.get("oauth_request", "")
    http = _authorization_request(request, server, query)
    try:
        consent, grant = await run_in_threadpool(server.consent_request, http)
    except OAuth2Error as e:
        return await _refusal(request, server, e)
    approval = None
    if form.get("decision") == "approve":
        try:
            grant_id = await _approve(p, consent)
        except FormError as e:
            return await _consent_page(
                p, consent, action=AUTHORIZE, hidden={"oauth_request": query}, status=400, error=str(e)
            )
        approval = Approval(p.owner_id, grant_id, family="")
    answer = await run_in_threadpool(server.authorize, http, grant, approval)
    response = to_response(answer)
    p.finish(response)
    return response


# ----------------------------------------------------------------------------------------- the device page
DEVICE_LIMIT_WHAT = "too many wrong codes"


def _device_entry(p: Page, *, status: int = 200, error: str | None = None, code: str = "") -> HTMLResponse:
    return p.render(
        "oauth_device.html",
        status=status,
        title=p.t("oauth.device_title"),
        error=error,
        code=code,
        outcome=None,
        app=None,
    )


def _limiter_keys(p: Page) -> list[str]:
    """Wrong user codes are counted per owner and per client address: many accounts from one place do not
    multiply the guesses."""
    return [f"user-code:{p.owner_id}", f"user-code-client:{client_address(p.request) or 'unknown'}"]


async def _pending(p: Page, server: OAuthServer, typed: str) -> tuple[Any, ConsentRequest | None, Response | None]:
    """The pending device authorization a typed code names, or the page to show instead."""
    accounts = p.request.app.state.region.accounts
    try:
        await run_in_threadpool(accounts.limiter.check, _limiter_keys(p), DEVICE_LIMIT_WHAT)
    except CarVaultError:
        return None, None, _device_entry(p, status=429, error=p.t("oauth.device_too_many"), code=typed)
    row = await run_in_threadpool(server.pending_device, typed)
    if row is None:
        await run_in_threadpool(accounts.limiter.fail, _limiter_keys(p))
        return None, None, _device_entry(p, status=404, error=p.t("oauth.device_unknown"), code=typed)
    try:
        consent = await run_in_threadpool(server.device_request, row)
    except OAuth2Error as e:
        return None, None, await _refusal(p.request, server, e)
    return row, consent, None


@router.get(VERIFICATION_PATH)
async def device(request: Request) -> Response:
    p = await page(request)
    typed = request.query_params.get("user_code", "")
    if not typed:
        return _device_entry(p)
    if not normal_user_code(typed):
        return _device_entry(p, status=400, error=p.t("oauth.device_format"), code=typed)
    server = oauth_server(request)
    row, consent, other = await _pending(p, server, typed)
    if other is not None:
        return other
    assert consent is not None
    return await _consent_page(p, consent, action=VERIFICATION_PATH, hidden={"user_code": row.user_code})


@router.post(VERIFICATION_PATH)
async def device_decide(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    server = oauth_server(request)
    typed = form.get("user_code", "")
    row, consent, other = await _pending(p, server, typed)
    if other is not None:
        return other
    assert consent is not None
    grant_id = None
    if form.get("decision") == "approve":
        try:
            grant_id = await _approve(p, consent)
        except FormError as e:
            hidden = {"user_code": row.user_code}
            return await _consent_page(p, consent, action=VERIFICATION_PATH, hidden=hidden, status=400, error=str(e))
    if not await run_in_threadpool(server.decide_device, row.user_code, grant_id):
        if grant_id is not None:  # the code expired while the owner read the screen: the grant serves no one
            await run_in_threadpool(lambda: request.app.state.region.grants.revoke(p.owner_id, grant_id))
        return _device_entry(p, status=410, error=p.t("oauth.device_unknown"))
    outcome = "approved" if grant_id else "denied"
    return p.render("oauth_device.html", title=p.t("oauth.device_title"), outcome=outcome, app=consent.app, code="")
