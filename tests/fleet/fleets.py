"""What the fleet tests share: a region whose cars uploaded over HTTP and whose days are compacted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import drive_table, opt_in, vin_for

# (start_ms, seconds, seed) of each drive a car records, given the car's number.
Drives = Callable[[int], list[tuple[int, int, int]]]


def compacted_fleet(root: Path, first: int, cars: int, drives: Drives) -> tuple[Region, list[VehicleIdentity]]:
    """``cars`` cars (VINs from ``vin_for(first)``) opted in, their ``drives`` uploaded in 60 s batches through a
    real server, every day compacted into payload parts. The caller closes the region."""
    port = free_port()
    settings = Settings(
        data_dir=root / "region", region="cn", port=port, region_endpoints={"cn": f"http://127.0.0.1:{port}"}
    )
    region = Region(settings)
    identities = []
    with BackgroundServer(region, port=port) as server:
        for i in range(cars):
            identity = provision(region, vin_for(first + i), root / "cars")
            opt_in(region, identity.vin)
            agent = VehicleAgent(identity, root / "cars" / identity.vin, server.url)
            for start_ms, seconds, seed in drives(i):
                agent.record(drive_table(start_ms=start_ms, seconds=seconds, seed=seed), batch_seconds=60)
            agent.upload_pending()
            identities.append(identity)
    days = {(car, start // 86_400_000) for car in range(cars) for start, _, _ in drives(car)}
    assert len(region.telemetry.compact(now=2**61)) == len(days)
    return region, identities
