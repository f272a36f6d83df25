"""CSRF protection for the portal's HTML forms: a session-bound token in every form.

The token is an HMAC of the session secret (the HttpOnly ``carvault_session`` cookie), so it needs no
server-side state and validates in any process; a page on another site can neither read the cookie nor
the token. Before log-in (log-in and sign-up forms, to stop login CSRF) the same is done with a random
pre-session cookie. Every form POST must carry the token in the ``csrf_token`` field, and a POST whose
``Origin`` header names another site is refused whatever it carries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from carvault.errors import Forbidden
from carvault.web.deps import SESSION_COOKIE

PRESESSION_COOKIE = "carvault_presession"
FIELD = "csrf_token"
_CONTEXT = b"carvault portal csrf v1"


def token_for(secret: str) -> str:
    """The form token bound to a session (or pre-session) secret."""
    mac = hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _secret(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRESESSION_COOKIE)


def issue(request: Request) -> tuple[str, str | None]:
    """The token for this request's forms, and a new pre-session secret to set when there was none."""
    secret = _secret(request)
    if secret:
        return token_for(secret), None
    fresh = secrets.token_urlsafe(32)
    return token_for(fresh), fresh


def set_presession(response: Response, request: Request, secret: str) -> None:
    """Store a new pre-session secret (HttpOnly, SameSite=Strict, a day)."""
    response.set_cookie(
        PRESESSION_COOKIE,
        secret,
        max_age=86_400,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":  # no-referrer pages and privacy settings send "null": the token decides
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def verify(request: Request, token: str | None) -> None:
    """Raise ``Forbidden`` unless the form token matches this browser's session and the origin is ours."""
    secret = _secret(request)
    if not same_origin(request):
        raise Forbidden("this form was sent from another site")
    if not secret or not token or not hmac.compare_digest(token_for(secret), token):
        raise Forbidden("the form has expired or was not sent from CarVault; reload the page and try again")
