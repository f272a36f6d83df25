"""Leaf v2 tells nothing about a car without its key; every batch gets exactly one leaf, v1 logs still verify."""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from carvault.errors import Unavailable
from carvault.ledger import merkle
from carvault.ledger.leaves import (
    DATA_KEY_FILE,
    LEAF_V1,
    LEAF_V2,
    SEALED_LEN,
    SEALED_MAGIC,
    batch_leaf,
    leaf_opening,
    log_batches,
    log_key_of,
    open_log_key,
    seal_clear_log_keys,
)
from carvault.protocol import LEAF_V2_PREFIX, leaf_data_v1, leaf_data_v2, leaf_salt
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord, Vehicle
from tests.conftest import make_owner
from tests.factories import vin_for

REGION = "cn"
CARS = [
    # (vin, seq, received_ms)
    ("LRW3E7FA0NC000001", 1, 1_700_000_000_000),
    ("LRW3E7FA0NC000002", 42, 1_762_999_980_123),
    ("WVWZZZ1JZXW000003", 2**63 - 1, 9_999_999_999_999),
    ("5YJ3E1EA7KF000004", 7, 1_600_000_000_001),
]


def _v2(key: bytes, vin: str, seq: int, received_ms: int, batch_hash: str = "ab" * 32) -> bytes:
    return leaf_data_v2(
        salt=leaf_salt(key, seq), region=REGION, vin=vin, seq=seq, batch_hash=batch_hash, received_ms=received_ms
    )


@pytest.mark.parametrize(("vin", "seq", "received_ms"), CARS)
def test_a_v2_leaf_reveals_nothing(vin: str, seq: int, received_ms: int) -> None:
    leaf = _v2(secrets.token_bytes(32), vin, seq, received_ms)
    assert len(leaf) == 82 and leaf.startswith(LEAF_V2_PREFIX)
    body = leaf[len(LEAF_V2_PREFIX) :]
    assert vin.encode() not in leaf and vin[-6:].encode() not in leaf and REGION.encode() not in body
    assert str(received_ms).encode() not in leaf and str(received_ms)[:8].encode() not in leaf
    assert b"\n" not in body[:-1]  # one opaque hex field, no structure to read


def test_leaves_of_two_cars_or_two_batches_share_nothing() -> None:
    key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
    same_fields = [_v2(key_a, CARS[0][0], 5, 1000), _v2(key_b, CARS[0][0], 5, 1000)]
    assert same_fields[0] != same_fields[1]  # even the same fields under two keys are unlinkable
    a1, a2 = _v2(key_a, CARS[0][0], 5, 1000), _v2(key_a, CARS[0][0], 6, 1001)
    assert a1[17:29] != a2[17:29]  # consecutive batches of one car have unrelated digests
    assert leaf_salt(key_a, 5) != leaf_salt(key_a, 6) and leaf_salt(key_a, 5) != leaf_salt(key_b, 5)


def test_the_salt_opens_only_its_own_leaf() -> None:
    key = secrets.token_bytes(32)
    vin, seq, received = CARS[1]
    leaf = _v2(key, vin, seq, received)
    assert _v2(key, vin, seq, received) == leaf
    for wrong in [
        _v2(secrets.token_bytes(32), vin, seq, received),
        _v2(key, CARS[0][0], seq, received),
        _v2(key, vin, seq + 1, received),
        _v2(key, vin, seq, received + 1),
        _v2(key, vin, seq, received, batch_hash="cd" * 32),
    ]:
        assert wrong != leaf
    with pytest.raises(ValueError):
        leaf_salt(b"short", 1)


def test_v1_leaves_still_verify() -> None:
    leaves = [
        leaf_data_v1(region=REGION, vin=v, seq=s, batch_hash=hashlib.sha256(v.encode()).hexdigest(), received_ms=t)
        for v, s, t in CARS
    ]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    root = merkle.root_from_leaf_hashes(hashes)
    for i, h in enumerate(hashes):
        merkle.verify_inclusion(h, i, len(hashes), merkle.inclusion_proof(hashes, i, len(hashes)), root)


def _records(region: Region, vins: list[str], per_car: int) -> list[BatchRecord]:
    from carvault.provisioning import provision

    recs = []
    with region.db.session() as s:
        for n, vin in enumerate(vins):
            provision(region, vin, region.settings.data_dir.parent / "vehicles")
            for seq in range(1, per_car + 1):
                digest = hashlib.sha256(f"{vin}/{seq}".encode()).hexdigest()
                rec = BatchRecord(
                    vin=vin, seq=seq, kind="telemetry", batch_hash=digest, prev_hash="0" * 64, t0=0, t1=1, rows=1,
                    samples=1, columns="Vehicle.Speed", segment="none", offset=0, length=0, received_ms=1000 * n + seq,
                )  # fmt: skip
                s.add(rec)
                recs.append(rec)
    return recs


def test_concurrent_loggers_give_each_batch_one_leaf(tmp_path: Path) -> None:
    with Region(Settings(data_dir=tmp_path / "region", region=REGION)) as region:
        recs = _records(region, [vin_for(400), vin_for(401)], per_car=6)
        with ThreadPoolExecutor(6) as pool:
            runs = list(
                pool.map(
                    lambda n: log_batches(
                        region.db, region.log, REGION, recs[n % 3 :], fence_dir=region.settings.data_dir, tail=n % 2
                    ),
                    range(6),
                )
            )
        assert region.log.size == len(recs)
        by_id = {
            r.id: i for run, n in zip(runs, range(6), strict=True) for r, i in zip(recs[n % 3 :], run, strict=True)
        }
        assert sorted(by_id.values()) == list(range(len(recs)))
        for rec in recs:
            key = log_key_of(region.db, rec.vin)
            rec.leaf_version = LEAF_V2
            assert region.log.leaf_hash(by_id[rec.id]) == merkle.leaf_hash(batch_leaf(REGION, rec, key))
            opening = leaf_opening(rec, key)
            assert opening["leaf_version"] == LEAF_V2 and len(opening["leaf_salt"]) == 44
        rec.leaf_version = LEAF_V1
        assert leaf_opening(rec, key) == {}


def test_log_key_is_made_once_and_kept(tmp_path: Path) -> None:
    with Region(Settings(data_dir=tmp_path / "region", region=REGION)) as region:
        _records(region, [vin_for(410)], per_car=0)
        with ThreadPoolExecutor(4) as pool:
            keys = set(pool.map(lambda _: log_key_of(region.db, vin_for(410)), range(8)))
        assert len(keys) == 1 and len(next(iter(keys))) == 32
        with pytest.raises(LookupError):
            log_key_of(region.db, vin_for(411))


def _stored_log_key(region: Region, vin: str) -> bytes:
    """The raw bytes the metadata database holds in ``vehicles.log_key`` (read with plain sqlite3, no ORM)."""
    with sqlite3.connect(region.settings.data_dir / "metadata.sqlite3") as conn:
        (value,) = conn.execute("SELECT log_key FROM vehicles WHERE vin = ?", (vin,)).fetchone()
    return bytes(value)


def test_log_keys_are_sealed_at_rest(tmp_path: Path) -> None:
    """The column never holds the clear key; the data key file is 32 bytes, mode 0600; a moved row does not open."""
    with Region(Settings(data_dir=tmp_path / "region", region=REGION)) as region:
        vin, other = vin_for(420), vin_for(421)
        _records(region, [vin, other], per_car=0)
        key = log_key_of(region.db, vin)
        stored = _stored_log_key(region, vin)
        assert len(key) == 32 and len(stored) == SEALED_LEN and stored.startswith(SEALED_MAGIC)
        assert key not in stored and key[:8] not in stored and key[-8:] not in stored
        car_key = (region.settings.data_dir.parent / "vehicles" / vin / "log-key.txt").read_text().strip()
        assert base64.b64decode(car_key) == key  # the car was handed the clear key at provisioning
        data_key_file = region.settings.data_dir / "keys" / DATA_KEY_FILE
        assert stat.S_IMODE(data_key_file.stat().st_mode) == 0o600 and len(data_key_file.read_bytes()) == 32
        assert open_log_key(data_key_file.read_bytes(), vin, stored) == key
        with pytest.raises(Unavailable, match="does not open"):  # the VIN is bound: no swapping rows between cars
            open_log_key(data_key_file.read_bytes(), other, stored)
        with region.db.session() as s:  # the ORM hands out the clear key (routes and packages read it there)
            vehicle = s.get(Vehicle, vin)
            assert vehicle is not None and vehicle.log_key == key
        assert _stored_log_key(region, vin) == stored  # loading did not write the clear key back


def test_a_wrong_data_key_fails_clearly(tmp_path: Path) -> None:
    """With another data key in keys/, the sealed log keys do not open: a clear Unavailable, never a wrong salt."""
    settings = Settings(data_dir=tmp_path / "region", region=REGION)
    with Region(settings) as region:
        _records(region, [vin_for(430)], per_car=0)
        log_key_of(region.db, vin_for(430))
    (settings.data_dir / "keys" / DATA_KEY_FILE).write_bytes(secrets.token_bytes(32))
    with Region(settings) as region:
        with pytest.raises(Unavailable, match=f"keys/{DATA_KEY_FILE} is not the one"):
            log_key_of(region.db, vin_for(430))
        with pytest.raises(Unavailable), region.db.session() as s:
            s.get(Vehicle, vin_for(430))
    (settings.data_dir / "keys" / DATA_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="32-byte key"):
        Region(settings)


def test_clear_keys_written_before_sealing_are_sealed_on_start(tmp_path: Path) -> None:
    """A 32-byte clear key (stored earlier) still opens its leaves and is sealed when the region next starts."""
    settings = Settings(data_dir=tmp_path / "region", region=REGION)
    clear = secrets.token_bytes(32)
    with Region(settings) as region:
        _records(region, [vin_for(440)], per_car=0)
        with region.db.session() as s:
            s.execute(update(Vehicle).where(Vehicle.vin == vin_for(440)).values(log_key=clear))
        assert _stored_log_key(region, vin_for(440)) == clear and log_key_of(region.db, vin_for(440)) == clear
        assert seal_clear_log_keys(region.db) == 1 and seal_clear_log_keys(region.db) == 0
        with region.db.session() as s:
            s.execute(update(Vehicle).where(Vehicle.vin == vin_for(440)).values(log_key=clear))
    with Region(settings) as region:
        stored = _stored_log_key(region, vin_for(440))
        assert len(stored) == SEALED_LEN and clear not in stored
        assert log_key_of(region.db, vin_for(440)) == clear


def test_leaves_open_with_the_owner_key_from_the_api(tmp_path: Path) -> None:
    """Over real HTTP: the owner's key (unsealed by the region) and the proof route's salt open the logged leaves."""
    from carvault.provisioning import provision

    with Region(Settings(data_dir=tmp_path / "region", region=REGION)) as region:
        car = provision(region, vin_for(450), tmp_path / "vehicles")
        recs = []
        with region.db.session() as s:
            for seq in (1, 2):
                rec = BatchRecord(
                    vin=car.vin, seq=seq, kind="telemetry", batch_hash=hashlib.sha256(bytes([seq])).hexdigest(),
                    prev_hash="0" * 64, t0=0, t1=1, rows=1, samples=1, columns="Vehicle.Speed", segment="none",
                    offset=0, length=0, received_ms=5000 + seq,
                )  # fmt: skip
                s.add(rec)
                recs.append(rec)
        indices = log_batches(region.db, region.log, REGION, recs, fence_dir=region.settings.data_dir)
        with BackgroundServer(region) as server, httpx.Client(base_url=server.url) as http:
            owner = make_owner(http)
            r = http.post(
                "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": car.vin, "pairing_code": car.pairing_code}
            )
            assert r.status_code == 201, r.text
            body = http.get(f"/api/v1/log/vehicles/{car.vin}/log-key", headers=owner.headers).json()
            key = base64.b64decode(body["log_key"])
            assert key == car.log_key and key not in _stored_log_key(region, car.vin)
            for rec, index in zip(recs, indices, strict=True):
                leaf = _v2(key, car.vin, rec.seq, rec.received_ms, rec.batch_hash)
                assert region.log.leaf_hash(index) == merkle.leaf_hash(leaf)
                entry = http.get(f"/api/v1/log/batches/{car.vin}/{rec.seq}", headers=owner.headers).json()
                assert base64.b64decode(entry["leaf_salt"]) == leaf_salt(key, rec.seq)
