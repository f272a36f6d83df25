"""The rights desk: owners' requests (access, correction, deletion, portability, restriction, explanation, complaint,
next of kin), each tracked against its legal deadline, with the handler's role and a written reason for a refusal.

The rules live here: the kinds, the deadline table with its sources, the status machine and what each step needs.
Requests that an existing service carries out (deletion, portability, access to a vehicle's history) are carried out
by that service when the owner files them (web/routes/rights.py); this desk links the request to what the service
produced and the data-protection officer closes it with a written outcome. Nothing is done twice.

Status::

    received ──start──► in_progress ──complete──► done
        │                    │
        ├──refuse (reason)───┴──refuse (reason)──► refused
        └──withdraw (the requester, while open)──► withdrawn  (also from in_progress)
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import func, select, update

from carvault.access.audit import Actor, AuditAction, AuditLog
from carvault.access.staff import staff_actor
from carvault.compliance.deletion import WORKING_DAYS as DELETION_WORKING_DAYS
from carvault.compliance.deletion import add_working_days
from carvault.compliance.roles import Permission, Role, allows
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.store.metadata import Database, DeletionRequest, Owner, RightsRequest, Vehicle, now_ms, rowcount
from carvault.timezones import region_zone

DAY_MS = 86_400_000
MAX_TEXT = 4000
HANDLING_BASIS = "legal obligation: answering the data subject's request (PIPL Art. 50)"


class Kind(StrEnum):
    """What the owner asks for (PIPL Art. 44–50; GDPR Art. 15–22)."""

    ACCESS = "access"  # access and a copy (PIPL Art. 45)
    CORRECTION = "correction"  # of account data (PIPL Art. 46)
    DELETION = "deletion"  # PIPL Art. 47
    PORTABILITY = "portability"  # PIPL Art. 45(3); Network Data Security Management Regulations Art. 25
    RESTRICTION = "restriction"  # restrict or object to processing (PIPL Art. 44)
    EXPLANATION = "explanation"  # of the processing rules (PIPL Art. 48)
    COMPLAINT = "complaint"  # PIPL Art. 50 (a channel for complaints)
    NEXT_OF_KIN = "next_of_kin"  # a close relative of a deceased owner (PIPL Art. 49)


class Status(StrEnum):
    """Where a request stands."""

    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"


OPEN = frozenset({Status.RECEIVED, Status.IN_PROGRESS})
# Kinds whose text is the request itself: a complaint, a correction or a restriction says what it is about.
NEEDS_DETAILS = frozenset({Kind.CORRECTION, Kind.COMPLAINT, Kind.RESTRICTION, Kind.NEXT_OF_KIN})
# Kinds about one vehicle's history, carried out by an existing service (web/routes/rights.py).
VEHICLE_KINDS = frozenset({Kind.PORTABILITY})


class Unit(StrEnum):
    """How a deadline is counted."""

    WORKING_DAYS = "working_days"  # Monday–Friday (public holidays are not modelled; see compliance/deletion.py)
    CALENDAR_DAYS = "calendar_days"
    MONTHS = "months"  # the same day of the following month (or its last day)


@dataclass(frozen=True)
class Deadline:
    """A legal time limit for answering a request and where it comes from."""

    amount: int
    unit: Unit
    source: str

    def due(self, start_ms: int, zone: dt.tzinfo = dt.UTC) -> int:
        """The moment the answer is due for a request received at ``start_ms``, days and months counted on the
        calendar of ``zone`` (the civil time of the law's place: a Saturday there is no working day)."""
        if self.unit is Unit.WORKING_DAYS:
            return add_working_days(start_ms, self.amount, zone)
        if self.unit is Unit.CALENDAR_DAYS:
            return start_ms + self.amount * DAY_MS
        d = dt.datetime.fromtimestamp(start_ms / 1000, zone)
        month0 = d.month - 1 + self.amount
        year, month = d.year + month0 // 12, month0 % 12 + 1
        day = min(d.day, calendar.monthrange(year, month)[1])
        return int(d.replace(year=year, month=month, day=day).timestamp() * 1000)


# The one table of deadlines: ``<jurisdiction>`` is the rule for every kind, ``<jurisdiction>.<kind>`` an exception.
# The jurisdiction is the region's: the operator answers under the law of the place where it keeps and processes the
# data. A region without its own rule takes the strictest one here (China's).
DEADLINES: dict[str, Deadline] = {
    "cn": Deadline(
        15,
        Unit.WORKING_DAYS,
        "China: accept and handle within 15 working days (Methods for Determining the Illegal Collection and Use "
        "of Personal Information by Apps, 2019, item 6.4); GB/T 35273-2020 §8.7 sets 30 days as the outer limit",
    ),
    "cn.deletion": Deadline(
        DELETION_WORKING_DAYS,
        Unit.WORKING_DAYS,
        "China: the deletion service's own commitment of 10 working days (compliance/deletion.py), inside the "
        "15-working-day limit",
    ),
    "eu": Deadline(
        1,
        Unit.MONTHS,
        "EU: without undue delay and at the latest within one month of receipt (GDPR Art. 12(3))",
    ),
    "us": Deadline(
        45,
        Unit.CALENDAR_DAYS,
        "US (California): respond within 45 calendar days (Cal. Civ. Code §1798.130(a)(2))",
    ),
}
FALLBACK_RULE = "cn"


def rule_zone(rule: str) -> dt.tzinfo:
    """The civil time a DEADLINES rule counts its days in: its jurisdiction's (``carvault.timezones``), else UTC."""
    found = region_zone(rule.split(".")[0])
    return found[1] if found else dt.UTC


def deadline_rule(jurisdiction: str, kind: Kind) -> str:
    """The key of the DEADLINES row that applies to a request of ``kind`` answered under ``jurisdiction``."""
    for key in (f"{jurisdiction}.{kind.value}", jurisdiction):
        if key in DEADLINES:
            return key
    return FALLBACK_RULE if kind is not Kind.DELETION else f"{FALLBACK_RULE}.deletion"


class Handler(Protocol):
    """A staff member acting on a request (``access.staff.StaffPrincipal`` fits)."""

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> str: ...


CLI_ROLE = "cli"  # the local operator on the region's machine (``carvault admin`` without ``--as``)


def actor_of(by: Handler) -> Actor:
    """The audit actor of a staff member (``access.staff.staff_actor``: named by role and username), or of the local
    operator (``staff:cli:<login name>``)."""
    if by.role == CLI_ROLE:
        return Actor("staff", f"{CLI_ROLE}:{by.username}")
    return staff_actor(by.role, by.username)


def text_field(value: str | None, field: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    """A person's text, stripped and checked: present when required, within ``limit``, no NUL (PostgreSQL refuses
    it in text columns, and no one means it)."""
    v = (value or "").strip()
    if required and not v:
        raise ValidationFailed(f"{field} is required", field=field)
    if len(v) > limit:
        raise ValidationFailed(f"{field} is longer than {limit} characters", field=field)
    if "\x00" in v:
        raise ValidationFailed(f"{field} contains a NUL character", field=field)
    return v


def is_overdue(r: RightsRequest, now: int | None = None) -> bool:
    """Open past its deadline."""
    return r.status in OPEN and (now if now is not None else now_ms()) > r.deadline_ms


def request_json(r: RightsRequest, *, operator: bool = False, now: int | None = None) -> dict[str, Any]:
    """A request as the API shows it; the owner sees the handler's role, the operator also the name and links."""
    rule = DEADLINES.get(r.deadline_rule)
    body: dict[str, Any] = {
        "id": r.id,
        "kind": r.kind,
        "status": r.status,
        "vin": r.vin,
        "details": r.details,
        "received_ms": r.received_ms,
        "deadline_ms": r.deadline_ms,
        "deadline_rule": r.deadline_rule,
        "deadline_source": rule.source if rule else None,
        "overdue": is_overdue(r, now),
        "handler_role": r.handler_role,
        "started_ms": r.started_ms,
        "closed_ms": r.closed_ms,
        "outcome": r.outcome,
        "reason": r.reason,
        "produced": {
            "deletion_request_id": r.deletion_request_id,
            "export_job_id": r.export_job_id,
            "portability_bundle_id": r.portability_bundle_id,
        },
    }
    if r.kind == Kind.NEXT_OF_KIN:
        body["evidence"] = r.evidence
        body["subject_email"] = r.subject_email
        body["verified_ms"] = r.verified_ms
    if operator:
        body |= {
            "owner_id": r.owner_id,
            "requester_owner_id": r.requester_owner_id,
            "handler": r.handler,
            "case_id": r.case_id,
        }
    return body


@dataclass(frozen=True)
class Filing:
    """A request checked and ready to store (filed only after any service carrying it out has succeeded)."""

    requester_owner_id: int
    owner_id: int | None
    kind: Kind
    vin: str | None
    details: str
    evidence: str
    subject_email: str | None


class Rights:
    """The region's rights desk."""

    def __init__(self, db: Database, audit: AuditLog, region: str) -> None:
        self.db = db
        self.audit = audit
        self.region = region

    # ------------------------------------------------------------------ owner side
    def check(
        self,
        requester_owner_id: int,
        kind: Kind | str,
        *,
        vin: str | None = None,
        details: str = "",
        evidence: str = "",
        subject_email: str | None = None,
    ) -> Filing:
        """Validate a new request; nothing is stored (``file`` stores it)."""
        try:
            k = Kind(kind)
        except ValueError:
            raise ValidationFailed(f"unknown kind {kind!r}; choose one of {', '.join(Kind)}", field="kind") from None
        details = text_field(details, "details", required=k in NEEDS_DETAILS)
        owner_id: int | None = requester_owner_id
        email: str | None = None
        if k is Kind.NEXT_OF_KIN:
            evidence = text_field(evidence, "evidence", required=True)
            email = text_field(subject_email, "subject_email", required=True, limit=320).lower()
            if "@" not in email:
                raise ValidationFailed("subject_email must be the deceased's account e-mail", field="subject_email")
            if vin is not None:
                raise ValidationFailed("a next-of-kin request names the account, not a vehicle", field="vin")
            # Whether the account exists is not told to the requester; the DPO sees it (owner_id None: unknown).
            with self.db.session() as s:
                owner_id = s.scalar(select(Owner.id).where(func.lower(Owner.email) == email))
            if owner_id == requester_owner_id:
                raise ValidationFailed("a next-of-kin request is made for another person's account", field="kind")
        else:
            evidence = text_field(evidence, "evidence")
            if evidence:
                raise ValidationFailed("evidence belongs to next-of-kin requests only", field="evidence")
            if subject_email:
                raise ValidationFailed("subject_email belongs to next-of-kin requests only", field="subject_email")
        if k in VEHICLE_KINDS and vin is None:
            raise ValidationFailed(f"a {k.value} request names one of your vehicles", field="vin")
        if vin is not None:
            with self.db.session() as s:
                v = s.get(Vehicle, vin)
            if v is None or v.owner_id != requester_owner_id:
                raise NotFound(f"you have no vehicle {vin}", vin=vin)
        return Filing(requester_owner_id, owner_id, k, vin, details, evidence, email)

    def file(
        self,
        f: Filing,
        *,
        deletion_request_id: int | None = None,
        export_job_id: int | None = None,
        portability_bundle_id: str | None = None,
        now: int | None = None,
    ) -> RightsRequest:
        """Store a checked request with its deadline and whatever a service already produced for it."""
        received = now if now is not None else now_ms()
        rule = self.rule_for(f.owner_id, f.kind, received)
        r = RightsRequest(
            owner_id=f.owner_id,
            requester_owner_id=f.requester_owner_id,
            kind=f.kind.value,
            vin=f.vin,
            details=f.details,
            evidence=f.evidence,
            subject_email=f.subject_email,
            deadline_rule=rule,
            status=Status.RECEIVED.value,
            received_ms=received,
            deadline_ms=DEADLINES[rule].due(received, rule_zone(rule)),
            deletion_request_id=deletion_request_id,
            export_job_id=export_job_id,
            portability_bundle_id=portability_bundle_id,
        )
        with self.db.session() as s:
            s.add(r)
        self.audit.by_owner(
            f.requester_owner_id,
            AuditAction.RIGHTS_REQUEST,
            vin=f.vin,
            detail={"request_id": r.id, "kind": r.kind, "deadline_ms": r.deadline_ms},
        )
        return r

    def rule_for(self, owner_id: int | None, kind: Kind, received_ms: int) -> str:
        """The deadline rule of a request: the region's, or the owner's own jurisdiction's when that one is due
        sooner (both laws apply to the operator; the stricter deadline is kept)."""
        rules = {deadline_rule(self.region, kind)}
        if owner_id is not None:
            with self.db.session() as s:
                where = s.scalar(select(Owner.jurisdiction).where(Owner.id == owner_id))
            if where and where != self.region and (where in DEADLINES or f"{where}.{kind.value}" in DEADLINES):
                rules.add(deadline_rule(where, kind))
        return min(sorted(rules), key=lambda k: DEADLINES[k].due(received_ms, rule_zone(k)))

    def of_requester(self, owner_id: int) -> list[RightsRequest]:
        """The requests this account filed, newest first."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(RightsRequest)
                    .where(RightsRequest.requester_owner_id == owner_id)
                    .order_by(RightsRequest.id.desc())
                )
            )

    def mine(self, owner_id: int, request_id: int) -> RightsRequest:
        """One request this account filed; anyone else's is ``NotFound`` (never told apart from a missing one)."""
        with self.db.session() as s:
            r = s.get(RightsRequest, request_id)
        if r is None or r.requester_owner_id != owner_id:
            raise NotFound("no such rights request", request_id=request_id)
        return r

    def withdraw(self, owner_id: int, request_id: int) -> RightsRequest:
        """The requester withdraws an open request."""
        r = self.mine(owner_id, request_id)
        r = self._move(r.id, Status.WITHDRAWN, closed=True)
        self.audit.by_owner(owner_id, AuditAction.RIGHTS_WITHDRAW, vin=r.vin, detail={"request_id": r.id})
        return r

    # ------------------------------------------------------------------ operator side
    def get(self, request_id: int) -> RightsRequest:
        """One request (operator view)."""
        with self.db.session() as s:
            r = s.get(RightsRequest, request_id)
        if r is None:
            raise NotFound("no such rights request", request_id=request_id)
        return r

    def list(
        self,
        *,
        status: Status | None = None,
        kind: Kind | None = None,
        overdue: bool | None = None,
        owner_id: int | None = None,
        limit: int = 100,
        offset: int = 0,
        now: int | None = None,
    ) -> list[RightsRequest]:
        """Requests filtered, the soonest deadline first (overdue ones therefore on top)."""
        t = now if now is not None else now_ms()
        q = select(RightsRequest)
        if status is not None:
            q = q.where(RightsRequest.status == status.value)
        if kind is not None:
            q = q.where(RightsRequest.kind == kind.value)
        if owner_id is not None:
            q = q.where((RightsRequest.owner_id == owner_id) | (RightsRequest.requester_owner_id == owner_id))
        open_ = RightsRequest.status.in_([s.value for s in OPEN])
        if overdue is True:
            q = q.where(open_, RightsRequest.deadline_ms < t)
        elif overdue is False:
            q = q.where(~(open_ & (RightsRequest.deadline_ms < t)))
        q = q.order_by(RightsRequest.deadline_ms, RightsRequest.id).limit(limit).offset(offset)
        with self.db.session() as s:
            return list(s.scalars(q))

    def counts(self, now: int | None = None) -> dict[str, int]:
        """How many requests are in each status, and how many open ones are overdue (for the console)."""
        t = now if now is not None else now_ms()
        with self.db.session() as s:
            by_status = dict(s.execute(select(RightsRequest.status, func.count()).group_by(RightsRequest.status)).all())
            late = s.scalar(
                select(func.count())
                .select_from(RightsRequest)
                .where(RightsRequest.status.in_([x.value for x in OPEN]), RightsRequest.deadline_ms < t)
            )
        return {**{x.value: int(by_status.get(x.value, 0)) for x in Status}, "overdue": int(late or 0)}

    def assign(self, request_id: int, by: Handler, to: Handler) -> RightsRequest:
        """Give an open request to a handler (the owner then sees that handler's role)."""
        if not allows(Role(to.role), Permission.RIGHTS_HANDLE):
            raise ValidationFailed(f"{to.username} ({to.role}) does not handle rights requests", field="username")
        r = self.get(request_id)
        if r.status not in OPEN:
            raise Conflict(f"the request is {r.status}; only an open request is assigned", status=r.status)
        with self.db.session() as s:
            row = s.get(RightsRequest, request_id)
            assert row is not None
            row.handler, row.handler_role = to.username, str(to.role)
            r = row
        self._audit(r, by, AuditAction.RIGHTS_ASSIGN, {"to": f"{to.role}:{to.username}"})
        return r

    def verify(self, request_id: int, by: Handler, note: str) -> RightsRequest:
        """Record that a next-of-kin request's evidence (relationship, death) was checked and holds."""
        note = text_field(note, "note", required=True)
        r = self.get(request_id)
        if r.kind != Kind.NEXT_OF_KIN:
            raise Conflict("only a next-of-kin request has evidence to verify", kind=r.kind)
        if r.status not in OPEN:
            raise Conflict(f"the request is {r.status}", status=r.status)
        if r.owner_id is None:
            raise Conflict("no account has the named e-mail; refuse the request with that reason")
        with self.db.session() as s:
            row = s.get(RightsRequest, request_id)
            assert row is not None
            row.verified_ms = now_ms()
            r = row
        self._audit(r, by, AuditAction.RIGHTS_VERIFY, {"note": note})
        return r

    def start(self, request_id: int, by: Handler) -> RightsRequest:
        """Begin handling a received request; the starter becomes its handler unless one was assigned."""
        r = self._move(request_id, Status.IN_PROGRESS, handler=by)
        self._audit(r, by, AuditAction.RIGHTS_START, {})
        return r

    def complete(self, request_id: int, by: Handler, outcome: str) -> RightsRequest:
        """Close a request in progress as done, with a written outcome the owner reads."""
        outcome = text_field(outcome, "outcome", required=True)
        r = self.get(request_id)
        if r.kind == Kind.NEXT_OF_KIN and r.verified_ms is None:
            raise Conflict("verify the next-of-kin evidence before completing the request")
        if r.deletion_request_id is not None:
            with self.db.session() as s:
                d = s.get(DeletionRequest, r.deletion_request_id)
            if d is not None and d.status != "completed":
                raise Conflict(
                    f"the deletion it started is {d.status} (a legal hold stops it); it cannot be done yet",
                    deletion_status=d.status,
                )
        r = self._move(request_id, Status.DONE, closed=True, outcome=outcome)
        self._audit(r, by, AuditAction.RIGHTS_COMPLETE, {"outcome": outcome})
        return r

    def refuse(self, request_id: int, by: Handler, reason: str) -> RightsRequest:
        """Refuse an open request; a written reason is required (PIPL Art. 50: reasons for a refusal)."""
        reason = text_field(reason, "reason", required=True)
        r = self._move(request_id, Status.REFUSED, closed=True, reason=reason, handler=by)
        self._audit(r, by, AuditAction.RIGHTS_REFUSE, {"reason": reason})
        return r

    def deletion_due(self, request_id: int) -> RightsRequest:
        """The request, if a deletion may now be carried out for it by the handler: a verified next-of-kin request
        (PIPL Art. 49) or a deletion request that has none yet — in progress, naming an account here."""
        r = self.get(request_id)
        if r.kind not in (Kind.NEXT_OF_KIN, Kind.DELETION):
            raise Conflict(f"a {r.kind} request deletes nothing", kind=r.kind)
        if r.status != Status.IN_PROGRESS:
            raise Conflict("start the request before carrying it out", status=r.status)
        if r.owner_id is None:
            raise Conflict("the request names no account here")
        if r.deletion_request_id is not None:
            raise Conflict("a deletion was already carried out for this request", deletion=r.deletion_request_id)
        if r.kind == Kind.NEXT_OF_KIN and r.verified_ms is None:
            raise Conflict("verify the next-of-kin evidence before deleting anything")
        return r

    def link(
        self,
        request_id: int,
        *,
        deletion_request_id: int | None = None,
        export_job_id: int | None = None,
        portability_bundle_id: str | None = None,
    ) -> RightsRequest:
        """Record what a service produced for the request (each link set once)."""
        with self.db.session() as s:
            row = s.get(RightsRequest, request_id)
            if row is None:
                raise NotFound("no such rights request", request_id=request_id)
            row.deletion_request_id = row.deletion_request_id or deletion_request_id
            row.export_job_id = row.export_job_id or export_job_id
            row.portability_bundle_id = row.portability_bundle_id or portability_bundle_id
            return row

    def link_case(self, request_id: int, case_id: int) -> RightsRequest:
        """Record the case opened to read the data this request needs."""
        with self.db.session() as s:
            row = s.get(RightsRequest, request_id)
            if row is None:
                raise NotFound("no such rights request", request_id=request_id)
            row.case_id = case_id
            return row

    # ------------------------------------------------------------------ internals
    def _move(
        self,
        request_id: int,
        to: Status,
        *,
        closed: bool = False,
        handler: Handler | None = None,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> RightsRequest:
        allowed = {
            Status.IN_PROGRESS: {Status.RECEIVED},
            Status.DONE: {Status.IN_PROGRESS},
            Status.REFUSED: OPEN,
            Status.WITHDRAWN: OPEN,
        }[to]
        now = now_ms()
        values: dict[str, Any] = {"status": to.value}
        if to is Status.IN_PROGRESS:
            values["started_ms"] = now
        if closed:
            values["closed_ms"] = now
        if outcome is not None:
            values["outcome"] = outcome
        if reason is not None:
            values["reason"] = reason
        with self.db.session() as s:
            # One conditional UPDATE decides: of concurrent decisions (two tabs, two replicas) exactly one moves it.
            moved = rowcount(
                s.execute(
                    update(RightsRequest)
                    .where(RightsRequest.id == request_id, RightsRequest.status.in_([a.value for a in allowed]))
                    .values(**values)
                )
            )
            row = s.get(RightsRequest, request_id)
            if row is None:
                raise NotFound("no such rights request", request_id=request_id)
            if not moved:
                need = " or ".join(sorted(a.value for a in allowed))
                raise Conflict(
                    f"the request is {row.status}; it must be {need} to become {to.value}",
                    status=row.status,
                )
            if handler is not None and row.handler is None:
                row.handler, row.handler_role = handler.username, str(handler.role)
            return row

    def _audit(self, r: RightsRequest, by: Handler, action: AuditAction, detail: dict[str, Any]) -> None:
        # On the chain of the person whose data it is (and the requester's, when a relative asked).
        chains = {r.requester_owner_id, r.owner_id} - {None}
        for owner in sorted(c for c in chains if c is not None):
            self.audit.record(
                owner_id=owner,
                vin=r.vin,
                actor=actor_of(by),
                action=action,
                legal_basis=HANDLING_BASIS,
                detail={"request_id": r.id, "kind": r.kind, **detail},
            )
