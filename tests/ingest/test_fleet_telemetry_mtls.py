"""Fleet Telemetry end to end: a Tesla-like client streams a simulated drive over WebSocket with mutual TLS; the data
reaches the owner API and an incident package as region-attested; every bad case is refused and the server goes on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sqlalchemy import func, select
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from carvault.ingest.fleet_telemetry import FleetMapping
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.protocol.fleet_telemetry.envelope import Answer, decode_answer
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.simulator import simulate_day
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, opt_in, run_coroutine, vin_for
from tests.ingest.fleet_telemetry_client import (
    FleetClient,
    FleetPKI,
    Issued,
    client_context,
    message,
    payload,
    tesla_payloads,
    value_of,
)

pytestmark = pytest.mark.slow
VIN = vin_for(51)
F = pb.Field
DAY = dt.date(2025, 11, 14)  # inside the year of opt-ins ``opt_in`` gives from BASE_MS


@dataclass
class World:
    region: Region
    server: BackgroundServer
    http: httpx.Client
    pki: FleetPKI
    owner: OwnerClient

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.server.fleet_port}/"

    def stream(self, vin_cert: str, messages: list[bytes]) -> list[Answer]:
        """Connect as the car whose certificate names ``vin_cert`` and stream ``messages``."""
        ctx = client_context(self.pki, self.pki.vehicle(vin_cert))

        async def go() -> list[Answer]:
            async with FleetClient(self.url, ctx) as c:
                return await c.stream(messages)

        return run_coroutine(go())

    def stored(self, vin: str = VIN) -> int:
        with self.region.db.session() as s:
            return int(s.scalar(select(func.count(BatchRecord.id)).where(BatchRecord.vin == vin)) or 0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    pki = FleetPKI(tmp_path / "pki")
    settings = Settings(
        data_dir=tmp_path / "region-cn",
        region="cn",
        port=free_port(),
        fleet_telemetry_port=free_port(),
        fleet_issuer_cas=str(pki.issuers_file),
        fleet_tls_cert=str(pki.server.cert_file),
        fleet_tls_key=str(pki.server.key_file),
        fleet_batch_wait_ms=300,
    )
    region = Region(settings)
    try:
        with (
            BackgroundServer(region, port=settings.port, fleet_port=settings.fleet_telemetry_port) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            owner = make_owner(http)
            region.fleet.register(VIN, "TESLA-PAIR-1", model="Tesla Model 3")
            r = http.post(
                "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": VIN, "pairing_code": "TESLA-PAIR-1"}
            )
            assert r.status_code == 201, r.text
            yield World(region, server, http, pki, owner)
    finally:
        region.close()


def _drive(mapping: FleetMapping, seconds: int = 120) -> pa.Table:
    """``seconds`` of the simulator's first drive, one row a second (Tesla's usual interval)."""
    day = simulate_day(VIN, 3, DAY, signals=mapping.signals)
    start = day.drives[0].start_ms + 60_000
    start -= start % 1000
    t = day.table.column("t").cast(pa.int64())
    keep = pc.and_(
        pc.and_(pc.greater_equal(t, start), pc.less(t, start + seconds * 1000)),
        pc.equal(pc.divide(t, 1000), pc.divide(pc.add(t, 999), 1000)),  # whole seconds only
    )
    return day.table.filter(keep)


def test_a_simulated_drive_streams_and_reaches_the_owner_attested(world: World, tmp_path: Path) -> None:
    opt_in(world.region, VIN, "location", "location_precise")
    mapping = world.region.fleet.mapping
    drive = _drive(mapping)
    assert drive.num_rows == 120
    records = tesla_payloads(drive, mapping)
    answers = world.stream(VIN, [message(VIN, p, f"tx-{i}") for i, p in enumerate(records)])
    assert all(a.ok for a in answers), [a.reason for a in answers if not a.ok][:3]
    assert [a.txid for a in answers] == [f"tx-{i}".encode() for i in range(120)] and {a.topic for a in answers} == {
        b"V"
    }

    t = drive.column("t").cast(pa.int64())
    start, end = t[0].as_py(), t[-1].as_py() + 1
    paths = ["Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.CurrentLocation.Latitude"]
    paths += ["Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure", "Vehicle.Powertrain.Transmission.SelectedGear"]
    r = world.http.get(
        f"/api/v1/vehicles/{VIN}/telemetry",
        headers=world.owner.headers,
        params={"start": start, "end": end, "signals": ",".join(paths), "format": "json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == 120 and body["t"] == t.to_pylist()
    for path in paths:
        sent, got = drive.column(path).to_pylist(), body["signals"][path]
        assert len(got) == 120 and sum(v is not None for v in got) == sum(v is not None for v in sent) > 0, path
        for a, b in zip(sent, got, strict=True):
            assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)), path

    batches = world.http.get(f"/api/v1/vehicles/{VIN}/batches", headers=world.owner.headers).json()["batches"]
    assert batches and {(b["provenance"], b["attested_by"]) for b in batches} == {("region-attested", "cn")}
    # The live channel saw the same values (VISS subscribers read this hub).
    latest = world.region.live.latest(VIN)
    assert math.isclose(latest["Vehicle.Speed"].value, drive.column("Vehicle.Speed")[-1].as_py(), rel_tol=1e-6)

    # An incident package over the drive, checked by `carvault verify` as a court would.
    r = world.http.post(
        f"/api/v1/vehicles/{VIN}/packages",
        headers=world.owner.headers,
        json={"event_time": start + 60_000, "event_kind": "crash", "minutes_before": 1, "minutes_after": 1},
    )
    assert r.status_code == 201, r.text
    pkg = tmp_path / "package.zip"
    pkg.write_bytes(world.http.get(r.json()["download"], headers=world.owner.headers).content)
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(world.http.get("/api/v1/region/trust").json()))
    exe = Path(sys.executable).with_name("carvault")
    out = subprocess.run(
        [str(exe), "verify", str(pkg), "--trust", str(trust)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "attested by region cn, not signed by the car" in out.stdout
    assert "VERIFIED: every check holds; this data was attested by region cn, not signed by the car" in out.stdout
    as_json = subprocess.run(
        [str(exe), "verify", str(pkg), "--trust", str(trust), "--json"], capture_output=True, text=True, check=False
    )
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is True and doc["attested_by"] == "cn" and doc["provenance"].startswith("attested by region cn")


def _good(i: int) -> bytes:
    return message(VIN, payload(BASE_MS + i * 1000, {F.VehicleSpeed: value_of(double_value=30.0)}), f"good-{i}")


def _bad_records() -> list[tuple[str, bytes, str]]:
    unknown = pb.Payload()
    unknown.created_at.FromMilliseconds(BASE_MS)
    d = unknown.data.add()
    d.key = 4242
    d.value.double_value = 1.0
    return [
        ("malformed envelope", b"\x10\x00\x00\x00garbage-garbage-garbage", "malformed_fleet_record"),
        ("protobuf that is not a Payload", message(VIN, b"\x0a\xff\xff\xff", "p"), "malformed_fleet_record"),
        ("unknown field", message(VIN, unknown, "u"), "unknown_fleet_field"),
        (
            "wrong value type",
            message(VIN, payload(BASE_MS, {F.Odometer: value_of(location_value=(1.0, 2.0))}), "w"),
            "wrong_signal_type",
        ),
        (
            "value out of range",
            message(VIN, payload(BASE_MS, {F.VehicleSpeed: value_of(double_value=900)}), "r"),
            "value_out_of_range",
        ),
        ("record for another VIN", message(VIN, payload(BASE_MS, {}, vin=vin_for(52)), "v"), "fleet_vin_mismatch"),
        (
            "envelope for another VIN",
            message(VIN, payload(BASE_MS, {}), "d", device_id=vin_for(52)),
            "fleet_vin_mismatch",
        ),
    ]


@pytest.mark.parametrize(("case", "data", "code"), _bad_records(), ids=[c[0] for c in _bad_records()])
def test_a_bad_record_is_refused_nothing_is_stored_and_the_stream_goes_on(
    world: World, case: str, data: bytes, code: str
) -> None:
    answers = world.stream(VIN, [data])
    assert not answers[0].ok and answers[0].reason.startswith(f"{code}:"), (case, answers[0])
    assert world.stored() == 0
    after = world.stream(VIN, [_good(1), _good(2)])
    assert all(a.ok for a in after) and world.stored() == 1


def _closed_reason(world: World, cert_vin: str, issuer: str = "issuing") -> str:
    """Connect with a certificate and send one record; the close reason the server gave (or the TLS failure)."""
    return _closed_reason_with(world, world.pki.leaf(cert_vin, getattr(world.pki, issuer)))


def test_a_certificate_from_another_issuer_is_refused_by_tls(world: World) -> None:
    assert _closed_reason(world, VIN, issuer="other_root").startswith("tls:")
    assert world.stored() == 0
    assert all(a.ok for a in world.stream(VIN, [_good(1)]))  # the listener still serves


def test_an_unregistered_vehicle_or_a_non_vin_certificate_is_turned_away(world: World) -> None:
    assert _closed_reason(world, vin_for(53)).startswith("unknown_vehicle:")
    assert _closed_reason(world, "telemetry.example.com").startswith("unknown_vehicle:")
    assert world.stored(vin_for(53)) == 0


def test_the_vin_is_the_verified_leafs_never_an_intermediates(world: World) -> None:
    """The 2026 fleet-telemetry identity bug: the VIN read from the last certificate of the chain the client sent."""
    pki = world.pki
    # An issuing CA whose own CN is the registered VIN, signing a leaf for an unregistered VIN: the car may only be
    # the leaf's VIN, so it is turned away, and nothing lands on the registered car.
    spoof_ca = pki.ca(VIN, pki.root)
    assert _closed_reason_with(world, pki.leaf(vin_for(54), spoof_ca)).startswith("unknown_vehicle:")
    # A leaf for an unregistered VIN sent with the registered car's certificate after it in the chain: same.
    leaf, registered = pki.leaf(vin_for(55), pki.issuing), pki.vehicle(VIN)
    chain = leaf.cert_file.read_bytes() + registered.cert_file.read_bytes()
    leaf.cert_file.write_bytes(chain)
    assert _closed_reason_with(world, leaf).startswith("unknown_vehicle:")
    assert world.stored() == 0


def _closed_reason_with(world: World, cert: Issued) -> str:
    """What became of one record sent with ``cert``: accepted, its refusal, the close reason, or the TLS failure."""
    ctx = client_context(world.pki, cert)

    async def go() -> str:
        try:
            async with FleetClient(world.url, ctx) as c:
                answers = await c.stream([_good(0)], timeout=20)
                return "accepted" if answers[0].ok else answers[0].reason
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.reason:
                return e.rcvd.reason
            return f"tls: {type(e).__name__}"
        except (ssl.SSLError, OSError, InvalidHandshake, TimeoutError) as e:
            return f"tls: {type(e).__name__}"

    return run_coroutine(go())


def test_text_messages_close_the_connection_after_the_records_before_them(world: World) -> None:
    ctx = client_context(world.pki, world.pki.vehicle(VIN))

    async def go() -> tuple[bool, int | None]:
        async with FleetClient(world.url, ctx) as c:
            await c.ws.send(_good(1))
            await c.ws.send("hello")
            answer = decode_answer(await asyncio.wait_for(c.ws.recv(), 20))
            try:
                await asyncio.wait_for(c.ws.recv(), 10)
            except ConnectionClosed as e:
                return answer.ok, e.rcvd.code if e.rcvd is not None else None
        return answer.ok, None

    assert run_coroutine(go()) == (True, 1003)
    assert world.stored() == 1


def test_viss_subscribers_see_what_a_tesla_streams(world: World) -> None:
    """The live channel: a VISS v3 subscriber of the owner gets the values the region stored from the records."""
    import json
    import time

    from websockets.sync.client import connect as ws_connect

    url = world.server.url.replace("http://", "ws://") + f"/api/v1/viss/{VIN}"
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    now = int(time.time() * 1000) - 10_000
    with ws_connect(url, subprotocols=["VISSv3"]) as viss:  # type: ignore[list-item]
        viss.send(
            json.dumps(
                {
                    "action": "subscribe",
                    "requestId": "1",
                    "authorization": token,
                    "path": "Vehicle.Speed",
                    "filter": {"variant": "change", "parameter": {"logic-op": "gt", "diff": "1"}},
                }
            )
        )
        first = json.loads(viss.recv(timeout=10))
        assert first.get("action") == "subscribe" and "error" not in first, first
        mph = [30.0, 40.0, 50.0]
        records = [payload(now + i * 1000, {F.VehicleSpeed: value_of(double_value=v)}) for i, v in enumerate(mph)]
        assert all(a.ok for a in world.stream(VIN, [message(VIN, p, f"live-{i}") for i, p in enumerate(records)]))
        seen: list[float] = []
        deadline = time.monotonic() + 15
        # VISS serves values at the signal's resolution (0.01 km/h for the speed).
        while not seen or not math.isclose(seen[-1], 50.0 * 1.609344, abs_tol=0.006):
            assert time.monotonic() < deadline, seen
            msg = json.loads(viss.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("action") == "subscription" and "data" in msg:
                seen.append(float(msg["data"]["dp"]["value"]))
        assert seen == [round(v * 1.609344, 2) for v in mph[-len(seen) :]] and len(seen) >= 2


def test_the_owner_is_told_the_region_signs_not_the_car(world: World) -> None:
    cars = world.http.get("/api/v1/vehicles", headers=world.owner.headers).json()
    assert [(c["vin"], c["provenance"], c["attested_by"]) for c in cars] == [(VIN, "region-attested", "cn")]
    token = world.owner.headers["Authorization"].removeprefix("Bearer ")
    expected = {
        "en": "region CN, not the car: this car streams Tesla Fleet Telemetry, which it does not sign",
        "zh-CN": "CN 区域，而非车辆：这辆车发送的是特斯拉 Fleet Telemetry 数据，车辆本身不签名",
    }
    for lang, text in expected.items():
        page = world.http.get("/vehicles", cookies={"carvault_session": token, "carvault_lang": lang})
        assert page.status_code == 200 and text in page.text, (lang, page.text[-2000:])


def test_carvault_serve_opens_the_listener_and_fleet_register_registers(tmp_path: Path) -> None:
    """The operator's path: `carvault fleet-register`, then `carvault serve` with the fleet settings set."""
    import os
    import re

    from tests.factories import wait_until_up

    pki = FleetPKI(tmp_path / "pki")
    data = tmp_path / "region"
    port, fleet_port = free_port(), free_port()
    env = {
        **os.environ,
        "CARVAULT_DATA_DIR": str(data),
        "CARVAULT_REGION": "cn",
        "CARVAULT_PORT": str(port),
        "CARVAULT_FLEET_TELEMETRY_PORT": str(fleet_port),
        "CARVAULT_FLEET_ISSUER_CAS": str(pki.issuers_file),
        "CARVAULT_FLEET_TLS_CERT": str(pki.server.cert_file),
        "CARVAULT_FLEET_TLS_KEY": str(pki.server.key_file),
        "CARVAULT_FLEET_BATCH_WAIT_MS": "100",
    }
    cli = [sys.executable, "-m", "carvault.cli"]
    out = subprocess.run([*cli, "fleet-register", VIN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"attested by the\s+region, not signed by the car; pairing code [A-Z0-9]{8}", out.stdout), (
        out.stdout
    )
    proc = subprocess.Popen([*cli, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc)
        ctx = client_context(pki, pki.vehicle(VIN))

        async def go() -> list[Answer]:
            async with FleetClient(f"wss://127.0.0.1:{fleet_port}/", ctx) as c:
                return await c.stream([_good(1)])

        (answer,) = run_coroutine(go())
        assert answer.ok and answer.txid == b"good-1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
