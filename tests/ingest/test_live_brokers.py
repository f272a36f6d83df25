"""Fan-out across two replicas through a real broker: a car on replica A, a subscriber on replica B."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import Unavailable
from carvault.ingest.broker import NatsBroker, PostgresBroker, broker_of
from carvault.ingest.live import LiveHub, LiveUpdate
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.live import LiveLink, LiveSender
from tests.factories import BASE_MS, drive_table, opt_in, run_coroutine, vin_for

pytestmark = pytest.mark.slow
SPEED = "Vehicle.Speed"


def _wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        pytest.fail("nats-server is not installed (scripts/install-system-deps.sh installs it)")
    port = free_port()
    args = [exe, "-a", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


def _replicas(settings: Settings) -> tuple[Region, Region]:
    """Two replicas of one region: the same data folder and metadata database, each with its own broker client."""
    return Region(settings), Region(settings)


def _car_on_a_subscriber_on_b(a: Region, b: Region, tmp_path: Path) -> None:
    car = provision(a, vin_for(1), tmp_path / "vehicles")
    opt_in(a, car.vin)
    with BackgroundServer(a) as server_a, BackgroundServer(b):
        agent = VehicleAgent(car, tmp_path / "car", server_a.url)
        agent.fetch_policy()
        sender = LiveSender(agent, signals=[SPEED])
        frames = sender.frames(drive_table(BASE_MS, seconds=3, paths=[SPEED]))

        async def run() -> list[LiveUpdate]:
            sub = b.live.subscribe(car.vin)
            got: list[LiveUpdate] = []

            async def read() -> None:
                async for u in sub:
                    got.append(u)
                    if len(got) == len(frames):
                        return

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.05)
            link = LiveLink(sender, server_a.url)
            assert (await link.open())["type"] == "ready"
            answers = await link.send(frames)
            assert all(x["type"] == "ack" for x in answers), answers
            await asyncio.wait_for(reader, 10)
            await link.close()
            await sub.close()
            return got

        got = run_coroutine(run())
        assert [u.seq for u in got] == [1, 2, 3]
        latest = b.live.latest(car.vin)  # B never saw the car: its last-value store is fed by the broker
        assert latest[SPEED].t_ms == BASE_MS + 2000
        assert latest[SPEED].value == got[-1].values[SPEED].value
        assert b.live.last_seen_ms(car.vin) is not None
        # B got the frame hashes too: a batch uploaded to B is checked against the frames A accepted. (A hears its
        # own frames back through the broker as well, perhaps a moment after B.)
        assert b.live_channel.evidence.hashes(car.vin, 1, 3) is not None
        deadline = time.monotonic() + 5
        while a.live_channel.evidence.hashes(car.vin, 1, 3) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.live_channel.evidence.hashes(car.vin, 1, 3) == a.live_channel.evidence.hashes(car.vin, 1, 3)


def test_two_replicas_share_nats(nats_url: str, settings: Settings, tmp_path: Path) -> None:
    a, b = _replicas(settings.with_(live_broker=nats_url))
    try:
        assert isinstance(a.live.broker, NatsBroker)
        _car_on_a_subscriber_on_b(a, b, tmp_path)
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_two_replicas_on_one_postgresql(postgres: TemporaryPostgres, settings: Settings, tmp_path: Path) -> None:
    url = postgres.create_database("live_cn")
    a, b = _replicas(settings.with_(database_url=url, live_broker="postgres"))
    try:
        assert isinstance(a.live.broker, PostgresBroker)
        _car_on_a_subscriber_on_b(a, b, tmp_path)
    finally:
        a.close()
        b.close()


def test_misconfigured_brokers_fail_clearly() -> None:
    with pytest.raises(ValueError, match="live_broker"):
        broker_of("kafka://x", "cn", "sqlite:///x")
    with pytest.raises(ValueError, match="PostgreSQL"):
        broker_of("postgres", "cn", "sqlite:///x.db")

    async def unreachable() -> None:
        hub = LiveHub(broker_of(f"nats://127.0.0.1:{free_port()}", "cn", ""))
        with pytest.raises(Unavailable):
            await hub.start()

    run_coroutine(unreachable())
