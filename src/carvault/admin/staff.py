"""`carvault admin staff …`: staff accounts from the region's machine, and who the command line acts as.

Who a command acts as (the local operator, or the checked staff member ``--as`` names) is decided in
admin/common.py for every `carvault admin` command.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from carvault.access.staff import staff_json
from carvault.compliance.roles import MATRIX, Permission, Role, matrix_markdown

if TYPE_CHECKING:
    from carvault.region import Region

# Defined before the import of carvault.cli below (see apps_cli.py: `python -m carvault.cli` imports it twice).
staff = typer.Typer(help="Staff accounts: roles, second factor, disabling (docs/operator.md).", no_args_is_help=True)

from carvault.admin.common import As, AsJson, cli_actor, region_of, when  # noqa: E402
from carvault.cli import DataDir, DbUrl, RegionOpt, console  # noqa: E402

PASSWORD_ENV = "CARVAULT_STAFF_PASSWORD"
Username = Annotated[str, typer.Argument(help="The staff member's username.")]


def _password() -> str:
    """The new member's password: CARVAULT_STAFF_PASSWORD, or a hidden prompt asked twice."""
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _enrolment(r: Region, member: Any, secret: str, as_json: bool) -> None:
    """Print the TOTP secret and URI once (they are not stored readable anywhere an operator can list)."""
    uri = r.staff.totp_uri(member, secret)
    if as_json:
        print(json.dumps({**staff_json(member), "totp_secret": secret, "totp_uri": uri}, indent=2))
        return
    console.print(f"[green]{member.username}[/] ({member.role}, {member.jurisdiction})")
    console.print("Enrol this in an authenticator app now; it is shown only once:", highlight=False)
    console.print(f"  secret: [bold]{secret}[/]", highlight=False)
    console.print(f"  URI:    {uri}", highlight=False, soft_wrap=True)


@staff.command("add")
def add(
    username: Username,
    role: Annotated[Role, typer.Option("--role", help="The member's role.")],
    name: Annotated[str, typer.Option("--name", help="Display name.")] = "",
    jurisdiction: Annotated[
        str | None, typer.Option("--jurisdiction", help="Where they work from (default: this region).")
    ] = None,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Create a staff account; prints the TOTP secret and otpauth URI once (password: prompt or env)."""
    password = _password()
    with region_of(data_dir, region, database_url) as r:
        by = cli_actor(r, as_, Permission.STAFF_MANAGE)
        member, secret = r.staff.create(username, password, role, jurisdiction, name, by=by)
        _enrolment(r, member, secret, as_json)


@staff.command("list")
def list_staff(
    as_json: AsJson = False, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Every staff account."""
    with region_of(data_dir, region, database_url) as r:
        members = r.staff.list()
    if as_json:
        print(json.dumps([staff_json(m) for m in members], indent=2, ensure_ascii=False))
        return
    table = Table("id", "username", "name", "role", "jurisdiction", "created", "state")
    for m in members:
        state = "active" if m.disabled_ms is None else f"disabled {when(m.disabled_ms)}"
        table.add_row(str(m.id), m.username, m.display_name, m.role, m.jurisdiction, when(m.created_ms), state)
    console.print(table)


@staff.command("disable")
def disable(
    username: Username, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Disable an account: its sessions end at once (the last region admin stays)."""
    with region_of(data_dir, region, database_url) as r:
        member = r.staff.disable(r.staff.by_username(username).id, by=cli_actor(r, as_, Permission.STAFF_MANAGE))
    console.print(f"{member.username} disabled")


@staff.command("enable")
def enable(
    username: Username, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Enable a disabled account again."""
    with region_of(data_dir, region, database_url) as r:
        member = r.staff.enable(r.staff.by_username(username).id, by=cli_actor(r, as_, Permission.STAFF_MANAGE))
    console.print(f"{member.username} enabled")


@staff.command("logout")
def logout(
    username: Username, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """End every session of a member at once (a lost laptop); they log in again with password and code."""
    with region_of(data_dir, region, database_url) as r:
        ended = r.staff.end_sessions(r.staff.by_username(username).id, by=cli_actor(r, as_, Permission.STAFF_MANAGE))
    console.print(f"{ended} session(s) of {username} ended")


@staff.command("set-role")
def set_role(
    username: Username,
    role: Annotated[Role, typer.Argument(help="The new role.")],
    as_: As = None,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Give a member another role (their sessions end; the last region admin stays)."""
    with region_of(data_dir, region, database_url) as r:
        by = cli_actor(r, as_, Permission.STAFF_MANAGE)
        member = r.staff.set_role(r.staff.by_username(username).id, role, by=by)
    console.print(f"{member.username} is now {member.role}")


@staff.command("set-password")
def set_password(
    username: Username, as_: As = None, data_dir: DataDir = None, region: RegionOpt = None, database_url: DbUrl = None
) -> None:
    """Set a member's password (hidden prompt or CARVAULT_STAFF_PASSWORD); their sessions end."""
    password = _password()
    with region_of(data_dir, region, database_url) as r:
        by = cli_actor(r, as_, Permission.STAFF_MANAGE)
        member = r.staff.set_password(r.staff.by_username(username).id, password, by=by)
    console.print(f"password of {member.username} set; their sessions ended")


@staff.command("reset-totp")
def reset_totp(
    username: Username,
    as_: As = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    region: RegionOpt = None,
    database_url: DbUrl = None,
) -> None:
    """A new second factor for a member (the old one stops working; sessions end); printed once."""
    with region_of(data_dir, region, database_url) as r:
        by = cli_actor(r, as_, Permission.STAFF_MANAGE)
        member, secret = r.staff.reset_totp(r.staff.by_username(username).id, by=by)
        _enrolment(r, member, secret, as_json)


@staff.command("roles")
def roles(as_json: AsJson = False) -> None:
    """The role matrix: which role may do what (compliance/roles.py)."""
    if as_json:
        print(json.dumps({r.value: sorted(p.value for p in MATRIX[r]) for r in Role}, indent=2))
        return
    console.print(matrix_markdown(), highlight=False)
