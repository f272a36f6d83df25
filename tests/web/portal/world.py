"""A region with real data for the portal tests: an owner, two cars, a simulated day each, uploaded through the
real gateway by the car's own pipeline (consent policy, event recorder, signed batches)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import httpx

from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.simulator import SimulatedDay, fleet_vins, simulate_day

PASSWORD = "correct horse battery"
DAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()  # a recent day, safely in the past
BOUGHT_MS = int(dt.datetime.combine(DAY - dt.timedelta(days=7), dt.time(), dt.UTC).timestamp() * 1000)


@dataclass
class World:
    """What the portal tests share: a running region and what was uploaded to it."""

    region: Region
    server: BackgroundServer
    email: str
    owner_id: int
    token: str
    cars: list[VehicleIdentity]
    days: list[SimulatedDay]

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return self.server.url

    @property
    def auth(self) -> dict[str, str]:
        """Bearer header of the owner."""
        return {"Authorization": f"Bearer {self.token}"}


def register(http: httpx.Client, email: str, password: str = PASSWORD) -> tuple[int, str]:
    """Sign up and log in through the API; (owner id, bearer token)."""
    r = http.post("/api/v1/auth/register", json={"email": email, "password": password, "display_name": "Li Wei"})
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    http.cookies.clear()
    return r.json()["owner"]["id"], r.json()["token"]


def upload_day(region: Region, server: BackgroundServer, car: VehicleIdentity, day: SimulatedDay, folder: Path) -> None:
    """Run the car's pipeline over a simulated day and upload everything."""
    agent = VehicleAgent(car, folder / car.vin, server.url)
    agent.fetch_policy()
    agent.process(day.table, 300)
    agent.finish()
    while agent.pending():
        agent.upload_pending(limit=50)


def build(folder: Path) -> World:
    """Start a region on loopback and fill it."""
    port = free_port()
    settings = Settings(
        data_dir=folder / "region-cn", region="cn", port=port, region_endpoints={"cn": f"http://127.0.0.1:{port}"}
    )
    region = Region(settings)
    server = BackgroundServer(region, port=port).start()
    http = httpx.Client(base_url=server.url, timeout=60)
    email = "li.wei@example.com"
    owner_id, token = register(http, email)
    auth = {"Authorization": f"Bearer {token}"}
    vins = fleet_vins(2, 11)
    cars = [
        provision(region, vin, folder / "vehicles", model=m)
        for vin, m in zip(vins, ("Model 3", "Model Y"), strict=True)
    ]
    days = []
    for i, car in enumerate(cars):
        assert (
            http.post(
                "/api/v1/vehicles/claim", headers=auth, json={"vin": car.vin, "pairing_code": car.pairing_code}
            ).status_code
            == 201
        )
        # Location is sensitive: off by default. The owner turned it on (lasting) the week before the day.
        region.consents.decide(
            car.vin,
            owner_id,
            "location",
            enabled=True,
            purpose="route history in my portal",
            ends_ms=BOUGHT_MS + 365 * 86_400_000,
            lasting=True,
            at_ms=BOUGHT_MS,
        )
        if i == 0:  # ... and, for the first car, precise location too (its own consent)
            region.consents.decide(
                car.vin,
                owner_id,
                "location_precise",
                enabled=True,
                purpose="exact routes for my records",
                ends_ms=BOUGHT_MS + 365 * 86_400_000,
                lasting=True,
                at_ms=BOUGHT_MS,
            )
        day = simulate_day(car.vin, 3 + i, DAY, incident=(i == 0))
        upload_day(region, server, car, day, folder / "vehicles")
        days.append(day)
    http.close()
    return World(region=region, server=server, email=email, owner_id=owner_id, token=token, cars=cars, days=days)
