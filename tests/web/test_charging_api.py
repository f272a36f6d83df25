"""The charging API on a real server: owner, grant holder and stranger; tariffs; costs; CSV; refusals with codes."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator

import httpx
import pytest

from carvault.access.charging import REQUIRED
from carvault.location import LAT, LON
from tests.web.portal.world import World, build, register

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = build(tmp_path_factory.mktemp("charging-api"))
    yield world
    world.server.stop()
    world.region.close()


@pytest.fixture(scope="module")
def http(w: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=w.url, timeout=60) as c:
        yield c


def test_the_owner_sees_each_session_with_its_figures_and_battery_health(w: World, http: httpx.Client) -> None:
    for car, day in zip(w.cars, w.days, strict=True):
        r = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["time_zone"] == "Asia/Shanghai"
        sessions = body["sessions"]
        assert len(sessions) == len(day.charges)
        for got, want in zip(sessions, day.charges, strict=True):
            assert got["energy_kwh"] == pytest.approx(want.energy_kwh, rel=0.005)
            assert got["current"] == want.kind and got["energy_method"] == "integrated_power"
            assert got["place"] is not None and got["place"]["name"]  # the nearest town (no owner place here)
            assert got["cost"] is None  # no tariff yet
            assert "minute_kwh" not in got
        assert sum(m["sessions"] for m in body["months"]) == len(sessions)
        one = http.get(f"/api/v1/vehicles/{car.vin}/charging/{sessions[0]['start_ms']}", headers=w.auth).json()
        assert len(one["curve"]["t_s"]) == len(one["curve"]["power_kw"]) > 10
        health = http.get(f"/api/v1/vehicles/{car.vin}/battery-health", headers=w.auth).json()
        big = [c for c in day.charges if c.soc_end - c.soc_start >= 20]
        if big:
            assert health["capacity_kwh"] == pytest.approx(day.vehicle.usable_kwh, rel=0.01)
            assert health["months"][0]["car_soh_pct"] == pytest.approx(day.vehicle.soh_pct, abs=0.1)


def test_tariffs_price_the_sessions_and_refuse_what_is_ambiguous(w: World, http: httpx.Client) -> None:
    car = w.cars[0]
    r = http.post(
        "/api/v1/tariffs",
        headers=w.auth,
        json={"name": "Anywhere", "price_per_kwh": "0.5", "session_fee": "2", "currency": "cny"},
    )
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    assert r.json()["currency"] == "CNY" and r.json()["weekdays"] == [1, 2, 3, 4, 5, 6, 7]
    clash = http.post(
        "/api/v1/tariffs",
        headers=w.auth,
        json={"name": "Night", "start": "00:00", "end": "06:00", "price_per_kwh": 1, "currency": "CNY"},
    )
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "tariff_overlap"
    bad = http.post("/api/v1/tariffs", headers=w.auth, json={"name": "x", "price_per_kwh": "free", "currency": "CNY"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"
    assert bad.json()["error"]["field"] == "price_per_kwh"
    not_json = http.post("/api/v1/tariffs", headers={**w.auth, "Content-Type": "application/json"}, content=b"{")
    assert not_json.status_code in (400, 422) and "error" in not_json.json()
    assert [t["id"] for t in http.get("/api/v1/tariffs", headers=w.auth).json()["tariffs"]] == [tid]
    sessions = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["sessions"]
    for s in sessions:
        assert s["cost"]["amounts"]["CNY"] == pytest.approx(s["energy_kwh"] * 0.5 + 2, abs=0.001)
    months = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["months"]
    assert months[-1]["cost"]["CNY"] == pytest.approx(sum(s["energy_kwh"] * 0.5 + 2 for s in sessions), abs=0.01)
    # CSV: a first line saying the times are UTC, then the header and one row per session with its cost.
    text = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth, params={"format": "csv"}).text
    first, rest = text.split("\n", 1)
    assert first.startswith("#") and "UTC" in first
    rows = list(csv.DictReader(io.StringIO(rest)))
    assert len(rows) == len(sessions) and rows[0]["currency"] == "CNY"
    utc = dt.datetime.fromtimestamp(sessions[0]["start_ms"] / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert rows[0]["start_utc"] == utc and float(rows[0]["energy_kwh"]) == sessions[0]["energy_kwh"]
    # Change and remove.
    r = http.put(
        f"/api/v1/tariffs/{tid}", headers=w.auth, json={"name": "Anywhere", "price_per_kwh": "0.6", "currency": "CNY"}
    )
    assert r.status_code == 200 and r.json()["price_per_kwh"] == "0.6" and r.json()["session_fee"] == "0"
    assert http.delete(f"/api/v1/tariffs/{tid}", headers=w.auth).status_code == 204
    assert http.delete(f"/api/v1/tariffs/{tid}", headers=w.auth).json()["error"]["code"] == "not_found"


def test_a_grant_holder_reads_within_the_grant_and_a_stranger_nothing(w: World, http: httpx.Client) -> None:
    car = w.cars[0]
    token, _ = w.region.grants.personal_token(
        w.owner_id, label="my battery script", vins=[car.vin], signals=list(REQUIRED)
    )
    pat = {"Authorization": f"Bearer {token}"}
    r = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=pat)
    assert r.status_code == 200, r.text
    for s in r.json()["sessions"]:  # no location in the grant: no position, no place; never the owner's costs
        assert s["lat"] is None and s["lon"] is None and s["place"] is None and s["cost"] is None
    # Figures from signals the grant does not cover (range, the car's SOH, gross capacity, DC current) are not served.
    owner_sessions = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["sessions"]
    assert any(s["range_added_km"] is not None and s["soh_pct"] is not None for s in owner_sessions)
    for s in r.json()["sessions"]:
        assert s["range_added_km"] is None and s["soh_pct"] is None and s["gross_capacity_kwh"] is None
        assert s["current"] is None
    health = http.get(f"/api/v1/vehicles/{car.vin}/battery-health", headers=pat)
    assert health.status_code == 200 and all(m["car_soh_pct"] is None for m in health.json()["months"])
    owner_health = http.get(f"/api/v1/vehicles/{car.vin}/battery-health", headers=w.auth).json()
    assert any(m["car_soh_pct"] is not None for m in owner_health["months"])
    assert http.get("/api/v1/tariffs", headers=pat).json()["error"]["code"] == "owner_only"
    assert http.post("/api/v1/tariffs", headers=pat, json={}).json()["error"]["code"] == "owner_only"
    other = http.get(f"/api/v1/vehicles/{w.cars[1].vin}/charging", headers=pat)
    assert other.status_code == 403 and other.json()["error"]["code"] == "out_of_scope"
    # With location in the grant (not precise): positions at the coarse precision.
    token2, _ = w.region.grants.personal_token(
        w.owner_id, label="with places", vins=[car.vin], signals=[*REQUIRED, LAT, LON]
    )
    owner_view = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["sessions"]
    coarse = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers={"Authorization": f"Bearer {token2}"}).json()
    for a, b in zip(owner_view, coarse["sessions"], strict=True):
        assert b["lat"] is not None and (b["lat"], b["lon"]) != (a["lat"], a["lon"])
        assert abs(b["lat"] - a["lat"]) < 0.05 and b["cost"] is None
    # A grant without the charging signals is refused with the stable code.
    narrow, _ = w.region.grants.personal_token(w.owner_id, label="speed", vins=[car.vin], signals=["Vehicle.Speed"])
    r = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers={"Authorization": f"Bearer {narrow}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "out_of_scope"
    # A stranger (another owner) learns nothing, not even that the car exists.
    _, stranger = register(http, "stranger@example.com")
    s = {"Authorization": f"Bearer {stranger}"}
    for path in ("charging", "battery-health", "charging/1"):
        r = http.get(f"/api/v1/vehicles/{car.vin}/{path}", headers=s)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.get("/api/v1/tariffs", headers=s).json()["tariffs"] == []
    assert http.get(f"/api/v1/vehicles/{car.vin}/charging").status_code == 401


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, 400, "window_reversed"),
        ({"start": "2024-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, 400, "window_too_long"),
        ({"start": "yesterday"}, 400, "invalid_query"),
        ({"format": "xml"}, 422, "validation_failed"),
        ({"lang": "fr"}, 422, "validation_failed"),
        ({"end": "9999-12-31T23:59:59Z"}, 400, "invalid_query"),
    ],
)
def test_bad_queries_get_stable_codes(w: World, http: httpx.Client, params: dict, status: int, code: str) -> None:
    r = http.get(f"/api/v1/vehicles/{w.cars[0].vin}/charging", headers=w.auth, params=params)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert http.get(f"/api/v1/vehicles/{w.cars[0].vin}/charging", headers=w.auth).status_code == 200  # still serving


def test_an_unknown_session_is_not_found(w: World, http: httpx.Client) -> None:
    r = http.get(f"/api/v1/vehicles/{w.cars[0].vin}/charging/1700000000000", headers=w.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get(f"/api/v1/vehicles/{w.cars[0].vin}/charging/0", headers=w.auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    # The largest row id: no instant a session can start at (was a 500: start + 1 overflowed the database's integer)
    r = http.get(f"/api/v1/vehicles/{w.cars[0].vin}/charging/{2**63 - 1}", headers=w.auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", r.text


def test_an_owner_place_names_the_session_and_its_tariff_wins(w: World, http: httpx.Client) -> None:
    car = w.cars[1]
    s = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["sessions"][0]
    r = http.post(
        "/api/v1/places",
        headers=w.auth,
        json={"name": "Mall car park", "lat": s["lat"], "lon": s["lon"], "radius_m": 200, "mask_in_car": False},
    )
    assert r.status_code == 201, r.text
    place_id = r.json()["id"]
    anywhere = http.post(
        "/api/v1/tariffs", headers=w.auth, json={"name": "Public", "price_per_kwh": "2", "currency": "CNY"}
    ).json()
    mall = http.post(
        "/api/v1/tariffs",
        headers=w.auth,
        json={"name": "Mall", "place_id": place_id, "price_per_kwh": "1", "currency": "CNY"},
    )
    assert mall.status_code == 201, mall.text  # same minutes as "Public", but for a place: no overlap
    unknown = http.post(
        "/api/v1/tariffs", headers=w.auth, json={"name": "X", "place_id": 9999, "price_per_kwh": "1", "currency": "CNY"}
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "place_id"
    got = http.get(f"/api/v1/vehicles/{car.vin}/charging", headers=w.auth).json()["sessions"][0]
    assert got["place"] == {"kind": "place", "id": place_id, "name": "Mall car park"}
    assert got["cost"]["amounts"]["CNY"] == pytest.approx(got["energy_kwh"] * 1.0, abs=0.001)
    for t in (anywhere["id"], mall.json()["id"]):
        assert http.delete(f"/api/v1/tariffs/{t}", headers=w.auth).status_code == 204
    assert http.delete(f"/api/v1/places/{place_id}", headers=w.auth).status_code in (200, 204)
