"""The car's rules, shown from the outside: what was uploaded (stored batches) and what the API says."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import h3
import httpx
import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import func, select

from carvault.location import LAT, LON, Place, distance_m
from carvault.protocol import decode_envelope
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.simulator import simulate_day
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table

LOCATION = [LAT, LON, "Vehicle.CurrentLocation.Altitude", "Vehicle.Speed", "Vehicle.Driver.HeartRate"]


def uploaded_tables(region: Region, vin: str, kind: str | None = "telemetry") -> list[pa.Table]:
    """Every batch the gateway stored for the vehicle, decoded from the exact bytes."""
    with region.db.session() as s:
        q = select(BatchRecord).where(BatchRecord.vin == vin)
        q = q.where(BatchRecord.kind == kind) if kind else q
        recs = list(s.scalars(q.order_by(BatchRecord.seq)))
    return [decode_envelope(region.segment_reader.read(r.segment, r.offset, r.length)).table() for r in recs]


def claim(http: httpx.Client, owner: OwnerClient, v: VehicleIdentity) -> None:
    r = http.post("/api/v1/vehicles/claim", headers=owner.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201


def consent(http: httpx.Client, owner: OwnerClient, vin: str, category: str, **body: object) -> httpx.Response:
    return http.put(f"/api/v1/vehicles/{vin}/consents/{category}", headers=owner.headers, json=body)


def in_one_year() -> int:
    return int(time.time() * 1000) + 365 * 86_400_000


_LAST_END = [0]


@pytest.fixture(autouse=True)
def _fresh_clock() -> None:
    _LAST_END[0] = 0


def fresh(seconds: int) -> pa.Table:
    """Rows recorded from now on (consent decisions apply from the moment they are made), never overlapping."""
    start = max((int(time.time() * 1000) // 1000 + 1) * 1000, _LAST_END[0])
    _LAST_END[0] = start + seconds * 1000
    return drive_table(start, seconds=seconds, paths=LOCATION)


def since(region: Region, vin: str, before: int) -> pa.Table:
    return pa.concat_tables(uploaded_tables(region, vin)[before:], promote_options="default")


def test_sensitive_categories_are_off_by_default(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    claim(http, owner, vehicle)
    overview = http.get(f"/api/v1/vehicles/{vehicle.vin}/consents", headers=owner.headers).json()
    status = {c["category"]: c["status"] for c in overview["categories"]}
    assert status["location"] == "off" and status["driver_monitoring"] == "in_car_only"
    assert status["driving_dynamics"] == "collecting"
    assert overview["rights_contact"] and all(c["storage_region"] == "cn" for c in overview["categories"])
    agent.fetch_policy()
    agent.process(drive_table(BASE_MS, seconds=120, paths=LOCATION), batch_seconds=60)
    agent.upload_pending()
    tables = uploaded_tables(region, vehicle.vin)
    assert tables and all(
        LAT not in t.column_names and "Vehicle.Driver.HeartRate" not in t.column_names for t in tables
    )
    assert all("Vehicle.Speed" in t.column_names for t in tables)


def test_consent_needs_an_end_date_and_a_purpose(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    for body in (
        {"enabled": True, "purpose": "route history"},
        {"enabled": True, "ends": in_one_year()},
        {"enabled": True, "purpose": "x", "ends": "2000-01-01"},
        {"enabled": True, "purpose": "x", "ends": in_one_year() + 10 * 365 * 86_400_000},
    ):
        r = consent(http, owner, vehicle.vin, "location", **body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", body
    assert consent(http, owner, vehicle.vin, "nonsense", enabled=False).status_code == 422


def test_grant_coarse_then_precise_then_stop(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    claim(http, owner, vehicle)
    assert (
        consent(
            http,
            owner,
            vehicle.vin,
            "location",
            enabled=True,
            purpose="my route history",
            ends=in_one_year(),
            lasting=True,
        ).json()["status"]
        == "collecting"
    )
    agent.fetch_policy()
    agent.process(fresh(60), batch_seconds=60)
    agent.upload_pending()
    coarse = since(region, vehicle.vin, 0)
    lat = coarse.column(LAT).drop_null().to_numpy()
    lon = coarse.column(LON).drop_null().to_numpy()
    assert len(lat) == 60
    # Every coordinate is the centre of an H3 cell, not the car's position; altitude is gone.
    for a, b in zip(lat[:5].tolist(), lon[:5].tolist(), strict=True):
        assert h3.cell_to_latlng(h3.latlng_to_cell(a, b, 8)) == pytest.approx((a, b), abs=1e-6)
    # Altitude is gone: the car leaves an all-empty column out of the batch altogether.
    alt = "Vehicle.CurrentLocation.Altitude"
    assert alt not in coarse.column_names or coarse.column(alt).null_count == coarse.num_rows

    consent(
        http, owner, vehicle.vin, "location_precise", enabled=True, purpose="evidence", ends=in_one_year(), lasting=True
    )
    agent.fetch_policy()
    before = len(uploaded_tables(region, vehicle.vin))
    sent = fresh(60)
    agent.process(sent, batch_seconds=60)
    agent.upload_pending()
    precise = since(region, vehicle.vin, before)
    assert precise.column(LAT).drop_null().to_pylist() == sent.column(LAT).drop_null().to_pylist()

    stopped = http.delete(f"/api/v1/vehicles/{vehicle.vin}/consents/location", headers=owner.headers).json()
    assert stopped["status"] == "off"
    agent.fetch_policy()
    assert agent.collection_status()["location"] == "off"
    before = len(uploaded_tables(region, vehicle.vin))
    agent.process(fresh(120), batch_seconds=60)
    agent.upload_pending()
    after = uploaded_tables(region, vehicle.vin)[before:]
    assert after and all(LAT not in t.column_names for t in after)  # nothing of that category left the car
    overview = http.get(f"/api/v1/vehicles/{vehicle.vin}/consents", headers=owner.headers).json()
    assert overview["in_sync"] is True
    actions = [e["action"] for e in http.get("/api/v1/audit", headers=owner.headers).json()["events"]]
    assert actions.count("consent.grant") == 2 and actions.count("consent.stop") == 1


def with_ignition_counter(t: pa.Table, n: int) -> pa.Table:
    """Add the signed ignition counter (1 Hz, ``n`` for the whole drive) as the simulator records it: the region
    accepts a one-drive opt-in only from batches that show their ignition cycle."""
    ms = t.column("t").cast(pa.int64()).to_numpy()
    return t.append_column(
        pa.field("Vehicle.EDR.IgnitionCycle", pa.uint32()),
        pa.array(np.full(len(ms), n), pa.uint32(), mask=ms % 1000 != 0),
    )


def test_one_drive_opt_in_lapses_at_the_next_ignition(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    claim(http, owner, vehicle)
    consent(http, owner, vehicle.vin, "location", enabled=True, purpose="this trip", ends=in_one_year(), lasting=False)
    agent.fetch_policy()
    # The drive in progress when the owner opted in (ignition was on before) ...
    agent._ignition_on = int(time.time() * 1000) - 60_000
    agent._last_t = int(time.time() * 1000) - 500
    first = with_ignition_counter(fresh(20), 41)
    agent.process(first, batch_seconds=60)
    # ... then the car sleeps and the next ignition-on starts a new cycle: the one-drive opt-in has lapsed.
    t_next = int(first.column("t")[-1].cast(pa.int64()).as_py()) + 2 * 60_000 + 300
    agent.process(
        with_ignition_counter(drive_table(t_next - t_next % 1000, seconds=20, paths=LOCATION), 42), batch_seconds=60
    )
    agent.upload_pending()
    tables = uploaded_tables(region, vehicle.vin)
    assert LAT in tables[0].column_names and LAT not in tables[-1].column_names


def test_masked_places_hide_trip_ends(
    vehicle: VehicleIdentity,
    server: BackgroundServer,
    region: Region,
    http: httpx.Client,
    owner: OwnerClient,
    tmp_path: Path,
) -> None:
    claim(http, owner, vehicle)
    consent(http, owner, vehicle.vin, "location", enabled=True, purpose="route", ends=in_one_year(), lasting=True)
    consent(
        http, owner, vehicle.vin, "location_precise", enabled=True, purpose="route", ends=in_one_year(), lasting=True
    )
    table = fresh(60)
    lat0, lon0 = table.column(LAT).drop_null()[0].as_py(), table.column(LON).drop_null()[0].as_py()
    home = Place(lat0, lon0, 200.0)
    agent = VehicleAgent(vehicle, tmp_path / "car", server.url, places=[home])
    agent.fetch_policy()
    agent.process(table, batch_seconds=60)
    agent.upload_pending()
    sent = since(region, vehicle.vin, 0)
    lat = sent.column(LAT).to_numpy(zero_copy_only=False).astype(float)
    lon = sent.column(LON).to_numpy(zero_copy_only=False).astype(float)
    ok = ~np.isnan(lat)
    assert (distance_m(lat[ok], lon[ok], home) > 200).all()
    assert ok.sum() < table.column(LAT).drop_null().__len__()


def test_events_are_recorded_and_uploaded_even_when_routine_collection_is_off(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    claim(http, owner, vehicle)
    day = simulate_day(vehicle.vin, 3, date(2026, 11, 20), incident=True)
    agent.fetch_policy()
    agent.process(day.table)
    agent.finish()
    agent.upload_pending()
    events = http.get(f"/api/v1/vehicles/{vehicle.vin}/events", headers=owner.headers).json()
    kinds = {e["kind"] for e in events}
    assert "crash" in kinds and all(e["legal_basis"] for e in events)
    crash = next(e for e in events if e["kind"] == "crash")
    sim_crash = next(e for e in day.events if e.kind == "crash")
    assert abs(crash["t_ms"] - sim_crash.t_ms) <= 1000
    assert crash["detail"]["locked"] is True
    triggered = {t["kind"] for t in crash["detail"]["triggers"]}
    assert {"aeb", "abs"} & triggered or {"aeb", "abs"} <= kinds
    # The event window holds location although routine location collection is off (own legal basis) ...
    event_tables = uploaded_tables(region, vehicle.vin, kind="event")
    assert any(LAT in t.column_names for t in event_tables)
    assert all(LAT not in t.column_names for t in uploaded_tables(region, vehicle.vin))
    # ... and never biometrics.
    assert all("Vehicle.Driver.HeartRate" not in t.column_names for t in event_tables)
    # The incident package around the crash holds the event batch and verifies.
    r = http.post(
        f"/api/v1/vehicles/{vehicle.vin}/packages",
        headers=owner.headers,
        json={"event_time": crash["t_ms"], "event_kind": "crash", "minutes_before": 5, "minutes_after": 1},
    )
    assert r.status_code == 201, r.text
    check = http.get(f"/api/v1/vehicles/{vehicle.vin}/packages/{r.json()['id']}/verification", headers=owner.headers)
    assert check.json()["ok"], [c for c in check.json()["checks"] if c["ok"] is False]


def steady(start_ms: int, seconds: int) -> pa.Table:
    """A steady cruise: nothing the event recorder would trigger on."""
    t = start_ms + np.arange(seconds * 10, dtype=np.int64) * 100
    return pa.table(
        {
            "t": pa.array(t).cast(pa.timestamp("ms", tz="UTC")),
            "Vehicle.Speed": pa.array(np.full(len(t), 50.0), pa.float32()),
        }
    )


def test_gateway_down_mid_drive_loses_and_duplicates_nothing(
    region: Region, vehicle: VehicleIdentity, tmp_path: Path
) -> None:
    server = BackgroundServer(region).start()
    agent = VehicleAgent(vehicle, tmp_path / "car", server.url)
    agent.process(steady(BASE_MS, 300), batch_seconds=60)
    agent.upload_pending(limit=2)
    server.stop()
    agent.process(steady(BASE_MS + 300_000, 300), batch_seconds=60)
    with pytest.raises(httpx.TransportError):
        agent.upload_with_retry(attempts=2, first_delay_s=0.01)
    pending = {p.name: p.read_bytes() for p in agent.pending()}
    assert len(pending) == 8
    # The agent process dies; a new one starts from the same folder and the gateway comes back.
    agent = VehicleAgent(vehicle, tmp_path / "car", server.url)
    assert agent.head.seq == 10
    server = BackgroundServer(region, port=server.port).start()
    try:
        receipts = agent.upload_with_retry()
    finally:
        server.stop()
    assert [r["seq"] for r in receipts] == list(range(3, 11))
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(BatchRecord)) == 10
        hashes = {rec.seq: rec.batch_hash for rec in s.scalars(select(BatchRecord))}
    import hashlib

    for name, blob in pending.items():
        assert hashes[int(name.split(".")[0])] == hashlib.sha256(blob).hexdigest()  # same bytes, never re-signed
    assert region.log.size == 10


def test_refusal_is_not_retried_forever(agent: VehicleAgent) -> None:
    agent.spool(drive_table(BASE_MS, seconds=10, paths=["Vehicle.Speed"]), t0=BASE_MS, t1=BASE_MS + 10_000)
    agent.identity.region = "eu"  # a misconfigured car: its next batch claims another region
    agent.spool(
        drive_table(BASE_MS + 10_000, seconds=10, paths=["Vehicle.Speed"]), t0=BASE_MS + 10_000, t1=BASE_MS + 20_000
    )
    with pytest.raises(UploadRefused) as e:
        agent.upload_with_retry(attempts=3, first_delay_s=0.01)
    assert e.value.status == 400 and e.value.code == "region_mismatch" and len(agent.pending()) == 1


def test_recorder_survives_a_clock_step_back() -> None:
    from carvault.signals import catalogue
    from carvault.vehicle.edr import EventRecorder

    rec = EventRecorder(catalogue())
    rec.feed(steady(BASE_MS + 60_000, 30))
    assert rec.feed(steady(BASE_MS, 30)) == []
