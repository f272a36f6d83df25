"""The scope-enforcement table (issue 9): every owner-data route × every kind of caller, against a real server.

A grant token is served exactly its signals × window × precision, for exactly its car; anything else is refused
with a stable code. Grants and tokens are made through the services (``Grants.create``, ``Accounts.issue``) so the
table does not depend on the OAuth endpoints.

What a consent stop means for a grant (documented here and in docs/sharing.md): stopping a category stops the car
collecting it; data already stored stays readable under a grant that covers it, exactly as it does for the owner.
Deletion (with or without a legal hold) is what removes stored data from every reader.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h3
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import update

from carvault.access.gpx import ROUTE_SIGNALS
from carvault.access.trips import TIMELINE_SIGNALS
from carvault.location import DEFAULT_RESOLUTION, LAT, LON
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import Grant, VehicleEvent
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.app import create_app
from carvault.web.deps import current_caller, current_owner
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in, vin_for
from tests.web.test_route_access import DELEGATED

pytestmark = pytest.mark.slow

LO, HI = BASE_MS + 60_000, BASE_MS + 240_000  # the grants' history window [LO, HI); data covers BASE_MS + [0, 300 s)
GRANTED = sorted({*TIMELINE_SIGNALS, *ROUTE_SIGNALS, "Vehicle.EDR"})
SHA = "0" * 64


@dataclass(repr=False)
class World:
    """Owner A with cars 1 (with data) and 2, owner B with car 3, an app, and a token per kind of caller."""

    region: Region
    http: httpx.Client
    a: OwnerClient
    b: OwnerClient
    client_id: str
    tokens: dict[str, str]
    grants: dict[str, Grant]
    table: pa.Table

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "owner":
            return self.a.headers
        return {"Authorization": f"Bearer {self.tokens[caller]}"}


def _claim(http: httpx.Client, o: OwnerClient, v: VehicleIdentity) -> None:
    r = http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text


@pytest.fixture
def world(region: Region, http: httpx.Client, agent: VehicleAgent, vehicle: VehicleIdentity, tmp_path: Any) -> World:
    opt_in(region, vehicle.vin)
    table = drive_table(seconds=300)
    agent.record(table, batch_seconds=60)
    assert len(agent.upload_pending()) == 5
    a, b = make_owner(http), make_owner(http)
    _claim(http, a, vehicle)
    _claim(http, a, provision(region, vin_for(2), tmp_path / "vehicles"))
    _claim(http, b, provision(region, vin_for(3), tmp_path / "vehicles"))
    with region.db.session() as s:  # events at 30 s (before the window), 90 s (inside) and 250 s (after)
        for t in (30_000, 90_000, 250_000):
            s.add(VehicleEvent(vin=vehicle.vin, kind="hard_braking", t_ms=BASE_MS + t, batch_seq=1, legal_basis="x"))
    app, _ = region.apps.register(
        name="Good Insurer",
        legal_entity="Good Insurer Ltd",
        jurisdiction="cn",
        contact="dev@example.com",
        purposes=["insurance"],
    )
    region.apps.decide(app.client_id, "approved", "operator")

    def app_grant(vins: list[str], signals: list[str] = GRANTED) -> Grant:
        return region.grants.create(
            a.owner_id,
            kind="app",
            client_id=app.client_id,
            vins=vins,
            signals=signals,
            purpose="insurance",
            from_ms=LO,
            to_ms=HI,
        )

    def token(g: Grant) -> str:
        return region.accounts.issue(a.owner_id, "access", grant_id=g.id, client_id=app.client_id)[0]

    grants = {
        "app": app_grant([vehicle.vin]),
        "narrow": app_grant([vehicle.vin], ["Vehicle.Speed"]),
        "car2": app_grant([vin_for(2)]),
        "expired": app_grant([vehicle.vin]),
        "revoked": app_grant([vehicle.vin]),
    }
    tokens = {name: token(g) for name, g in grants.items()}
    pat, grants["pat"] = region.grants.personal_token(
        a.owner_id,
        label="my script",
        vins=[vehicle.vin],
        signals=GRANTED,
        from_ms=LO,
        to_ms=HI,
        precise_location=True,
    )
    tokens["pat"] = pat
    with region.db.session() as s:
        s.execute(update(Grant).where(Grant.id == grants["expired"].id).values(expires_ms=1))
    region.grants.revoke(a.owner_id, grants["revoked"].id)
    # A second app, suspended by the operator after its grant was made.
    other, _ = region.apps.register(
        name="Later Suspended",
        legal_entity="LS Ltd",
        jurisdiction="cn",
        contact="ls@example.com",
        purposes=["insurance"],
    )
    region.apps.decide(other.client_id, "approved", "operator")
    grants["suspended"] = region.grants.create(
        a.owner_id,
        kind="app",
        client_id=other.client_id,
        vins=[vehicle.vin],
        signals=GRANTED,
        purpose="insurance",
        from_ms=LO,
        to_ms=HI,
    )
    tokens["suspended"] = region.accounts.issue(
        a.owner_id, "access", grant_id=grants["suspended"].id, client_id=other.client_id
    )[0]
    region.apps.decide(other.client_id, "suspended", "operator")
    return World(region, http, a, b, app.client_id, tokens, grants, table)


# ------------------------------------------------------------------------------------------------ the table
V1, V2, V3 = vin_for(1), vin_for(2), vin_for(3)
# variant → (vin asked for, query parameters); {vin} is filled in per route.
Req = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class RouteCase:
    """How to call one grant-aware route: its path template and the request for each variant."""

    path: str
    inside: dict[str, Any]  # an in-scope request's parameters
    outside_window: dict[str, Any] | None  # a request naming a window outside the grant (None: no window to name)
    outside_signal: dict[str, Any] | None  # parameters asking for a signal the grant lacks (None: use 'narrow')
    path_extra: dict[str, Any] | None = None  # extra path parameters (and their out-of-window value)


WIN_IN = {"start": LO, "end": LO + 60_000}
WIN_OUT = {"start": LO - 1, "end": LO + 60_000}
ROUTES: dict[str, RouteCase] = {
    "/api/v1/vehicles": RouteCase("/api/v1/vehicles", {}, None, None),
    "/api/v1/vehicles/{vin}": RouteCase("/api/v1/vehicles/{vin}", {}, None, None),
    "/api/v1/vehicles/{vin}/telemetry": RouteCase(
        "/api/v1/vehicles/{vin}/telemetry", WIN_IN, WIN_OUT, {**WIN_IN, "signals": "Vehicle.Powertrain"}
    ),
    "/api/v1/vehicles/{vin}/batches": RouteCase(
        "/api/v1/vehicles/{vin}/batches", {}, {"start": LO, "end": HI + 1}, None
    ),
    "/api/v1/log/batches/{vin}/{seq}": RouteCase(
        "/api/v1/log/batches/{vin}/{seq}", {}, None, None, path_extra={"seq": (2, 1)}
    ),
    "/api/v1/vehicles/{vin}/events": RouteCase("/api/v1/vehicles/{vin}/events", {}, None, None),
    # issue 14: a grant without the diagnostic signals gets an empty report (covered: false), not a refusal
    "/api/v1/vehicles/{vin}/diagnostics": RouteCase("/api/v1/vehicles/{vin}/diagnostics", {}, None, None),
    "/api/v1/vehicles/{vin}/timeline": RouteCase(
        "/api/v1/vehicles/{vin}/timeline", {}, {"start": LO, "end": HI + 1}, None
    ),
    "/api/v1/vehicles/{vin}/route": RouteCase(
        "/api/v1/vehicles/{vin}/route", {**WIN_IN, "format": "geojson"}, {**WIN_OUT, "format": "geojson"}, None
    ),
    "/api/v1/vehicles/{vin}/frames/{sha256}": RouteCase(
        "/api/v1/vehicles/{vin}/frames/{sha256}", {}, None, None, path_extra={"sha256": (SHA, SHA)}
    ),
    # issue 13: charging (the test data hold no session: one asked for by its start is not found, inside the grant)
    "/api/v1/vehicles/{vin}/charging": RouteCase(
        "/api/v1/vehicles/{vin}/charging", {}, {"start": LO, "end": HI + 1}, None
    ),
    "/api/v1/vehicles/{vin}/charging/{start_ms}": RouteCase(
        "/api/v1/vehicles/{vin}/charging/{start_ms}", {}, None, None, path_extra={"start_ms": (LO + 1000, LO - 1)}
    ),
    "/api/v1/vehicles/{vin}/battery-health": RouteCase("/api/v1/vehicles/{vin}/battery-health", {}, None, None),
    # issue 13: statistics (a default window is cut to the grant's; an asked one must lie inside it)
    **{
        f"/api/v1/vehicles/{{vin}}/{name}": RouteCase(
            f"/api/v1/vehicles/{{vin}}/{name}", {}, {"start": LO, "end": HI + 1}, None
        )
        for name in ("statistics", "states", "efficiency", "vampire-drain", "conditions")
    },
    # issue 13: completeness reports (no signal needed: the report shows the grant's signals only)
    **{
        f"/api/v1/vehicles/{{vin}}/{name}": RouteCase(
            f"/api/v1/vehicles/{{vin}}/{name}",
            {"start_ms": LO, "end_ms": LO + 60_000},
            {"start_ms": LO - 1, "end_ms": LO + 60_000},
            None,
        )
        for name in ("completeness", "completeness.json", "completeness.csv")
    },
    # whole days before `end`: a grant whose history window is shorter than a day never holds one
    "/api/v1/vehicles/{vin}/completeness/calendar": RouteCase(
        "/api/v1/vehicles/{vin}/completeness/calendar", {"end": HI, "days": 1}, None, None
    ),
}
# Routes whose data needs more than Vehicle.Speed: the 'narrow' grant is refused there.
NEEDS_MORE = {"/api/v1/vehicles/{vin}/events", "/api/v1/vehicles/{vin}/timeline", "/api/v1/vehicles/{vin}/route"}
FRAMES = "/api/v1/vehicles/{vin}/frames/{sha256}"
CHARGE_SESSION = "/api/v1/vehicles/{vin}/charging/{start_ms}"
NEEDS_MORE |= {"/api/v1/vehicles/{vin}/charging", CHARGE_SESSION, "/api/v1/vehicles/{vin}/battery-health"}
NEEDS_MORE |= {
    f"/api/v1/vehicles/{{vin}}/{name}" for name in ("statistics", "states", "efficiency", "vampire-drain", "conditions")
}
CALENDAR = "/api/v1/vehicles/{vin}/completeness/calendar"


def _url(case: RouteCase, vin: str, out_of_window: bool = False) -> str:
    extra = {k: v[1 if out_of_window else 0] for k, v in (case.path_extra or {}).items()}
    return case.path.format(vin=vin, **extra)


def _expected(path: str, caller: str, variant: str) -> tuple[int, str | None]:
    """The exact answer of one cell: status and error code (None for success)."""
    listing = path == "/api/v1/vehicles"
    asked = {"car2": V2, "car3": V3}.get(variant, V1)
    if caller in ("expired", "revoked"):
        return 401, "unauthenticated"
    if caller == "suspended":
        return 403, "app_not_approved"
    if caller == "owner":
        if asked == V3:
            return 404, "not_found"
        if path in (FRAMES, CHARGE_SESSION):
            return 404, "not_found"  # the owner passes; no frame of that hash (no charging session then) exists
        if asked == V2 and path.startswith("/api/v1/log/"):
            return 404, "not_found"  # car 2 has uploaded nothing
        return 200, None
    # A grant holder: the app's token, the narrow one, the one for car 2 only, the personal token.
    if not listing and asked != (V2 if caller == "car2" else V1):
        return 403, "out_of_scope"
    if path == FRAMES:
        return 403, "not_shareable"
    if caller == "narrow" and path in NEEDS_MORE:
        return 403, "out_of_scope"
    if path == CALENDAR:
        return 403, "out_of_scope"  # a day does not fit in the grants' four-minute history window
    if path == CHARGE_SESSION and variant != "window":
        return 404, "not_found"
    if variant == "signal" or (variant == "window" and not listing):
        return 403, "out_of_scope"
    return 200, None


CALLERS = ("owner", "app", "narrow", "car2", "pat", "expired", "revoked", "suspended")


def _cells() -> list[tuple[str, str, str]]:
    out = []
    for path, case in ROUTES.items():
        variants = ["in"]
        if "{vin}" in path:
            variants += ["car2", "car3"]
        if case.outside_window is not None or case.path_extra and ("seq" in case.path_extra or path == CHARGE_SESSION):
            variants.append("window")
        if case.outside_signal is not None:
            variants.append("signal")
        # The car-2 token asks for car 1 only (asking for car 2 is the app token's 'in' cell on another car).
        out += [
            (path, caller, variant) for caller in CALLERS for variant in variants if caller != "car2" or variant == "in"
        ]
    return out


def _request(w: World, path: str, caller: str, variant: str) -> httpx.Response:
    case = ROUTES[path]
    vin = {"car2": V2, "car3": V3}.get(variant, V1)
    params = case.inside
    if variant == "window":
        params = case.outside_window or {}
    elif variant == "signal":
        params = case.outside_signal or case.inside
    return w.http.get(_url(case, vin, variant == "window"), headers=w.headers(caller), params=params)


def test_every_grant_aware_route_is_in_the_table(region: Region) -> None:
    """A new route reading owner data through a grant must be added to this table (and get its cells)."""
    aware = set()
    for route in create_app(region).state.api_routes:
        calls = _calls(route)
        # Routes that hand the caller to a service applying its own grant are tested with that service.
        if current_caller in calls and current_owner not in calls and route.path not in DELEGATED:
            aware.add(route.path)
    assert aware == set(ROUTES) | EXPORT_ROUTES


def test_scope_table(world: World) -> None:
    wrong = []
    for path, caller, variant in _cells():
        r = _request(world, path, caller, variant)
        status, code = _expected(path, caller, variant)
        got_code = (
            r.json().get("error", {}).get("code")
            if r.headers["content-type"].startswith("application/json") and r.status_code >= 400
            else None
        )
        if r.status_code != status or got_code != code:
            wrong.append(f"{caller:9} {variant:6} {path}: {r.status_code} {got_code}, expected {status} {code}")
    assert not wrong, "\n".join(wrong)


def test_owner_only_routes_refuse_every_grant_token(world: World) -> None:
    """Packages, consents, log key, exports, audit, deletion, account: 403 owner_only for any grant token."""
    swept = 0
    for route in create_app(world.region).state.api_routes:
        if current_owner not in _calls(route):
            continue
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: V1 if m[1] == "vin" else "1", route.path)
        for method in route.methods:
            for caller in ("app", "narrow", "pat", "suspended", "expired"):
                r = world.http.request(method, url, headers=world.headers(caller))
                assert (r.status_code, r.json()["error"]["code"]) == (403, "owner_only"), (method, url, caller)
            r = world.http.request(method, url, headers=world.headers("revoked"))
            assert r.status_code == 401, (method, url)
            swept += 1
    assert swept >= 20


def _calls(route: APIRoute) -> set[Callable[..., Any]]:
    calls: set[Callable[..., Any]] = set()
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            calls.add(dep.call)
        stack.extend(dep.dependencies)
    return calls


# ------------------------------------------------------------------------------------------------ answers in scope
def _is_cell_centre(lat: float, lon: float) -> bool:
    c_lat, c_lon = h3.cell_to_latlng(h3.latlng_to_cell(lat, lon, DEFAULT_RESOLUTION))
    return abs(c_lat - lat) < 1e-6 and abs(c_lon - lon) < 1e-6


def test_in_scope_answers_hold_exactly_the_grant(world: World) -> None:
    w, base = world, f"/api/v1/vehicles/{V1}/telemetry"
    allowed = {s.path for s in w.region.catalogue.select(GRANTED)}
    owner = w.http.get(base, headers=w.headers("owner"), params={"start": LO, "end": HI}).json()
    app = w.http.get(base, headers=w.headers("app"), params={"start": LO, "end": HI}).json()
    # Exactly the granted signals (of those the car sent), the whole window, nothing before or after it.
    assert set(app["signals"]) == allowed & set(owner["signals"]) and "Vehicle.Powertrain.Range" not in app["signals"]
    assert {"Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "Vehicle.Speed", LAT} <= set(app["signals"])
    assert app["t"] == owner["t"] and app["t"][0] == LO and app["t"][-1] == HI - 100
    assert app["signals"]["Vehicle.Speed"] == owner["signals"]["Vehicle.Speed"]
    # Coarse location: every position is an H3 cell centre; the owner sees the precise ones.
    pairs = [(a, b) for a, b in zip(app["signals"][LAT], app["signals"][LON], strict=True) if a is not None]
    assert pairs and all(_is_cell_centre(a, b) for a, b in pairs)
    precise = [(a, b) for a, b in zip(owner["signals"][LAT], owner["signals"][LON], strict=True) if a is not None]
    assert not all(_is_cell_centre(a, b) for a, b in precise)
    assert all(v is None for v in app["signals"].get("Vehicle.CurrentLocation.Altitude", [None]))
    # Resampled means are coarsened after averaging, so they are cell centres too.
    res = w.http.get(base, headers=w.headers("app"), params={"start": LO, "end": HI, "resample": "10s"}).json()
    assert res["rows"] == 18 and all(
        _is_cell_centre(a, b) for a, b in zip(res["signals"][LAT], res["signals"][LON], strict=True) if a is not None
    )
    # Every format carries the same coarse positions.
    pq_body = w.http.get(base, headers=w.headers("app"), params={"start": LO, "end": HI, "format": "parquet"}).content
    got = pq.read_table(io.BytesIO(pq_body))
    assert set(got.column_names) - {"t"} == set(app["signals"])
    assert got.column(LAT).to_pylist() == app["signals"][LAT] and got.column(LON).to_pylist() == app["signals"][LON]
    # The personal token holds precise location: it sees what the owner sees.
    pat = w.http.get(base, headers=w.headers("pat"), params={"start": LO, "end": HI, "signals": f"{LAT},{LON}"})
    assert pat.json()["signals"][LAT] == owner["signals"][LAT]
    # Odd but valid selectors: duplicates and blanks are harmless; VIN case is not significant.
    odd = w.http.get(
        f"/api/v1/vehicles/{V1.lower()}/telemetry",
        headers=w.headers("app"),
        params={"start": LO, "end": LO + 1000, "signals": "Vehicle.Speed,,Vehicle.Speed, "},
    )
    assert odd.status_code == 200 and set(odd.json()["signals"]) == {"Vehicle.Speed"}
    partly = w.http.get(base, headers=w.headers("narrow"), params={"start": LO, "end": LO + 1000, "signals": "Vehicle"})
    assert partly.status_code == 403 and "Vehicle.Speed" not in partly.json()["error"]["outside"]


def test_default_windows_are_cut_to_the_grant(world: World) -> None:
    w = world
    seqs = {
        who: [b["seq"] for b in w.http.get(f"/api/v1/vehicles/{V1}/batches", headers=w.headers(who)).json()["batches"]]
        for who in ("owner", "app")
    }
    assert seqs == {"owner": [1, 2, 3, 4, 5], "app": [2, 3, 4]}
    events = {
        who: [e["t_ms"] for e in w.http.get(f"/api/v1/vehicles/{V1}/events", headers=w.headers(who)).json()]
        for who in ("owner", "app")
    }
    assert events == {"owner": [BASE_MS + 250_000, BASE_MS + 90_000, BASE_MS + 30_000], "app": [BASE_MS + 90_000]}
    tl = w.http.get(f"/api/v1/vehicles/{V1}/timeline", headers=w.headers("app")).json()
    assert LO <= tl["start_ms"] < tl["end_ms"] <= HI and tl["data_start_ms"] >= LO and tl["data_end_ms"] <= HI
    # A grant whose window starts after the data: the default timeline is empty, not an error.
    later = w.region.grants.personal_token(
        w.a.owner_id, label="later", vins=[V1], signals=GRANTED, from_ms=BASE_MS + 3_600_000
    )[0]
    empty = w.http.get(f"/api/v1/vehicles/{V1}/timeline", headers={"Authorization": f"Bearer {later}"})
    assert empty.status_code == 200, empty.text
    assert empty.json()["drives"] == [] and empty.json()["start_ms"] == empty.json()["end_ms"]
    geo = w.http.get(f"/api/v1/vehicles/{V1}/route", headers=w.headers("app"), params={**WIN_IN, "format": "geojson"})
    coords = geo.json()["geometry"]["coordinates"]
    assert coords and all(_is_cell_centre(lat, lon) for lon, lat in coords)


def test_every_third_party_read_is_audited_and_counted(world: World) -> None:
    w = world
    for caller in ("app", "pat"):
        r = w.http.get(f"/api/v1/vehicles/{V1}/telemetry", headers=w.headers(caller), params=WIN_IN)
        assert r.status_code == 200
        assert [v["vin"] for v in w.http.get("/api/v1/vehicles", headers=w.headers(caller)).json()] == [V1]
        w.http.get(f"/api/v1/vehicles/{V1}", headers=w.headers(caller))
        w.http.get(f"/api/v1/log/batches/{V1}/2", headers=w.headers(caller))
    events = w.http.get("/api/v1/audit", headers=w.a.headers, params={"limit": 1000}).json()["events"]
    pat_actor = f"token:{w.region.accounts.resolve(w.tokens['pat']).credential_id}"
    for actor, grant in ((f"app:{w.client_id}", w.grants["app"]), (pat_actor, w.grants["pat"])):
        mine = [e for e in events if e["actor"] == actor]
        assert {"telemetry.read", "vehicle.read", "batches.read"} <= {e["action"] for e in mine}, actor
        for e in mine:
            assert e["vin"] == V1 and e["detail"]["grant_id"] == grant.id
            assert e["detail"]["purpose"] == grant.purpose and f"grant {grant.id}" in e["legal_basis"]
    assert any("Good Insurer" in e["legal_basis"] for e in events if e["actor"] == f"app:{w.client_id}")
    assert w.region.audit.verify_chain(w.a.owner_id) == len(w.region.audit.list(w.a.owner_id, limit=1000))
    g = w.region.grants.get(w.a.owner_id, w.grants["app"].id)
    assert g.reads == 4 and g.rows_served == 600 and g.last_access_ms is not None
    listed = [e for e in events if e["actor"] == f"app:{w.client_id}" and e["detail"].get("list")]
    assert len(listed) == 1 and listed[0]["action"] == "vehicle.read" and listed[0]["vin"] == V1
    # Refused reads are not counted as served.
    w.http.get(f"/api/v1/vehicles/{V1}/telemetry", headers=w.headers("app"), params=WIN_OUT)
    assert w.region.grants.get(w.a.owner_id, w.grants["app"].id).reads == 4


def test_holds_deletion_and_consent_stops_reach_grant_holders(world: World) -> None:
    w, url = world, f"/api/v1/vehicles/{V1}/telemetry"
    # A consent stop: stored location stays readable under the grant, as it does for the owner.
    r = w.http.delete(f"/api/v1/vehicles/{V1}/consents/location", headers=w.a.headers)
    assert r.status_code == 200, r.text
    after = w.http.get(url, headers=w.headers("app"), params={**WIN_IN, "signals": LAT})
    assert after.status_code == 200 and any(v is not None for v in after.json()["signals"][LAT])
    # Deletion asked while a legal hold stands: the data is frozen for the owner and for every grant holder.
    w.region.deletions.place_hold(V1, "court", "a pending dispute")
    r = w.http.post("/api/v1/deletion-requests", headers=w.a.headers, json={"vin": V1, "immediately": True})
    assert r.status_code == 201 and r.json()["status"] == "held"
    for caller in ("owner", "app", "pat"):
        for path, params in (
            (url, WIN_IN),
            (f"/api/v1/vehicles/{V1}/timeline", {}),
            (f"/api/v1/vehicles/{V1}/route", WIN_IN),
            (f"/api/v1/vehicles/{V1}/events", {}),
            # issue 13: charging, statistics, completeness (its batch index too: when the car drove is data)
            *((f"/api/v1/vehicles/{V1}/{p}", {}) for p in ("charging", "battery-health", "statistics", "states")),
            *((f"/api/v1/vehicles/{V1}/{p}", {}) for p in ("efficiency", "vampire-drain", "conditions")),
            *(
                (f"/api/v1/vehicles/{V1}/{p}", {"start_ms": LO, "end_ms": LO + 60_000})
                for p in ("completeness", "completeness.json", "completeness.csv")
            ),
            (f"/api/v1/vehicles/{V1}/completeness/calendar", {"end": HI, "days": 1}),
        ):
            if caller != "owner" and path.endswith("/calendar"):
                continue  # a day does not fit in the grants' history window (out_of_scope first)
            r = w.http.get(path, headers=w.headers(caller), params=params)
            assert (r.status_code, r.json()["error"]["code"]) == (403, "data_frozen"), (caller, path)


def test_a_sold_car_leaves_the_old_owners_grants(world: World) -> None:
    w = world
    from carvault.store.metadata import Vehicle

    with w.region.db.session() as s:
        s.execute(update(Vehicle).where(Vehicle.vin == V1).values(owner_id=w.b.owner_id))
    for caller in ("app", "pat"):
        r = w.http.get(f"/api/v1/vehicles/{V1}/telemetry", headers=w.headers(caller), params=WIN_IN)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "out_of_scope")
        assert w.http.get("/api/v1/vehicles", headers=w.headers(caller)).json() == []
    assert json.loads(w.grants["app"].vins) == [V1]  # the grant still names it; it just covers nothing now


# ------------------------------------------------------------------------------------------------ exports
EXPORT_ROUTES = {"/api/v1/exports", "/api/v1/exports/{export_id}", "/api/v1/exports/{export_id}/download"}


def _finished(w: World, caller: str, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = w.http.get(f"/api/v1/exports/{job_id}", headers=w.headers(caller)).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"export {job_id} did not finish")


def test_grant_holders_export_within_their_grant(world: World) -> None:
    w = world

    def start(caller: str, **body: Any) -> httpx.Response:
        return w.http.post("/api/v1/exports", headers=w.headers(caller), json={"vin": V1, **body})

    # Refused at once: outside the window, outside the signals, another car, a GPX without location.
    for caller, body, code in (
        ("app", {"start": LO - 1, "end": HI, "format": "csv"}, "out_of_scope"),
        ("app", {"start": LO, "end": HI + 1, "format": "csv"}, "out_of_scope"),
        ("app", {"format": "csv", "signals": "Vehicle.Powertrain"}, "out_of_scope"),
        ("narrow", {"format": "gpx"}, "out_of_scope"),
        ("car2", {"format": "csv"}, "out_of_scope"),
        ("suspended", {"format": "csv"}, "app_not_approved"),
        ("expired", {"format": "csv"}, "unauthenticated"),
    ):
        r = start(caller, **body)
        assert r.json()["error"]["code"] == code, (caller, body, r.text)
    # The whole history, for a grant, is the grant's window; its file holds the granted signals, coarse location.
    r = start("app", format="json")
    assert r.status_code == 202, r.text
    job = _finished(w, "app", r.json()["id"])
    assert job["status"] == "done" and (job["start_ms"], job["end_ms"]) == (LO, HI) and job["grant_id"]
    body = w.http.get(job["download"], headers=w.headers("app")).json()
    allowed = {s.path for s in w.region.catalogue.select(GRANTED)}
    assert set(body["signals"]) <= allowed and "Vehicle.Speed" in body["signals"] and body["rows"] == 1800
    assert body["t"][0] == LO and body["t"][-1] == HI - 100
    pairs = [(a, b) for a, b in zip(body["signals"][LAT], body["signals"][LON], strict=True) if a is not None]
    assert pairs and all(_is_cell_centre(a, b) for a, b in pairs)
    # Resampled exports are coarsened after averaging.
    res = _finished(w, "app", start("app", format="json", resample="10s", signals=f"{LAT},{LON}").json()["id"])
    got = w.http.get(res["download"], headers=w.headers("app")).json()
    assert got["rows"] == 18 and all(
        _is_cell_centre(a, b) for a, b in zip(got["signals"][LAT], got["signals"][LON], strict=True) if a is not None
    )
    # The personal token holds precise location: its GPX is the owner's.
    gpx = _finished(w, "pat", start("pat", format="gpx", start=LO, end=LO + 60_000).json()["id"])
    own = _finished(w, "owner", start("owner", format="gpx", start=LO, end=LO + 60_000).json()["id"])
    assert (
        w.http.get(gpx["download"], headers=w.headers("pat")).content.split(b"<trkseg>")[1]
        == (w.http.get(own["download"], headers=w.a.headers).content.split(b"<trkseg>")[1])
    )
    # Each holder sees only the jobs made under its grant; the owner sees all of them.
    mine = {j["id"] for j in w.http.get("/api/v1/exports", headers=w.headers("app")).json()}
    assert mine == {job["id"], res["id"]}
    assert {job["id"], res["id"], gpx["id"], own["id"]} <= {
        j["id"] for j in w.http.get("/api/v1/exports", headers=w.a.headers).json()
    }
    assert w.http.get("/api/v1/exports", headers=w.headers("narrow")).json() == []
    for path in (f"/api/v1/exports/{job['id']}", job["download"]):
        r = w.http.get(path, headers=w.headers("pat"))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    # Every step is in the owner's log under the app's name, and the download counts as served rows.
    events = w.region.audit.list(w.a.owner_id, actor=f"app:{w.client_id}", limit=1000)
    assert {"export.create", "export.download"} <= {e.action for e in events}
    assert not [e for e in w.region.audit.list(w.a.owner_id, action="telemetry.export") if "app" in e.actor]
    assert w.region.grants.get(w.a.owner_id, w.grants["app"].id).rows_served == 1800 + 18
    # Revocation reaches the job at once: status and download answer 401; the owner still has it.
    w.region.grants.revoke(w.a.owner_id, w.grants["app"].id)
    for path in (f"/api/v1/exports/{job['id']}", job["download"]):
        assert w.http.get(path, headers=w.headers("app")).status_code == 401
    assert w.http.get(f"/api/v1/exports/{job['id']}", headers=w.a.headers).status_code == 200


def test_an_export_queued_under_a_grant_fails_once_the_grant_ends(world: World) -> None:
    from carvault.access.jobs import ExportJobs

    w = world
    jobs = ExportJobs(w.region, background=False)
    g = w.grants["pat"]
    view = w.region.grants.access(w.region.accounts.resolve(w.tokens["pat"]), V1).view
    job = jobs.create(w.a.owner_id, V1, start_ms=LO, end_ms=HI, fmt="csv", view=view, grant_id=g.id)
    w.region.grants.revoke(w.a.owner_id, g.id)
    assert jobs.run(job.id)
    failed = jobs.get(w.a.owner_id, job.id)
    assert failed.status == "failed" and "revoked" in (failed.error or "") and failed.file_name is None
