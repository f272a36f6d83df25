"""Named dependencies of the API routes: the region, the current owner, common query parameters."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request

from carvault.access.accounts import Principal
from carvault.access.staff import StaffPrincipal
from carvault.compliance.roles import Permission, allows
from carvault.errors import Forbidden, InvalidQuery, OwnerOnly, PayloadTooLarge, RoleForbidden, Unauthenticated
from carvault.region import Region

SESSION_COOKIE = "carvault_session"
STAFF_COOKIE = "carvault_staff"
MAX_DB_INT = 2**63 - 1  # every integer column is a signed 64-bit integer (SQLite, PostgreSQL BIGINT)
# Latest instant a time parameter may name: 9999-12-31T23:59:59.999Z (what ISO 8601 can spell).
MAX_TIME_MS = 253_402_300_799_999
RowId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="an id or sequence number")]
CSRF_HEADER = "X-CarVault-CSRF"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# ASCII digits only (str.isdigit also takes '¹' or '٣', which int() refuses) and never more than an int64 holds.
_EPOCH_MS = re.compile(r"-?[0-9]{1,19}")
_INTERVAL = re.compile(r"(?P<number>[0-9]{1,12}(?:\.[0-9]{1,6})?)(?P<unit>ms|min|s|h)?")
_INTERVAL_UNITS = {"ms": 1, "min": 60_000, "s": 1000, "h": 3_600_000}


def region_of(request: Request) -> Region:
    """The region this app serves."""
    return request.app.state.region


async def get_region(request: Request) -> Region:
    """``region_of`` as a dependency. A dependency that does no I/O is ``async``: FastAPI runs a plain ``def`` one
    in a worker thread, a thread hop for every request that names it (issue 12: the HTTP window)."""
    return region_of(request)


RegionDep = Annotated[Region, Depends(get_region)]


def current_caller(request: Request, region: RegionDep) -> Principal:
    """The owner or grant holder behind the bearer token or session cookie; cookie writes need the CSRF header.

    A grant holder's reach is decided per vehicle by ``region.grants.access`` (compliance/sharing.py).
    """
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("use 'Authorization: Bearer <token>'")
        return region.accounts.resolve(secret.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthenticated("log in first (session cookie or bearer token)")
    principal = region.accounts.resolve(cookie)
    # A cross-site form cannot set a custom header, so this (with SameSite=Lax) blocks CSRF on the API.
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"requests authenticated by cookie must send the header {CSRF_HEADER}: 1")
    return principal


Caller = Annotated[Principal, Depends(current_caller)]


async def current_owner(caller: Caller) -> Principal:
    """The owner's own access (session or unscoped token): grant tokens are refused with ``owner_only``."""
    if not caller.is_owner:
        raise OwnerOnly("this route is for the owner only; a grant token does not cover it")
    return caller


CurrentOwner = Annotated[Principal, Depends(current_owner)]


def current_staff(request: Request, region: RegionDep) -> StaffPrincipal:
    """The staff member behind a ``cvs_`` bearer secret or the console's cookie; cookie writes need the CSRF header.

    Owners' sessions and tokens and apps' grant tokens are not staff sessions: ``Unauthenticated`` (401).
    """
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("use 'Authorization: Bearer <staff session>'")
        return region.staff.resolve(secret.strip())
    cookie = request.cookies.get(STAFF_COOKIE)
    if not cookie:
        raise Unauthenticated("staff log in first (console session cookie or a staff bearer secret)")
    staff = region.staff.resolve(cookie)
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"requests authenticated by cookie must send the header {CSRF_HEADER}: 1")
    return staff


CurrentStaff = Annotated[StaffPrincipal, Depends(current_staff)]


@functools.cache
def staff_with(permission: Permission) -> Callable[[StaffPrincipal], StaffPrincipal]:
    """A dependency admitting staff whose role has ``permission`` (``RoleForbidden`` otherwise).

    The returned callable carries ``.permission``, so the role-matrix test can read every admin route's
    permission off its dependencies and try it with every role.
    """
    permission = Permission(permission)

    async def require(staff: CurrentStaff) -> StaffPrincipal:
        if not allows(staff.role, permission):
            raise RoleForbidden(
                f"the role {staff.role.value} does not carry {permission.value}", permission=permission.value
            )
        return staff

    require.permission = permission  # type: ignore[attr-defined]
    require.__name__ = f"staff_with_{permission.name.lower()}"
    return require


def parse_time(value: str, name: str) -> int:
    """Epoch milliseconds from an ISO 8601 time (UTC if no zone) or an integer of epoch milliseconds."""
    v = value.strip()
    if _EPOCH_MS.fullmatch(v):
        return _in_range(int(v), name)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidQuery(
            f"{name} must be ISO 8601 (2026-11-24T08:00:00Z) or epoch milliseconds", parameter=name
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _in_range(int(dt.timestamp() * 1000), name)


def _in_range(ms: int, name: str) -> int:
    if not 0 <= ms <= MAX_TIME_MS:
        raise InvalidQuery(f"{name} must lie between 1970 and 9999", parameter=name)
    return ms


def parse_interval(value: str) -> int:
    """Milliseconds from '500ms', '1s', '5min', '1h' (or a plain number of milliseconds)."""
    m = _INTERVAL.fullmatch(value.strip().lower())
    if m is None or (m["unit"] is None and "." in m["number"]):
        raise InvalidQuery("resample must look like 100ms, 1s, 5min or 1h", parameter="resample")
    ms = int(float(m["number"]) * _INTERVAL_UNITS[m["unit"] or "ms"])
    if ms < 10:
        raise InvalidQuery("resample interval must be at least 10 ms", parameter="resample")
    return ms


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with ``PayloadTooLarge`` as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is {declared} bytes; the limit is {limit}", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def client_address(request: Request) -> str:
    """The peer address (for rate limiting)."""
    return request.client.host if request.client else ""


def header_parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI header parameter that a route reads from the request itself (declared, and so fuzzed)."""
    return {"name": name, "in": "header", "required": True, "description": description, "schema": schema}


def binary_body(media_type: str, description: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads raw bytes of one media type itself."""
    content = {media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


# The vehicle-signed request (carvault.protocol.requests): who signs, when, and the Ed25519 signature.
VEHICLE_SIGNATURE = {
    "parameters": [
        header_parameter(
            "CarVault-Vin", "the signing vehicle's VIN", {"type": "string", "minLength": 17, "maxLength": 17}
        ),
        header_parameter(
            "CarVault-Time",
            "epoch ms, within 5 minutes of the server clock",
            {"type": "string", "pattern": "^[0-9]{1,19}$"},
        ),
        header_parameter("CarVault-Signature", "base64 Ed25519 signature of the request lines", {"type": "string"}),
    ]
}


# OpenAPI security schemes (docs/sharing.md): how each kind of caller authenticates.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A session token, a personal access token, or an app's OAuth access token (grant token)",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": f"The portal's session cookie; writes also send {CSRF_HEADER}: 1",
    },
    "staff": {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator staff session (cvs_...) from POST /api/v1/admin/session (password + TOTP code)",
    },
    "staff_session": {
        "type": "apiKey",
        "in": "cookie",
        "name": STAFF_COOKIE,
        "description": f"The operator console's session cookie; writes also send {CSRF_HEADER}: 1",
    },
    "oauth2": {
        "type": "oauth2",
        "description": "Apps: authorization code with PKCE (S256), or the device authorization grant (RFC 8628)",
        "flows": {
            "authorizationCode": {
                "authorizationUrl": "/oauth/authorize",
                "tokenUrl": "/oauth/token",
                "refreshUrl": "/oauth/token",
                "scopes": {
                    "vss:<branch>": "signals under a VSS branch or one path, e.g. vss:Vehicle.Powertrain",
                    "history": "stored history within the window the owner approves",
                    "live": "live values",
                    "location:precise": "exact coordinates (otherwise H3 cell centres)",
                },
            }
        },
    },
}


def declare_security(schema: dict[str, Any], routes: list[Any]) -> dict[str, Any]:
    """Add the security schemes and, per operation, the ones it accepts (owner-only routes take no app tokens)."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for route in routes:
        calls = set()
        stack = [route.dependant]
        while stack:
            dep = stack.pop()
            calls.add(dep.call)
            stack.extend(dep.dependencies)
        security: list[dict[str, list[str]]]
        if current_staff in calls:
            security = [{"staff": []}, {"staff_session": []}]
        elif current_owner in calls:
            security = [{"bearer": []}, {"session": []}]
        elif current_caller in calls:
            security = [{"bearer": []}, {"session": []}, {"oauth2": []}]
        else:
            continue
        operations = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods:
            if method.lower() in operations:
                operations[method.lower()]["security"] = security
    return schema
