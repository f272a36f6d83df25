"""A read's access-log record is written while the answer is encoded (``AuditLog.begin``), never less surely."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from carvault.access.accounts import Accounts
from carvault.access.audit import PORTAL_PAGE, AuditAction, AuditLog, event_json
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import Database
from tests.factories import vin_for


def _log(tmp_path: Path) -> tuple[AuditLog, int]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    db.create_schema()
    owner = Accounts(db, session_ttl_s=60).register("reader@example.com", "correct horse battery").id
    return AuditLog(db), owner


def test_a_started_record_is_stored_and_chained_when_its_future_is_done(tmp_path: Path) -> None:
    log, owner = _log(tmp_path)
    futures = [
        log.begin(lambda i=i: log.by_owner(owner, AuditAction.TELEMETRY_READ, detail={"n": i})) for i in range(20)
    ]
    events = [f.result(timeout=30) for f in futures]
    assert sorted(e["detail"]["n"] for e in map(event_json, events)) == list(range(20))
    assert log.verify_chain(owner) == 20  # concurrent starts still make one unbroken chain


def test_a_failed_write_reaches_the_caller(tmp_path: Path) -> None:
    log, owner = _log(tmp_path)
    started = log.begin(lambda: log.by_owner(owner, "telemetry.peek"))
    with pytest.raises(ValueError, match="unknown audit action"):
        started.result(timeout=30)
    assert log.list(owner) == []


def test_the_record_carries_the_callers_portal_page(region: Region, tmp_path: Path) -> None:
    """``PORTAL_PAGE`` is a context variable of the request's thread; the writer thread must see the same value."""
    owner = region.accounts.register("page@example.com", "correct horse battery")
    ident = provision(region, vin_for(7), tmp_path / "vehicles")
    region.vehicles.claim(owner.id, ident.vin, ident.pairing_code)
    caller = region.accounts.resolve(region.accounts.issue(owner.id, "token", label="t")[0])
    access = region.grants.access(caller, ident.vin)
    token = PORTAL_PAGE.set(("drive", "42"))
    try:
        region.grants.begin_record_read(access, AuditAction.TELEMETRY_READ, {"rows": 3}, rows=3).result(timeout=30)
    finally:
        PORTAL_PAGE.reset(token)
    region.grants.begin_record_read(access, AuditAction.TELEMETRY_READ, {"rows": 4}, rows=4).result(timeout=30)
    reads = [event_json(e) for e in region.audit.list(owner.id, action="telemetry.read")]
    assert [r["detail"] for r in reads] == [{"rows": 4}, {"rows": 3, "page": "drive", "view": "42"}]


def test_a_statement_written_with_the_record_commits_with_it_or_not_at_all(tmp_path: Path) -> None:
    log, owner = _log(tmp_path)
    log.by_owner(owner, AuditAction.TELEMETRY_READ)
    with pytest.raises(OperationalError):  # the companion statement fails: the event is not stored either
        log.record(
            owner_id=owner,
            actor="owner:1",
            action=AuditAction.TELEMETRY_READ,
            legal_basis="test",
            also=text("UPDATE audit_events SET no_such_column = 1"),
        )
    assert len(log.list(owner)) == 1 and log.verify_chain(owner) == 1
    log.record(
        owner_id=owner,
        actor="owner:1",
        action=AuditAction.TELEMETRY_READ,
        legal_basis="test",
        also=text("UPDATE owners SET display_name = 'counted' WHERE id = :id").bindparams(id=owner),
    )
    assert len(log.list(owner)) == 2 and log.verify_chain(owner) == 2
    with log.db.session() as s:
        assert s.scalar(text("SELECT display_name FROM owners WHERE id = :id"), {"id": owner}) == "counted"
