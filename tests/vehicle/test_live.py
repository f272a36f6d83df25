"""The car's live link over a real server: signed upgrade, frames acknowledged or refused, the stream keeps going."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from carvault.protocol.live import LIVE_PATH, encode_frame
from carvault.protocol.requests import sign_request
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.live import LiveLink, LiveSender
from tests.factories import BASE_MS, drive_table, opt_in, vin_for

pytestmark = pytest.mark.slow
SPEED = "Vehicle.Speed"


def test_car_streams_over_websocket_and_region_keeps_serving(
    region: Region, server: BackgroundServer, tmp_path: Path
) -> None:
    car = provision(region, vin_for(1), tmp_path / "vehicles")
    opt_in(region, car.vin)
    agent = VehicleAgent(car, tmp_path / "car", server.url)
    agent.fetch_policy()  # the vehicle-signed policy fetch, as the batch path
    sender = LiveSender(agent, signals=[SPEED, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"])
    frames = sender.frames(drive_table(BASE_MS, seconds=5))
    assert len(frames) == 5

    async def run() -> None:
        link = LiveLink(sender, server.url)
        ready = await link.open()
        assert ready == {"type": "ready", "vin": car.vin, "region": "cn"}
        answers = await link.send(frames[:3])
        assert [a["counter"] for a in answers] == [1, 2, 3] and all(a["type"] == "ack" for a in answers)
        # a refused frame is answered with the batch code and the stream goes on
        bad = encode_frame(car.vin, "cn", 99, BASE_MS + 9000, {"Vehicle.NoSuch": 1.0}, car.key)
        forged = encode_frame(car.vin, "cn", 98, BASE_MS + 9000, {SPEED: 1.0}, Ed25519PrivateKey.generate())
        (unknown, sig) = await link.send([bad, forged])
        assert unknown["type"] == "error" and unknown["error"]["code"] == "unknown_signal"
        assert unknown["counter"] == 99
        assert sig["error"]["code"] == "bad_signature"
        assert (await link.send([b"not a frame"]))[0]["error"]["code"] == "malformed_frame"
        assert [a["counter"] for a in await link.send(frames[3:])] == [4, 5]
        await link.close()

    asyncio.run(run())
    latest = region.live.latest(car.vin)
    assert set(latest) == {SPEED, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"}
    assert latest[SPEED].t_ms == BASE_MS + 4000
    assert region.live.last_seen_ms(car.vin) is not None


@pytest.mark.parametrize(("vin_n", "close_code", "code"), [(77, 4401, "unknown_vehicle"), (1, 4401, "bad_signature")])
def test_refused_upgrades_close_with_a_code(
    region: Region, server: BackgroundServer, tmp_path: Path, vin_n: int, close_code: int, code: str
) -> None:
    car = provision(region, vin_for(1), tmp_path / "vehicles")
    key = car.key if vin_n != 1 else Ed25519PrivateKey.generate()
    headers = sign_request(key, "GET", LIVE_PATH, vin_for(vin_n))

    async def run() -> None:
        url = "ws://" + server.url.split("://", 1)[1] + LIVE_PATH
        async with connect(url, additional_headers=headers) as ws:
            first = json.loads(await ws.recv())
            assert first["error"]["code"] == code
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == close_code

    asyncio.run(run())


def test_simulate_live_streams_then_batches_commit(region: Region, server: BackgroundServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from carvault.cli import app as cli
    from carvault.protocol import decode_envelope
    from carvault.store.metadata import BatchRecord

    car = provision(region, vin_for(3), tmp_path / "vehicles")
    folder = tmp_path / "vehicles" / car.vin
    args = ["simulate", str(folder), "--endpoint", server.url, "--day", "2025-11-12", "--live"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    acked = int(said.split("live frames: ")[1].split(" ")[0])
    assert acked > 100 and "dropped 0" in said and "refused {}" in said
    assert set(region.live.latest(car.vin)) >= {"Vehicle.Speed"}
    with region.db.session() as s:
        rows = s.query(BatchRecord).filter(BatchRecord.vin == car.vin).all()
        blobs = [region.segment_reader.read(r.segment, r.offset, r.length) for r in rows]
    headers = [decode_envelope(b).header for b in blobs]
    assert sum(h.live_size for h in headers) == acked  # every acknowledged frame is committed by a logged batch
    ranges = sorted((h.live_first, h.live_last) for h in headers if h.live_first is not None)
    assert ranges[0][0] == 1 and all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    # Evidence stays within 1.5 bytes a sample; the live members add about 120 bytes a batch, well under 0.05.
    samples = sum(r.samples for r in rows)
    live_bytes = sum(
        len(b'"live_first":,"live_last":,"live_root":"",') + 64 + 2 * len(str(h.live_last))
        for h in headers
        if h.live_first is not None
    )
    assert sum(len(b) for b in blobs) / samples <= 1.5
    assert live_bytes / samples < 0.05


def test_a_car_of_another_region_is_sent_home(settings, tmp_path: Path) -> None:
    directory = tmp_path / "region-directory.txt"
    directory.write_text(f"{vin_for(8)} eu\n")
    with Region(settings.with_(region_directory=str(directory))) as cn, BackgroundServer(cn) as server:
        key = Ed25519PrivateKey.generate()
        headers = sign_request(key, "GET", LIVE_PATH, vin_for(8))

        async def run() -> None:
            async with connect("ws://" + server.url.split("://", 1)[1] + LIVE_PATH, additional_headers=headers) as ws:
                refusal = json.loads(await ws.recv())
                assert refusal["error"]["code"] == "wrong_region"
                assert refusal["error"]["home_region"] == "eu" and refusal["error"]["endpoint"].startswith("http")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4421

        asyncio.run(run())


def test_the_car_side_imports_no_region_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, json, carvault.vehicle.live, carvault.protocol.live; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('carvault'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    forbidden = ("carvault.ingest", "carvault.store", "carvault.web", "carvault.region", "carvault.access")
    assert [m for m in json.loads(out) if m.startswith(forbidden)] == []


def test_an_offline_car_drops_frames_and_reconnects(region: Region, tmp_path: Path) -> None:
    from carvault.vehicle.live import LiveStreamer

    car = provision(region, vin_for(4), tmp_path / "vehicles")
    agent = VehicleAgent(car, tmp_path / "car", "http://127.0.0.1:9")
    sender = LiveSender(agent, signals=[SPEED])
    chunks = [sender.frames(drive_table(BASE_MS + i * 2000, seconds=2, paths=[SPEED])) for i in range(3)]
    port = region.settings.port

    async def run() -> LiveStreamer:
        streamer = LiveStreamer(sender, f"http://127.0.0.1:{port}", retry_s=0)
        await streamer.push(chunks[0])  # no server yet: dropped, nothing queued
        assert not streamer.connected and streamer.report.dropped == 2
        with BackgroundServer(region, port=port):
            await streamer.push(chunks[1])
            assert streamer.connected and streamer.report.acked == 2
        await streamer.push(chunks[2])  # the region went away: dropped again, the link forgotten
        assert not streamer.connected and streamer.report.dropped == 4
        await streamer.close()
        return streamer

    asyncio.run(run())
    assert region.live.latest(car.vin)[SPEED].t_ms == BASE_MS + 3000  # only the frames sent while connected


def test_frames_carry_only_what_consent_lets_leave_the_car(region: Region, tmp_path: Path) -> None:
    from carvault.protocol.live import decode_frame
    from carvault.signals import catalogue

    car = provision(region, vin_for(5), tmp_path / "vehicles")
    agent = VehicleAgent(car, tmp_path / "car", "http://127.0.0.1:9")  # no consents on record: defaults only
    frames = LiveSender(agent).frames(drive_table(BASE_MS, seconds=3))
    cat = catalogue()
    sent = {p for f in frames for p in decode_frame(f).values}
    assert SPEED in sent
    assert not {cat[p].category for p in sent} & {"location", "location_precise", "driver_monitoring"}
    # on change with a deadband: a signal is sent again only once it moved by more than its band
    on_change = LiveSender(VehicleAgent(car, tmp_path / "car2", "http://127.0.0.1:9"), deadband={SPEED: 1e9})
    speeds = [decode_frame(f).values.get(SPEED) for f in on_change.frames(drive_table(BASE_MS, seconds=5))]
    assert len([s for s in speeds if s is not None]) == 1
