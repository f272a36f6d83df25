"""Hostile requests to the two fast paths of issue 12 and 10: the telemetry window route (answers encoded while the
access-log record is written) and batch uploads served ahead of the router (``BatchFastPath``). Every one is
answered with a stable error code or a sound answer, never a 500, and the checks behind them still run: a grant
holder's read is recorded and counted, a revoked token is refused on the very next request."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from carvault.protocol import BATCH_MEDIA_TYPE
from carvault.region import Region
from carvault.store.metadata import AuditEvent, Grant
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.app import SecurityHeaders, create_app
from carvault.web.routes.ingest import BATCHES_PATH, BatchFastPath
from carvault.web.views.base import PortalPages
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, opt_in


def _claim(http: httpx.Client, o: OwnerClient, v: VehicleIdentity) -> None:
    r = http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text


@pytest.fixture
def car(region: Region, http: httpx.Client, owner: OwnerClient, agent: VehicleAgent, vehicle: VehicleIdentity) -> str:
    opt_in(region, vehicle.vin)
    agent.record(drive_table(seconds=120), batch_seconds=60)
    assert len(agent.upload_pending()) == 2
    _claim(http, owner, vehicle)
    return vehicle.vin


HOSTILE = [
    {"start": "", "end": ""},
    {"start": "-1", "end": "0"},
    {"start": "-99999999999999999999", "end": "0"},
    {"start": "0", "end": "9" * 40},
    {"start": "１２３", "end": "１２４"},  # full-width digits
    {"start": "٣", "end": "٤"},  # Arabic-Indic digits
    {"start": "2025-13-45T99:00:00Z", "end": "2025-11-14T00:00:00Z"},
    {"start": "2025-11-13T00:00:00+99:00", "end": "2025-11-14T00:00:00Z"},
    {"start": "NaN", "end": "inf"},
    {"start": "1e3", "end": "1e4"},
    {"start": "\x00", "end": "\x00"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "Vehicle.Speed,,"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": ","},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "Vehicle.Spe"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "Vehicle."},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "Vehicle.Speed\x00"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "车辆.速度"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "signals": "Vehicle.Speed," * 4000},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "resample": "0s"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "resample": "-1s"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "resample": "9" * 30 + "s"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "resample": "1e309s"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "resample": "１s"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "format": "PARQUET"},
    {"start": str(BASE_MS), "end": str(BASE_MS + 60_000), "format": ""},
]


@pytest.mark.parametrize("params", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_window_queries_get_codes_never_500(
    http: httpx.Client, owner: OwnerClient, car: str, params: dict[str, str]
) -> None:
    r = http.get(f"/api/v1/vehicles/{car}/telemetry", headers=owner.headers, params=params)
    assert r.status_code < 500, (params, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["code"], r.text


def test_repeated_window_parameters_are_answered(http: httpx.Client, owner: OwnerClient, car: str) -> None:
    query = f"start={BASE_MS}&start=x&end={BASE_MS + 60_000}&end={BASE_MS + 1}&format=csv&format=json"
    r = http.get(f"/api/v1/vehicles/{car}/telemetry?{query}", headers=owner.headers)
    assert r.status_code < 500 and (r.status_code == 200 or r.json()["error"]["code"]), r.text[:300]


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"CVB1" + bytes(n - 4) if sent == 0 else bytes(n)
        sent += n


def test_chunked_and_odd_batch_bodies_on_the_fast_path(region: Region, http: httpx.Client) -> None:
    limit = region.settings.max_batch_bytes
    headers = {"Content-Type": BATCH_MEDIA_TYPE}
    big = http.post(BATCHES_PATH, content=_chunks(limit + 1), headers=headers)  # no Content-Length: chunked
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large", big.text
    small = http.post(BATCHES_PATH, content=_chunks(1000), headers=headers)
    assert small.status_code == 400 and small.json()["error"]["code"], small.text
    empty = http.post(BATCHES_PATH, content=b"", headers=headers)
    assert 400 <= empty.status_code < 500 and empty.json()["error"]["code"], empty.text
    declared = http.post(BATCHES_PATH, content=b"x", headers={**headers, "Content-Length": "1"})
    assert 400 <= declared.status_code < 500 and declared.json()["error"]["code"], declared.text
    for coding in (b"identity, gzip", b"br", b"GZIP", "ｇzip".encode()):  # non-ASCII bytes as a client may send
        r = http.post(BATCHES_PATH, content=b"CVB1", headers={**headers, "Content-Encoding": coding})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (coding, r.text)
    for media in (b"", b"application/vnd.carvault.batch.v1; charset=utf-8", b"text/plain", "é".encode()):
        r = http.post(BATCHES_PATH, content=b"CVB1" + bytes(100), headers={"Content-Type": media})
        assert 400 <= r.status_code < 500 and r.json()["error"]["code"], (media, r.text)
    assert http.get("/api/v1/health").status_code == 200  # still serving


def test_a_grant_holders_window_is_recorded_counted_and_stops_at_revocation(
    region: Region, http: httpx.Client, owner: OwnerClient, car: str
) -> None:
    token, grant = region.grants.personal_token(
        owner.owner_id, label="script", vins=[car], signals=["Vehicle.Speed"], from_ms=BASE_MS, to_ms=BASE_MS + 120_000
    )
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/vehicles/{car}/telemetry"
    params = {"start": BASE_MS, "end": BASE_MS + 60_000, "format": "parquet"}
    for _ in range(3):
        assert http.get(url, headers=headers, params=params).status_code == 200
    outside = http.get(url, headers=headers, params={**params, "signals": "Vehicle.CurrentLocation"})
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "out_of_scope"
    late = http.get(url, headers=headers, params={**params, "end": BASE_MS + 200_000})
    assert late.status_code == 403 and late.json()["error"]["code"] == "out_of_scope"
    with region.db.session() as s:
        g = s.get(Grant, grant.id)
        assert g is not None and g.reads == 3 and g.rows_served > 0
        reads = s.scalars(select(AuditEvent).where(AuditEvent.vin == car, AuditEvent.action == "telemetry.read")).all()
    assert len(reads) == 3 and all(json.loads(e.detail)["grant_id"] == grant.id for e in reads)
    region.grants.revoke(owner.owner_id, grant.id)
    r = http.get(url, headers=headers, params=params)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_nothing_the_batch_fast_path_skips_holds_a_check(region: Region) -> None:
    """``BatchFastPath`` answers batch uploads ahead of the router: a dependency declared on the route (or its
    router, or the app) or a middleware added inside it would silently not run for them. Adding one must move the
    check into ``_upload`` or the fast path must go; this test says so."""
    app = create_app(region)
    route = next(r for r in app.state.api_routes if r.path == BATCHES_PATH and "POST" in r.methods)
    assert route.dependencies == [] and route.dependant.dependencies == []
    assert app.router.dependencies == []
    # Outermost first. Inside the fast path only PortalPages, which labels the owner's own reads for the access
    # log and checks nothing (web/views/base.py); any other middleware added there needs a look at the fast path.
    assert [m.cls for m in app.user_middleware] == [SecurityHeaders, BatchFastPath, PortalPages]
