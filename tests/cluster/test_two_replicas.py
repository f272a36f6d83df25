"""One region on several machines (issue 12): two `carvault serve` replicas behind HAProxy, on PostgreSQL, an
S3-compatible server, NATS and two witnesses (`carvault witness serve`), all real processes (carvault.bench.cluster).

Cars upload through the balancer; one replica is killed with `kill -9` in the middle; the cars carry on through the
other. Afterwards every acknowledged batch is stored byte for byte, each exactly once in the log, and the log is
consistent with a checkpoint taken before the kill, and both witnesses cosigned a tree holding every batch.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from carvault.bench.cluster import LocalCluster
from carvault.ledger.checkpoint import parse_checkpoint, parse_vkey, verify_cosignatures
from carvault.ledger.merkle import verify_consistency
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import drive_table, opt_in, vin_for

pytestmark = pytest.mark.slow

CARS = 6
BATCHES_PER_CAR = 16


def _settings_available() -> dict[str, str]:
    """Cluster settings beyond the defaults, as far as this build has them."""
    names = {f for f in Settings.__dataclass_fields__}
    extra = {}
    if "log_backend" in names:
        extra["log_backend"] = "postgres"
    return extra


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if "log_backend" not in Settings.__dataclass_fields__:
        pytest.fail("the log has no PostgreSQL backend: replicas on several machines cannot share one log")
    root = tmp_path_factory.mktemp("cluster")
    with LocalCluster(root, replicas=2, settings=_settings_available(), witnesses=2, quorum=2) as c:
        yield c


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    """The region as an operator's tool sees it: the same database, store and keys as the replicas."""
    data_dir = tmp_path_factory.mktemp("operator")
    shutil.copytree(cluster.root / "r1" / "keys", data_dir / "keys")
    env = cluster.settings_env(data_dir)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        region = Region(Settings.from_env())
    yield region
    region.close()


def _log_checkpoint(url: str) -> str:
    r = httpx.get(url + "/api/v1/log/checkpoint", timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def test_kill_one_replica_mid_upload(cluster: LocalCluster, operator: Region, tmp_path: Path) -> None:
    agents = []
    for i in range(CARS):
        identity = provision(operator, vin_for(100 + i), tmp_path / "cars")
        opt_in(operator, identity.vin)
        agent = VehicleAgent(identity, tmp_path / "cars" / identity.vin, cluster.url)
        agent.record(drive_table(seconds=60 * BATCHES_PER_CAR, seed=i), batch_seconds=60)
        agents.append(agent)
    sent = {a.identity.vin: {p.name: p.read_bytes() for p in a.pending()} for a in agents}
    assert all(len(v) == BATCHES_PER_CAR for v in sent.values())

    # A first batch from each car, then a checkpoint everyone has seen.
    for a in agents:
        assert len(a.upload_pending(limit=1)) == 1
    before = _log_checkpoint(cluster.url)

    receipts: dict[str, list[dict]] = {a.identity.vin: [] for a in agents}
    errors: list[BaseException] = []

    def upload(agent: VehicleAgent) -> None:
        try:
            while agent.pending():
                receipts[agent.identity.vin] += agent.upload_with_retry(attempts=40, first_delay_s=0.2, max_delay_s=2)
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    # Kill once a quarter of the batches is in, whatever the machine's speed: the rest is still being uploaded.
    with operator.db.session() as s:
        while s.scalar(select(func.count()).where(BatchRecord.vin.in_(list(sent)))) < CARS * BATCHES_PER_CAR // 4:
            assert any(t.is_alive() for t in threads), errors
            time.sleep(0.01)
            s.expire_all()
    killed_ms = int(time.time() * 1000)
    cluster.replica("r1").kill()  # mid-upload, no goodbye
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not cluster.replica("r1").running

    # Every acknowledged batch is stored byte for byte, exactly once, with a leaf in the log.
    with operator.db.session() as s:
        rows = s.execute(select(BatchRecord).where(BatchRecord.vin.in_(list(sent)))).scalars().all()
        total_leaves_for = s.scalar(select(func.count(func.distinct(BatchRecord.log_index))))
    by_vin_seq = {(r.vin, r.seq): r for r in rows}
    # The kill fell in the middle: batches were accepted before it and after it (by the survivor alone).
    assert sum(r.received_ms < killed_ms for r in rows) >= CARS * BATCHES_PER_CAR // 4
    assert sum(r.received_ms > killed_ms for r in rows) > 0
    assert len(rows) == CARS * BATCHES_PER_CAR == len(by_vin_seq)
    for vin, spooled in sent.items():
        for name, data in spooled.items():
            matches = [
                r for r in rows if r.vin == vin and operator.segment_reader.read(r.segment, r.offset, r.length) == data
            ]
            assert len(matches) == 1, (vin, name)
    assert all(r.log_index is not None for r in rows)
    leaf_indices = [r.log_index for r in rows]
    assert len(set(leaf_indices)) == len(leaf_indices)  # no batch logged twice
    assert total_leaves_for == operator.log.size  # every leaf is a batch: none duplicated, none lost

    # The log after the kill is consistent with the checkpoint taken before it.
    old, new = parse_checkpoint(before), parse_checkpoint(_log_checkpoint(cluster.url))
    assert new.size >= old.size + CARS * (BATCHES_PER_CAR - 1)
    proof = operator.log.consistency_proof(old.size, new.size)
    verify_consistency(old.size, new.size, old.root, new.root, proof)

    # Both witnesses cosigned a tree holding every batch (each line checked against its key).
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(cluster.url + "/api/v1/log/cosigned-checkpoint", timeout=10)
        if r.status_code == 200 and parse_checkpoint(r.text).size >= new.size:
            break
        assert time.monotonic() < deadline, f"no cosigned checkpoint of size {new.size}: {r.status_code} {r.text}"
        time.sleep(0.5)
    cosigned = r.text
    keys = [parse_vkey(v) for v in cluster.witness_vkeys.values()]
    assert len(verify_cosignatures(cosigned, keys)) == 2
    consistency = operator.log.consistency_proof(old.size, parse_checkpoint(cosigned).size)
    verify_consistency(
        old.size, parse_checkpoint(cosigned).size, old.root, parse_checkpoint(cosigned).root, consistency
    )

    # The surviving replica keeps serving, and the killed one comes back and agrees.
    cluster.start_replica("r1")
    assert (
        _log_checkpoint(cluster.replica_url("r1")).split("\n")[:3]
        == _log_checkpoint(cluster.replica_url("r2")).split("\n")[:3]
    )
