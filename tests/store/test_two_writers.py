"""Two gateway processes writing one region's store at once lose nothing and keep every chain intact."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from carvault.ledger.leaves import LEAF_V2, batch_leaf, log_key_of
from carvault.ledger.merkle import leaf_hash, verify_inclusion
from carvault.protocol import sha256_hex
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import free_port
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, scrape, serve_process, vin_for, wait_until_up

pytestmark = pytest.mark.slow

N_VEHICLES = 6
N_BATCHES = 12
PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]  # on by default: no consent needed


def frozen_objects(url: str) -> float:
    """The server's ``carvault_gc_frozen_objects`` (the start-up heap ``carvault serve`` freezes once started)."""
    with httpx.Client(base_url=url, timeout=10) as http:
        return scrape(http)[("carvault_gc_frozen_objects", ())]


def test_two_processes_share_one_store(tmp_path: Path) -> None:
    data = tmp_path / "region"
    with Region(Settings(data_dir=data, region="cn")) as r:
        cars = [provision(r, vin_for(100 + i), tmp_path / "vehicles") for i in range(N_VEHICLES)]
    ports = [free_port(), free_port()]
    procs = [serve_process(data, p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for u, p in zip(urls, procs, strict=True):
            wait_until_up(u, p)

        def drive(i: int) -> list[dict]:
            agent = VehicleAgent(cars[i], tmp_path / "vehicles" / cars[i].vin, urls[0])
            agent.record(drive_table(BASE_MS, seconds=N_BATCHES * 10, paths=PATHS, seed=i), batch_seconds=10)
            receipts = []
            for n, path in enumerate(agent.pending()):
                agent.endpoint = urls[(n + i) % 2]  # alternate processes batch by batch
                receipts.append(agent.upload_one(path.read_bytes()))
                path.unlink()
            return receipts

        with ThreadPoolExecutor(N_VEHICLES) as pool:
            all_receipts = [r for rs in pool.map(drive, range(N_VEHICLES)) for r in rs]
        for u in urls:
            assert frozen_objects(u) > 50_000  # carvault serve froze its start-up heap
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)

    assert len(all_receipts) == N_VEHICLES * N_BATCHES
    indices = sorted(r["log_index"] for r in all_receipts)
    assert indices == list(range(len(all_receipts)))  # no leaf lost, none duplicated
    segments = list((data / "segments").glob("*.cvseg"))
    assert len({s.name.rsplit("-", 1)[0] for s in segments}) == 2  # each process wrote its own segments

    with Region(Settings(data_dir=data, region="cn")) as r:
        assert r.log.size == len(all_receipts)
        root = r.log.root()
        with r.db.session() as s:
            recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.vin, BatchRecord.seq)))
        assert len(recs) == len(all_receipts)
        by_vin: dict[str, str] = {}
        for rec in recs:
            raw = r.segment_reader.read(rec.segment, rec.offset, rec.length)
            assert sha256_hex(raw) == rec.batch_hash
            assert rec.prev_hash == by_vin.get(rec.vin, "0" * 64)  # each chain continuous across processes
            by_vin[rec.vin] = rec.batch_hash
            assert rec.leaf_version == LEAF_V2
            leaf = batch_leaf("cn", rec, log_key_of(r.db, rec.vin))
            assert rec.leaf_hash == leaf_hash(leaf) and rec.vin.encode() not in leaf
            assert r.log.leaf_hash(rec.log_index) == leaf_hash(leaf)
            verify_inclusion(leaf_hash(leaf), rec.log_index, r.log.size, r.log.inclusion_proof(rec.log_index), root)


def test_serve_with_two_workers(tmp_path: Path) -> None:
    data = tmp_path / "region"
    with Region(Settings(data_dir=data, region="cn")) as r:
        cars = [provision(r, vin_for(200 + i), tmp_path / "vehicles") for i in range(4)]
    port = free_port()
    env = {**os.environ, "CARVAULT_DATA_DIR": str(data), "CARVAULT_REGION": "cn"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "carvault.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)

        def drive(i: int) -> int:
            agent = VehicleAgent(cars[i], tmp_path / "vehicles" / cars[i].vin, url)
            agent.record(drive_table(BASE_MS, seconds=50, paths=PATHS, seed=i), batch_seconds=10)
            return len(agent.upload_pending())

        with ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(drive, range(4))) == 20
        assert min(frozen_objects(url) for _ in range(6)) > 50_000  # whichever worker answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with Region(Settings(data_dir=data, region="cn")) as r:
        assert r.log.size == 20
        assert len({p.name.rsplit("-", 1)[0] for p in (data / "segments").glob("*.cvseg")}) >= 1
