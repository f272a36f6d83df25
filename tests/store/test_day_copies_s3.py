"""Compact query copies on an S3 region with two replicas: what one replica erases leaves the other's download
cache too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carvault.compliance.retention import DAY_MS, period_ms
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.signals import CATEGORIES, catalogue
from carvault.store.day_copies import PREFIX
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in, vin_for
from tests.s3server import S3_TEST_ENV, S3Server, s3_bucket, s3_server  # noqa: F401
from tests.store.test_evidence_on_s3 import s3_settings

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def replicas(tmp_path: Path, s3_server: S3Server) -> Iterator[tuple[Region, Region]]:  # noqa: F811
    first = s3_settings(tmp_path, s3_server, s3_bucket(s3_server))
    a = Region(first)
    # The second replica: its own machine (data folder, download cache), the same metadata DB and bucket.
    b = Region(first.with_(data_dir=tmp_path / "replica-b", database_url=first.resolved_database_url))
    yield a, b
    b.close()
    a.close()


def _cached(region: Region) -> list[Path]:
    return sorted(p for p in (region.settings.data_dir / "copies-cache" / PREFIX).rglob("*.parquet"))


def test_erasure_on_one_replica_leaves_the_others_cache(replicas: tuple[Region, Region], tmp_path: Path) -> None:
    a, b = replicas
    v = provision(a, vin_for(1), tmp_path / "vehicles")
    opt_in(a, v.vin)
    with BackgroundServer(a, port=a.settings.port) as server:
        agent = VehicleAgent(v, tmp_path / "vehicles" / v.vin, server.url)
        agent.record(drive_table(start_ms=BASE_MS, seconds=180, seed=1), batch_seconds=60)
        agent.upload_pending()
    assert a.telemetry.compact()
    cat = catalogue()
    wanted = [cat.get("Vehicle.Speed"), cat.get("Vehicle.Body.Hood.IsOpen")]
    before = b.telemetry.window(v.vin, BASE_MS - 60_000, BASE_MS + 600_000, wanted)
    assert before.num_rows > 0 and _cached(b)  # b read the copy through its download cache
    old = {p.name for p in _cached(b)}

    # a purges everything: b's downloads of the erased copy leave b's disk with b's next compaction.
    a.retention.run(now=BASE_MS + max(period_ms(c) for c in CATEGORIES) + 30 * DAY_MS)
    assert not list(a.blobs.list(f"{PREFIX}/")) and old == {p.name for p in _cached(b)}
    b.telemetry.compact()
    assert _cached(b) == []
    assert b.telemetry.window(v.vin, BASE_MS - 60_000, BASE_MS + 600_000, wanted).num_rows == 0
