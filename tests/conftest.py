"""Fixtures that build real objects: a region in tmp_path, a real server on loopback, real keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import vin_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    cn, eu = free_port(), free_port()
    return Settings(
        data_dir=tmp_path / "region-cn",
        region="cn",
        port=cn,
        region_endpoints={"cn": f"http://127.0.0.1:{cn}", "eu": f"http://127.0.0.1:{eu}"},
    )


@pytest.fixture
def region(settings: Settings) -> Iterator[Region]:
    r = Region(settings)
    yield r
    r.close()


@pytest.fixture
def server(region: Region) -> Iterator[BackgroundServer]:
    with BackgroundServer(region, port=region.settings.port) as s:
        yield s


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@dataclass
class OwnerClient:
    """An owner logged in with a bearer token."""

    email: str
    password: str
    owner_id: int
    headers: dict[str, str]


def make_owner(http: httpx.Client, email: str | None = None) -> OwnerClient:
    email = email or f"owner-{secrets.token_hex(4)}@example.com"
    password = "correct horse battery"
    r = http.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    http.cookies.clear()  # tests authenticate explicitly
    return OwnerClient(email, password, body["owner"]["id"], {"Authorization": f"Bearer {body['token']}"})


@pytest.fixture
def owner(http: httpx.Client) -> OwnerClient:
    return make_owner(http)


@pytest.fixture
def vehicle(region: Region, tmp_path: Path) -> VehicleIdentity:
    return provision(region, vin_for(1), tmp_path / "vehicles")


@pytest.fixture
def agent(vehicle: VehicleIdentity, server: BackgroundServer, tmp_path: Path) -> VehicleAgent:
    return VehicleAgent(vehicle, tmp_path / "vehicles" / vehicle.vin, server.url)
