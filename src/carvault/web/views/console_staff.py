"""Console: staff accounts (region admin only) — create a member with a role and jurisdiction, change a role,
disable or enable an account, reset a second factor (access/staff.py). A new TOTP secret is shown once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from carvault.access.staff import StaffMember
from carvault.compliance.roles import Permission, Role
from carvault.web.deps import RowId
from carvault.web.views.console_base import ConsolePage, Figure, Section, Tile, console_with

SECTION = Section("staff", "/console/staff", Permission.STAFF_MANAGE)
router = APIRouter(include_in_schema=False)
Admin = Annotated[ConsolePage, Depends(console_with(SECTION.permission))]
ACTIONS = ("disable", "enable", "reset_totp")


def tile(p: ConsolePage) -> Tile:
    """Active accounts, by role."""
    members = p.region.staff.list()
    active = [m for m in members if m.disabled_ms is None]
    return Tile(
        SECTION,
        (
            Figure(p.t("console.staff.active"), len(active)),
            Figure(p.t("console.staff.disabled"), len(members) - len(active)),
        ),
    )


async def _page(
    p: ConsolePage,
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
    enrol: tuple[StaffMember, str, str] | None = None,
) -> HTMLResponse:
    members = await p.call(p.region.staff.list)
    return p.render(
        "console_staff.html",
        status=status,
        title=p.t("console.nav.staff"),
        section=SECTION.key,
        members=members,
        roles=list(Role),
        form=form or {},
        enrol=enrol,
        error=error,
    )


@router.get("/console/staff")
async def staff(p: Admin) -> Response:
    return await _page(p)


@router.post("/console/staff")
async def create(p: Admin) -> Response:
    form = await p.form()
    if form.get("password", "") != form.get("password_confirm", ""):
        return await _page(p, 400, p.t("console.staff.passwords_differ"), form)
    created, error, status = await p.attempt(
        p.region.staff.create,
        form.get("username", ""),
        form.get("password", ""),
        form.get("role", ""),
        form.get("jurisdiction", "") or None,
        form.get("display_name", ""),
        by=p.actor,
    )
    if error or created is None:
        return await _page(p, status, error, {k: v for k, v in form.items() if "password" not in k})
    member, secret = created
    uri = p.region.staff.totp_uri(member, secret)
    return await _page(p, 201, enrol=(member, secret, uri))


@router.post("/console/staff/{staff_id}/role")
async def set_role(staff_id: RowId, p: Admin) -> Response:
    form = await p.form()
    _, error, status = await p.attempt(p.region.staff.set_role, staff_id, form.get("role", ""), by=p.actor)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "staff_changed")


@router.post("/console/staff/{staff_id}/{action}")
async def act(staff_id: RowId, action: str, p: Admin) -> Response:
    await p.form()
    if action not in ACTIONS:
        return await _page(p, 404, p.t("console.staff.bad_action"))
    if staff_id == p.me.staff_id and action == "disable":
        return await _page(p, 409, p.t("console.staff.not_yourself"))
    if action == "reset_totp":
        reset, error, status = await p.attempt(p.region.staff.reset_totp, staff_id, by=p.actor)
        if error or reset is None:
            return await _page(p, status, error)
        member, secret = reset
        return await _page(p, 200, enrol=(member, secret, p.region.staff.totp_uri(member, secret)))
    service = p.region.staff.disable if action == "disable" else p.region.staff.enable
    _, error, status = await p.attempt(service, staff_id, by=p.actor)
    if error:
        return await _page(p, status, error)
    return p.redirect(SECTION.path, "staff_changed")
