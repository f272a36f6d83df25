"""The same region on PostgreSQL: metadata schema, gateway chain checks, owner queries, audit chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from tests.conftest import make_owner
from tests.factories import BASE_MS, drive_table, opt_in, vin_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


def test_region_on_postgres(postgres: TemporaryPostgres, tmp_path: Path) -> None:
    url = postgres.create_database("region_cn")
    region = Region(Settings(data_dir=tmp_path / "cn", region="cn", database_url=url))
    try:
        assert not region.db.is_sqlite
        car = provision(region, vin_for(7), tmp_path / "vehicles")
        opt_in(region, car.vin)  # the table carries location and biometrics: the gateway checks consent
        with BackgroundServer(region) as server, httpx.Client(base_url=server.url) as http:
            agent = VehicleAgent(car, tmp_path / "vehicles" / car.vin, server.url)
            agent.record(drive_table(BASE_MS, seconds=180), batch_seconds=60)
            receipts = agent.upload_pending()
            assert [r["log_index"] for r in receipts] == [0, 1, 2]
            # Re-sending the first batch gives the same receipt; a forged seq is refused.
            owner = make_owner(http)
            assert (
                http.post(
                    "/api/v1/vehicles/claim",
                    headers=owner.headers,
                    json={"vin": car.vin, "pairing_code": car.pairing_code},
                ).status_code
                == 201
            )
            r = http.get(
                f"/api/v1/vehicles/{car.vin}/telemetry",
                headers=owner.headers,
                params={"start": BASE_MS, "end": BASE_MS + 180_000, "signals": "Vehicle.Speed"},
            )
            assert r.json()["rows"] == 1800
            assert region.audit.verify_chain(owner.owner_id) >= 3
            agent.head.seq = 1  # pretend the car forgot: seq 2 again with different content
            agent.record(drive_table(BASE_MS + 600_000, seconds=60, seed=4), batch_seconds=60)
            with pytest.raises(UploadRefused) as e:
                agent.upload_pending()
            assert e.value.code == "seq_conflict"
    finally:
        region.close()
