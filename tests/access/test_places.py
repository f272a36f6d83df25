"""Owner-defined places: validation, the API on a real server (owner-only, stable codes, audit), and masking —
the places reach the car with its policy, the car nulls positions inside them, the region refuses what it did not."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import select

from carvault.access.places import MAX_PLACES, Places, check_masked, covering, parse_place, place_of_json
from carvault.errors import LocationInMaskedPlace, TooManyPlaces, ValidationFailed
from carvault.location import LAT, LON, Place, distance_m, places_from_json
from carvault.protocol.live import encode_frame
from carvault.region import Region
from carvault.store.metadata import BatchRefusal
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in

HOME = {"name": "Home", "lat": 22.5431, "lon": 113.9344, "radius_m": 300, "mask_in_car": True}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOME, "name": ""}, "name"),
        ({**HOME, "name": "x" * 101}, "name"),
        ({**HOME, "name": "a\nb"}, "name"),
        ({**HOME, "lat": 91}, "lat"),
        ({**HOME, "lat": "22.5"}, "lat"),
        ({**HOME, "lon": float("nan")}, "lon"),
        ({**HOME, "lon": -180.5}, "lon"),
        ({**HOME, "radius_m": 49}, "radius_m"),
        ({**HOME, "radius_m": 5001}, "radius_m"),
        ({**HOME, "radius_m": 120.5}, "radius_m"),
        ({**HOME, "radius_m": True}, "radius_m"),
        ({**HOME, "mask_in_car": "yes"}, "mask_in_car"),
        ({**HOME, "colour": "red"}, "colour"),
        ({"lat": 1.0, "lon": 1.0, "radius_m": 100}, "name"),
    ],
)
def test_bad_bodies_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        parse_place(body)
    assert e.value.details["field"] == field


def test_good_body_is_normalised() -> None:
    assert parse_place({**HOME, "name": "  My   home ", "radius_m": 300.0}) == {**HOME, "name": "My home"}
    assert parse_place({"radius_m": 50}, partial=True) == {"radius_m": 50}
    with pytest.raises(ValidationFailed):
        parse_place({}, partial=True)
    with pytest.raises(ValidationFailed):
        parse_place([HOME])


def test_covering_prefers_the_nearest_centre() -> None:
    home = place_of_json({"id": 1, **HOME})
    shop = place_of_json({"id": 2, **HOME, "name": "Shop", "lat": 22.5445, "radius_m": 400})
    assert covering([home, shop], 22.5431, 113.9344) == home
    assert covering([home, shop], 22.5446, 113.9344) == shop
    assert covering([home, shop], 22.60, 113.9344) is None
    assert covering([home], None, 113.9) is None


def test_check_masked_refuses_positions_inside_only() -> None:
    t = pa.array([1000, 2000, 3000], pa.int64())
    table = pa.table({"t": t, LAT: [22.5431, None, 22.60], LON: [113.9344, 113.9344, 113.9344]})
    with pytest.raises(LocationInMaskedPlace) as e:
        check_masked(table, [Place(22.5431, 113.9344, 300)])
    assert e.value.code == "location_in_masked_place" and e.value.status == 403
    assert e.value.details["instants"] == 1 and e.value.details["from_ms"] == 1000
    check_masked(table, [Place(22.5431, 113.9, 300)])  # nobody inside: accepted
    check_masked(pa.table({"t": t}), [Place(22.5431, 113.9344, 300)])  # no position column at all


def test_places_from_json_is_strict() -> None:
    assert places_from_json([{"lat": 1, "lon": 2, "radius_m": 100}]) == (Place(1.0, 2.0, 100.0),)
    for bad in ({"lat": 1}, [{"lat": 1, "lon": 2}], [{"lat": 95, "lon": 2, "radius_m": 1}], ["x"]):
        with pytest.raises(ValueError):
            places_from_json(bad)


def test_api_lifecycle_owner_only_and_audited(http: httpx.Client, owner: OwnerClient, region: Region) -> None:
    h = owner.headers
    assert http.get("/api/v1/places").status_code == 401
    r = http.post("/api/v1/places", headers=h, json=HOME)
    assert r.status_code == 201, r.text
    place = r.json()
    assert {k: place[k] for k in HOME} == HOME and place["id"] > 0
    body = http.get("/api/v1/places", headers=h).json()
    assert body["places"] == [place] and body["limits"]["max_places"] == MAX_PLACES

    r = http.post("/api/v1/places", headers=h, json={**HOME, "name": "home"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"
    r = http.post("/api/v1/places", headers=h, json={**HOME, "radius_m": 10})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    assert r.json()["error"]["field"] == "radius_m"
    r = http.post("/api/v1/places", headers=h, content=b"{not json", params={})
    assert r.status_code in (400, 422) and "error" in r.json()

    r = http.patch(f"/api/v1/places/{place['id']}", headers=h, json={"radius_m": 500, "mask_in_car": False})
    assert r.status_code == 200 and r.json()["radius_m"] == 500 and r.json()["mask_in_car"] is False
    assert r.json()["name"] == "Home"

    # Another owner sees none of it and cannot touch it.
    other = make_owner(http)
    assert http.get("/api/v1/places", headers=other.headers).json()["places"] == []
    for method in ("GET", "PATCH", "DELETE"):
        r = http.request(method, f"/api/v1/places/{place['id']}", headers=other.headers, json={"radius_m": 60})
        assert r.status_code == 404 and r.json()["error"]["code"] == "place_not_found", method
    assert http.get(f"/api/v1/places/{place['id']}", headers=h).json()["radius_m"] == 500

    assert http.delete(f"/api/v1/places/{place['id']}", headers=h).status_code == 204
    r = http.delete(f"/api/v1/places/{place['id']}", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "place_not_found"
    assert http.get("/api/v1/places", headers=h).json()["places"] == []

    events = [json.loads(e.detail) for e in reversed(region.audit.list(owner.owner_id, action="place.change"))]
    assert [e["change"] for e in events] == ["created", "updated", "deleted"]
    assert events[1]["fields"] == ["mask_in_car", "radius_m"]


def test_at_most_max_places(region: Region) -> None:
    owner = region.accounts.register("many@example.com", "correct horse battery")
    places = Places(region.db, region.audit)
    for i in range(MAX_PLACES):
        places.create(owner.id, {**HOME, "name": f"P{i}"})
    with pytest.raises(TooManyPlaces):
        places.create(owner.id, {**HOME, "name": "one more"})
    assert len(places.list(owner.id)) == MAX_PLACES


def _claimed(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> None:
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code == 201, r.text


def _located(table: pa.Table, lat: float, lon: float) -> pa.Table:
    """The drive with every position put around (lat, lon): half inside ~100 m, half ~2 km away."""
    n = table.num_rows
    near = np.arange(n) < n // 2
    lats = np.where(near, lat + 0.0005, lat + 0.02)
    lat_col = pa.array(np.where(pa.compute.is_valid(table.column(LAT)).to_numpy(zero_copy_only=False), lats, np.nan))
    lat_col = pa.compute.if_else(pa.compute.is_nan(lat_col), pa.scalar(None, pa.float64()), lat_col)
    lon_col = pa.compute.if_else(
        pa.compute.is_valid(table.column(LON)), pa.scalar(lon, pa.float64()), pa.scalar(None, pa.float64())
    )
    table = table.set_column(table.column_names.index(LAT), LAT, lat_col.cast(table.schema.field(LAT).type))
    return table.set_column(table.column_names.index(LON), LON, lon_col.cast(table.schema.field(LON).type))


def test_masked_places_reach_the_car_and_the_region_enforces_them(
    http: httpx.Client,
    owner: OwnerClient,
    region: Region,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    tmp_path: Path,
) -> None:
    _claimed(http, owner, vehicle)
    opt_in(region, vehicle.vin)
    assert http.post("/api/v1/places", headers=owner.headers, json=HOME).status_code == 201
    # A place that is not masked does not travel.
    r = http.post(
        "/api/v1/places", headers=owner.headers, json={**HOME, "name": "Work", "lat": 22.6, "mask_in_car": False}
    )
    assert r.status_code == 201

    agent.fetch_policy()
    assert agent.owner_places == (Place(HOME["lat"], HOME["lon"], 300.0),)
    # Kept across a restart of the car's software.
    assert VehicleAgent(vehicle, agent.state_dir, agent.endpoint).owner_places == agent.owner_places

    table = _located(drive_table(BASE_MS, seconds=60), HOME["lat"], HOME["lon"])
    sent_inside = pa.compute.is_valid(table.column(LAT)).to_numpy(zero_copy_only=False)[: table.num_rows // 2].sum()
    assert sent_inside > 0
    agent.process(table)
    receipts = agent.upload_pending()
    assert receipts and all("log_index" in r for r in receipts)
    stored = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 60_000, "signals": f"{LAT},{LON}", "format": "json"},
    ).json()
    pos = [(a, b) for a, b in zip(stored["signals"][LAT], stored["signals"][LON], strict=True) if a is not None]
    assert pos  # the far half was sent (coarsened: precise location is not consented) ...
    far = distance_m(np.array([a for a, _ in pos]), np.array([b for _, b in pos]), Place(HOME["lat"], HOME["lon"], 0))
    assert far.min() > 300  # ... and nothing inside the masked circle

    # A car that does not mask (old software, or lying) is refused like a consent refusal, and nothing is stored.
    rogue = VehicleAgent(vehicle, tmp_path / "rogue", agent.endpoint)
    rogue.head = agent.head
    rogue.policy = agent.policy  # the consents, but not the places
    rogue.process(_located(drive_table(BASE_MS + 120_000, seconds=30), HOME["lat"], HOME["lon"]))
    with pytest.raises(UploadRefused) as e:
        rogue.upload_pending()
    assert e.value.status == 403 and e.value.code == "location_in_masked_place"
    assert e.value.body["error"]["status"] == "masked_place"
    with region.db.session() as db:
        codes = set(db.scalars(select(BatchRefusal.code).where(BatchRefusal.vin == vehicle.vin)))
    assert codes == {"location_in_masked_place"}  # recorded among the car's refusals (completeness shows them)
    after = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS + 120_000, "end": BASE_MS + 150_000, "signals": LAT, "format": "json"},
    ).json()
    assert all(x is None for x in after["signals"][LAT])  # nothing of the refused batch is stored


def test_live_frames_inside_a_masked_place_are_refused(region: Region, vehicle: VehicleIdentity) -> None:
    owner = region.accounts.register("live-places@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vehicle.vin, vehicle.pairing_code)
    opt_in(region, vehicle.vin, "location", "location_precise")

    def frame(counter: int, lat: float) -> bytes:
        return encode_frame(vehicle.vin, "cn", counter, BASE_MS, {LAT: lat, LON: HOME["lon"]}, vehicle.key)

    assert region.live_channel.check(vehicle.vin, frame(1, HOME["lat"])) is not None  # no place yet
    home = region.places.create(owner.id, HOME)
    with pytest.raises(LocationInMaskedPlace):
        region.live_channel.check(vehicle.vin, frame(2, HOME["lat"] + 0.001))  # ~110 m from the centre
    assert region.live_channel.check(vehicle.vin, frame(3, HOME["lat"] + 0.01)) is not None  # ~1.1 km: outside
    region.places.update(owner.id, home.id, {"mask_in_car": False})  # a place kept, no longer masked
    assert region.live_channel.check(vehicle.vin, frame(4, HOME["lat"])) is not None


def _at_cell_vertex() -> tuple[float, float, float]:
    """A point on a corner of its H3 cell (res 8) and how far that cell's centre lies from it (~the edge length)."""
    import h3

    from carvault.location import DEFAULT_RESOLUTION

    cell = h3.latlng_to_cell(HOME["lat"], HOME["lon"], DEFAULT_RESOLUTION)
    lat, lon = h3.cell_to_boundary(cell)[0]
    lat, lon = lat + 1e-6, lon  # nudged so the point has one cell, not three
    centre = h3.cell_to_latlng(h3.latlng_to_cell(lat, lon, DEFAULT_RESOLUTION))
    return lat, lon, float(distance_m(np.array([centre[0]]), np.array([centre[1]]), Place(lat, lon, 0))[0])


def _parked_at(lat: float, lon: float) -> pa.Table:
    table = drive_table(BASE_MS, seconds=10)
    n = table.num_rows
    table = table.set_column(table.column_names.index(LAT), LAT, pa.array(np.full(n, lat)))
    return table.set_column(table.column_names.index(LON), LON, pa.array(np.full(n, lon)))


def test_the_car_masks_before_it_coarsens(region: Region, vehicle: VehicleIdentity, tmp_path: Path) -> None:
    """Inside the circle but in a cell whose centre is outside it: the car must still send no position (coarsening
    first moved the point out of the circle, so home's cell travelled and passed the region's check)."""
    lat, lon, centre_m = _at_cell_vertex()
    radius = 200.0
    assert centre_m > radius + 100  # the cell's centre lies well outside the circle
    opt_in(region, vehicle.vin, "location")  # coarse location only
    car = VehicleAgent(vehicle, tmp_path / "car", "http://127.0.0.1:9", places=(Place(lat, lon, radius),))
    car.policy = region.gateway.policy_of(vehicle.vin)
    table = _parked_at(lat, lon)
    sent = car.routine(table, np.full(table.num_rows, BASE_MS))
    assert LAT in sent.column_names and sent.column(LAT).null_count == sent.num_rows


def test_fleet_telemetry_masks_the_owners_places(region: Region, vehicle: VehicleIdentity) -> None:
    """A Tesla does not mask: the region applies the owner's masked places in its place, before coarsening, so
    neither home's cell is kept nor the whole group refused."""
    lat, lon, _ = _at_cell_vertex()
    owner = region.accounts.register("ft-places@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vehicle.vin, vehicle.pairing_code)
    opt_in(region, vehicle.vin, "location")
    region.places.create(owner.id, {**HOME, "lat": lat, "lon": lon, "radius_m": 200})
    kept = region.fleet.routine(vehicle.vin, _parked_at(lat, lon))
    assert LAT in kept.column_names and kept.column(LAT).null_count == kept.num_rows
    region.places.check_batch(vehicle.vin, kept)  # what the gateway checks next passes
    far = region.fleet.routine(vehicle.vin, _parked_at(lat + 0.02, lon))
    assert far.column(LAT).null_count == 0  # outside the circle: kept (coarse)
