"""The gateway over real HTTP: receipts, re-sends, and a table of every refusal (each storing nothing)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import httpx
import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, BatchHeader, encode_envelope, encode_payload, make_batch
from carvault.region import Region
from carvault.store.metadata import BatchRecord, Vehicle
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, opt_in, vin_for

UPLOAD = "/api/v1/ingest/batches"
SMALL = [
    "Vehicle.Speed",
    "Vehicle.Chassis.Brake.PedalPosition",
    "Vehicle.ADAS.ABS.IsEngaged",
    "Vehicle.Body.Lights.Brake.IsActive",
    "Vehicle.CurrentLocation.Latitude",
]


@pytest.fixture(autouse=True)
def _owner_opted_in_to_location(region: Region, vehicle: VehicleIdentity) -> None:
    """SMALL carries the location track, which the gateway takes only under the owner's consent."""
    opt_in(region, vehicle.vin, "location")


def post(http: httpx.Client, blob: bytes, content_type: str = BATCH_MEDIA_TYPE) -> httpx.Response:
    return http.post(UPLOAD, content=blob, headers={"Content-Type": content_type})


def batch(
    v: VehicleIdentity, table: pa.Table | None = None, seq: int = 1, prev: str = GENESIS_PREV, **kw: object
) -> bytes:
    return make_batch(
        vin=v.vin,
        region=v.region,
        seq=seq,
        prev=prev,
        table=table if table is not None else drive_table(seconds=10, paths=SMALL),
        key=v.key,
        **kw,
    )


def stored(region: Region) -> tuple[int, int, int]:
    """(batches indexed, log size, bytes in segments) — all must stay put after a refusal."""
    with region.db.session() as s:
        n = s.scalar(select(func.count()).select_from(BatchRecord)) or 0
    seg = sum(p.stat().st_size for p in (region.settings.data_dir / "segments").glob("*.cvseg"))
    return n, region.log.size, seg


def test_accepts_and_answers_with_a_receipt(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    blob = batch(vehicle)
    r = post(http, blob)
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["seq"] == 1 and receipt["log_index"] == 0 and not receipt["duplicate"]
    assert stored(region)[:2] == (1, 1)
    # Exact bytes are kept.
    with region.db.session() as s:
        rec = s.scalar(select(BatchRecord))
    assert region.segment_reader.read(rec.segment, rec.offset, rec.length) == blob


def test_identical_resend_gets_the_same_receipt(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    blob = batch(vehicle)
    first = post(http, blob).json()
    again = post(http, blob)
    assert again.status_code == 200
    assert {k: v for k, v in again.json().items() if k != "duplicate"} == {
        k: v for k, v in first.items() if k != "duplicate"
    }
    assert again.json()["duplicate"] is True
    assert stored(region)[:2] == (1, 1)


def test_chain_of_batches(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    prev = GENESIS_PREV
    for seq in range(1, 6):
        blob = batch(vehicle, drive_table(start_ms=BASE_MS + seq * 10_000, seconds=10, paths=SMALL), seq, prev)
        r = post(http, blob)
        assert r.status_code == 200, r.text
        prev = r.json()["batch_hash"]
    with region.db.session() as s:
        v = s.get(Vehicle, vehicle.vin)
    assert v is not None and v.last_seq == 5 and v.last_hash == prev


def _with_column(name: str, arr: Callable[[int], pa.Array]) -> pa.Table:
    t = drive_table(seconds=10, paths=SMALL)
    return t.append_column(pa.field(name, arr(t.num_rows).type), arr(t.num_rows))


def _replace(path: str, values: Callable[[int], pa.Array]) -> pa.Table:
    t = drive_table(seconds=10, paths=SMALL)
    i = t.column_names.index(path)
    return t.set_column(i, pa.field(path, values(t.num_rows).type), values(t.num_rows))


def _raw_envelope(v: VehicleIdentity, table: pa.Table, **header: object) -> bytes:
    ts = table.column("t").cast(pa.int64())
    fields = dict(
        vin=v.vin, region=v.region, seq=1, prev=GENESIS_PREV, t0=ts[0].as_py(), t1=ts[-1].as_py(), rows=table.num_rows
    )
    fields.update(header)
    return encode_envelope(BatchHeader(**fields), encode_payload(table), v.key)  # type: ignore[arg-type]


def _future_table() -> pa.Table:
    return drive_table(start_ms=int(time.time() * 1000) + 3_600_000, seconds=10, paths=SMALL)


CASES: list[tuple[str, int, str, Callable[[VehicleIdentity], bytes], str]] = [
    (
        "unknown vehicle",
        401,
        "unknown_vehicle",
        lambda v: make_batch(
            vin=vin_for(999),
            region="cn",
            seq=1,
            prev=GENESIS_PREV,
            table=drive_table(seconds=10, paths=SMALL),
            key=v.key,
        ),
        BATCH_MEDIA_TYPE,
    ),
    (
        "bad signature",
        401,
        "bad_signature",
        lambda v: make_batch(
            vin=v.vin,
            region="cn",
            seq=1,
            prev=GENESIS_PREV,
            table=drive_table(seconds=10, paths=SMALL),
            key=Ed25519PrivateKey.generate(),
        ),
        BATCH_MEDIA_TYPE,
    ),
    ("broken chain: wrong prev", 409, "broken_chain", lambda v: batch(v, prev="ab" * 32), BATCH_MEDIA_TYPE),
    ("broken chain: gap", 409, "broken_chain", lambda v: batch(v, seq=2), BATCH_MEDIA_TYPE),
    ("malformed: garbage", 400, "malformed_batch", lambda v: b"hello, gateway" * 10, BATCH_MEDIA_TYPE),
    ("malformed: truncated", 400, "malformed_batch", lambda v: batch(v)[:-100], BATCH_MEDIA_TYPE),
    ("malformed: trailing bytes", 400, "malformed_batch", lambda v: batch(v) + b"\0", BATCH_MEDIA_TYPE),
    (
        "malformed: header not json",
        400,
        "malformed_batch",
        lambda v: b"CVB1" + struct.pack(">I", 3) + b"{{{" + struct.pack(">Q", 0) + bytes(64),
        BATCH_MEDIA_TYPE,
    ),
    (
        "malformed: payload not parquet",
        400,
        "malformed_batch",
        lambda v: encode_envelope(
            BatchHeader(vin=v.vin, region="cn", seq=1, prev=GENESIS_PREV, t0=BASE_MS, t1=BASE_MS + 1, rows=1),
            b"PAR1 nonsense",
            v.key,
        ),
        BATCH_MEDIA_TYPE,
    ),
    (
        "malformed: row count",
        400,
        "malformed_batch",
        lambda v: _raw_envelope(v, drive_table(seconds=10, paths=SMALL), rows=5),
        BATCH_MEDIA_TYPE,
    ),
    ("wrong content type", 415, "unsupported_media_type", lambda v: batch(v), "application/json"),
    (
        "unknown signal",
        400,
        "unknown_signal",
        lambda v: batch(v, _with_column("Vehicle.Cabin.Secret", lambda n: pa.array(np.ones(n), pa.float32()))),
        BATCH_MEDIA_TYPE,
    ),
    (
        "wrong type",
        400,
        "wrong_signal_type",
        lambda v: batch(v, _replace("Vehicle.Speed", lambda n: pa.array(np.ones(n), pa.float64()))),
        BATCH_MEDIA_TYPE,
    ),
    (
        "out of range",
        400,
        "value_out_of_range",
        lambda v: batch(v, _replace("Vehicle.Speed", lambda n: pa.array(np.full(n, 999.0), pa.float32()))),
        BATCH_MEDIA_TYPE,
    ),
    (
        "not finite",
        400,
        "value_out_of_range",
        lambda v: batch(v, _replace("Vehicle.Speed", lambda n: pa.array(np.full(n, np.nan), pa.float32()))),
        BATCH_MEDIA_TYPE,
    ),
    (
        "enum value not allowed",
        400,
        "value_out_of_range",
        lambda v: batch(v, _replace("Vehicle.Body.Lights.Brake.IsActive", lambda n: pa.array(["ON"] * n))),
        BATCH_MEDIA_TYPE,
    ),
    ("timestamps outside span", 400, "timestamp_out_of_span", lambda v: batch(v, t0=BASE_MS + 5000), BATCH_MEDIA_TYPE),
    (
        "timestamps not increasing",
        400,
        "timestamp_out_of_span",
        lambda v: batch(
            v, drive_table(seconds=10, paths=SMALL).take(list(range(99, -1, -1))), t0=BASE_MS, t1=BASE_MS + 10_000
        ),
        BATCH_MEDIA_TYPE,
    ),
    ("far in the future", 400, "timestamp_in_future", lambda v: batch(v, _future_table()), BATCH_MEDIA_TYPE),
    ("oversized", 413, "payload_too_large", lambda v: batch(v, drive_table(seconds=200, seed=3)), BATCH_MEDIA_TYPE),
    (
        # Residency comes from the registration, not the header (421 for foreign VINs: tests/ingest/test_trust.py).
        "header claims another region",
        400,
        "region_mismatch",
        lambda v: make_batch(
            vin=v.vin, region="eu", seq=1, prev=GENESIS_PREV, table=drive_table(seconds=10, paths=SMALL), key=v.key
        ),
        BATCH_MEDIA_TYPE,
    ),
]


@pytest.mark.parametrize(("name", "status", "code", "build", "ctype"), CASES, ids=[c[0] for c in CASES])
def test_refusals_store_nothing_and_keep_serving(
    http: httpx.Client,
    region: Region,
    vehicle: VehicleIdentity,
    name: str,
    status: int,
    code: str,
    build: Callable[[VehicleIdentity], bytes],
    ctype: str,
) -> None:
    before = stored(region)
    blob = build(vehicle)
    if code == "payload_too_large":
        assert len(blob) > 100_000
        region.gateway.settings = region.settings.with_(max_batch_bytes=100_000)
        region.settings = region.gateway.settings
    r = post(http, blob, ctype)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert stored(region) == before
    if code == "region_mismatch":
        assert err["registered_region"] == "cn" and err["header_region"] == "eu"
    # Still serving, and the vehicle can still upload its real first batch.
    good = post(http, batch(vehicle))
    assert good.status_code == 200, good.text


def test_different_batch_with_used_seq_is_refused(http: httpx.Client, region: Region, vehicle: VehicleIdentity) -> None:
    assert post(http, batch(vehicle)).status_code == 200
    before = stored(region)
    other = batch(vehicle, drive_table(seconds=10, paths=SMALL, seed=5))
    r = post(http, other)
    assert r.status_code == 409 and r.json()["error"]["code"] == "seq_conflict"
    assert stored(region) == before


def test_vehicle_without_a_valid_certificate_is_refused(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity
) -> None:
    from carvault.pki import RegionCA

    rogue = RegionCA.load_or_create(Ed25519PrivateKey.generate(), region.settings.data_dir / "rogue.pem", "cn")
    with region.db.session() as s:
        s.get(Vehicle, vehicle.vin).certificate_pem = rogue.issue(vehicle.vin, vehicle.public_key_bytes)
    region.gateway._keys.clear()
    r = post(http, batch(vehicle))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unknown_vehicle"
    assert "certificate" in r.json()["error"]["message"]
    assert stored(region)[:2] == (0, 0)


def test_crash_between_log_append_and_index_write_does_not_log_twice(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity
) -> None:
    blob = batch(vehicle)
    first = post(http, blob).json()
    from sqlalchemy import update

    with region.db.session() as s:  # the index write was lost in a crash
        s.execute(update(BatchRecord).values(log_index=None))
    again = post(http, blob)
    assert again.status_code == 200 and again.json()["log_index"] == first["log_index"]
    assert region.log.size == 1
