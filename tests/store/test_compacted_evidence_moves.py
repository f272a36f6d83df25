"""Compacted evidence survives a move between blob backends (``carvault copy-blobs``, docs/operations.md).

A segment file compacted in place (prefix · hole · signature) read from S3 after the move, and a skeleton object
(prefix · signature) read from a folder, must both give back the exact signed envelope, never a wrong one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from carvault.region import Region
from carvault.server import free_port
from carvault.settings import Settings
from carvault.store.blobs import LocalBlobStore, copy_blobs
from carvault.store.metadata import BatchRecord
from carvault.store.s3 import open_s3_store
from carvault.store.segments import SegmentReader
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in
from tests.s3server import S3_TEST_ENV, S3Server, s3_bucket, s3_server  # noqa: F401 - the fixture

DAY = 86_400_000

pytestmark = pytest.mark.slow  # a moto server and a region on each side


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The region compacts on this backend; the test then moves its blobs to the other one."""
    port = free_port()
    base = Settings(
        data_dir=tmp_path / "region-cn", region="cn", port=port, region_endpoints={"cn": f"http://127.0.0.1:{port}"}
    )
    if request.param == "local":
        return base
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    s3 = request.getfixturevalue("s3_server")
    return base.with_(blob_store=s3_bucket(s3), s3_endpoint_url=s3.endpoint_url)


def test_compacted_envelopes_read_back_exactly_after_a_move(
    region: Region,
    agent: VehicleAgent,
    s3_server: S3Server,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    vin = agent.identity.vin
    opt_in(region, vin)
    agent.record(drive_table(start_ms=BASE_MS - BASE_MS % DAY + DAY - 120_000, seconds=240, seed=3), batch_seconds=60)
    assert len(agent.upload_pending()) == 4
    with region.db.session() as s:
        before = {r.batch_hash: region.segment_reader.envelope(r) for r in s.scalars(select(BatchRecord))}
    told: list[tuple[int, int]] = []  # the command line's progress bar
    assert sum(c.batches for c in region.telemetry.compact(progress=lambda *n: told.append(n))) == 4
    assert told == [(0, 2), (1, 2), (2, 2)]  # two vehicle-days: the drive crosses midnight
    with region.db.session() as s:
        recs = list(s.scalars(select(BatchRecord)))
    assert all(r.payload_key for r in recs)

    if region.segment_reader.directory is not None:  # compacted in place locally, moved to a bucket
        target = open_s3_store(s3_bucket(s3_server), endpoint_url=s3_server.endpoint_url)
    else:  # skeleton objects on S3, moved to a folder
        target = LocalBlobStore(tmp_path / "moved")
    counted: list[tuple[int, int]] = []
    assert copy_blobs(region.blobs, target, progress=lambda *n: counted.append(n)).copied >= len(recs)
    assert [n for n, _ in counted] == list(range(1, len(counted) + 1)) and {t for _, t in counted} == {len(counted)}
    reader = SegmentReader(target)
    try:
        for r in recs:
            raw = reader.envelope(r)
            assert hashlib.sha256(raw).hexdigest() == r.batch_hash
            assert raw == before[r.batch_hash]
    finally:
        reader.close()
        target.close()


@pytest.mark.parametrize("settings", ["s3"], indirect=True)
def test_a_killed_compactions_skeleton_objects_go_with_their_batches(region: Region, agent: VehicleAgent) -> None:
    """On object storage a compaction killed after step 1 leaves each batch's part and skeleton object unnamed
    (prefix and signature of the batch): a purge erasing the batch, and the owner's deletion, take both."""
    from carvault.compliance.retention import DAY_MS, period_ms
    from carvault.signals import CATEGORIES
    from carvault.store.day_copies import PREFIX

    vin = agent.identity.vin
    opt_in(region, vin)
    agent.record(drive_table(start_ms=BASE_MS - BASE_MS % DAY + DAY - 120_000, seconds=240, seed=5), batch_seconds=60)
    assert len(agent.upload_pending()) == 4
    days = region.telemetry.days
    assert days is not None
    with region.db.session() as s:
        recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.seq)))

    def skeletons() -> set[str]:
        return {k for k in region.blobs.list("segments/") if "skel-" in k}

    def parts() -> set[str]:
        return set(region.blobs.list(f"{PREFIX}/vin={vin}/"))

    assert len(days.write_parts(recs)) == 4  # step 1 done, then killed: no row names what it wrote
    assert len(skeletons()) == 4 and len(parts()) == 4
    later = BASE_MS + max(period_ms(c) for c in CATEGORIES) + 30 * DAY_MS
    region.retention.run(now=later, limit=1)  # one batch erased by a purge
    with region.db.session() as s:
        left = set(s.scalars(select(BatchRecord.batch_hash)))
    gone = {r.batch_hash for r in recs} - left
    assert len(gone) == 1
    assert not [k for k in skeletons() if any(h in k for h in gone)]
    assert not [k for k in parts() if any(h in k for h in gone)]
    assert len(skeletons()) == 3
    owner = region.accounts.register("owner-skeletons@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vin, agent.identity.pairing_code)
    req = region.deletions.request(owner.id, vin, "sold the car", immediately=True)
    assert region.deletions.process(req.id).status == "completed"
    assert skeletons() == set() and parts() == set()
