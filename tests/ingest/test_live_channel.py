"""The region's live channel: frames checked exactly as batches are, then fanned out; batch live roots checked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.errors import (
    BadSignature,
    CarVaultError,
    ConsentNotGiven,
    LiveRootMismatch,
    MalformedFrame,
    RegionMismatch,
    TimestampInFuture,
    Unauthenticated,
    UnknownSignal,
    UnknownVehicle,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.ledger.merkle import leaf_hash, root_from_leaf_hashes
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch, sha256_hex
from carvault.protocol.live import decode_frame, encode_frame, frame_hash
from carvault.provisioning import provision
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, opt_in, run_coroutine, vin_for

SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"


@pytest.fixture
def car(region: Region, tmp_path: Path) -> VehicleIdentity:
    return provision(region, vin_for(1), tmp_path / "vehicles")


def frame(car: VehicleIdentity, counter: int, values: dict, *, t_ms: int = BASE_MS, key=None, region="cn") -> bytes:
    return encode_frame(car.vin, region, counter, t_ms, values, key or car.key)


def test_a_sound_frame_is_accepted_and_reaches_latest(region: Region, car: VehicleIdentity) -> None:
    async def run() -> None:
        sub = region.live.subscribe(car.vin)
        ack = await region.live_channel.accept(car.vin, frame(car, 1, {SPEED: 42.5, "Vehicle.EDR.IgnitionCycle": 3}))
        assert ack == {"type": "ack", "counter": 1, "duplicate": False}
        update = await asyncio.wait_for(anext(aiter(sub)), 2)
        assert update.seq == 1 and update.values[SPEED].value == 42.5
        assert region.live.latest(car.vin)[SPEED].t_ms == BASE_MS
        # the same counter again is a duplicate: acknowledged, not published again
        again = await region.live_channel.accept(car.vin, frame(car, 1, {SPEED: 1.0}))
        assert again["duplicate"] is True
        assert region.live.latest(car.vin)[SPEED].value == 42.5
        await sub.close()

    run_coroutine(run())


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"Vehicle.NoSuch.Signal": 1.0}, UnknownSignal),
        ({SPEED: "fast"}, WrongSignalType),
        ({SPEED: 7}, WrongSignalType),  # an integer where the catalogue says float
        ({SPEED: 900.0}, ValueOutOfRange),
        ({"Vehicle.Powertrain.Transmission.CurrentGear": 300}, ValueOutOfRange),  # does not fit int8
        ({"Vehicle.LowVoltageSystemState": "FLYING"}, ValueOutOfRange),
        ({LAT: 31.2}, ConsentNotGiven),  # location needs the owner's opt-in
    ],
)
def test_frames_are_refused_as_batches_are(
    region: Region, car: VehicleIdentity, values: dict, error: type[CarVaultError]
) -> None:
    with pytest.raises(error):
        region.live_channel.check(car.vin, frame(car, 1, values))
    assert region.live.latest(car.vin) == {}


def test_consent_allows_location_once_given(region: Region, car: VehicleIdentity) -> None:
    opt_in(region, car.vin, "location")
    assert region.live_channel.check(car.vin, frame(car, 1, {LAT: 31.2})) is not None


def test_identity_and_form_refusals(region: Region, car: VehicleIdentity, tmp_path: Path) -> None:
    ch = region.live_channel
    with pytest.raises(BadSignature):
        ch.check(car.vin, frame(car, 1, {SPEED: 1.0}, key=Ed25519PrivateKey.generate()))
    tampered = bytearray(frame(car, 1, {SPEED: 1.0}))
    tampered[-70] ^= 1  # inside the float value: still canonical, no longer what the car signed
    with pytest.raises(BadSignature):
        ch.check(car.vin, bytes(tampered))
    with pytest.raises(RegionMismatch):
        ch.check(car.vin, frame(car, 1, {SPEED: 1.0}, region="eu"))
    with pytest.raises(TimestampInFuture):
        ch.check(car.vin, frame(car, 1, {SPEED: 1.0}, t_ms=BASE_MS + 10**12))
    with pytest.raises(MalformedFrame):
        ch.check(car.vin, b"CVL1" + bytes(100))
    with pytest.raises(MalformedFrame):
        ch.check(car.vin, frame(car, 1, {SPEED: 1.0})[:-1])
    other = provision(region, vin_for(2), tmp_path / "v2")
    with pytest.raises(Unauthenticated):  # a frame of another car on this car's connection
        ch.check(car.vin, frame(other, 1, {SPEED: 1.0}))
    stranger = VehicleIdentity(vin_for(99), "cn", "x", Ed25519PrivateKey.generate(), "ABCDEFGH")
    with pytest.raises(UnknownVehicle):
        ch.check(stranger.vin, frame(stranger, 1, {SPEED: 1.0}))


def test_frame_encoding_is_canonical() -> None:
    key = Ed25519PrivateKey.generate()
    raw = encode_frame(vin_for(1), "cn", 5, BASE_MS, {"B.x": True, "A.y": 1.5, "C": "P", "D": -3}, key)
    f = decode_frame(raw)
    assert f.values == {"A.y": 1.5, "B.x": True, "C": "P", "D": -3} and f.counter == 5
    assert list(f.values) == sorted(f.values)
    f.verify(key.public_key())
    # entries out of order (swap two entries by hand) are refused: one frame, one encoding
    a = raw.index(b"\x03A.y")
    b = raw.index(b"\x03B.x")
    swapped = raw[:a] + raw[b : b + 5] + raw[a:b] + raw[b + 5 :]
    with pytest.raises(MalformedFrame):
        decode_frame(swapped)
    with pytest.raises(MalformedFrame):
        encode_frame(vin_for(1), "cn", 0, BASE_MS, {"A": 1}, key)
    with pytest.raises(MalformedFrame):
        encode_frame(vin_for(1), "cn", 1, BASE_MS, {"A": float("nan")}, key)


def _batch(car: VehicleIdentity, live: tuple[int, int, str] | None, seq: int = 1, prev: str = GENESIS_PREV) -> bytes:
    table = drive_table(BASE_MS, seconds=10, paths=[SPEED])
    return make_batch(vin=car.vin, region="cn", seq=seq, prev=prev, table=table, key=car.key, live=live)


def test_batch_live_root_is_checked_against_received_frames(region: Region, car: VehicleIdentity) -> None:
    frames = [frame(car, c, {SPEED: float(c)}, t_ms=BASE_MS + c * 1000) for c in (1, 2, 3)]

    async def stream() -> None:
        for f in frames:
            await region.live_channel.accept(car.vin, f)

    run_coroutine(stream())
    good = root_from_leaf_hashes([leaf_hash(frame_hash(f)) for f in frames]).hex()
    bad = root_from_leaf_hashes([leaf_hash(frame_hash(f)) for f in frames[:2]]).hex()
    with pytest.raises(LiveRootMismatch) as e:
        region.gateway.accept(_batch(car, (1, 3, bad)), BATCH_MEDIA_TYPE)
    assert e.value.details["expected"] == good
    receipt = region.gateway.accept(_batch(car, (1, 3, good)), BATCH_MEDIA_TYPE)
    assert receipt["seq"] == 1
    # Frames the region never received (4, 5): the car is the authority, the root is taken as signed.
    prev = sha256_hex(_batch(car, (1, 3, good)))
    assert region.gateway.accept(_batch(car, (4, 5, "ab" * 32), seq=2, prev=prev), BATCH_MEDIA_TYPE)["seq"] == 2
    # The region hands out the inclusion path of a frame it still keeps.
    path = region.live_channel.evidence.proof(car.vin, 2, 1, 3)
    assert path is not None and len(path) == 2


def test_old_batches_without_live_members_still_verify(region: Region, car: VehicleIdentity) -> None:
    blob = _batch(car, None)
    assert b"live_" not in blob
    assert region.gateway.accept(blob, BATCH_MEDIA_TYPE)["seq"] == 1


def test_evidence_keeps_hashes_in_runs_and_knows_its_gaps() -> None:
    from carvault.ingest.live import LiveEvidence

    ev = LiveEvidence(ttl_ms=10_000)
    h = {c: c.to_bytes(32, "big") for c in range(1, 700)}
    for c in range(1, 600):  # 599 frames: three runs of at most 256
        ev.add("V", c, h[c], received_ms=c)
    ev.add("V", 650, h[650], received_ms=650)  # frames 600..649 never arrived
    assert ev.hashes("V", 200, 520) == [h[c] for c in range(200, 521)]
    assert ev.hashes("V", 590, 650) is None
    assert ev.hashes("V", 650, 650) == [h[650]]
    assert ev.hashes("W", 1, 1) is None
    ev.add("V", 651, h[651], received_ms=20_000)  # everything older than 10 s goes, run by run
    assert ev.hashes("V", 1, 1) is None and ev.hashes("V", 650, 651) == [h[650], h[651]]


def test_last_values_outlive_the_process_and_reach_late_replicas(
    region: Region, car: VehicleIdentity, settings
) -> None:
    async def stream() -> None:
        await region.live_channel.accept(car.vin, frame(car, 1, {SPEED: 10.0}, t_ms=BASE_MS))
        await region.live_channel.accept(car.vin, frame(car, 2, {SPEED: 20.0}, t_ms=BASE_MS + 1000))
        await region.live.close()  # writes what is not yet in the shared store

    run_coroutine(stream())
    with Region(settings) as later:  # a replica started afterwards (or this one after a restart)
        assert later.live.latest(car.vin)[SPEED].value == 20.0
        assert later.live.last_seen_ms(car.vin) == region.live.last_seen_ms(car.vin)
        assert later.live.latest(vin_for(5)) == {} and later.live.last_seen_ms(vin_for(5)) is None


def test_a_frame_written_from_the_protocol_page_is_accepted(region: Region, car: VehicleIdentity) -> None:
    """docs/protocol.md §8.2 byte by byte, with struct only: the page and the code agree."""
    import struct

    entries = [(b"Vehicle.Body.Lights.Brake.IsActive", b"\x05" + struct.pack(">H", 6) + b"ACTIVE")]
    entries.append((b"Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected", b"\x02"))
    entries.append((b"Vehicle.Powertrain.Transmission.CurrentGear", b"\x03" + struct.pack(">q", -1)))
    entries.append((SPEED.encode(), b"\x04" + struct.pack(">d", 12.25)))
    body = b"CVL1" + car.vin.encode() + bytes([2]) + b"cn" + struct.pack(">QqH", 7, BASE_MS, len(entries))
    for path, value in sorted(entries):
        body += bytes([len(path)]) + path + value
    raw = body + car.key.sign(body)
    f = decode_frame(raw)
    assert raw == encode_frame(car.vin, "cn", 7, BASE_MS, f.values, car.key)
    assert f.values["Vehicle.Powertrain.Transmission.CurrentGear"] == -1
    assert f.values["Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected"] is True
    assert region.live_channel.check(car.vin, raw) is not None


def test_a_consent_stop_refuses_the_frames_of_the_next_second(region: Region, car: VehicleIdentity) -> None:
    import time

    from carvault.ingest.live import POLICY_TTL_MS, now_ms

    start = now_ms()
    opt_in(region, car.vin, "location", at_ms=start - 60_000)
    assert region.live_channel.check(car.vin, frame(car, 1, {LAT: 31.2}, t_ms=start)) is not None
    owner = region.accounts.register("stopper@example.com", "correct horse battery")
    region.consents.decide(car.vin, owner.id, "location", enabled=False)
    time.sleep(POLICY_TTL_MS / 1000 + 0.1)
    with pytest.raises(ConsentNotGiven):
        region.live_channel.check(car.vin, frame(car, 2, {LAT: 31.2}, t_ms=now_ms()))
    assert region.live_channel.check(car.vin, frame(car, 3, {SPEED: 3.0}, t_ms=now_ms())) is not None
