"""The PostgreSQL log's one-statement append (ledger/sequencer.py, issue 12): a process appends on top of the tail it
wrote last, and falls back to the locked transaction when another appender (another replica) moved the log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.ledger import merkle
from carvault.ledger.sequencer import PostgresLog
from tests.ledger.conftest import ORIGIN, log_key

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


_databases = iter(range(10**6))


@pytest.fixture
def pg_url(postgres: TemporaryPostgres) -> str:
    return postgres.create_database(f"tail_{next(_databases)}_{os.getpid()}")


def _count_locked(log: PostgresLog, counts: dict[str, int], name: str) -> None:
    """Count the appends of ``log`` that took the locked transaction."""
    locked = log._write_locked

    def counted(conn: Any, hashes: list[bytes]) -> int:
        counts[name] += 1
        return locked(conn, hashes)

    log._write_locked = counted  # type: ignore[method-assign]


def test_two_appenders_take_turns_and_build_one_tree(pg_url: str) -> None:
    a = PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN)
    b = PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN)
    locked = {"a": 0, "b": 0}
    _count_locked(a, locked, "a")
    _count_locked(b, locked, "b")
    leaves: list[bytes] = []
    try:
        for turn in range(6):
            for name, log in (("a", a), ("a", a), ("b", b)):
                batch = [f"{turn}/{name}/{len(leaves)}/{k}".encode() for k in range(1 + turn % 3)]
                assert log.append(batch) == len(leaves)  # each append starts exactly where the last one ended
                leaves += batch
        # a's first append of each turn finds the log moved by b (or, the first time, knows no tail): locked;
        # its second one builds on its own tail in one statement. Every b append follows one of a's: locked.
        assert locked == {"a": 6, "b": 6}
        assert a.size == b.size == len(leaves)
        assert a.check_integrity() == len(leaves)
        expected = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
        assert a.root() == b.root() == expected
        for size in (1, 7, len(leaves) - 1):  # earlier trees are intact too
            assert a.root(size) == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves[:size]])
    finally:
        a.close()
        b.close()


def test_a_stale_tail_writes_nothing(pg_url: str) -> None:
    """The one-statement append with an outdated view of the log inserts no node and leaves the size alone."""
    a = PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN)
    b = PostgresLog(pg_url, ORIGIN, log_key(), ORIGIN)
    try:
        a.append([b"first"])
        stale = a._tail
        assert stale is not None and stale[0] == 1
        b.append([b"second", b"third"])
        with a._connection() as conn:
            assert a._write_after(conn, stale, [merkle.leaf_hash(b"late")]) is None
        assert a.size == 3 and a.check_integrity() == 3
        assert a.append([b"fourth"]) == 3  # and the next append finds its place
        assert a.root() == merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(x) for x in (b"first", b"second", b"third", b"fourth")]
        )
    finally:
        a.close()
        b.close()
