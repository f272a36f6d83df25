"""Staff log-in and log-out, the caller's own account, and staff management (``staff.manage``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from carvault.access.accounts import MIN_PASSWORD
from carvault.access.staff import IDLE_MS, MAX_SESSION_MS, StaffPrincipal, staff_json
from carvault.compliance.roles import MATRIX, Permission, Role
from carvault.errors import AlreadyExists, Conflict, TooManyRequests, Unauthenticated, ValidationFailed
from carvault.store.metadata import StaffSession
from carvault.web.deps import STAFF_COOKIE, CurrentStaff, RegionDep, RowId, client_address, staff_with
from carvault.web.errors import raises

router = APIRouter(tags=["admin: staff"])
Manager = Annotated[StaffPrincipal, Depends(staff_with(Permission.STAFF_MANAGE))]


class StaffLogin(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1000)
    code: str = Field(min_length=6, max_length=8, description="the current six-digit code of the authenticator")


class NewStaff(BaseModel):
    username: str = Field(min_length=2, max_length=64)
    password: str = Field(min_length=MIN_PASSWORD, max_length=1000)
    role: Role
    jurisdiction: str | None = Field(default=None, min_length=2, max_length=16)
    display_name: str = Field(default="", max_length=200)


class StaffChange(BaseModel):
    role: Role | None = None
    active: bool | None = None


def principal_json(p: StaffPrincipal) -> dict[str, Any]:
    """The caller's own identity and what their role allows."""
    return {
        "staff_id": p.staff_id,
        "username": p.username,
        "role": p.role.value,
        "jurisdiction": p.jurisdiction,
        "session_id": p.credential_id,
        "permissions": sorted(x.value for x in MATRIX[p.role]),
    }


def session_json(s: StaffSession) -> dict[str, Any]:
    """A staff session without its secret."""
    return {
        "id": s.id,
        "client": s.client,
        "created_ms": s.created_ms,
        "last_used_ms": s.last_used_ms,
        "expires_ms": min(s.expires_ms, s.last_used_ms + IDLE_MS),
    }


@router.post(
    "/session",
    summary="Staff log-in with username, password and TOTP code: sets the console cookie, returns a cvs_ secret",
    responses=raises(Unauthenticated, TooManyRequests),
)
def login(form: StaffLogin, request: Request, response: Response, region: RegionDep) -> dict[str, Any]:
    secret, principal = region.staff.login(form.username, form.password, form.code, client_address(request))
    response.set_cookie(
        STAFF_COOKIE,
        secret,
        max_age=MAX_SESSION_MS // 1000,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return {"staff": principal_json(principal), "token": secret, "idle_ms": IDLE_MS, "max_ms": MAX_SESSION_MS}


@router.delete("/session", summary="End the staff session")
def logout(staff: CurrentStaff, response: Response, region: RegionDep) -> dict[str, Any]:
    region.staff.logout(staff)
    response.delete_cookie(STAFF_COOKIE, path="/")
    return {"revoked": staff.credential_id}


@router.get("/me", summary="The staff member behind this session and what their role allows")
def me(staff: CurrentStaff) -> dict[str, Any]:
    return principal_json(staff)


@router.get("/staff", summary="Every staff account")
def list_staff(staff: Manager, region: RegionDep) -> list[dict[str, Any]]:
    return [staff_json(m) for m in region.staff.list()]


@router.post(
    "/staff",
    status_code=201,
    summary="Create a staff account; the TOTP secret and otpauth URI are shown once, for enrolment",
    responses=raises(AlreadyExists, ValidationFailed),
)
def create_staff(form: NewStaff, staff: Manager, region: RegionDep) -> dict[str, Any]:
    member, secret = region.staff.create(
        form.username, form.password, form.role, form.jurisdiction, form.display_name, by=staff.actor
    )
    return {**staff_json(member), "totp_secret": secret, "totp_uri": region.staff.totp_uri(member, secret)}


@router.get("/staff/{staff_id}", summary="One staff account and its live sessions")
def get_staff(staff_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    member = region.staff.get(staff_id)
    return {**staff_json(member), "sessions": [session_json(s) for s in region.staff.sessions(staff_id)]}


@router.patch(
    "/staff/{staff_id}",
    summary="Change a role or disable/enable an account (sessions end at once); the last region admin stays",
    responses=raises(Conflict, ValidationFailed),
)
def change_staff(staff_id: RowId, change: StaffChange, staff: Manager, region: RegionDep) -> dict[str, Any]:
    if change.role is None and change.active is None:
        raise ValidationFailed("name a new role or active: true/false", field="role")
    member = region.staff.get(staff_id)
    if change.role is not None:
        member = region.staff.set_role(staff_id, change.role, by=staff.actor)
    if change.active is False:
        member = region.staff.disable(staff_id, by=staff.actor)
    elif change.active is True:
        member = region.staff.enable(staff_id, by=staff.actor)
    return staff_json(member)


@router.delete("/staff/{staff_id}/sessions", summary="End every session of a staff member at once")
def end_sessions(staff_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    return {"staff_id": staff_id, "ended": region.staff.end_sessions(staff_id, by=staff.actor)}


@router.post(
    "/staff/{staff_id}/totp",
    summary="Reset a staff member's second factor (sessions end); the new secret is shown once",
)
def reset_totp(staff_id: RowId, staff: Manager, region: RegionDep) -> dict[str, Any]:
    member, secret = region.staff.reset_totp(staff_id, by=staff.actor)
    return {**staff_json(member), "totp_secret": secret, "totp_uri": region.staff.totp_uri(member, secret)}


@router.get("/roles", summary="The role matrix: what each role may do")
def roles(staff: Manager) -> dict[str, list[str]]:
    return {r.value: sorted(p.value for p in MATRIX[r]) for r in Role}
