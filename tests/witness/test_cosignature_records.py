"""Recording a witness's cosignature is idempotent: two replicas (two ``Witnessing`` on one metadata database)
that record the same cosignature at the same moment both succeed, on SQLite and on PostgreSQL, and the cosigned
checkpoint kept for a size is the one with the most cosignatures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.ledger.checkpoint import (
    checkpoint_body,
    cosign_checkpoint,
    format_witness_vkey,
    parse_checkpoint,
    sign_checkpoint,
    verify_cosignatures,
)
from carvault.ledger.witnessing import Witnessing, parse_witnesses
from carvault.store.blobs import LocalBlobStore
from carvault.store.metadata import CosignedCheckpointRecord, Database, WitnessCosignatureRecord

ORIGIN = "cn.carvault.test/log"
ROUNDS = 25


class _NoLog:
    """Recording needs nothing of the log (the proofs are the submission's business)."""

    size = 0

    def checkpoint(self, size: int | None = None) -> str:
        raise AssertionError("not used")

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        raise AssertionError("not used")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    with TemporaryPostgres(fsync=False) as pg:
        yield pg.create_database(f"witness_{os.getpid()}")


def _replicas(url: str, tmp_path: Path, quorum: int) -> tuple[list[Witnessing], list[Ed25519PrivateKey], list[str]]:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    names = ["w.test/a", "w.test/b"]
    setting = ";".join(
        f"{n.split('/')[1]}={format_witness_vkey(n, k.public_key())}@http://127.0.0.1:9"
        for n, k in zip(names, keys, strict=True)
    )
    replicas = []
    for i in range(2):
        db = Database(url)
        db.create_schema()
        replicas.append(Witnessing(_NoLog(), LocalBlobStore(tmp_path / f"r{i}"), db, parse_witnesses(setting), quorum))
    return replicas, keys, names


def _note(log_key: Ed25519PrivateKey, size: int) -> str:
    return sign_checkpoint(ORIGIN, size, size.to_bytes(32, "big"), log_key, ORIGIN)


def _line(note: str, key: Ed25519PrivateKey, name: str) -> str:
    body = checkpoint_body(ORIGIN, parse_checkpoint(note).size, parse_checkpoint(note).root)
    return cosign_checkpoint(body, key, name, int(time.time()))


def test_two_replicas_recording_the_same_cosignature_at_once_both_succeed(database_url: str, tmp_path: Path) -> None:
    replicas, keys, names = _replicas(database_url, tmp_path, quorum=1)
    log_key = Ed25519PrivateKey.generate()
    witness = replicas[0].witnesses[0]
    errors: list[BaseException] = []
    for size in range(1, ROUNDS + 1):
        note = _note(log_key, size)
        answer = _line(note, keys[0], names[0])
        gate = threading.Barrier(2)

        def record(
            replica: Witnessing,
            note: str = note,
            answer: str = answer,
            size: int = size,
            gate: threading.Barrier = gate,
        ) -> None:
            gate.wait()
            try:
                replica.accept(witness.label, note, size, answer)
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=record, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    with replicas[0].db.session() as s:
        assert s.scalar(select(func.count()).select_from(WitnessCosignatureRecord)) == ROUNDS
        assert s.scalar(select(func.count()).select_from(CosignedCheckpointRecord)) == ROUNDS
    note = replicas[1].latest_cosigned()
    assert note is not None and parse_checkpoint(note).size == ROUNDS
    assert [c.name for c in verify_cosignatures(note, [witness.vkey])] == [names[0]]
    # Both replicas think the witness cosigned the last size.
    assert all(r.status[witness.label].cosigned_size == ROUNDS for r in replicas)


def test_recording_twice_keeps_one_row_and_the_fuller_note_wins(database_url: str, tmp_path: Path) -> None:
    replicas, keys, names = _replicas(database_url, tmp_path, quorum=1)
    a, b = replicas[0].witnesses
    log_key = Ed25519PrivateKey.generate()
    note = _note(log_key, 7)
    first = _line(note, keys[0], names[0])
    replicas[0].accept(a.label, note, 7, first)
    replicas[1].accept(a.label, note, 7, _line(note, keys[0], names[0]))  # the same witness again: no new row
    assert replicas[0].cosigned_for(7) == note + first
    replicas[1].accept(b.label, note, 7, _line(note, keys[1], names[1]))
    full = replicas[0].cosigned_for(7)
    assert full is not None and len(verify_cosignatures(full, [a.vkey, b.vkey])) == 2
    replicas[0].accept(a.label, note, 7, first)  # a late repeat of one line never shrinks the kept note
    assert replicas[1].cosigned_for(7) == full
    with replicas[0].db.session() as s:
        assert s.scalar(select(func.count()).select_from(WitnessCosignatureRecord)) == 2
        assert s.scalar(select(CosignedCheckpointRecord.cosignatures)) == 2
    # A line that is not the configured witness's cosignature of this note is refused, not recorded.
    with pytest.raises(RuntimeError, match="no cosignature"):
        replicas[0].accept(b.label, _note(log_key, 8), 8, first)
