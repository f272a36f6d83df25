"""The audit log: who read, exported, shared or deleted an owner's data, when, why and on what basis.

Append-only and hash-chained per owner: each entry's hash covers its content and the previous
entry's hash, so an owner holding any entry hash can detect a rewritten history.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Executable, bindparam, select
from sqlalchemy.exc import IntegrityError

from carvault.errors import Unavailable
from carvault.protocol import GENESIS_PREV
from carvault.store.metadata import AuditEvent, Database, now_ms

# Legal bases recorded with every access (PIPL art. 13 / GDPR art. 6 wording, shortened).
OWNER_REQUEST = "owner's own request (access right)"
CONTRACT = "performance of the service contract"
LEGAL_OBLIGATION = "legal obligation"
# Retention purges: data kept no longer than its purpose needs (PIPL Art. 19, 47(1); GDPR Art. 5(1)(e)).
STORAGE_LIMITATION = "storage limitation: the retention period has ended"

# The owner's portal page a request serves, as (kind, view id): set for the portal's in-process API calls (web/views/
# base.py ``PortalPages``) so the owner's own reads say which page they showed, and the access log groups them.
PORTAL_PAGE: ContextVar[tuple[str, str] | None] = ContextVar("portal_page", default=None)

T = TypeVar("T")
# Threads that write records while the request that made them encodes its answer (``AuditLog.begin``); one set per
# process, shared by every AuditLog in it. More threads than this wait their turn, each record still group-committed.
_WRITERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="audit-writer")


class AuditAction(StrEnum):
    """Every action the audit log records; each has English and Chinese text in web/messages (a test checks)."""

    ACCOUNT_CREATE = "account.create"
    SESSION_CREATE = "session.create"
    TOKEN_CREATE = "token.create"
    CREDENTIAL_REVOKE = "credential.revoke"
    PASSWORD_CHANGE = "password.change"
    VEHICLE_CLAIM = "vehicle.claim"
    VEHICLE_RENAME = "vehicle.rename"
    CONSENT_GRANT = "consent.grant"
    CONSENT_STOP = "consent.stop"
    TELEMETRY_READ = "telemetry.read"
    TIMELINE_READ = "timeline.read"
    STATISTICS_READ = "statistics.read"
    FRAME_READ = "frame.read"
    LOG_KEY_READ = "log_key.read"
    TELEMETRY_EXPORT = "telemetry.export"
    EXPORT_CREATE = "export.create"
    EXPORT_DOWNLOAD = "export.download"
    PACKAGE_CREATE = "package.create"
    PACKAGE_DOWNLOAD = "package.download"
    DELETION_REQUEST = "deletion.request"
    DELETION_COMPLETE = "deletion.complete"
    DELETION_CANCEL = "deletion.cancel"
    HOLD_PLACE = "hold.place"
    HOLD_RELEASE = "hold.release"
    ORDER_RELEASE = "order.release"
    GRANT_CREATE = "grant.create"
    GRANT_REVOKE = "grant.revoke"
    BATCHES_READ = "batches.read"
    EVENTS_READ = "events.read"
    VEHICLE_READ = "vehicle.read"
    APP_REGISTER = "app.register"
    APP_DECIDE = "app.decide"
    PORTABILITY_EXPORT = "portability.export"
    PORTABILITY_FETCH = "portability.fetch"
    LIVE_READ = "live.read"
    LIVE_SUBSCRIBE = "live.subscribe"
    PORTABILITY_IMPORT = "portability.import"
    REPORT_PROFILE = "report.profile"
    REPORT_FINALISE = "report.finalise"
    RIGHTS_REQUEST = "rights.request"
    RIGHTS_WITHDRAW = "rights.withdraw"
    RIGHTS_ASSIGN = "rights.assign"
    RIGHTS_VERIFY = "rights.verify"
    RIGHTS_START = "rights.start"
    RIGHTS_COMPLETE = "rights.complete"
    RIGHTS_REFUSE = "rights.refuse"
    INCIDENT_RECORD = "incident.record"
    INCIDENT_UPDATE = "incident.update"
    INCIDENT_NOTIFY = "incident.notify"
    INCIDENT_AUTHORITY = "incident.authority"
    INCIDENT_CLOSE = "incident.close"
    RECORDS_SYNC = "records.sync"
    RECORD_ADD = "record.add"
    RECORD_UPDATE = "record.update"
    RECORD_RETIRE = "record.retire"
    RECORD_DELETE = "record.delete"
    RETENTION_RUN = "retention.run"
    RETENTION_PURGE = "retention.purge"
    FLEET_JOB = "fleet.job"
    STAFF_CREATE = "staff.create"
    STAFF_ROLE = "staff.role"
    STAFF_DISABLE = "staff.disable"
    STAFF_ENABLE = "staff.enable"
    STAFF_TOTP_RESET = "staff.totp_reset"
    STAFF_PASSWORD = "staff.password"
    STAFF_LOGIN = "staff.login"
    STAFF_LOGOUT = "staff.logout"
    STAFF_SESSIONS_END = "staff.sessions_end"
    COMPLETENESS_READ = "completeness.read"  # issue 13: the completeness report (what is missing and why)
    CASE_OPEN = "case.open"
    CASE_CLOSE = "case.close"
    CASE_APPROVE = "case.approve"
    CASE_DECLINE = "case.decline"
    TRANSFER_RECORD = "transfer.record"
    TRANSFER_SUSPEND = "transfer.suspend"
    TRANSFER_WARNING = "transfer.warning"
    DIAGNOSTICS_READ = "diagnostics.read"  # issue 14: trouble codes and warning lamps
    CHARGING_READ = "charging.read"  # issue 13: charging sessions, costs, battery health
    TARIFF_CHANGE = "tariff.change"  # issue 13: the owner set, changed or removed a charging tariff
    PLACE_CHANGE = "place.change"  # issue 13: the owner named, changed or removed a place (maybe masked in the car)


# Running the account itself (signing up, logging in, tokens, passwords, naming a car) is done under the service
# contract, not the right of access: the access log must not say "right of access" for a log-in.
ACCOUNT_ACTIONS = frozenset(
    {
        AuditAction.ACCOUNT_CREATE,
        AuditAction.SESSION_CREATE,
        AuditAction.TOKEN_CREATE,
        AuditAction.CREDENTIAL_REVOKE,
        AuditAction.PASSWORD_CHANGE,
        AuditAction.VEHICLE_CLAIM,
        AuditAction.VEHICLE_RENAME,
    }
)


def audit_action(action: AuditAction | str) -> AuditAction:
    """The enum member for an action; an action not in ``AuditAction`` is a programming error, refused."""
    try:
        return AuditAction(action)
    except ValueError:
        raise ValueError(
            f"unknown audit action {action!r}: add it to AuditAction with its English and Chinese text"
        ) from None


@dataclass(frozen=True)
class Actor:
    """Who did something: an owner, a third party, an operator or the system."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def chain_of(owner_id: int | None) -> str:
    """The name of the chain an event belongs to."""
    return f"owner:{owner_id}" if owner_id is not None else "region"


def entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON."""
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


def _fields(e: AuditEvent) -> dict[str, Any]:
    return {
        "chain": e.chain,
        "owner_id": e.owner_id,
        "vin": e.vin,
        "actor": e.actor,
        "action": e.action,
        "detail": json.loads(e.detail),
        "legal_basis": e.legal_basis,
        "at_ms": e.at_ms,
    }


_TABLE = AuditEvent.__table__
_COLUMNS = ("chain", "owner_id", "vin", "actor", "action", "detail", "legal_basis", "at_ms", "prev_hash", "hash")
# The newest entry of a chain (its head): the next entry's prev_hash.
_HEAD = select(_TABLE.c.hash).where(_TABLE.c.chain == bindparam("chain")).order_by(_TABLE.c.id.desc()).limit(1)


@dataclass
class _Waiting:
    """An event waiting for the group commit, and how it ended."""

    event: AuditEvent
    also: Executable | None = None  # a statement committed with the event (e.g. a grant's read counters)
    done: bool = False
    error: Exception | None = None


class AuditLog:
    """Records and lists audit events."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._turn = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._writing = False

    def record(
        self,
        *,
        owner_id: int | None,
        actor: Actor | str,
        action: AuditAction | str,
        legal_basis: str,
        vin: str | None = None,
        detail: dict[str, Any] | None = None,
        also: Executable | None = None,
    ) -> AuditEvent:
        """Append one event to the owner's chain; it is durable when this returns (else the error says why).

        ``also``: a statement executed in the same transaction, so it commits with the event or not at all (one
        commit, one fsync: a grant holder's read updates the grant's counters this way).
        """
        e = AuditEvent(
            chain=chain_of(owner_id),
            owner_id=owner_id,
            vin=vin,
            actor=str(actor),
            action=audit_action(action).value,
            detail=json.dumps(detail or {}, sort_keys=True, ensure_ascii=False),
            legal_basis=legal_basis,
            at_ms=0,  # set when written, with the chain position
            prev_hash="",
            hash="",
        )
        return self._append(_Waiting(e, also))

    @staticmethod
    def begin(write: Callable[[], T]) -> Future[T]:
        """Start ``write`` (a call that records events, e.g. ``lambda: log.record(...)``) on a writer thread.

        The caller does its own work meanwhile (encoding a telemetry window) and calls ``result()`` on the future
        before it answers: the record is still durable before the response leaves and a failure to write it still
        fails the request, but the commit's fsync no longer adds to the response time (issue 12). ``write`` runs
        in a copy of the caller's context (``PORTAL_PAGE`` and any other context variable keep their values).
        """
        return _WRITERS.submit(copy_context().run, write)

    def _append(self, waiting: _Waiting) -> AuditEvent:
        """Group commit: whoever finds no writer busy writes every event waiting, in one transaction and fsync.

        Every owner read records an event before it is served; written one transaction each, concurrent reads
        queued behind each other's fsync (issue 8: reads starving under load).
        """
        with self._turn:
            self._waiting.append(waiting)
            while not waiting.done:
                if self._writing:
                    self._turn.wait()
                    continue
                group, self._waiting, self._writing = self._waiting, [], True
                self._turn.release()
                try:
                    self._write_group(group)
                finally:
                    self._turn.acquire()
                    self._writing = False
                    self._turn.notify_all()
        if waiting.error is not None:
            raise waiting.error
        return waiting.event

    def _write_group(self, group: list[_Waiting]) -> None:
        """Chain and store a group of events (retrying if another process appended to one of the chains first)."""
        try:
            for _ in range(50):
                try:
                    # SQL statements rather than the ORM's unit of work: every read writes here, and the ORM's
                    # flush and lookups cost about a millisecond of CPU a record (issue 12).
                    with self.db.session() as s:
                        conn, ids = s.connection(), []
                        heads: dict[str, str] = {}
                        for w in group:
                            e = w.event
                            prev = heads.get(e.chain) or conn.execute(_HEAD, {"chain": e.chain}).scalar()
                            e.prev_hash, e.at_ms = prev or GENESIS_PREV, now_ms()
                            e.hash = heads[e.chain] = entry_hash(e.prev_hash, _fields(e))
                            row = {c: getattr(e, c) for c in _COLUMNS}
                            ids.append(conn.execute(_TABLE.insert(), row).inserted_primary_key[0])
                            if w.also is not None:
                                conn.execute(w.also)
                    for w, event_id in zip(group, ids, strict=True):  # stored: the events carry their ids
                        w.event.id = event_id
                    break
                except IntegrityError:
                    continue
            else:
                raise Unavailable("audit log is too busy to record an event; the request was not served")
        except Exception as error:  # noqa: BLE001 - every waiter must learn the failure, whatever it is
            for w in group:
                w.error = error
        for w in group:
            w.done = True

    def by_owner(
        self, owner_id: int, action: AuditAction | str, *, vin: str | None = None, detail: dict[str, Any] | None = None
    ) -> AuditEvent:
        """Record what an owner did (actor: the owner; legal basis: the owner's request, or the service contract
        for running the account: ``ACCOUNT_ACTIONS``)."""
        return self.record(
            owner_id=owner_id,
            vin=vin,
            actor=Actor("owner", str(owner_id)),
            action=action,
            legal_basis=CONTRACT if audit_action(action) in ACCOUNT_ACTIONS else OWNER_REQUEST,
            detail=detail,
        )

    def list(
        self,
        owner_id: int | None,
        *,
        action: str | None = None,
        actor: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AuditEvent]:
        """Events of one owner's chain (None: the region's), newest first, filtered."""
        q = select(AuditEvent).where(AuditEvent.chain == chain_of(owner_id))
        if action:
            q = q.where(AuditEvent.action == action)
        if actor:
            q = q.where(AuditEvent.actor == actor)
        if since_ms is not None:
            q = q.where(AuditEvent.at_ms >= since_ms)
        if until_ms is not None:
            q = q.where(AuditEvent.at_ms < until_ms)
        if before_id is not None:
            q = q.where(AuditEvent.id < before_id)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000)))))

    def verify_chain(self, owner_id: int | None) -> int:
        """Recompute the whole chain; return its length or raise ValueError at the first broken link."""
        prev = GENESIS_PREV
        n = 0
        with self.db.session() as s:
            for e in s.scalars(
                select(AuditEvent).where(AuditEvent.chain == chain_of(owner_id)).order_by(AuditEvent.id)
            ):
                if e.prev_hash != prev or entry_hash(prev, _fields(e)) != e.hash:
                    raise ValueError(f"audit chain {chain_of(owner_id)} breaks at entry {e.id}")
                prev = e.hash
                n += 1
        return n


def event_json(e: AuditEvent) -> dict[str, Any]:
    """An audit event as the API shows it."""
    return {"id": e.id, **_fields(e), "prev_hash": e.prev_hash, "hash": e.hash}
