"""Sign-up, log-in, log-out, API tokens and the list of live sessions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from carvault.access.accounts import EMAIL_RE, MIN_PASSWORD
from carvault.errors import AlreadyExists, TooManyRequests, Unauthenticated, ValidationFailed
from carvault.store.metadata import Credential, Owner
from carvault.web.deps import SESSION_COOKIE, CurrentOwner, RegionDep, RowId, client_address
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1", tags=["accounts"])


class Registration(BaseModel):
    email: str = Field(max_length=320, pattern=EMAIL_RE.pattern)
    password: str = Field(min_length=MIN_PASSWORD, max_length=1000)
    display_name: str = Field(default="", max_length=200)


class LoginForm(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1000)


class TokenRequest(BaseModel):
    label: str = Field(default="", max_length=200)
    ttl_days: int = Field(default=30, ge=1, le=365)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1000)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=1000)


def owner_json(o: Owner) -> dict[str, Any]:
    """An owner as the API shows it."""
    return {
        "id": o.id,
        "email": o.email,
        "display_name": o.display_name,
        "locale": o.locale,
        "created_ms": o.created_ms,
    }


def credential_json(c: Credential, current_id: int | None = None) -> dict[str, Any]:
    """A session or token, without its secret."""
    return {
        "id": c.id,
        "kind": c.kind,
        "label": c.label,
        "created_ms": c.created_ms,
        "expires_ms": c.expires_ms,
        "last_used_ms": c.last_used_ms,
        "current": c.id == current_id,
    }


@router.post(
    "/auth/register",
    status_code=201,
    summary="Create an owner account",
    responses=raises(AlreadyExists, ValidationFailed),
)
def register(form: Registration, region: RegionDep) -> dict[str, Any]:
    owner = region.accounts.register(form.email, form.password, form.display_name)
    region.audit.by_owner(owner.id, "account.create")
    return owner_json(owner)


@router.post(
    "/auth/login",
    summary="Log in: sets the session cookie and returns a session token",
    responses=raises(Unauthenticated, TooManyRequests),
)
def login(form: LoginForm, request: Request, response: Response, region: RegionDep) -> dict[str, Any]:
    owner = region.accounts.authenticate(form.email, form.password, client_address(request))
    secret, cred = region.accounts.issue(owner.id, "session", label=request.headers.get("user-agent", "")[:200])
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=region.settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    region.audit.by_owner(owner.id, "session.create", detail={"client": client_address(request)})
    return {"owner": owner_json(owner), "session": credential_json(cred, cred.id), "token": secret}


@router.post("/auth/logout", summary="End the current session")
def logout(owner: CurrentOwner, response: Response, region: RegionDep) -> dict[str, Any]:
    region.accounts.revoke(owner.owner_id, owner.credential_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return {"revoked": owner.credential_id}


@router.post("/auth/tokens", status_code=201, summary="Create an API bearer token (shown once)")
def create_token(req: TokenRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    secret, cred = region.accounts.issue(owner.owner_id, "token", label=req.label, ttl_ms=req.ttl_days * 86_400_000)
    region.audit.by_owner(owner.owner_id, "token.create", detail={"credential_id": cred.id})
    return {"token": secret, **credential_json(cred)}


@router.get("/auth/credentials", summary="Live sessions and tokens")
def list_credentials(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    return [credential_json(c, owner.credential_id) for c in region.accounts.credentials(owner.owner_id)]


@router.delete("/auth/credentials/{credential_id}", summary="Revoke a session or token at once")
def revoke_credential(credential_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    region.accounts.revoke(owner.owner_id, credential_id)
    region.audit.by_owner(owner.owner_id, "credential.revoke", detail={"credential_id": credential_id})
    return {"revoked": credential_id}


@router.post(
    "/auth/password",
    summary="Change the password (revokes every session and token)",
    responses=raises(TooManyRequests, ValidationFailed),
)
def change_password(form: PasswordChange, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    region.accounts.change_password(owner.owner_id, form.current_password, form.new_password)
    region.audit.by_owner(owner.owner_id, "password.change")
    return {"changed": True}


@router.get("/me", summary="The logged-in owner")
def me(owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    with region.db.session() as s:
        o = s.get(Owner, owner.owner_id)
    assert o is not None
    # Unread security-incident notices (PIPL Art. 57): the portal shows a banner on every page while any is unread.
    return {**owner_json(o), "unread_notices": region.incidents.unread_count(owner.owner_id)}
