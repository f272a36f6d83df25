"""The right to deletion, from the outside: deadline, receipt, erased bytes, legal holds freezing data."""

from __future__ import annotations

import base64
import datetime as dt
import json

import httpx
import pyarrow as pa

from carvault.compliance.deletion import RECEIPT_CONTEXT, add_working_days
from carvault.ledger.checkpoint import parse_vkey
from carvault.region import Region
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table


def _setup(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent) -> pa.Table:
    table = drive_table(BASE_MS, seconds=120, paths=["Vehicle.Speed"])
    agent.record(table, batch_seconds=60)
    agent.upload_pending()
    http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    return table


def test_deadline_is_ten_working_days() -> None:
    friday = int(dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC).timestamp() * 1000)
    assert dt.datetime.fromtimestamp(add_working_days(friday, 10) / 1000, dt.UTC).date() == dt.date(2026, 12, 4)


def test_deletion_erases_and_signs_a_receipt(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _setup(http, owner, vehicle, agent)
    segs = list((region.settings.data_dir / "segments").glob("*.cvseg"))
    assert any(b"CVB1" in p.read_bytes() for p in segs)
    r = http.post(
        "/api/v1/deletion-requests",
        headers=owner.headers,
        json={"vin": vehicle.vin, "reason": "sold the car", "immediately": True},
    )
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "completed" and req["deadline_ms"] > req["requested_ms"]
    receipt = req["receipt"]
    assert receipt["batches_erased"] == 2 and receipt["retained"]
    # The receipt is signed by the region key and the bytes are gone from disk.
    body = {k: v for k, v in receipt.items() if k not in ("signature", "signed_by")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    parse_vkey(receipt["signed_by"]).public_key.verify(
        base64.b64decode(receipt["signature"]), RECEIPT_CONTEXT + canonical
    )
    assert not any(b"CVB1" in p.read_bytes() for p in segs)
    q = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 120_000},
    )
    assert q.json()["rows"] == 0
    actions = [e["action"] for e in http.get("/api/v1/audit", headers=owner.headers).json()["events"]]
    assert "deletion.request" in actions and "deletion.complete" in actions


def test_legal_hold_freezes_instead_of_deleting(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _setup(http, owner, vehicle, agent)
    hold = region.deletions.place_hold(vehicle.vin, "Shenzhen Intermediate Court", "case (2026) 123")
    r = http.post(
        "/api/v1/deletion-requests", headers=owner.headers, json={"vin": None, "reason": "all", "immediately": True}
    )
    req = r.json()
    assert req["status"] == "held" and req["holds"][0]["authority"] == "Shenzhen Intermediate Court"
    q = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 120_000},
    )
    assert q.status_code == 403 and q.json()["error"]["code"] == "data_frozen"  # kept, not served
    assert region.telemetry.batches(vehicle.vin, 0, 10**13)  # still kept
    region.deletions.release_hold(hold.id)
    listed = http.get("/api/v1/deletion-requests", headers=owner.headers).json()
    assert listed[0]["status"] == "completed" and not region.telemetry.batches(vehicle.vin, 0, 10**13)


def test_deletion_takes_the_refusal_counters_of_the_vehicle(region: Region, tmp_path) -> None:  # noqa: ANN001
    """Refused uploads are counted per vehicle with their seqs and spans (completeness shows them): data about the
    car's trips, so a deletion of the vehicle takes them too."""
    import pytest
    from sqlalchemy import func, select

    from carvault.errors import BrokenChain
    from carvault.store.metadata import BatchRefusal
    from tests.access.test_completeness import Car

    car = Car(region, tmp_path)
    car.send(BASE_MS, 60)
    car.seq += 1  # a skipped seq: refused and counted
    with pytest.raises(BrokenChain):
        car.send(BASE_MS + 60_000, 60)
    with region.db.session() as s:
        assert s.scalar(select(func.count()).where(BatchRefusal.vin == car.identity.vin)) == 1
    req = region.deletions.request(car.owner.id, car.identity.vin, "sold the car", immediately=True)
    assert region.deletions.process(req.id).status == "completed"
    with region.db.session() as s:
        assert s.scalar(select(func.count()).where(BatchRefusal.vin == car.identity.vin)) == 0
