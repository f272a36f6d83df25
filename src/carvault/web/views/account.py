"""Sign-up, log-in, log-out, the account page (password, sessions) and the language switch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import update

from carvault.store.metadata import Owner
from carvault.web import csrf
from carvault.web.deps import SESSION_COOKIE, RowId
from carvault.web.i18n import LANG_COOKIE, LANGUAGES
from carvault.web.user_agents import parse
from carvault.web.views.base import Page, PageError, page, safe_next

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home(request: Request) -> Response:
    p = await page(request, login=False)
    return p.redirect("/vehicles" if p.me else "/login")


def _log_in(p: Page, token: str, to: str, notice: str | None = None) -> RedirectResponse:
    response = p.redirect(to, notice)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=p.request.app.state.region.settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=p.request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(csrf.PRESESSION_COOKIE, path="/")
    return response


def _login_error(p: Page, status: int, body: dict[str, Any]) -> str:
    if status == 429:
        minutes = max(1, int(body.get("error", {}).get("retry_after_s", 900)) // 60)
        return p.t("login.too_many", minutes=minutes)
    return p.t("login.failed")


@router.get("/login")
async def login_page(request: Request) -> Response:
    p = await page(request, login=False)
    if p.me:
        return p.redirect(safe_next(request.query_params.get("next")))
    return p.render("login.html", title=p.t("login.title"), email="", next=safe_next(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    p = await page(request, login=False)
    form = await p.form()
    email, to = form.get("email", "").strip(), safe_next(form.get("next"))
    r = await p.api(
        "POST", "/api/v1/auth/login", json_body={"email": email, "password": form.get("password", "")}, secret=""
    )
    if r.status_code == 200:
        return _log_in(p, r.json()["token"], to)
    return p.render(
        "login.html",
        status=r.status_code if r.status_code in (401, 429) else 400,
        title=p.t("login.title"),
        email=email,
        next=to,
        error=_login_error(p, r.status_code, r.json()),
    )


@router.get("/signup")
async def signup_page(request: Request) -> Response:
    p = await page(request, login=False)
    if p.me:
        return p.redirect("/vehicles")
    return p.render("signup.html", title=p.t("signup.title"), email="", display_name="")


@router.post("/signup")
async def signup(request: Request) -> Response:
    p = await page(request, login=False)
    form = await p.form()
    email, name = form.get("email", "").strip(), form.get("display_name", "").strip()
    password = form.get("password", "")
    error = None
    if password != form.get("password_confirm", ""):
        error = p.t("error.passwords_differ")
    else:
        r = await p.api(
            "POST",
            "/api/v1/auth/register",
            json_body={"email": email, "password": password, "display_name": name},
            secret="",
        )
        if r.status_code == 201:
            r = await p.api("POST", "/api/v1/auth/login", json_body={"email": email, "password": password}, secret="")
            if r.status_code == 200:
                return _log_in(p, r.json()["token"], "/vehicles", "signed_up")
            return p.redirect("/login")
        err = r.json().get("error", {})
        error = {"email": p.t("error.email_invalid"), "password": p.t("error.password_short", n=10)}.get(
            err.get("field"), p.t("error.email_taken") if r.status_code == 409 else err.get("message", "")
        )
    return p.render("signup.html", status=400, title=p.t("signup.title"), email=email, display_name=name, error=error)


@router.post("/logout")
async def logout(request: Request) -> Response:
    p = await page(request, login=False)
    await p.form()
    if p.me:
        await p.api("POST", "/api/v1/auth/logout")
    response = p.redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _account(p: Page, status: int = 200, error: str | None = None) -> HTMLResponse:
    creds = await p.get_json("/api/v1/auth/credentials")
    for c in creds:  # a session's label is its browser's User-Agent: named for people, the raw text in a tooltip
        c["shown"] = session_name(p, c["label"]) if c["kind"] == "session" else c["label"]
    return p.render("account.html", status=status, title=p.t("account.title"), credentials=creds, error=error)


def session_name(p: Page, user_agent: str | None) -> str:
    """ "Chrome on Linux" / "Linux 上的 Chrome" for a session's User-Agent; the raw text when it names no known
    browser."""
    agent = parse(user_agent)
    if agent is None:
        return (user_agent or "").strip() or p.t("edges.ua.unknown")
    if agent.system is None:
        return agent.browser
    return p.t("edges.ua.on", browser=agent.browser, system=agent.system)


@router.get("/account")
async def account(request: Request) -> Response:
    return await _account(await page(request))


@router.post("/account/password")
async def change_password(request: Request) -> Response:
    p = await page(request)
    form = await p.form()
    new = form.get("new_password", "")
    if new != form.get("new_password_confirm", ""):
        return await _account(p, 400, p.t("error.passwords_differ"))
    r = await p.api(
        "POST",
        "/api/v1/auth/password",
        json_body={"current_password": form.get("current_password", ""), "new_password": new},
    )
    if r.status_code != 200:
        field = r.json().get("error", {}).get("field")
        msg = p.t("error.password_short", n=10) if field == "password" else p.t("error.password_wrong")
        return await _account(p, 400, msg)
    # Changing the password ended every session, this one too: log this browser back in.
    r = await p.api(
        "POST", "/api/v1/auth/login", json_body={"email": p.me["email"] if p.me else "", "password": new}, secret=""
    )
    if r.status_code != 200:
        return p.redirect("/login")
    return _log_in(p, r.json()["token"], "/account", "password_changed")


@router.post("/account/sessions/{credential_id}/revoke")
async def revoke(credential_id: RowId, request: Request) -> Response:
    p = await page(request)
    await p.form()
    creds = await p.get_json("/api/v1/auth/credentials")
    current = any(c["id"] == credential_id and c["current"] for c in creds)
    r = await p.api("DELETE", f"/api/v1/auth/credentials/{credential_id}")
    if r.status_code != 200:
        raise PageError(r.status_code, r.json().get("error", {}).get("message", ""))
    if current:
        response = p.redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    return p.redirect("/account", "session_revoked")


@router.post("/language")
async def language(request: Request) -> Response:
    p = await page(request, login=False)
    form = await p.form()
    lang = form.get("lang", "")
    if lang not in LANGUAGES:
        raise PageError(400, "unknown language")
    if p.me:
        # The account keeps the choice, so the owner's other browsers follow it after their next log-in.
        with request.app.state.region.db.session() as s:
            s.execute(update(Owner).where(Owner.id == p.owner_id).values(locale=lang))
    p.cookies[LANG_COOKIE] = lang
    return p.redirect(safe_next(form.get("next"), "/"))
