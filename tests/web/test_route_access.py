"""Guard: every route of the app is classified by who may call it, so a new route cannot leak owner data.

Classes (docs/sharing.md, "How a grant is enforced"):

- **public** — an explicit allow-list below, each with its reason; none takes a ``{vin}``.
- **vehicle-signed** — the car's own uploads, live channel and policy fetch (tag "vehicle upload", or a WebSocket
  calling ``authenticate_vehicle``), authenticated by the car's Ed25519 key or bound to a batch the car signed;
  none takes a ``{vin}`` in its path.
- **owner-only** — depends on ``current_owner`` (grant tokens get ``403 owner_only``).
- **grant-aware** — depends on ``current_caller`` and its endpoint reaches vehicles only through
  ``region.grants.access`` (or ``region.grants.vehicles`` for the listing), which hands back the grant's
  ``ScopedView``.
- **portal page** — HTML pages of ``carvault.web.views`` outside ``/api/``; they read through the API in-process.
- **console** — the operator console under ``/console`` (views/console*.py): every page behind
  ``console_with(<permission>)`` (tests/web/test_console_pages.py tries each with every role) except ``CONSOLE_OPEN``.
- **staff** — the operator's API under ``/api/v1/admin`` (issue 11): every route depends on ``staff_with(<permission>)``
  (tests/web/test_admin_roles.py tries each with every role); only the staff member's own session routes
  (``STAFF_SELF``) take any staff member, and only the log-in is public. A staff route naming a ``{vin}`` reads
  through ``region.cases.access`` (an open case), nothing else.

A route that reads through ``current_caller`` without the grants door, or a public route with a ``{vin}``, fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, Mount, Route

from carvault.compliance.roles import Permission
from carvault.region import Region
from carvault.web.app import create_app
from carvault.web.deps import (
    Caller,
    CurrentOwner,
    CurrentStaff,
    RegionDep,
    current_caller,
    current_owner,
    current_staff,
    staff_with,
)

# Public API routes and why each may answer anyone. Keys: (METHOD, path) or a path prefix ending in '/'.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/health"): "liveness; names the region and the log size only",
    ("GET", "/livez"): "liveness for the load balancer; says ok and nothing else",
    ("GET", "/readyz"): "readiness for the load balancer; names the parts that fail, never a car or owner",
    ("GET", "/metrics"): "aggregate Prometheus figures (no car, no owner); a bearer token when metrics_token is set",
    ("POST", "/api/v1/auth/register"): "account sign-up",
    ("POST", "/api/v1/auth/login"): "log-in (rate limited); answers only the account's own token",
    ("GET", "/api/v1/signals"): "the public signal catalogue",
    ("GET", "/api/v1/categories"): "the public category catalogue (privacy classes)",
    ("GET", "/api/v1/data-sheet"): "the Data Act Art. 3(2) data sheet: catalogue, rules, models, operator contact",
    ("GET", "/api/v1/region/trust"): "the region's CA and log keys, for offline verification",
    ("GET", "/api/v1/log/checkpoint"): "transparency log: the signed checkpoint is public by design",
    ("GET", "/api/v1/log/cosigned-checkpoint"): "the witness-cosigned checkpoint: public by design (docs/witness.md)",
    ("GET", "/api/v1/log/key"): "transparency log verifier key",
    ("GET", "/api/v1/log/proof/inclusion"): "transparency log proofs: leaf indices and hashes, no VIN",
    ("GET", "/api/v1/log/proof/consistency"): "transparency log proofs between tree sizes",
    ("GET", "/tlog/checkpoint"): "the tiled log's published checkpoint (C2SP tlog-tiles): public by design",
    ("GET", "/tlog/tile/{path:path}"): "the tiled log's hash tiles (C2SP tlog-tiles): hashes only, no VIN",
    (
        "POST",
        "/api/v1/admin/session",
    ): "staff log-in (password + TOTP code, rate limited); answers only a staff session",
}
ADMIN_PREFIX = "/api/v1/admin/"
# Routes any logged-in staff member may use on their own session, whatever their role.
STAFF_SELF = {("DELETE", "/api/v1/admin/session"), ("GET", "/api/v1/admin/me")}
# The only way a staff route reaches a vehicle: an open case (compliance/cases.py).
CASE_DOOR = "cases.access("
# Calls that read a vehicle's recorded data: a staff route making one must have gone through the case door.
STAFF_DATA_READS = ("telemetry.window(", "serve_telemetry(", "frames.", "timeline(")
# Prefixes of public protocol endpoints: OAuth 2.0 (RFC 6749/7009/7662/8628: clients authenticate there with their
# own credentials, never as an owner), server metadata (RFC 8414), developer sign-up (apps apply; the operator
# approves), and the public log tiles (C2SP tlog-tiles).
PUBLIC_PREFIXES: dict[str, str] = {
    "/oauth/": "OAuth 2.0 endpoints; the client authenticates itself, owner consent happens on portal pages",
    "/api/v1/oauth/": "OAuth 2.0 endpoints under the API prefix",
    "/.well-known/": "RFC 8414 authorization server metadata",
    "/api/v1/apps": "developer sign-up of an app (pending until the operator approves it)",
    "/api/v1/log/tile": "public log tiles",
    "/api/v1/log/witness": "witness cosignatures of public checkpoints",
}
# Console pages reachable without a staff session: the log-in form, log-in, log-out and the language switch.
CONSOLE_OPEN = {
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("POST", "/console/language"),
}
# FastAPI's own documentation routes.
FRAMEWORK = {"/api/v1/openapi.json", "/api/v1/docs", "/docs/oauth2-redirect"}
VEHICLE_TAG = "vehicle upload"
# The only ways a grant-aware endpoint may reach a vehicle.
GRANT_DOORS = ("grants.access(", "grants.vehicles(")
# Routes whose endpoint hands the caller to a service that applies the grant itself: the service (named in the
# endpoint module) must go through the grants door. Keep this list short; each entry says why.
DELEGATED: dict[str, tuple[str, str]] = {
    "/api/v1/portability/{bundle_id:portability_bundle}": (
        "Portability.start_fetch",
        "a bundle is fetched once under its one-time portability grant, checked by the service",
    ),
    "/api/v1/viss/{vin}": ("VissSession", "VISS WebSocket: authenticates per message and asks grants.access"),
}
DELEGATED_DOORS = (*GRANT_DOORS, "grants.live(")
# What grant-aware endpoints must never do: reach a vehicle around the grant.
AROUND_THE_DOOR = ("owned_one(", "vehicles.owned(", "vehicles.get(")


def _calls(route: APIRoute) -> set[Callable[..., Any]]:
    calls: set[Callable[..., Any]] = set()
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            calls.add(dep.call)
        stack.extend(dep.dependencies)
    return calls


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """Every route the app serves, with its full path (included routers are walked)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes, prefix + getattr(r.include_context, "prefix", ""))
        else:
            yield prefix + getattr(r, "path", ""), r


def _public(method: str, path: str) -> str | None:
    if (method, path) in PUBLIC:
        return PUBLIC[(method, path)]
    return next((why for p, why in PUBLIC_PREFIXES.items() if path.startswith(p)), None)


def _delegate_source(route: APIRoute | APIWebSocketRoute, dotted: str) -> str:
    """The source of the service a delegated route's endpoint uses (resolved from the endpoint's module)."""
    head, *rest = dotted.split(".")
    obj: Any = route.endpoint.__globals__[head]
    for name in rest:
        obj = getattr(obj, name)
    return inspect.getsource(obj)


def _delegated(path: str, route: APIRoute | APIWebSocketRoute) -> tuple[str, str]:
    dotted, _ = DELEGATED[path]
    if not any(door in _delegate_source(route, dotted) for door in DELEGATED_DOORS):
        return "grant-aware", f"{path}: {dotted} does not go through region.grants"
    return "grant-aware", ""


def classify(path: str, route: BaseRoute) -> tuple[str, str]:
    """(class, problem) of one route; problem is '' when the route is acceptable."""
    if isinstance(route, APIWebSocketRoute):
        if path in DELEGATED:
            return _delegated(path, route)
        if "authenticate_vehicle" in inspect.getsource(route.endpoint):  # the car's own signed channel
            if "{vin}" in path:
                return "vehicle-signed", f"{path}: a vehicle route names its VIN in a signed header, not the path"
            return "vehicle-signed", ""
        return "unknown", f"{path}: a WebSocket route the guard does not know (add it to DELEGATED with its door)"
    if isinstance(route, Mount):
        return "static", "" if path == "/static" else f"unexpected mount {path}"
    if not isinstance(route, APIRoute):
        if isinstance(route, Route) and path in FRAMEWORK:
            return "framework", ""
        return "unknown", f"{path}: not an API route, a portal page or a framework route"
    module = route.endpoint.__module__
    if module.startswith("carvault.web.views.console") or path.startswith("/console"):
        return _console_page(path, route)
    if module.startswith("carvault.web.views."):
        if path.startswith("/api/"):
            return "portal", f"{path}: a portal page under /api/"
        return "portal", ""
    calls = _calls(route)
    source = inspect.getsource(route.endpoint)
    methods = sorted(route.methods)
    if current_staff in calls or path.startswith(ADMIN_PREFIX):
        return _staff_route(path, route, calls, source)
    if current_owner in calls:
        return "owner-only", ""
    if current_caller in calls:
        if path in DELEGATED:
            return _delegated(path, route)
        if not any(door in source for door in GRANT_DOORS):
            return "grant-aware", f"{methods} {path} reads as current_caller without region.grants.access"
        around = [a for a in AROUND_THE_DOOR if a in source]
        if around:
            return "grant-aware", f"{methods} {path} also reaches vehicles around the grant: {around}"
        return "grant-aware", ""
    if VEHICLE_TAG in route.tags:
        if "{vin}" in path:
            return "vehicle-signed", f"{methods} {path}: a vehicle route names its VIN in a signed header, not the path"
        return "vehicle-signed", ""
    if "{vin}" in path:
        return "public", f"{methods} {path} takes a {{vin}} but asks for no owner or grant"
    unlisted = [m for m in methods if _public(m, path) is None]
    if unlisted:
        return "public", f"{unlisted} {path} is public but not in the allow-list (add it with a reason, or protect it)"
    return "public", ""


def _console_page(path: str, route: APIRoute) -> tuple[str, str]:
    """An operator-console page: under /console, and behind ``console_with(<permission>)`` unless it is one of the
    log-in pages (``CONSOLE_OPEN``), so an owner's session or an unguarded page never shows operator data."""
    methods = sorted(route.methods or ())
    if not (path.startswith("/console") and route.endpoint.__module__.startswith("carvault.web.views.console")):
        return "console", f"{methods} {path}: console pages live in views/console*.py under /console"
    guarded = any(getattr(c, "console", False) for c in _calls(route))
    if not guarded and not all((m, path) in CONSOLE_OPEN for m in methods):
        return "console", f"{methods} {path}: a console page without console_with(<permission>)"
    return "console", ""


def staff_permission(route: APIRoute) -> Any:
    """The permission of a route's ``staff_with`` dependency (None if it has none)."""
    return next((c.permission for c in _calls(route) if hasattr(c, "permission")), None)


def _staff_route(path: str, route: APIRoute, calls: set[Callable[..., Any]], source: str) -> tuple[str, str]:
    methods = sorted(route.methods)
    if not path.startswith(ADMIN_PREFIX):
        return "staff", f"{methods} {path}: a staff route outside {ADMIN_PREFIX}"
    if all((m, path) in PUBLIC for m in methods):
        return "public", ""
    if current_staff not in calls:
        return "staff", f"{methods} {path}: an operator route without staff_with(...)"
    if staff_permission(route) is None and not all((m, path) in STAFF_SELF for m in methods):
        return "staff", f"{methods} {path}: uses current_staff without staff_with(<permission>)"
    reads = [r for r in STAFF_DATA_READS if r in source]
    if ("{vin}" in path or reads) and CASE_DOOR not in source:
        return "staff", f"{methods} {path}: a staff route reaches a vehicle's data without region.cases.access"
    if any(d in source for d in GRANT_DOORS):
        return "staff", f"{methods} {path}: a staff route reaches vehicles through an owner's grants door"
    return "staff", ""


def _app(region: Region) -> FastAPI:
    return create_app(region)


def test_every_route_is_classified(region: Region) -> None:
    app = _app(region)
    seen: dict[str, list[str]] = {}
    problems = []
    for path, route in _routes(app.routes):
        kind, problem = classify(path, route)
        seen.setdefault(kind, []).append(path)
        if problem:
            problems.append(problem)
    assert not problems, "\n".join(problems)
    # The classes are all populated: the walk really saw the app (a guard that sees nothing proves nothing).
    assert {"public", "vehicle-signed", "owner-only", "grant-aware", "portal", "console"} <= set(seen)
    assert "/console/rights/{request_id}" in seen["console"]
    assert "/api/v1/vehicles/{vin}/telemetry" in seen["grant-aware"]
    assert "/api/v1/vehicles/{vin}/packages" in seen["owner-only"]
    assert {"/api/v1/places", "/api/v1/places/{place_id}"} <= set(seen["owner-only"])  # the owner's places
    assert {"/places", "/map/config"} <= set(seen["portal"])
    assert "/api/v1/ingest/batches" in seen["vehicle-signed"]
    assert "/api/v1/admin/cases/{case_id}/vehicles/{vin}/telemetry" in seen["staff"]
    # Every API route the app keeps in state was walked.
    assert {r.path for r in app.state.api_routes} <= {p for paths in seen.values() for p in paths}


def test_the_allow_list_names_only_routes_that_exist(region: Region) -> None:
    served = {(m, p) for p, r in _routes(_app(region).routes) if isinstance(r, APIRoute) for m in r.methods}
    assert set(PUBLIC) <= served, set(PUBLIC) - served
    assert all(why.strip() for why in [*PUBLIC.values(), *PUBLIC_PREFIXES.values()])


def _fake_route(path: str, endpoint: Callable[..., Any], **kw: Any) -> APIRoute:
    return APIRoute(path, endpoint, methods=["GET"], **kw)


def test_the_guard_catches_leaky_routes(region: Region) -> None:
    """The classifier refuses the mistakes it exists for (so the guard can fail)."""

    def leaky(vin: str, caller: Caller, region: RegionDep) -> Any:
        return region.telemetry.window(vin, 0, 1, [])

    def around(vin: str, caller: Caller, region: RegionDep) -> Any:
        region.grants.access(caller, vin)
        return region.vehicles.owned_one(caller.owner_id, vin)

    def public_vin(vin: str, region: RegionDep) -> Any:
        return region.vehicles.get(vin)

    def unlisted(region: RegionDep) -> Any:
        return region.name

    def fine(vin: str, caller: Caller, region: RegionDep) -> Any:
        return region.grants.access(caller, vin).vin

    def owner(vin: str, owner: CurrentOwner) -> Any:
        return vin

    def console_unguarded(region: RegionDep) -> Any:
        return region.deletions.queue()

    console_unguarded.__module__ = "carvault.web.views.console_fake"

    def staff_no_role(staff: CurrentStaff) -> Any:
        return staff.username

    def staff_vin(vin: str, staff: Annotated[Any, Depends(staff_with(Permission.CASE_READ))], region: RegionDep) -> Any:
        return region.telemetry.window(vin, 0, 1, [])

    def staff_read(staff: Annotated[Any, Depends(staff_with(Permission.CASE_READ))], region: RegionDep) -> Any:
        return region.telemetry.window("LRWTEST0000000001", 0, 1, [])

    def staff_case(
        vin: str, staff: Annotated[Any, Depends(staff_with(Permission.CASE_READ))], region: RegionDep
    ) -> Any:
        return region.cases.access(staff, 1, vin).vin

    def admin_unguarded(region: RegionDep) -> Any:
        return region.name

    cases = [
        ("/api/v1/vehicles/{vin}/leak", leaky, "without region.grants.access"),
        ("/api/v1/vehicles/{vin}/around", around, "around the grant"),
        ("/api/v1/cars/{vin}", public_vin, "takes a {vin}"),
        ("/api/v1/secret", unlisted, "not in the allow-list"),
        ("/console/secret", unlisted, "console pages live in views/console"),
        ("/console/queue", console_unguarded, "without console_with"),
        ("/api/v1/vehicles/{vin}/fine", fine, ""),
        ("/api/v1/vehicles/{vin}/mine", owner, ""),
        ("/api/v1/admin/whoami", staff_no_role, "without staff_with(<permission>)"),
        ("/api/v1/admin/peek/{vin}", staff_vin, "without region.cases.access"),
        ("/api/v1/admin/peek", staff_read, "without region.cases.access"),
        ("/api/v1/admin/cases/1/{vin}", staff_case, ""),
        ("/api/v1/admin/open", admin_unguarded, "without staff_with(...)"),
    ]
    for path, endpoint, expected in cases:
        _, problem = classify(path, _fake_route(path, endpoint))
        assert (expected in problem) if expected else problem == "", (path, problem)
    _, problem = classify(
        "/api/v1/vehicle/{vin}/x", _fake_route("/api/v1/vehicle/{vin}/x", unlisted, tags=[VEHICLE_TAG])
    )
    assert "signed header" in problem
