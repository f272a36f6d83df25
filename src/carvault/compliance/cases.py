"""Operator cases: the one way a staff member reads an owner's data, bounded in vehicles, data window and time.

A case names its kind, the owner and vehicles it covers, its legal basis and reference, and an end date at most
90 days away. Who may open which kind is in compliance/roles.py (``CASE_KINDS``). Reading under a case
(``Cases.access``) needs the ``case.read`` permission *and* a case that is open, not past its end date, covers the
vehicle (still owned by the case's owner), and — for a support ticket — was approved by the owner in the portal;
data frozen by a legal hold is not served; a staff member working from another jurisdiction reads only under a
transfer record that covers it (compliance/transfers.py). The read is served through the same ``ScopedView`` as a
grant holder's (camera, biometric and cabin data never; precise location only under an authority order) and
recorded with ``Grants.record_read`` in the owner's access log, naming the staff member, their role and the case.

Opening, closing and the owner's decision on a support ticket are recorded in the region's audit chain and in the
owner's.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, or_, select, update

from carvault.access.audit import LEGAL_OBLIGATION, OWNER_REQUEST, Actor, AuditAction, AuditLog
from carvault.access.grants import Access
from carvault.access.staff import StaffPrincipal
from carvault.compliance.roles import CASE_KINDS, Permission, Role, allows, may_open
from carvault.compliance.sharing import Scope, ScopedView
from carvault.errors import (
    CaseInactive,
    Conflict,
    CrossBorderTransfer,
    NotFound,
    OutOfScope,
    RoleForbidden,
    ValidationFailed,
)
from carvault.signals import Catalogue
from carvault.store.metadata import Case, Database, Vehicle, now_ms, rowcount

KINDS = ("rights_request", "authority_order", "breach_investigation", "support_ticket")
MAX_CASE_MS = 90 * 86_400_000
MAX_VINS = 50
# Every shareable signal (the never-shareable categories stay out: a scoped view drops them).
CASE_SIGNALS = ("Vehicle",)


class TransferGate(Protocol):
    """What cases need of compliance/transfers.py: admit (or refuse) a foreign principal's access."""

    def check(
        self,
        principal_kind: str,
        principal_id: str,
        jurisdiction: str | None,
        *,
        owner_id: int | None,
        categories: Sequence[str],
        vin: str | None = None,
    ) -> Any: ...


def case_basis(case: Case) -> str:
    """The legal basis recorded for a read under a case: the case, its kind and its own basis."""
    return f"case {case.id} ({case.kind}): {case.legal_basis}"


STATES = ("open", "awaiting_owner", "declined", "ended", "closed")


def _state_filter(state: str, now: int) -> list[ColumnElement[bool]]:
    """The SQL conditions of one state: the same decision as ``case_state``, made by the database."""
    running = [Case.closed_ms.is_(None), Case.ends_ms > now]
    ticket = Case.kind == "support_ticket"
    if state == "closed":
        return [Case.closed_ms.is_not(None)]
    if state == "ended":
        return [Case.closed_ms.is_(None), Case.ends_ms <= now]
    if state == "declined":
        return [*running, ticket, Case.owner_declined_ms.is_not(None)]
    if state == "awaiting_owner":
        return [*running, ticket, Case.owner_declined_ms.is_(None), Case.owner_approved_ms.is_(None)]
    return [
        *running,
        or_(~ticket, and_(Case.owner_declined_ms.is_(None), Case.owner_approved_ms.is_not(None))),
    ]


def case_state(case: Case, now: int | None = None) -> str:
    """open | awaiting_owner | declined | ended | closed."""
    now = now_ms() if now is None else now
    if case.closed_ms is not None:
        return "closed"
    if case.ends_ms <= now:
        return "ended"
    if case.kind == "support_ticket":
        if case.owner_declined_ms is not None:
            return "declined"
        if case.owner_approved_ms is None:
            return "awaiting_owner"
    return "open"


class Cases:
    """Opening, listing, closing cases, the owner's approval of support tickets, and reads under a case."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        audit: AuditLog,
        region: str,
        *,
        check_served: Callable[[str], None],
        transfers: Callable[[], TransferGate | None] = lambda: None,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.audit = audit
        self.region = region
        self.check_served = check_served  # compliance/deletion.py: data frozen by a hold is not served
        self.transfers = transfers  # the transfer gate, once wired (None: foreign staff are refused)

    # ---------------------------------------------------------------- opening
    def open(
        self,
        staff: StaffPrincipal,
        *,
        kind: str,
        vins: Sequence[str],
        legal_basis: str,
        ends_ms: int,
        reference: str = "",
        subject: str = "",
        owner_id: int | None = None,
        authority: str | None = None,
        jurisdiction: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
    ) -> Case:
        """Open a case (``cases.open``; the role must be one that opens this kind); recorded in both chains."""
        if not allows(staff.role, Permission.CASES_OPEN):
            raise RoleForbidden(f"the role {staff.role.value} opens no cases", permission=Permission.CASES_OPEN.value)
        if kind not in KINDS:
            raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", field="kind")
        if not may_open(staff.role, kind):
            allowed = ", ".join(sorted(CASE_KINDS[staff.role])) or "none"
            raise RoleForbidden(f"the role {staff.role.value} opens only these kinds of case: {allowed}", kind=kind)
        legal_basis, reference, subject = legal_basis.strip(), reference.strip(), subject.strip()
        if not legal_basis or len(legal_basis) > 400:
            raise ValidationFailed("a case states its legal basis (at most 400 characters)", field="legal_basis")
        if len(reference) > 200 or len(subject) > 1000:
            raise ValidationFailed("reference ≤ 200 and subject ≤ 1000 characters", field="reference")
        if kind == "authority_order" and not (authority and authority.strip() and reference):
            raise ValidationFailed("an authority order case names the authority and its reference", field="authority")
        if kind == "support_ticket" and not subject:
            raise ValidationFailed("a support ticket says what it needs, for the owner to decide", field="subject")
        now = now_ms()
        if not now < ends_ms <= now + MAX_CASE_MS:
            raise ValidationFailed("a case ends in the future, at most 90 days from now", field="ends_ms")
        if from_ms is not None and to_ms is not None and from_ms >= to_ms:
            raise ValidationFailed("the data window's start comes before its end", field="from_ms")
        wanted = list(dict.fromkeys(v.strip().upper() for v in vins if v.strip()))
        if not wanted or len(wanted) > MAX_VINS:
            raise ValidationFailed(f"a case names 1 to {MAX_VINS} vehicles", field="vins")
        owner_id = self._owner_of(wanted, owner_id)
        case = Case(
            kind=kind,
            owner_id=owner_id,
            vins=json.dumps(wanted),
            subject=subject,
            legal_basis=legal_basis,
            reference=reference,
            authority=authority.strip()[:200] if authority else None,
            jurisdiction=jurisdiction.strip().lower()[:16] if jurisdiction else None,
            from_ms=from_ms,
            to_ms=to_ms,
            opened_by=str(staff.actor),
            opened_by_id=staff.staff_id,
            opened_ms=now,
            ends_ms=ends_ms,
        )
        with self.db.session() as s:
            s.add(case)
        self._record(case, staff.actor, AuditAction.CASE_OPEN, LEGAL_OBLIGATION, ends_ms=ends_ms, subject=subject)
        return case

    def _owner_of(self, vins: list[str], owner_id: int | None) -> int:
        """The one owner of every vehicle named (a case covers one owner's vehicles)."""
        with self.db.session() as s:
            owners = {
                vin: who for vin, who in s.execute(select(Vehicle.vin, Vehicle.owner_id).where(Vehicle.vin.in_(vins)))
            }
        missing = [v for v in vins if owners.get(v) is None]
        if missing:
            raise NotFound(f"no owned vehicle {missing[0]}", vin=missing[0])
        found = set(owners.values())
        if len(found) != 1 or (owner_id is not None and found != {owner_id}):
            raise ValidationFailed("a case covers vehicles of one owner (the owner it names)", field="vins")
        return found.pop()  # type: ignore[return-value]

    # ---------------------------------------------------------------- reading
    def get(self, case_id: int) -> Case:
        """One case, or ``NotFound``."""
        with self.db.session() as s:
            c = s.get(Case, case_id)
        if c is None:
            raise NotFound("no such case", case_id=case_id)
        return c

    def list(
        self, *, state: str | None = None, kind: str | None = None, owner_id: int | None = None, limit: int = 200
    ) -> list[Case]:
        """Cases, newest first, filtered by kind, owner and state (one of ``STATES``, as ``case_state`` says)."""
        if kind is not None and kind not in KINDS:
            raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", field="kind")
        if state is not None and state not in STATES:
            raise ValidationFailed(f"state must be one of {', '.join(STATES)}", field="state")
        q = select(Case).order_by(Case.id.desc())
        if kind:
            q = q.where(Case.kind == kind)
        if owner_id is not None:
            q = q.where(Case.owner_id == owner_id)
        if state is not None:
            q = q.where(*_state_filter(state, now_ms()))
        with self.db.session() as s:
            return list(s.scalars(q.limit(max(1, min(limit, 1000)))))

    def close(self, staff: StaffPrincipal, case_id: int, outcome: str = "") -> Case:
        """Close a case (no read under it after this); recorded in both chains.

        Whoever works cases of its kind closes it (support its tickets, the liaison authority orders), and the
        data-protection officer any case, in oversight; support cannot end an authority's investigation.
        """
        outcome = outcome.strip()
        if len(outcome) > 1000:
            raise ValidationFailed("an outcome is at most 1000 characters", field="outcome")
        kind = self.get(case_id).kind
        if not allows(staff.role, Permission.CASES_OPEN) or not (may_open(staff.role, kind) or staff.role is Role.DPO):
            raise RoleForbidden(f"the role {staff.role.value} does not close {kind} cases", kind=kind)
        with self.db.session() as s:
            # Conditional, so of two closings at once (any replica, any backend) exactly one is recorded.
            closed = rowcount(
                s.execute(
                    update(Case)
                    .where(Case.id == case_id, Case.closed_ms.is_(None))
                    .values(closed_ms=now_ms(), closed_by=str(staff.actor), outcome=outcome)
                )
            )
            c = s.get(Case, case_id)
        if c is None:
            raise NotFound("no such case", case_id=case_id)
        if not closed:
            raise Conflict("this case is already closed", case_id=case_id)
        self._record(c, staff.actor, AuditAction.CASE_CLOSE, LEGAL_OBLIGATION, outcome=outcome)
        return c

    # ------------------------------------------------------ owner's decision
    def pending_for_owner(self, owner_id: int) -> builtins.list[Case]:
        """Support tickets waiting for the owner's decision."""
        return self.list(state="awaiting_owner", owner_id=owner_id)

    def of_owner(self, owner_id: int) -> builtins.list[Case]:
        """Every case about the owner (they may know who looked into their data and why)."""
        return self.list(owner_id=owner_id)

    def decide(self, owner_id: int, case_id: int, *, approve: bool) -> Case:
        """The owner approves or declines a support ticket's access; only while it waits for them."""
        now = now_ms()
        with self.db.session() as s:
            c = s.get(Case, case_id)
            if c is None or c.owner_id != owner_id or c.kind != "support_ticket":
                raise NotFound("no such support ticket", case_id=case_id)
            # Conditional on the ticket still waiting, so a second decision (another tab, another replica) loses.
            decided = rowcount(
                s.execute(
                    update(Case)
                    .where(Case.id == case_id, *_state_filter("awaiting_owner", now))
                    .values(**({"owner_approved_ms": now} if approve else {"owner_declined_ms": now}))
                )
            )
            s.refresh(c)
        if not decided:
            raise Conflict(f"this ticket is {case_state(c)}; there is nothing to decide", case_id=case_id)
        action = AuditAction.CASE_APPROVE if approve else AuditAction.CASE_DECLINE
        self._record(c, Actor("owner", str(owner_id)), action, OWNER_REQUEST)
        return c

    def withdraw(self, owner_id: int, case_id: int) -> Case:
        """The owner withdraws an approval they gave (their consent is theirs to take back): reads stop at once.

        The ticket then reads as declined; what was read before stays in the owner's access log.
        """
        now = now_ms()
        with self.db.session() as s:
            c = s.get(Case, case_id)
            if c is None or c.owner_id != owner_id or c.kind != "support_ticket":
                raise NotFound("no such support ticket", case_id=case_id)
            # Conditional on the approval still standing, so a withdrawal counts once whatever runs beside it.
            withdrawn = rowcount(
                s.execute(
                    update(Case)
                    .where(Case.id == case_id, *_state_filter("open", now), Case.owner_approved_ms.is_not(None))
                    .values(owner_declined_ms=now)
                )
            )
            s.refresh(c)
        if not withdrawn:
            raise Conflict(f"this ticket is {case_state(c)}; there is no approval to withdraw", case_id=case_id)
        self._record(c, Actor("owner", str(owner_id)), AuditAction.CASE_DECLINE, OWNER_REQUEST, withdrawn=True)
        return c

    # ------------------------------------------------------ access under a case
    def access(self, staff: StaffPrincipal, case_id: int, vin: str) -> Access:
        """A staff member's access to one vehicle under a case, or the refusal that says why not."""
        if not allows(staff.role, Permission.CASE_READ):
            raise RoleForbidden(f"the role {staff.role.value} reads no data", permission=Permission.CASE_READ.value)
        case = self.get(case_id)
        if not may_open(staff.role, case.kind):
            raise RoleForbidden(f"the role {staff.role.value} does not work {case.kind} cases", kind=case.kind)
        state = case_state(case)
        if state != "open":
            raise CaseInactive(f"case {case.id} is {state.replace('_', ' ')}: nothing is read under it", state=state)
        vin = vin.strip().upper()
        vins = json.loads(case.vins)
        with self.db.session() as s:
            v = s.get(Vehicle, vin)
        if vin not in vins or v is None or v.owner_id != case.owner_id:
            raise OutOfScope(f"case {case.id} does not cover vehicle {vin}", vin=vin)
        self.check_served(vin)
        scope = Scope(
            vins=tuple(vins),
            signals=CASE_SIGNALS,
            from_ms=case.from_ms,
            to_ms=case.to_ms,
            live=False,
            precise_location=case.kind == "authority_order",
            purpose=f"case:{case.kind}",
            expires_ms=case.ends_ms,
        )
        view = ScopedView(self.catalogue, vin, scope)
        transfer = self._admit_transfer(staff, case, view, vin) if staff.jurisdiction != self.region else None
        if case.kind == "authority_order" and case.authority and case.jurisdiction not in (None, self.region):
            # Read for an authority abroad: the data goes to it (Data Security Law Art. 36), so it needs a record too.
            gate = self.transfers()
            categories = sorted({s.category for s in view.allowed()})
            if gate is None:
                raise CrossBorderTransfer(f"an order from {case.jurisdiction} needs a transfer record")
            transfer = gate.check(
                "authority", case.authority, case.jurisdiction, owner_id=case.owner_id, categories=categories, vin=vin
            )
        # The owner's access log then names the transfer record of a read from abroad (Grants.record_read).
        return Access(v, view, staff.actor, case_basis(case), case_id=case.id, transfer=transfer)

    def _admit_transfer(self, staff: StaffPrincipal, case: Case, view: ScopedView, vin: str) -> Any:
        """A staff member abroad reads only under a transfer record that covers them (compliance/transfers.py);
        the record, counted and logged."""
        gate = self.transfers()
        if gate is None:  # no transfer gate wired: a foreign read is a cross-border transfer nobody approved
            raise CrossBorderTransfer(
                f"staff in {staff.jurisdiction} reading data kept in {self.region} needs a transfer record",
                jurisdiction=staff.jurisdiction,
            )
        categories = sorted({s.category for s in view.allowed()})
        return gate.check(
            "staff", staff.username, staff.jurisdiction, owner_id=case.owner_id, categories=categories, vin=vin
        )

    # ---------------------------------------------------------------- helpers
    def _record(self, case: Case, actor: Actor, action: AuditAction, basis: str, **detail: Any) -> None:
        """Record in the region's chain and in the owner's."""
        body = {"case_id": case.id, "kind": case.kind, "reference": case.reference, **detail}
        self.audit.record(owner_id=None, actor=actor, action=action, legal_basis=basis, detail=body)
        self.audit.record(
            owner_id=case.owner_id,
            actor=actor,
            action=action,
            legal_basis=basis if action not in (AuditAction.CASE_OPEN, AuditAction.CASE_CLOSE) else case_basis(case),
            detail=body,
        )


def case_json(c: Case, *, now: int | None = None) -> dict[str, Any]:
    """A case as the operator's API (and the owner, for their own) sees it."""
    return {
        "id": c.id,
        "kind": c.kind,
        "state": case_state(c, now),
        "owner_id": c.owner_id,
        "vins": json.loads(c.vins),
        "subject": c.subject,
        "legal_basis": c.legal_basis,
        "reference": c.reference,
        "authority": c.authority,
        "jurisdiction": c.jurisdiction,
        "from_ms": c.from_ms,
        "to_ms": c.to_ms,
        "opened_by": c.opened_by,
        "opened_ms": c.opened_ms,
        "ends_ms": c.ends_ms,
        "closed_ms": c.closed_ms,
        "closed_by": c.closed_by,
        "outcome": c.outcome,
        "owner_approved_ms": c.owner_approved_ms,
        "owner_declined_ms": c.owner_declined_ms,
    }
