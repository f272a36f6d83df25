"""A live value proven offline against the later logged batch (docs/protocol.md §8.5)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from carvault.ledger.merkle import VerificationError
from carvault.protocol import BATCH_MEDIA_TYPE, decode_envelope, leaf_salt
from carvault.protocol.live import decode_frame
from carvault.provisioning import provision
from carvault.region import Region, log_origin
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.live import LiveSender
from carvault.verify.live import BatchLogProof, LiveFrameProof, verify_live_frame
from tests.factories import BASE_MS, drive_table, opt_in, vin_for

SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"


def _stream_and_log(region: Region, tmp_path: Path) -> tuple[VehicleAgent, LiveSender, list[bytes], dict, bytes]:
    car = provision(region, vin_for(1), tmp_path / "vehicles")
    opt_in(region, car.vin)  # every category of the test data, except precise location
    agent = VehicleAgent(car, tmp_path / "car", "http://127.0.0.1:9")  # never contacted: the test hands bytes over
    agent.policy = region.consents.policy(car.vin)
    sender = LiveSender(agent)
    table = drive_table(BASE_MS, seconds=20)
    frames = sender.frames(table)

    async def stream() -> None:
        for f in frames:
            assert (await region.live_channel.accept(car.vin, f))["duplicate"] is False

    asyncio.run(stream())
    assert agent.process(table) == 1  # one batch, committing to every frame
    blob = agent.pending()[0].read_bytes()
    receipt = region.gateway.accept(blob, BATCH_MEDIA_TYPE)  # the region checks the root against what it received
    return agent, sender, frames, receipt, blob


def _log_proof(region: Region, receipt: dict, salt: bytes | None) -> BatchLogProof:
    return BatchLogProof(
        received_ms=receipt["received_ms"],
        log_index=receipt["log_index"],
        path=region.log.inclusion_proof(receipt["log_index"]),
        checkpoint=region.log.checkpoint(),
        log_key=region.log.public_key,
        log_key_name=log_origin(region.name),
        leaf_salt=salt,
        origin=log_origin(region.name),
    )


def test_a_live_value_is_proven_offline(region: Region, tmp_path: Path) -> None:
    agent, sender, frames, receipt, blob = _stream_and_log(region, tmp_path)
    assert len(frames) == 20  # 1 Hz over 20 s
    header = decode_envelope(blob).header
    assert (header.live_first, header.live_last) == (1, 20)
    car = agent.identity
    assert car.log_key is not None
    log = _log_proof(region, receipt, leaf_salt(car.log_key, header.seq))
    key = car.key.public_key()
    for counter in (1, 7, 20):
        p = sender.proof(counter)
        assert p is not None and p.seq == header.seq
        proven = verify_live_frame(LiveFrameProof(frames[counter - 1], blob, p.path), key, log)
        assert proven.counter == counter
    # the value proven is the value the batch holds at that instant, at the same (coarsened) precision
    frame = decode_frame(frames[6])
    table = decode_envelope(blob).table()
    at = table.column("t").cast("int64").to_pylist().index(frame.t_ms)
    assert frame.values[LAT] == table.column(LAT)[at].as_py()
    assert frame.values[SPEED] == pytest.approx(table.column(SPEED)[at].as_py())

    # The region's own kept hashes give the same path while it keeps them.
    assert region.live_channel.evidence.proof(car.vin, 7, 1, 20) == sender.proof(7).path  # type: ignore[union-attr]

    def refused(frame: bytes, batch: bytes, path: list[bytes], lg: BatchLogProof = log) -> str:
        with pytest.raises(VerificationError) as e:
            verify_live_frame(LiveFrameProof(frame, batch, path), key, lg)
        return str(e.value)

    path7 = sender.proof(7).path  # type: ignore[union-attr]
    assert "inclusion" in refused(frames[7], blob, path7) or "root" in refused(frames[7], blob, path7)
    forged = bytearray(frames[6])
    forged[-70] ^= 1
    assert "signature" in refused(bytes(forged), blob, path7)
    assert refused(frames[6], blob, path7[:-1])  # a shortened path
    other_salt = _log_proof(region, receipt, leaf_salt(bytes(32), header.seq))
    assert refused(frames[6], blob, path7, other_salt)  # not the logged batch leaf
    wrong_time = _log_proof(region, {**receipt, "received_ms": receipt["received_ms"] + 1}, log.leaf_salt)
    assert refused(frames[6], blob, path7, wrong_time)


def test_a_root_that_does_not_match_received_frames_is_refused(region: Region, tmp_path: Path) -> None:
    car = provision(region, vin_for(1), tmp_path / "vehicles")
    opt_in(region, car.vin)
    agent = VehicleAgent(car, tmp_path / "car", "http://127.0.0.1:9")
    agent.policy = region.consents.policy(car.vin)
    sender = LiveSender(agent, deadband=5.0)
    table = drive_table(BASE_MS, seconds=20, paths=[SPEED])
    frames = sender.frames(table)
    assert 0 < len(frames) < 20  # on change only
    asyncio.run(_accept_all(region, car.vin, frames))
    sender._pending[0].digest = bytes(32)  # the car "commits" to a frame it did not send
    agent.process(table)
    with pytest.raises(Exception) as e:
        region.gateway.accept(agent.pending()[0].read_bytes(), BATCH_MEDIA_TYPE)
    assert getattr(e.value, "code", None) == "live_root_mismatch"


async def _accept_all(region: Region, vin: str, frames: list[bytes]) -> None:
    for f in frames:
        await region.live_channel.accept(vin, f)


def test_verifier_imports_no_database_server_or_web_code() -> None:
    code = (
        "import sys, json, carvault.verify.live; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('carvault'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    allowed = ("carvault.verify", "carvault.protocol", "carvault.ledger", "carvault.pki", "carvault.signals")
    loaded = json.loads(out)
    assert "carvault.verify.live" in loaded
    assert [m for m in loaded if m != "carvault" and m != "carvault.errors" and not m.startswith(allowed)] == []
