"""Start-up reconciliation: batches committed by a killed process get exactly one leaf, whoever starts first."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from carvault.ledger.leaves import LEAF_V1, LEAF_V2, batch_leaf, fence, log_key_of
from carvault.ledger.merkle import leaf_hash, verify_inclusion
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, decode_envelope, make_batch
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import free_port
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord, Database, Vehicle, now_ms
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, serve_process, vin_for, wait_until_up

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]  # on by default: no consent needed


def _blob(v: VehicleIdentity, seq: int, prev: str) -> bytes:
    table = drive_table(BASE_MS + seq * 10_000, seconds=10, paths=PATHS, seed=seq)
    return make_batch(vin=v.vin, region=v.region, seq=seq, prev=prev, table=table, key=v.key)


def _crash_after_commit(
    region: Region, v: VehicleIdentity, seq: int, prev: str, died: str, age_ms: int = 0
) -> tuple[str, int | None]:
    """What a process killed after its DB commit leaves: the row (log_index NULL), maybe the leaf; (hash, leaf)."""
    env = decode_envelope(_blob(v, seq, prev))
    [(segment, offset, length)] = region.segments.append_many([env.raw])
    with region.db.session() as s:
        s.execute(update(Vehicle).where(Vehicle.vin == v.vin).values(last_seq=seq, last_hash=env.batch_hash))
        rec = BatchRecord(
            vin=v.vin,
            seq=seq,
            kind=env.header.kind,
            batch_hash=env.batch_hash,
            prev_hash=prev,
            t0=env.header.t0,
            t1=env.header.t1,
            rows=env.table().num_rows,
            samples=env.table().num_rows,
            columns=",".join(PATHS),
            segment=segment,
            offset=offset,
            length=length,
            log_index=None,
            received_ms=now_ms() - age_ms,
        )
        s.add(rec)
    leaf = None
    if died != "before append":
        version = LEAF_V1 if died == "after a v1 append" else LEAF_V2
        leaf = region.log.append([batch_leaf(region.name, rec, log_key_of(region.db, v.vin), version)])
    return env.batch_hash, leaf


def _start_regions(settings: Settings, processes: int) -> None:
    code = (
        "import sys; from pathlib import Path; from carvault.region import Region;"
        "from carvault.settings import Settings; Region(Settings(data_dir=Path(sys.argv[1]), region='cn')).close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(settings.data_dir)]) for _ in range(processes)]
    assert [p.wait(timeout=120) for p in procs] == [0] * processes


@pytest.mark.parametrize("processes", [1, 3])
@pytest.mark.parametrize("died", ["before append", "after a v2 append", "after a v1 append"])
def test_every_unlogged_batch_is_logged_once_at_start_up(tmp_path: Path, died: str, processes: int) -> None:
    settings = Settings(data_dir=tmp_path / "region", region="cn")
    crashed: dict[str, int | None] = {}
    with Region(settings) as region:
        cars = [provision(region, vin_for(300 + i), tmp_path / "vehicles") for i in range(2)]
        for car in cars:
            first = region.gateway.accept(_blob(car, 1, GENESIS_PREV), BATCH_MEDIA_TYPE)
            prev = first["batch_hash"]
            for seq in (2, 3):
                prev, leaf = _crash_after_commit(region, car, seq, prev, died)
                crashed[prev] = leaf
        size_before = region.log.size
    _start_regions(settings, processes)
    with Region(settings) as region:
        assert region.reconciled.unlogged == 0
        with region.db.session() as s:
            recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.id)))
        expected_new = sum(1 for leaf in crashed.values() if leaf is None)
        assert region.log.size == size_before + expected_new
        assert sorted(r.log_index for r in recs) == list(range(region.log.size))  # each batch once, no stray leaf
        root = region.log.root()
        for rec in recs:
            assert rec.log_index is not None
            if rec.batch_hash in crashed and crashed[rec.batch_hash] is not None:
                assert rec.log_index == crashed[rec.batch_hash]  # its leaf was found, not appended again
                assert rec.leaf_version == (LEAF_V1 if died == "after a v1 append" else LEAF_V2)
            h = leaf_hash(batch_leaf(region.name, rec, log_key_of(region.db, rec.vin)))
            assert region.log.leaf_hash(rec.log_index) == h
            verify_inclusion(h, rec.log_index, region.log.size, region.log.inclusion_proof(rec.log_index), root)
        logged_in_order = [r.log_index for r in recs if r.batch_hash in crashed and crashed[r.batch_hash] is None]
        assert logged_in_order == sorted(logged_in_order)  # appended in acceptance order


@pytest.mark.parametrize("when", ["after a restart", "to a live region, long after the crash"])
def test_a_resend_of_an_unlogged_batch_is_answered_at_once(tmp_path: Path, when: str) -> None:
    settings = Settings(data_dir=tmp_path / "region", region="cn")
    region = Region(settings)
    try:
        car = provision(region, vin_for(310), tmp_path / "vehicles")
        batch_hash, _ = _crash_after_commit(region, car, 1, GENESIS_PREV, "before append", age_ms=60_000)
        if when == "after a restart":
            region.close()
            region = Region(settings)
            assert region.reconciled.indices == (0,)
        started = time.monotonic()
        receipt = region.gateway.accept(_blob(car, 1, GENESIS_PREV), BATCH_MEDIA_TYPE)
        assert time.monotonic() - started < 1
        assert receipt["duplicate"] is True and receipt["batch_hash"] == batch_hash and receipt["log_index"] == 0
        again = region.gateway.accept(_blob(car, 1, GENESIS_PREV), BATCH_MEDIA_TYPE)
        assert again == receipt and region.log.size == 1
    finally:
        region.close()


def _serve_until_ready(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = serve_process(data_dir, port, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, proc)
    return proc, url


def _post_expecting_no_answer(url: str, blob: bytes) -> None:
    """Upload a batch to a server that is killed before it answers."""
    with pytest.raises(httpx.HTTPError):
        httpx.post(url + "/api/v1/ingest/batches", content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE}, timeout=30)


def _rows(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(BatchRecord)) or 0


def test_a_server_killed_between_commit_and_log_append(tmp_path: Path) -> None:
    """A real server is SIGKILLed while its committer waits for the log fence, after its DB commit."""
    settings = Settings(data_dir=tmp_path / "region", region="cn")
    with Region(settings) as region:
        car = provision(region, vin_for(320), tmp_path / "vehicles")
    blob = _blob(car, 1, GENESIS_PREV)
    proc, url = _serve_until_ready(settings.data_dir)
    db = Database(settings.resolved_database_url)
    try:
        with fence(settings.data_dir):  # the server's log append must wait here
            upload = threading.Thread(target=_post_expecting_no_answer, args=(url, blob), daemon=True)
            upload.start()
            deadline = time.monotonic() + 30
            while _rows(db) == 0:
                assert time.monotonic() < deadline, "the batch was never committed"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        with db.session() as s:
            assert s.scalar(select(BatchRecord.log_index)) is None  # committed, never logged
    finally:
        if proc.poll() is None:
            proc.kill()
        db.dispose()
    with Region(settings) as region:
        assert region.reconciled.indices == (0,) and region.log.size == 1
        receipt = region.gateway.accept(blob, BATCH_MEDIA_TYPE)
        assert receipt["duplicate"] is True and receipt["log_index"] == 0 and region.log.size == 1
        with region.db.session() as s:
            rec = s.scalars(select(BatchRecord)).one()
        leaf = leaf_hash(batch_leaf(region.name, rec, log_key_of(region.db, rec.vin)))
        verify_inclusion(leaf, 0, 1, region.log.inclusion_proof(0), region.log.root())
