"""Owners through the real HTTP API: pairing, telemetry windows (JSON/CSV/Parquet), audit, isolation."""

from __future__ import annotations

import csv
import io

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carvault.region import Region
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in


@pytest.fixture
def uploaded(region: Region, agent: VehicleAgent) -> pa.Table:
    opt_in(region, agent.identity.vin)  # the table carries location and biometrics: the gateway checks consent
    table = drive_table(seconds=300)
    agent.record(table, batch_seconds=60)
    assert len(agent.upload_pending()) == 5
    return table


def claim(http: httpx.Client, o: OwnerClient, v: VehicleIdentity) -> httpx.Response:
    return http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})


def test_pairing_needs_the_code(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> None:
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": "WRONG123"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.get("/api/v1/vehicles", headers=owner.headers).json() == []
    assert claim(http, owner, vehicle).status_code == 201
    assert [v["vin"] for v in http.get("/api/v1/vehicles", headers=owner.headers).json()] == [vehicle.vin]


def test_window_in_three_formats_matches_what_the_car_sent(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, uploaded: pa.Table
) -> None:
    claim(http, owner, vehicle)
    start, end = BASE_MS + 30_000, BASE_MS + 150_000
    sigs = "Vehicle.Speed,Vehicle.ADAS"
    base = f"/api/v1/vehicles/{vehicle.vin}/telemetry"
    params = {"start": start, "end": end, "signals": sigs}
    expected = uploaded.filter(
        pa.compute.and_(
            pa.compute.greater_equal(uploaded.column("t").cast(pa.int64()), start),
            pa.compute.less(uploaded.column("t").cast(pa.int64()), end),
        )
    )

    j = http.get(base, headers=owner.headers, params={**params, "format": "json"})
    assert j.status_code == 200, j.text
    body = j.json()
    assert body["rows"] == expected.num_rows == 1200
    assert body["t"][0] == start and body["t"][-1] == end - 100
    sent = {c for c in expected.column_names if c.startswith("Vehicle.ADAS.") and expected.column(c).null_count < 1200}
    assert set(body["signals"]) == {"Vehicle.Speed"} | sent
    assert {"Vehicle.ADAS.ABS.IsEngaged", "Vehicle.ADAS.CruiseControl.IsActive"} <= sent
    assert body["signals"]["Vehicle.ADAS.ABS.IsEngaged"] == expected.column("Vehicle.ADAS.ABS.IsEngaged").to_pylist()

    p = http.get(base, headers=owner.headers, params={**params, "format": "parquet"})
    assert p.status_code == 200 and p.headers["content-type"].startswith("application/vnd.apache.parquet")
    got = pq.read_table(io.BytesIO(p.content))
    assert got.column("Vehicle.Speed").equals(expected.column("Vehicle.Speed"))
    assert got.column("t").equals(expected.column("t"))

    c = http.get(base, headers=owner.headers, params={**params, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(c.text)))
    assert len(rows) == 1200 and rows[0]["t_utc"].endswith("Z")  # the column says UTC (issue 13)
    assert float(rows[7]["Vehicle.Speed"]) == pytest.approx(expected.column("Vehicle.Speed")[7].as_py(), rel=1e-6)


def test_resampling(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, uploaded: pa.Table) -> None:
    claim(http, owner, vehicle)
    r = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 60_000, "signals": "Vehicle.Speed", "resample": "10s"},
    )
    body = r.json()
    assert body["rows"] == 6 and body["resample_ms"] == 10_000
    first = uploaded.column("Vehicle.Speed").to_numpy()[:100].astype("float64").mean()
    assert body["signals"]["Vehicle.Speed"][0] == pytest.approx(first, rel=1e-5)


def test_bad_queries_have_stable_codes(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> None:
    claim(http, owner, vehicle)
    base = f"/api/v1/vehicles/{vehicle.vin}/telemetry"
    cases = [
        ({"start": "yesterday", "end": "1"}, "invalid_query"),
        ({"start": "2", "end": "1"}, "window_reversed"),  # each window mistake its own code (issue 13)
        ({"start": "0", "end": "1", "signals": "Vehicle.Nope"}, "invalid_query"),
        ({"start": "0", "end": "1", "format": "xls"}, "validation_failed"),
        ({"start": "0", "end": "1", "resample": "fast"}, "invalid_query"),
        ({"end": "1"}, "validation_failed"),
    ]
    for params, code in cases:
        r = http.get(base, headers=owner.headers, params=params)
        assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, (params, r.text)


def test_every_read_is_audited(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, uploaded: pa.Table, region: Region
) -> None:
    claim(http, owner, vehicle)
    http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 1000, "format": "csv"},
    )
    events = http.get("/api/v1/audit", headers=owner.headers).json()["events"]
    reads = [e for e in events if e["action"] == "telemetry.read"]
    assert len(reads) == 1 and reads[0]["vin"] == vehicle.vin and reads[0]["detail"]["format"] == "csv"
    assert reads[0]["legal_basis"]
    assert region.audit.verify_chain(owner.owner_id) == len(events)
    only = http.get("/api/v1/audit", headers=owner.headers, params={"action": "vehicle.claim"}).json()["events"]
    assert [e["action"] for e in only] == ["vehicle.claim"]


OWNER_ROUTES = [
    ("GET", "/api/v1/vehicles/{vin}", None),
    ("PATCH", "/api/v1/vehicles/{vin}", {"name": "Family car"}),  # naming a car (issue 13)
    ("GET", "/api/v1/vehicles/{vin}/telemetry?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/telemetry?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z&format=csv", None),
    (
        "GET",
        "/api/v1/vehicles/{vin}/telemetry?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z&format=parquet",
        None,
    ),
    ("GET", "/api/v1/vehicles/{vin}/batches", None),
    ("POST", "/api/v1/vehicles/{vin}/packages", {"start": BASE_MS, "end": BASE_MS + 60_000}),
    ("GET", "/api/v1/vehicles/{vin}/packages", None),
    ("GET", "/api/v1/vehicles/{vin}/packages/{pid}/download", None),
    ("GET", "/api/v1/vehicles/{vin}/packages/{pid}/verification", None),
    ("GET", "/api/v1/vehicles/{vin}/consents", None),
    ("PUT", "/api/v1/vehicles/{vin}/consents/location", {"enabled": False}),
    ("GET", "/api/v1/vehicles/{vin}/events", None),
    ("GET", "/api/v1/vehicles/{vin}/timeline?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/route?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/portability", None),
    ("GET", "/api/v1/vehicles/{vin}/diagnostics?end=2025-11-14T00:00:00Z&days=2", None),  # issue 14
    # No frame exists here, so the owner gets 404 too; tests/ingest/test_frames.py checks a real frame.
    ("GET", "/api/v1/vehicles/{vin}/frames/" + "0" * 64, None),
    # issue 13: charging, statistics and completeness
    ("GET", "/api/v1/vehicles/{vin}/charging?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/charging?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z&format=csv", None),
    ("GET", f"/api/v1/vehicles/{{vin}}/charging/{BASE_MS}", None),  # no session starts then: 404 for the owner too
    ("GET", "/api/v1/vehicles/{vin}/battery-health", None),
    ("GET", "/api/v1/vehicles/{vin}/statistics?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/states?start=2025-11-13T00:00:00Z&end=2025-11-14T00:00:00Z", None),
    ("GET", "/api/v1/vehicles/{vin}/efficiency", None),
    ("GET", "/api/v1/vehicles/{vin}/vampire-drain", None),
    ("GET", "/api/v1/vehicles/{vin}/conditions", None),
    ("GET", "/api/v1/vehicles/{vin}/completeness?day=2025-11-13&tz=UTC", None),
    ("GET", "/api/v1/vehicles/{vin}/completeness.json?day=2025-11-13", None),
    ("GET", "/api/v1/vehicles/{vin}/completeness.csv?day=2025-11-13", None),
    ("GET", "/api/v1/vehicles/{vin}/completeness/calendar?end=2025-11-14T00:00:00Z&days=2", None),
]


def test_owner_b_never_sees_owner_a_vehicle(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, uploaded: pa.Table
) -> None:
    claim(http, owner, vehicle)
    pid = http.post(
        f"/api/v1/vehicles/{vehicle.vin}/packages",
        headers=owner.headers,
        json={"start": BASE_MS, "end": BASE_MS + 60_000},
    ).json()["id"]
    stranger = make_owner(http)
    assert http.get("/api/v1/vehicles", headers=stranger.headers).json() == []
    for method, path, body in OWNER_ROUTES:
        url = path.format(vin=vehicle.vin, pid=pid)
        r = http.request(method, url, headers=stranger.headers, json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (url, r.text)
        # ... and the same answer as for a VIN that does not exist at all.
        r2 = http.request(method, path.format(vin="LRWNOSUCHVIN00000", pid=pid), headers=stranger.headers, json=body)
        assert r2.status_code == 404 and r2.json()["error"]["code"] == "not_found"
        expected = (404,) if "/frames/" in path or f"/charging/{BASE_MS}" in path else (200, 201)
        assert http.request(method, url, headers=owner.headers, json=body).status_code in expected
    # Claiming someone else's car without its code fails the same way.
    r = http.post(
        "/api/v1/vehicles/claim", headers=stranger.headers, json={"vin": vehicle.vin, "pairing_code": "ABCDEFGH"}
    )
    assert r.status_code == 404
    assert not [e for e in http.get("/api/v1/audit", headers=stranger.headers).json()["events"] if e["vin"]]
    # Every route that lists the app's /api/v1/vehicles/{vin}... paths is covered above.
    spec = http.get("/api/v1/openapi.json").json()
    vin_routes = {p for p in spec["paths"] if p.startswith("/api/v1/vehicles/{vin}")}
    covered = {
        p.split("?")[0]
        .replace("{pid}", "{package_id}")
        .replace("consents/location", "consents/{category}")
        .replace("0" * 64, "{sha256}")
        .replace(f"/charging/{BASE_MS}", "/charging/{start_ms}")
        for _, p, _ in OWNER_ROUTES
    }
    assert vin_routes <= covered, vin_routes - covered


def test_unauthenticated_and_revoked(http: httpx.Client, owner: OwnerClient) -> None:
    assert http.get("/api/v1/vehicles").json()["error"]["code"] == "unauthenticated"
    assert http.get("/api/v1/vehicles", headers={"Authorization": "Bearer nope"}).status_code == 401
    tok = http.post("/api/v1/auth/tokens", headers=owner.headers, json={"label": "script"}).json()
    h = {"Authorization": f"Bearer {tok['token']}"}
    assert http.get("/api/v1/vehicles", headers=h).status_code == 200
    assert http.delete(f"/api/v1/auth/credentials/{tok['id']}", headers=owner.headers).status_code == 200
    r = http.get("/api/v1/vehicles", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_cookie_session_needs_csrf_header_for_writes(http: httpx.Client, owner: OwnerClient) -> None:
    r = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
    assert "carvault_session" in r.cookies
    assert http.get("/api/v1/me").json()["email"] == owner.email
    r = http.post("/api/v1/auth/tokens", json={})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert http.post("/api/v1/auth/tokens", json={}, headers={"X-CarVault-CSRF": "1"}).status_code == 201


def test_login_is_rate_limited(http: httpx.Client, owner: OwnerClient) -> None:
    for _ in range(10):
        assert (
            http.post("/api/v1/auth/login", json={"email": owner.email, "password": "wrong password"}).status_code
            == 401
        )
    r = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests" and "retry-after" in r.headers


def test_openapi_and_catalogue(http: httpx.Client) -> None:
    spec = http.get("/api/v1/openapi.json").json()
    assert "/api/v1/ingest/batches" in spec["paths"] and "/api/v1/vehicles/{vin}/telemetry" in spec["paths"]
    sigs = http.get("/api/v1/signals").json()
    assert len(sigs) >= 40 and all(s["privacy"] in {"technical", "personal", "sensitive", "important"} for s in sigs)
    assert http.get("/api/v1/nope").json()["error"]["code"] == "not_found"


def test_unknown_page_is_html_and_unknown_api_route_is_json(http: httpx.Client) -> None:
    page = http.get("/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert http.get("/api/v1/no-such-route").json()["error"]["code"] == "not_found"


HUGE = "9" * 23  # beyond a signed 64-bit integer: must be refused, never reach the database


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/api/v1/vehicles/{vin}/batches?start=" + HUGE, "invalid_query"),
        ("GET", "/api/v1/vehicles/{vin}/telemetry?start=0&end=" + HUGE, "invalid_query"),
        ("GET", "/api/v1/vehicles/{vin}/timeline?start=" + HUGE, "invalid_query"),
        ("GET", "/api/v1/audit?since=" + HUGE, "invalid_query"),
        ("GET", "/api/v1/audit?before_id=" + HUGE, "validation_failed"),
        ("GET", "/api/v1/log/batches/{vin}/" + HUGE, "validation_failed"),
        ("GET", "/api/v1/log/proof/inclusion?index=" + HUGE, "validation_failed"),
        ("GET", "/api/v1/exports/" + HUGE, "validation_failed"),
        ("DELETE", "/api/v1/auth/credentials/" + HUGE, "validation_failed"),
        ("GET", "/api/v1/vehicles/{vin}/packages/" + HUGE + "/download", "validation_failed"),
    ],
)
def test_out_of_range_numbers_are_refused_not_500(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, method: str, path: str, code: str
) -> None:
    claim(http, owner, vehicle)
    r = http.request(method, path.format(vin=vehicle.vin), headers=owner.headers)
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
