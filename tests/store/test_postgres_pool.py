"""Pooled PostgreSQL connections (store/metadata.py, issue 12): no ping per checkout, a ping after an idle spell, and
a connection that died while the server was busy answered as ``Unavailable`` once, then replaced."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import Unavailable
from carvault.ledger.sequencer import postgres_conninfo
from carvault.store import metadata
from carvault.store.metadata import Database

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


_databases = iter(range(10**6))


@pytest.fixture
def db(postgres: TemporaryPostgres) -> Iterator[Database]:
    database = Database(postgres.create_database(f"pool_{next(_databases)}_{os.getpid()}"))
    yield database
    database.dispose()


def _backend(db: Database) -> int:
    with db.connection() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(db: Database, pid: int) -> None:
    """End one server session from outside, as a database restart or a failover does."""
    with psycopg.connect(postgres_conninfo(db.url), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_busy_pool_sends_no_ping(db: Database) -> None:
    pid = _backend(db)
    pings: list[int] = []
    real = db.engine.dialect.do_ping
    db.engine.dialect.do_ping = lambda c: pings.append(1) or real(c)  # type: ignore[method-assign]
    for _ in range(5):
        assert _backend(db) == pid  # the same pooled session, each time without a ping
    assert pings == []


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _backend(db)
    _terminate(db, pid)
    monkeypatch.setattr(metadata, "IDLE_PING_S", 0.0)  # every pooled connection counts as idle
    fresh = _backend(db)  # the ping found the session gone and the pool connected afresh: no failure
    assert fresh != pid


def test_a_connection_lost_while_busy_fails_once_as_unavailable(db: Database) -> None:
    pid = _backend(db)
    _terminate(db, pid)
    with pytest.raises(Unavailable):
        _backend(db)  # not pinged (it was in use a moment ago): its statement fails, as a storage failure
    assert _backend(db) != pid  # and the pool's dead connections are gone
