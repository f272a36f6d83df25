"""The public log over real HTTP: proofs for anyone name no car; vehicle lookups only for the owner; packages open."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import httpx
import pytest
from sqlalchemy import select

from carvault.access.audit import OWNER_REQUEST, Actor
from carvault.access.packages import PackageBuilder
from carvault.ledger import merkle
from carvault.protocol import leaf_data_v2, leaf_salt
from carvault.region import Region
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]  # on by default: no consent needed


@pytest.fixture
def logged(agent: VehicleAgent, region: Region) -> list[BatchRecord]:
    agent.record(drive_table(BASE_MS, seconds=30, paths=PATHS), batch_seconds=10)
    assert len(agent.upload_pending()) == 3
    with region.db.session() as s:
        return list(s.scalars(select(BatchRecord).order_by(BatchRecord.seq)))


def _claim(http: httpx.Client, o: OwnerClient, v: VehicleIdentity) -> None:
    r = http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text


def _public_answers(http: httpx.Client, recs: list[BatchRecord]) -> list[str]:
    leaf_hash = base64.b64encode(recs[1].leaf_hash or b"").decode()
    answers = [
        http.get("/api/v1/log/checkpoint"),
        http.get("/api/v1/log/key"),
        http.get("/api/v1/log/proof/inclusion", params={"index": 1}),
        http.get("/api/v1/log/proof/inclusion", params={"leaf_hash": leaf_hash}),
        http.get("/api/v1/log/proof/inclusion", params={"leaf_hash": (recs[1].leaf_hash or b"").hex(), "size": 2}),
        http.get("/api/v1/log/proof/consistency", params={"old": 1}),
    ]
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
    return [r.text for r in answers]


def test_public_answers_name_no_car(http: httpx.Client, vehicle: VehicleIdentity, logged: list[BatchRecord]) -> None:
    answers = _public_answers(http, logged)
    for text in answers:
        assert vehicle.vin not in text and vehicle.vin[-6:] not in text
        for rec in logged:
            assert str(rec.received_ms) not in text and str(rec.received_ms)[:8] not in text
            assert rec.batch_hash not in text
    by_index, by_hash = json.loads(answers[2]), json.loads(answers[3])
    assert by_hash == by_index and by_index["leaf_hash"] == base64.b64encode(logged[1].leaf_hash or b"").decode()


@pytest.mark.parametrize(
    ("who", "status"), [("nobody", 401), ("bad token", 401), ("another owner", 404), ("the owner", 200)]
)
@pytest.mark.parametrize("route", ["/api/v1/log/batches/{vin}/2", "/api/v1/log/vehicles/{vin}/log-key"])
def test_vehicle_lookups_only_for_the_owner(
    http: httpx.Client, vehicle: VehicleIdentity, logged: list[BatchRecord], route: str, who: str, status: int
) -> None:
    owner, other = make_owner(http), make_owner(http)
    _claim(http, owner, vehicle)
    headers = {
        "nobody": {},
        "bad token": {"Authorization": "Bearer not-a-token"},
        "another owner": other.headers,
        "the owner": owner.headers,
    }[who]
    r = http.get(route.format(vin=vehicle.vin), headers=headers)
    assert r.status_code == status, r.text
    if status != 200:  # nothing about the car's batches, key or times
        assert str(logged[1].received_ms) not in r.text and logged[1].batch_hash not in r.text
        assert "log_key" not in r.text and "leaf_salt" not in r.text


def test_the_owner_key_opens_every_leaf(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, logged: list[BatchRecord]
) -> None:
    owner = make_owner(http)
    _claim(http, owner, vehicle)
    body = http.get(f"/api/v1/log/vehicles/{vehicle.vin}/log-key", headers=owner.headers).json()
    key = base64.b64decode(body["log_key"])
    assert body["leaf_version"] == 2 and len(key) == 32 and key == vehicle.log_key
    for rec in logged:
        entry = http.get(f"/api/v1/log/batches/{vehicle.vin}/{rec.seq}", headers=owner.headers).json()
        assert entry["leaf_version"] == 2 and base64.b64decode(entry["leaf_salt"]) == leaf_salt(key, rec.seq)
        leaf = leaf_data_v2(
            salt=leaf_salt(key, rec.seq),
            region=region.name,
            vin=rec.vin,
            seq=rec.seq,
            batch_hash=entry["batch_hash"],
            received_ms=entry["received_ms"],
        )
        proof = [base64.b64decode(p) for p in entry["proof"]]
        merkle.verify_inclusion(merkle.leaf_hash(leaf), entry["index"], entry["size"], proof, region.log.root())
    audit = http.get("/api/v1/audit", headers=owner.headers).json()
    assert [e["action"] for e in audit["events"]].count("log_key.read") == 1


def test_package_proofs_open_with_their_salt(
    region: Region, vehicle: VehicleIdentity, logged: list[BatchRecord]
) -> None:
    row = PackageBuilder(region).build(
        vehicle.vin,
        BASE_MS,
        BASE_MS + 30_000,
        event=None,
        requested_by=Actor("owner", "1"),
        owner_id=None,
        legal_basis=OWNER_REQUEST,
    )
    with zipfile.ZipFile(io.BytesIO(PackageBuilder(region).read(row))) as z:
        proofs = json.loads(z.read("log/proofs.json"))
        checkpoint = z.read("log/checkpoint.txt").decode()
    root = base64.b64decode(checkpoint.splitlines()[2])
    assert [p["seq"] for p in proofs["proofs"]] == [1, 2, 3]
    for p in proofs["proofs"]:
        assert p["leaf_version"] == 2
        salt = base64.b64decode(p["leaf_salt"])
        leaf = leaf_data_v2(
            salt=salt,
            region=region.name,
            vin=vehicle.vin,
            seq=p["seq"],
            batch_hash=p["batch_hash"],
            received_ms=p["received_ms"],
        )
        proof = [base64.b64decode(h) for h in p["proof"]]
        merkle.verify_inclusion(merkle.leaf_hash(leaf), p["leaf_index"], proofs["tree_size"], proof, root)


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "invalid_query"),
        ({"index": 0, "leaf_hash": "AA=="}, 400, "invalid_query"),
        ({"leaf_hash": "not base64!"}, 400, "invalid_query"),
        ({"leaf_hash": base64.b64encode(b"\x00" * 31).decode()}, 400, "invalid_query"),
        ({"leaf_hash": "00" * 32}, 404, "not_found"),
        ({"index": 99}, 400, "invalid_query"),
    ],
)
def test_inclusion_lookups_that_name_no_leaf(
    http: httpx.Client, logged: list[BatchRecord], params: dict[str, object], status: int, code: str
) -> None:
    r = http.get("/api/v1/log/proof/inclusion", params=params)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
