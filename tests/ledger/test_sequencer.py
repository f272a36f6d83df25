"""The log on PostgreSQL (ledger/sequencer.py): the same answers as the file log, appends from several processes
sequenced by an advisory lock, an appender killed with ``kill -9`` mid-append, and exactly one leaf per batch.

Run as ``python -m tests.ledger.test_sequencer <database_url> <tag> <stop file>`` it is the appending worker: it
appends rounds of ``ROUND`` unique leaves, printing ``<first index> <round>`` after each acknowledged append, until
the stop file exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import InvalidQuery
from carvault.ingest.reconcile import reconcile
from carvault.ledger import merkle
from carvault.ledger.leaves import LEAF_V1, batch_leaf, log_key_of
from carvault.ledger.log import LogError, MerkleLog
from carvault.ledger.sequencer import PostgresLog, log_of, postgres_conninfo
from carvault.ledger.tiles import TilePublisher
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.blobs import LocalBlobStore
from carvault.store.metadata import BatchRecord
from tests.factories import vin_for
from tests.ingest.test_reconcile import _blob, _crash_after_commit
from tests.ledger.conftest import ORIGIN, log_key, open_log

ROUND = 400  # leaves per worker append: big enough that a kill lands inside a transaction most of the time

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


_databases = iter(range(10**6))


@pytest.fixture
def pg_url(postgres: TemporaryPostgres) -> str:
    return postgres.create_database(f"tlog_{next(_databases)}_{os.getpid()}")


@pytest.fixture(params=["file", "postgres"])
def any_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MerkleLog]:
    """The same log API on both backends."""
    if request.param == "file":
        with open_log(tmp_path / "log") as log:
            yield log
    else:
        url = request.getfixturevalue("pg_url")
        with PostgresLog(url, ORIGIN, log_key(), ORIGIN) as log:
            yield log


def _leaves(n: int, tag: str = "leaf") -> list[bytes]:
    return [f"{tag} {i}".encode() for i in range(n)]


# -- the same answers on both backends -------------------------------------------------------------------------


def test_roots_proofs_and_checkpoints_match_rfc_9162(any_log: MerkleLog) -> None:
    data = _leaves(300)
    hashes = [merkle.leaf_hash(d) for d in data]
    assert any_log.size == 0 and any_log.root() == merkle.EMPTY_ROOT
    assert any_log.append(data[:1]) == 0
    assert any_log.append(data[1:7]) == 1
    assert any_log.append([]) == 7
    assert any_log.append(data[7:]) == 7
    assert any_log.size == 300
    for size in (1, 2, 7, 8, 255, 256, 257, 300):
        root = merkle.root_from_leaf_hashes(hashes[:size])
        assert any_log.root(size) == root
        for index in {0, size // 2, size - 1}:
            merkle.verify_inclusion(hashes[index], index, size, any_log.inclusion_proof(index, size), root)
        for old in {1, size // 3 or 1, size}:
            old_root = merkle.root_from_leaf_hashes(hashes[:old])
            merkle.verify_consistency(old, size, old_root, root, any_log.consistency_proof(old, size))
    assert [any_log.leaf_hash(i) for i in range(300)] == hashes
    assert any_log.subtree_hashes(8, 0, 1) == [merkle.root_from_leaf_hashes(hashes[:256])]
    assert any_log.subtree_hashes(0, 256, 44) == hashes[256:]
    assert "\n300\n" in any_log.checkpoint() and "\n7\n" in any_log.checkpoint(7)
    assert any_log.check_integrity() == 300
    for bad in (lambda: any_log.root(301), lambda: any_log.leaf_hash(300), lambda: any_log.inclusion_proof(5, 3),
                lambda: any_log.consistency_proof(9, 8), lambda: any_log.subtree_hashes(8, 1, 1),
                lambda: any_log.checkpoint(-1)):  # fmt: skip
        with pytest.raises(InvalidQuery):
            bad()
    with pytest.raises(TypeError):
        any_log.append(["text"])  # type: ignore[list-item]


def test_threads_share_group_commits(any_log: MerkleLog) -> None:
    firsts: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for k in range(20):
            first = any_log.append(_leaves(3, f"t{t} k{k}"))
            with lock:
                firsts.append((first, t * 100 + k))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any_log.size == 6 * 20 * 3
    assert sorted(f for f, _ in firsts) == list(range(0, 360, 3))  # disjoint ranges, nothing lost
    for first, tk in firsts:
        t, k = divmod(tk, 100)
        assert any_log.leaf_hash(first) == merkle.leaf_hash(f"t{t} k{k} 0".encode())
    assert any_log.check_integrity() == 360


def test_both_backends_publish_identical_tiles(tmp_path: Path, pg_url: str) -> None:
    data = _leaves(70_000 // 7)
    stores = []
    with open_log(tmp_path / "log") as file_log, PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN) as pg_log:
        for log, name in ((file_log, "file"), (pg_log, "pg")):
            log.append(data)
            store = LocalBlobStore(tmp_path / name)
            TilePublisher(log, store, exclusive=log.publishing).publish_once()
            stores.append(store)
        assert file_log.root() == pg_log.root()
    a, b = stores
    keys = sorted(a.list("log/tile/"))
    assert keys == sorted(b.list("log/tile/")) and len(keys) > 40
    assert all(a.get(k) == b.get(k) for k in keys)


def test_a_second_replica_reads_what_the_first_appended(pg_url: str) -> None:
    with PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN) as one, PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN) as two:
        one.append(_leaves(10))
        assert two.size == 10 and two.root() == one.root()
        assert two.append(_leaves(5, "two")) == 10
        assert one.size == 15 and one.inclusion_proof(12) == two.inclusion_proof(12)


def test_configuration_errors_are_clear(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        postgres_conninfo(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ValueError, match="log_backend"):
        log_of("etcd", tmp_path, pg_url, ORIGIN, log_key(), ORIGIN)
    with pytest.raises(ValueError, match="log_backend"):
        Settings.coerce({"data_dir": str(tmp_path), "log_backend": "postgres"})  # SQLite metadata
    with pytest.raises(LogError):
        PostgresLog(pg_url, "bad\norigin", log_key(), ORIGIN)


# -- processes, kill -9 ----------------------------------------------------------------------------------------


def _worker(url: str, tag: str, stop: Path) -> None:
    with PostgresLog(url, ORIGIN, log_key(), ORIGIN) as log:
        r = 0
        while not stop.exists():
            first = log.append(_leaves(ROUND, f"{tag} r{r}"))
            print(first, r, flush=True)
            r += 1


def _start(url: str, tag: str, stop: Path) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.test_sequencer", url, tag, str(stop)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )


def _acks(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_two_processes_append_and_one_is_killed_mid_append(pg_url: str, tmp_path: Path) -> None:
    with PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN) as log:
        log.append(_leaves(5, "before"))
        earlier = (log.size, log.root())
        acked: dict[str, list[str]] = {"a": [], "b": []}
        a, b = _start(pg_url, "a", tmp_path / "never"), _start(pg_url, "b", tmp_path / "stop-b")
        readers = [_acks(a, acked["a"]), _acks(b, acked["b"])]
        deadline = time.monotonic() + 60
        while (len(acked["a"]) < 5 or len(acked["b"]) < 5) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked["a"]) >= 5 and len(acked["b"]) >= 5, "the workers did not both append"
        time.sleep(0.037)  # a is appending continuously: the kill lands inside (or between) its transactions
        a.send_signal(signal.SIGKILL)
        b_at_kill = len(acked["b"])
        assert a.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 60
        while len(acked["b"]) < b_at_kill + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acked["b"]) >= b_at_kill + 5  # the dead appender's lock went with its connection
        (tmp_path / "stop-b").touch()
        assert b.wait(timeout=120) == 0
        for t in readers:
            t.join(timeout=10)

        size = log.size
        assert log.check_integrity() == size
        # Consistent with the checkpoint taken before the workers started.
        merkle.verify_consistency(earlier[0], size, earlier[1], log.root(), log.consistency_proof(earlier[0]))
        # Every acknowledged append is there, at the index it was acknowledged with.
        expected: dict[int, bytes] = {}
        for tag, lines in acked.items():
            for line in lines:
                first, r = map(int, line.split())
                for i, data in enumerate(_leaves(ROUND, f"{tag} r{r}")):
                    expected[first + i] = merkle.leaf_hash(data)
        hashes = [log.leaf_hash(i) for i in range(size)]
        assert all(hashes[i] == h for i, h in expected.items())
        # No duplicate leaf; what is not acknowledged is at most a's one committed-but-unprinted round, whole.
        assert len(set(hashes)) == size
        extra = size - 5 - len(expected)
        assert extra in (0, ROUND)
        if extra:
            stray = [i for i in range(5, size) if i not in expected]
            assert stray == list(range(stray[0], stray[0] + ROUND))
            assert hashes[stray[0]] == merkle.leaf_hash(f"a r{len(acked['a'])} 0".encode())


@pytest.mark.slow
def test_the_fence_of_a_killed_holder_is_released(pg_url: str) -> None:
    """A replica killed inside the fence (between reading rows and writing indices) does not block the others."""
    code = (
        "import sys, time\n"
        "from tests.ledger.conftest import ORIGIN, log_key\n"
        "from carvault.ledger.sequencer import PostgresLog\n"
        "log = PostgresLog(sys.argv[1], ORIGIN, log_key(), ORIGIN)\n"
        "with log.fence():\n"
        "    log.append([b'inside the fence'])\n"
        "    print('in', flush=True)\n"
        "    time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", code, pg_url], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "in"
        entered = threading.Event()
        with PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN) as log:

            def enter() -> None:
                with log.fence():
                    entered.set()
                    log.append([b"after the kill"])

            waiter = threading.Thread(target=enter)
            waiter.start()
            assert not entered.wait(1.0)  # held by the other process
            holder.send_signal(signal.SIGKILL)
            assert entered.wait(30)
            waiter.join(timeout=30)
            assert log.size == 2 and log.leaf_hash(1) == merkle.leaf_hash(b"after the kill")
    finally:
        holder.kill()
        holder.wait(timeout=30)


# -- exactly once per batch, with reconciliation, on PostgreSQL ------------------------------------------------


def _pg_settings(tmp_path: Path, url: str) -> Settings:
    return Settings(data_dir=tmp_path / "region", region="cn", database_url=url, log_backend="postgres")


@pytest.mark.slow
@pytest.mark.parametrize("died", ["before append", "after a v2 append", "after a v1 append"])
def test_reconciliation_logs_each_unlogged_batch_once(tmp_path: Path, pg_url: str, died: str) -> None:
    settings = _pg_settings(tmp_path, pg_url)
    crashed: dict[str, int | None] = {}
    with Region(settings) as region:
        assert isinstance(region.log, PostgresLog)
        cars = [provision(region, vin_for(700 + i), tmp_path / "vehicles") for i in range(2)]
        for car in cars:
            prev = region.gateway.accept(_blob(car, 1, GENESIS_PREV), BATCH_MEDIA_TYPE)["batch_hash"]
            for seq in (2, 3):
                prev, leaf = _crash_after_commit(region, car, seq, prev, died)
                crashed[prev] = leaf
        size_before = region.log.size
    # Two replicas start at once on the same database: reconciliation runs in both, under the PostgreSQL fence.
    code = (
        "import sys; from pathlib import Path; from carvault.region import Region; from carvault.settings import "
        "Settings; Region(Settings(data_dir=Path(sys.argv[1]), region='cn', database_url=sys.argv[2], "
        "log_backend='postgres')).close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(settings.data_dir), pg_url]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Region(settings) as region:
        assert region.reconciled.unlogged == 0
        with region.db.session() as s:
            recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.id)))
        assert region.log.size == size_before + sum(1 for leaf in crashed.values() if leaf is None)
        assert sorted(r.log_index for r in recs) == list(range(region.log.size))  # each batch once, no stray leaf
        for rec in recs:
            if crashed.get(rec.batch_hash) is not None:
                assert rec.log_index == crashed[rec.batch_hash]
                assert (rec.leaf_version or LEAF_V1) == (LEAF_V1 if died == "after a v1 append" else 2)
            h = merkle.leaf_hash(batch_leaf(region.name, rec, log_key_of(region.db, rec.vin)))
            assert region.log.leaf_hash(rec.log_index) == h
        assert reconcile(region.db, region.log, region.name, settings.data_dir).unlogged == 0
        assert region.tiles.wait_published(region.log.size, timeout=60)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
