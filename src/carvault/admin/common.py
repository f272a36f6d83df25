"""What every `carvault admin …` command shares: the region it acts on, who it acts as, and how it prints.

The CLI runs where the region's keys are, so it acts as the local operator: its audit actor is
``staff:cli:<login name>``. ``--as`` names a staff member instead, who must exist, be enabled and hold the
permission the command needs (``RoleForbidden`` otherwise): a name given on the command line is checked, never
written into the records as given.

``carvault.cli`` is imported inside the functions: this module is imported while ``carvault.cli`` itself is
still loading (it mounts ``carvault.admin`` at its end).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carvault.access.audit import Actor
from carvault.access.staff import StaffPrincipal, staff_actor
from carvault.compliance.roles import MATRIX, Permission, Role
from carvault.errors import CarVaultError, RoleForbidden

if TYPE_CHECKING:
    from carvault.region import Region

MAX_LOGIN = 60
As = Annotated[str | None, typer.Option("--as", help="The staff member acting (default: cli:<login name>).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def region_of(data_dir: Any, region: str | None, database_url: str | None) -> Iterator[Region]:
    """The region, with CarVault errors printed as ``code: message`` and exit code 1."""
    from carvault.cli import _settings, console
    from carvault.region import Region

    try:
        with Region(_settings(data_dir, region, database_url)) as r:
            yield r
    except CarVaultError as e:
        console.print(f"[red]{e.code}:[/] {e.message}")
        raise typer.Exit(1) from None


def local_operator() -> str:
    """The login name of whoever runs the command on the region's machine."""
    return (getpass.getuser() or "operator")[:MAX_LOGIN]


def cli_principal(region: Region, as_: str, permission: Permission | None = None) -> StaffPrincipal:
    """The staff member ``--as`` names, as a principal for services that act for one (no session: id 0)."""
    m = region.staff.by_username(as_)
    if m.disabled_ms is not None:
        raise RoleForbidden(f"{m.username} is disabled")
    role = Role(m.role)
    if permission is not None and permission not in MATRIX[role]:
        raise RoleForbidden(f"the role {role.value} does not carry {permission.value}", permission=permission.value)
    return StaffPrincipal(m.id, m.username, role, m.jurisdiction, 0)


def cli_actor(region: Region, as_: str | None, permission: Permission | None = None) -> Actor:
    """Who a command acts as: the local operator ``staff:cli:<login name>``, or the checked member ``--as`` names."""
    if as_ is None:
        return Actor("staff", f"cli:{local_operator()}")
    p = cli_principal(region, as_, permission)
    return staff_actor(p.role, p.username)


def when(ms: int | None) -> str:
    """A UTC time for tables and messages."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if ms else "—"


def print_json(value: Any) -> None:
    """JSON on stdout, unwrapped (for scripts)."""
    print(json.dumps(value, indent=2, ensure_ascii=False))
