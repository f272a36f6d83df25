"""Every operator route × every role: the role matrix (compliance/roles.py) is what the API enforces.

The routes are read off the app itself, so a route added later is walked too; its permission is read off its
``staff_with`` dependency, so a route without one fails here (and in test_route_access.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from carvault.compliance.roles import MATRIX, Permission, Role, allows, matrix_markdown
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.app import create_app
from tests.conftest import OwnerClient
from tests.factories import make_staff, vin_for
from tests.web.test_route_access import ADMIN_PREFIX, PUBLIC, STAFF_SELF, _routes, staff_permission

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
# Values that pass path validation and name nothing that exists (answered 404/422 once past the guard).
PATH_VALUES = {"vin": vin_for(999), "case_id": "999999"}


def admin_routes(region: Region) -> list[tuple[str, str, APIRoute]]:
    """(method, path, route) of every operator route that takes a role (not the log-in, not one's own session)."""
    found = []
    for path, route in _routes(create_app(region).routes):
        if not isinstance(route, APIRoute) or not path.startswith(ADMIN_PREFIX):
            continue
        for method in sorted(route.methods):
            if (method, path) not in PUBLIC and (method, path) not in STAFF_SELF:
                found.append((method, path, route))
    return found


def concrete(path: str) -> str:
    """The path with a harmless value for each parameter."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PATH_VALUES.get(m[1], "999999"), path)


def call(http: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return http.request(method, concrete(path), headers=headers, json=body)


def error_code(r: httpx.Response) -> str | None:
    """The stable error code of a JSON error answer, else None."""
    if not r.headers.get("content-type", "").startswith("application/json"):
        return None
    body = r.json()
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


@pytest.mark.slow
def test_every_admin_route_enforces_the_matrix_for_every_role(region: Region, http: httpx.Client) -> None:
    routes = admin_routes(region)
    paths = {p for _, p, _ in routes}
    assert "/api/v1/admin/staff" in paths and "/api/v1/admin/cases/{case_id}/vehicles/{vin}/telemetry" in paths
    unguarded = [f"{m} {p}" for m, p, r in routes if staff_permission(r) is None]
    assert not unguarded, f"operator routes without staff_with(...): {unguarded}"
    problems = []
    for role in Role:
        _, secret = make_staff(region, role)
        headers = {"Authorization": f"Bearer {secret}"}
        for method, path, route in routes:
            permission = staff_permission(route)
            r = call(http, method, path, headers)
            code = error_code(r)
            if allows(role, permission):
                if r.status_code in (401, 403):
                    problems.append(f"{role} {method} {path} ({permission}): allowed, got {r.status_code} {code}")
            elif (r.status_code, code) != (403, "role_forbidden"):
                problems.append(f"{role} {method} {path} ({permission}): not allowed, got {r.status_code} {code}")
    assert not problems, "\n".join(problems)


def _grant_tokens(region: Region, owner: OwnerClient) -> list[str]:
    """A personal access token (a grant token) and an OAuth-style access token acting for its grant."""
    pat, grant = region.grants.personal_token(
        owner.owner_id, label="script", vins=[vin_for(1)], signals=["Vehicle.Speed"]
    )
    access, _ = region.accounts.issue(owner.owner_id, "access", grant_id=grant.id)
    return [pat, access]


@pytest.mark.slow
def test_owner_and_grant_credentials_get_401_on_every_admin_route(
    region: Region, http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    region.vehicles.claim(owner.owner_id, vehicle.vin, vehicle.pairing_code)
    login = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
    session_cookie = login.cookies["carvault_session"]
    http.cookies.clear()
    tokens = [owner.headers["Authorization"].split()[1], *_grant_tokens(region, owner)]
    wrong = [{"Authorization": f"Bearer {t}"} for t in tokens]
    wrong.append({"Cookie": f"carvault_session={session_cookie}", "X-CarVault-CSRF": "1"})
    wrong.append({})
    problems = []
    for method, path, _ in admin_routes(region):
        for headers in wrong:
            r = call(http, method, path, headers)
            if r.status_code != 401:
                problems.append(f"{method} {path} with {list(headers)}: {r.status_code}")
    for method, path in STAFF_SELF:
        r = call(http, method, path, {"Authorization": f"Bearer {tokens[0]}"})
        if r.status_code != 401:
            problems.append(f"{method} {path}: {r.status_code}")
    assert not problems, "\n".join(problems)


def test_the_documented_matrix_is_the_enforced_one() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert matrix_markdown() in text, "docs/operator.md's role matrix differs from compliance/roles.py (regenerate)"
    # And read back from the document, row by row, it is MATRIX.
    table = text[text.index(matrix_markdown().splitlines()[0]) :].split("\n\n")[0].splitlines()[2:]
    assert len(table) == len(Permission)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        permission = Permission(cells[0].strip("`"))
        for role, cell in zip(Role, cells[1:], strict=True):
            assert (cell == "✓") == (permission in MATRIX[role])


def test_the_matrix_keeps_its_rules() -> None:
    """Separation of duties, read-only auditors, and nobody reads without a case permission."""
    assert all(p.is_view for p in MATRIX[Role.AUDITOR])
    assert Permission.CASE_READ not in MATRIX[Role.REGION_ADMIN]
    assert Permission.CASES_OPEN not in MATRIX[Role.REGION_ADMIN]
    # Whoever can make accounts cannot read data, and the other way round.
    for role in Role:
        assert not {Permission.STAFF_MANAGE, Permission.CASE_READ} <= MATRIX[role], role
    assert {r for r in Role if Permission.STAFF_MANAGE in MATRIX[r]} == {Role.REGION_ADMIN}
    assert not allows("nobody", Permission.CASES_VIEW) and not allows(Role.DPO, "staff.fly")
