"""Identical re-sends that race each other all get the one receipt, however they interleave (docs/protocol.md §3.4).

A car that times out re-sends the same bytes, maybe while the first upload is still being stored, maybe to
another gateway process. Every copy must end with the same receipt (``duplicate: true`` for all but one,
same ``batch_hash``, ``log_index`` and ``received_ms``), the log must grow by exactly one leaf, and no
copy may be told ``broken_chain``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch, sha256_hex
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, serve_process, vin_for, wait_until_up

UPLOAD = "/api/v1/ingest/batches"
N = 12
PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]


def _batch(v: VehicleIdentity, seq: int = 1, prev: str = GENESIS_PREV, seed: int = 0) -> bytes:
    table = drive_table(start_ms=BASE_MS + seq * 10_000, seconds=10, paths=PATHS, seed=seed)
    return make_batch(vin=v.vin, region=v.region, seq=seq, prev=prev, table=table, key=v.key)


def _post(url: str, blob: bytes) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as c:  # one connection per copy, as separate retries would be
        return c.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})


def _fire(urls: list[str], blob: bytes, n: int = N) -> list[httpx.Response]:
    """n copies of one batch, released together from n threads (round-robin over the urls)."""
    gate = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        gate.wait()
        return _post(urls[i % len(urls)], blob)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _one_receipt(responses: list[httpx.Response], blob: bytes) -> dict[str, Any]:
    """Every answer is a 200 with the same receipt; exactly one of them is not a duplicate."""
    for r in responses:
        assert r.status_code == 200, r.text
    receipts = [r.json() for r in responses]
    firsts = [x for x in receipts if not x["duplicate"]]
    assert len(firsts) == 1, receipts
    first = firsts[0]
    assert first["batch_hash"] == sha256_hex(blob)
    for x in receipts:
        assert {k: v for k, v in x.items() if k != "duplicate"} == {k: v for k, v in first.items() if k != "duplicate"}
    return first


def _segment_bytes(region: Region) -> int:
    return sum(p.stat().st_size for p in (region.settings.data_dir / "segments").glob("*"))


def _stored(region: Region) -> tuple[int, int, int]:
    with region.db.session() as s:
        n = s.scalar(select(func.count()).select_from(BatchRecord)) or 0
    return n, region.log.size, _segment_bytes(region)


class Held:
    """A gateway method held at its first call: ``entered`` is set when it is reached, ``release`` lets it go on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def hold(region: Region) -> Iterator[Callable[[str], Held]]:
    """``hold(method)``: the gateway's ``method`` waits at its first call until released."""
    helds: list[Held] = []

    def make(name: str) -> Held:
        real = getattr(region.gateway, name)
        h = Held()
        helds.append(h)

        def held(*args: Any, **kw: Any) -> Any:
            if not h.entered.is_set():
                h.entered.set()
                assert h.release.wait(30), f"{name} was never released"
            return real(*args, **kw)

        setattr(region.gateway, name, held)
        return h

    yield make
    for h in helds:
        h.release.set()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_concurrent_identical_uploads_get_one_receipt(
    server: BackgroundServer, region: Region, vehicle: VehicleIdentity
) -> None:
    """N copies of each batch of a chain at once, over real HTTP: one receipt each, one leaf, one stored copy."""
    prev = GENESIS_PREV
    for seq in range(1, 6):
        blob = _batch(vehicle, seq, prev)
        before = _stored(region)
        first = _one_receipt(_fire([server.url], blob), blob)
        assert first["seq"] == seq
        assert _stored(region) == (before[0] + 1, before[1] + 1, before[2] + len(blob))
        prev = first["batch_hash"]


def test_identical_copies_in_one_group_commit_are_stored_once(
    server: BackgroundServer,
    region: Region,
    vehicle: VehicleIdentity,
    tmp_path: Path,
    hold: Callable[[str], Held],
) -> None:
    """All copies pass the checks before any commits and land in the same group: one is stored, all are answered."""
    other = provision(region, vin_for(2), tmp_path / "vehicles")
    plug, blob = _batch(other), _batch(vehicle)
    committing = hold("_commit")  # the committer takes the plug's group and waits
    before = _stored(region)
    with ThreadPoolExecutor(N + 1) as pool:
        plugged = pool.submit(_post, server.url, plug)
        assert committing.entered.wait(20)
        copies = [pool.submit(_post, server.url, blob) for _ in range(N)]
        _wait_for(lambda: region.gateway._queue.qsize() == N, f"{N} checked copies in the queue")
        committing.release.set()
        assert plugged.result().status_code == 200
        first = _one_receipt([f.result() for f in copies], blob)
    assert first["log_index"] == before[1] + 1
    assert _stored(region) == (before[0] + 2, before[1] + 2, before[2] + len(plug) + len(blob))


def test_copy_that_passed_the_replay_check_before_the_original_committed(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity
) -> None:
    """A copy finds no row (the original is not committed yet), then finds the chain moved: still a re-send."""
    blob = _batch(vehicle)
    first = http.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE}).json()
    before = _stored(region)
    real = region.gateway._existing
    misses = iter([True])
    region.gateway._existing = lambda vin, seq: None if next(misses, False) else real(vin, seq)  # type: ignore[method-assign]
    r = http.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})
    assert r.status_code == 200, r.text
    assert r.json() == {**first, "duplicate": True}
    assert _stored(region) == before  # not one byte more


def test_different_batch_that_raced_the_original_is_a_seq_conflict(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity
) -> None:
    """The same race with other content: ``seq_conflict`` (what the docs name), not ``broken_chain``."""
    blob = _batch(vehicle)
    assert http.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE}).status_code == 200
    real = region.gateway._existing
    misses = iter([True])
    region.gateway._existing = lambda vin, seq: None if next(misses, False) else real(vin, seq)  # type: ignore[method-assign]
    r = http.post(UPLOAD, content=_batch(vehicle, seed=7), headers={"Content-Type": BATCH_MEDIA_TYPE})
    assert r.status_code == 409 and r.json()["error"]["code"] == "seq_conflict", r.text
    assert r.json()["error"]["accepted_hash"] == sha256_hex(blob)


@pytest.mark.parametrize("logging_takes_s", [0.3, 3.0], ids=["original-logs-first", "resend-logs-first"])
def test_resend_while_the_original_is_between_commit_and_log(
    server: BackgroundServer,
    region: Region,
    vehicle: VehicleIdentity,
    hold: Callable[[str], Held],
    logging_takes_s: float,
) -> None:
    """The original's row is committed but its leaf not yet appended when copies arrive.

    Copies wait for the original's leaf; if it takes longer than they wait, one of them logs the batch through
    the exactly-once path and the original then reports that same leaf.
    """
    blob = _batch(vehicle)
    logging = hold("_log_records")
    before = _stored(region)
    with ThreadPoolExecutor(4) as pool:
        original = pool.submit(_post, server.url, blob)
        assert logging.entered.wait(20)  # the row is committed, its leaf not appended
        copies = [pool.submit(_post, server.url, blob) for _ in range(3)]
        time.sleep(logging_takes_s)
        logging.release.set()
        first = _one_receipt([original.result(), *(c.result() for c in copies)], blob)
    assert not original.result().json()["duplicate"]
    assert first["log_index"] == before[1]
    assert _stored(region) == (before[0] + 1, before[1] + 1, before[2] + len(blob))


# --------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_identical_uploads_to_two_processes_get_one_receipt(tmp_path: Path) -> None:
    data = tmp_path / "region"
    with Region(Settings(data_dir=data, region="cn")) as r:
        car = provision(r, vin_for(300), tmp_path / "vehicles")
    ports = [free_port(), free_port()]
    procs = [serve_process(data, p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    receipts = []
    try:
        for u, p in zip(urls, procs, strict=True):
            wait_until_up(u, p)
        prev = GENESIS_PREV
        for seq in range(1, 5):
            blob = _batch(car, seq, prev)
            first = _one_receipt(_fire(urls, blob), blob)
            receipts.append(first)
            prev = first["batch_hash"]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    assert [x["log_index"] for x in receipts] == [0, 1, 2, 3]
    with Region(Settings(data_dir=data, region="cn")) as r:
        assert r.log.size == 4
        with r.db.session() as s:
            recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.seq)))
        assert [(x.seq, x.batch_hash, x.log_index, x.received_ms) for x in recs] == [
            (x["seq"], x["batch_hash"], x["log_index"], x["received_ms"]) for x in receipts
        ]
