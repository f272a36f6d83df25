"""Cross-border transfers: every principal's jurisdiction, the records that cover foreign recipients, and the gate.

One home for every transfer rule (docs/operator.md, "Cross-border transfers"). Every principal has a jurisdiction,
a region name: owners (``Owner.jurisdiction``, NULL = this region), apps (``App.jurisdiction``), operator staff
(``StaffMember.jurisdiction``) and authorities (on their orders and cases). A read of this region's data by a
principal outside it is an export (Automotive Data Export Security Guideline, 2026 edition: a foreign party's
query, download or export of data stored in China *is* an export), so ``Transfers.check`` refuses it
(``cross_border_transfer``) unless an approved, current transfer record names that recipient, its jurisdiction
and every category read:

- **Routes** (PIPL Art. 38–40): a security assessment by the CAC, the standard contract, or certification. What
  each route covers is data in ``ROUTES``; the person-count triggers they rest on are data in ``THRESHOLDS``, each
  with its source. Important data (``PrivacyClass.IMPORTANT``) leaves only under a security assessment
  (Several Provisions on Automotive Data Security Management, 2021, Art. 11–12).
- **Counting**: distinct persons (owners) whose data was transferred are counted per calendar year (from
  1 January in the region's civil time), region-wide and per record, in two classes: sensitive personal information
  (``PrivacyClass.SENSITIVE``) and the rest. Counting is done by the database (a unique person row and a
  conditional ``UPDATE`` of the counter, in the transfer's own transaction), so two replicas admitting at once
  can never pass a ceiling together.
- **Warnings and refusals**: crossing 80 % of a trigger, of a route's ceiling or of a record's approved scale is
  logged, written to the region's audit chain and shown by ``counters``; a new person past what the route (or
  the record's scale) covers is refused (``transfer_cap_reached``). A person already counted this year under that
  record is never refused for the count.
- **Log**: every admitted transfer is a ``transfer_events`` row (when, record, principal, owner, VIN,
  categories, action); reads under a grant also carry the record in the owner's access log (access/grants.py).

The data subject is not a recipient: an owner reading their own data, wherever they are, is their access right
(PIPL Art. 45), not a provision to a foreign party, so it is not gated.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from carvault.access.audit import LEGAL_OBLIGATION, Actor, AuditAction, AuditLog
from carvault.compliance.residency import region_name
from carvault.errors import Conflict, CrossBorderTransfer, NotFound, TransferCapReached, ValidationFailed
from carvault.signals import CATEGORIES, PrivacyClass
from carvault.store.metadata import (
    Database,
    Owner,
    TransferCounter,
    TransferEvent,
    TransferPerson,
    TransferRecord,
    now_ms,
    rowcount,
)
from carvault.timezones import region_zone

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class Route(StrEnum):
    """The three lawful routes for personal information to leave (PIPL Art. 38(1) items 1–3)."""

    SECURITY_ASSESSMENT = "security_assessment"
    STANDARD_CONTRACT = "standard_contract"
    CERTIFICATION = "certification"


class RecipientKind(StrEnum):
    """Who a transfer record names, and what ``recipient`` then holds."""

    APP = "app"  # an app's client_id
    STAFF = "staff"  # an operator staff username
    AUTHORITY = "authority"  # an authority's name, as on its orders and cases
    ENTITY = "entity"  # a named legal entity (e.g. a processor receiving a portability copy)


class Klass(StrEnum):
    """The classes persons are counted in: sensitive personal information, the rest, and all (per record)."""

    SENSITIVE = "sensitive"
    PERSONAL = "personal"
    ALL = "all"


class TransferAction(StrEnum):
    """What the foreign party did: the Guideline names all three an export."""

    QUERY = "query"
    DOWNLOAD = "download"
    EXPORT = "export"


class RecordStatus(StrEnum):
    """A record's status as shown: ``expired`` is derived from its period, never stored."""

    APPROVED = "approved"
    SUSPENDED = "suspended"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Threshold:
    """A person count, per calendar year, at which the law asks for a stronger route."""

    name: str
    klass: Klass
    persons: int
    source: str


# The figures, each with its source; ``ROUTES`` below says which a route may not reach.
THRESHOLDS: dict[str, Threshold] = {
    t.name: t
    for t in (
        Threshold(
            "assessment_sensitive",
            Klass.SENSITIVE,
            10_000,
            "Automotive Data Export Security Guideline (2026): 10,000 persons' sensitive personal information "
            "counted from 1 January needs a security assessment; PIPL Art. 40",
        ),
        Threshold(
            "assessment_personal",
            Klass.PERSONAL,
            1_000_000,
            "Automotive Data Export Security Guideline (2026): 1,000,000 persons' (non-sensitive) personal "
            "information counted from 1 January needs a security assessment; PIPL Art. 40",
        ),
        Threshold(
            "contract_personal",
            Klass.PERSONAL,
            100_000,
            "Standard contract: fewer than 100,000 persons' personal information a year; from 100,000 to "
            "1,000,000 the route is certification (PI Export Certification Measures, in force 2026-01-01)",
        ),
    )
}


@dataclass(frozen=True)
class RouteCover:
    """What one route covers: region-wide person counts strictly below these triggers, and important data or not."""

    route: Route
    below: dict[Klass, Threshold]  # a class absent here has no ceiling but the record's approved scale
    important_data: bool
    source: str


ROUTES: dict[Route, RouteCover] = {
    Route.STANDARD_CONTRACT: RouteCover(
        Route.STANDARD_CONTRACT,
        {
            Klass.PERSONAL: THRESHOLDS["contract_personal"],
            Klass.SENSITIVE: THRESHOLDS["assessment_sensitive"],
        },
        important_data=False,
        source="PIPL Art. 38(1)3; Measures on the Standard Contract for Personal Information Export",
    ),
    Route.CERTIFICATION: RouteCover(
        Route.CERTIFICATION,
        {
            Klass.PERSONAL: THRESHOLDS["assessment_personal"],
            Klass.SENSITIVE: THRESHOLDS["assessment_sensitive"],
        },
        important_data=False,
        source="PIPL Art. 38(1)2; PI Export Certification Measures (in force 2026-01-01)",
    ),
    Route.SECURITY_ASSESSMENT: RouteCover(
        Route.SECURITY_ASSESSMENT,
        {},
        important_data=True,
        source="PIPL Art. 38(1)1 and 40; Several Provisions on Automotive Data Security Management (2021) Art. 11–12",
    ),
}
WARN_AT = 0.8  # a warning when a count reaches this share of a trigger, a route's ceiling or a record's scale
MAX_PERIOD_DAYS = 3 * 366  # a security assessment is valid three years; no record is open-ended
REGION_SCOPE = "region"


def record_scope(record_id: int) -> str:
    """The counter scope of one record."""
    return f"record:{record_id}"


def year_of(ms: int, region: str | None = None) -> int:
    """The calendar year a time falls in, in the region's civil time (UTC without one): counters start again on
    1 January there, as the annual report's years do."""
    found = region_zone(region) if region else None
    return dt.datetime.fromtimestamp(ms / 1000, found[1] if found else dt.UTC).year


def warn_mark(limit: int) -> int:
    """The count at which a limit warns (80 % of it, at least 1)."""
    return max(1, math.ceil(limit * WARN_AT))


def classes_of(categories: Iterable[str]) -> set[Klass]:
    """The person classes a read of these categories counts in: sensitive, the rest, or both."""
    out: set[Klass] = set()
    for name in categories:
        privacy = CATEGORIES[name].privacy
        out.add(Klass.SENSITIVE if privacy is PrivacyClass.SENSITIVE else Klass.PERSONAL)
    return out


def important_of(categories: Iterable[str]) -> list[str]:
    """The categories among these that are important data."""
    return sorted(c for c in categories if CATEGORIES[c].privacy is PrivacyClass.IMPORTANT)


def check_categories(categories: Iterable[str], *, field: str = "categories") -> list[str]:
    """Known category names, deduplicated and sorted; ``ValidationFailed`` for an empty list or an unknown name."""
    names = sorted({c.strip() for c in categories if c.strip()})
    if not names:
        raise ValidationFailed("name at least one data category", field=field)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise ValidationFailed(
            f"unknown data categories {', '.join(unknown)}; known: {', '.join(CATEGORIES)}", field=field
        )
    return names


def record_status(r: TransferRecord, now: int | None = None) -> RecordStatus:
    """A record's status now: suspended, expired (its period is over or not begun), or approved."""
    now = now_ms() if now is None else now
    if r.status == RecordStatus.SUSPENDED:
        return RecordStatus.SUSPENDED
    if not r.from_ms <= now < r.to_ms:
        return RecordStatus.EXPIRED
    return RecordStatus.APPROVED


def record_json(r: TransferRecord, now: int | None = None) -> dict[str, Any]:
    """A transfer record as the admin API and CLI show it."""
    return {
        "id": r.id,
        "route": r.route,
        "recipient_kind": r.recipient_kind,
        "recipient": r.recipient,
        "recipient_jurisdiction": r.recipient_jurisdiction,
        "purpose": r.purpose,
        "categories": json.loads(r.categories),
        "max_persons": r.max_persons,
        "from_ms": r.from_ms,
        "to_ms": r.to_ms,
        "approval_reference": r.approval_reference,
        "status": record_status(r, now).value,
        "created_ms": r.created_ms,
        "created_by": r.created_by,
        "suspended_ms": r.suspended_ms,
        "suspended_by": r.suspended_by,
        "suspend_reason": r.suspend_reason,
    }


def event_json(e: TransferEvent) -> dict[str, Any]:
    """A transfer event as the admin API shows it."""
    return {
        "id": e.id,
        "at_ms": e.at_ms,
        "year": e.year,
        "record_id": e.record_id,
        "principal": e.principal,
        "jurisdiction": e.jurisdiction,
        "owner_id": e.owner_id,
        "vin": e.vin,
        "categories": json.loads(e.categories),
        "sensitive": bool(e.sensitive),
        "action": e.action,
    }


def transfer_note(record: TransferRecord) -> dict[str, Any]:
    """What the owner's access log says of a read that was a transfer abroad."""
    return {
        "record_id": record.id,
        "route": record.route,
        "destination": record.recipient_jurisdiction,
        "recipient": record.recipient,
        "approval_reference": record.approval_reference,
    }


@dataclass(frozen=True)
class Limit:
    """One counter a transfer raises and the most persons it may hold (None: no ceiling)."""

    scope: str
    klass: Klass
    most: int | None
    why: str


@dataclass(frozen=True)
class Warning_:
    """A counter that reached its warning mark."""

    year: int
    scope: str
    klass: Klass
    persons: int
    limit: int
    why: str


def limits_of(record: TransferRecord, classes: Collection[Klass]) -> list[Limit]:
    """The counters a transfer of these classes under this record raises, with the ceilings it may not pass."""
    cover = ROUTES[Route(record.route)]
    out = [Limit(record_scope(record.id), Klass.ALL, record.max_persons, f"record {record.id}'s approved scale")]
    for klass in sorted(classes):
        trigger = cover.below.get(klass)
        if trigger is None:
            out.append(Limit(REGION_SCOPE, klass, None, f"{record.route} route"))
        else:
            out.append(Limit(REGION_SCOPE, klass, trigger.persons - 1, f"{record.route} route ({trigger.name})"))
        out.append(Limit(record_scope(record.id), klass, None, f"record {record.id}"))
    return out


def warning_marks(scope: str, klass: Klass, record: TransferRecord | None) -> list[tuple[int, str]]:
    """Every limit of a counter that warns: (limit, what it is)."""
    if scope == REGION_SCOPE:
        return [(t.persons, t.name) for t in THRESHOLDS.values() if t.klass == klass]
    if record is not None and klass == Klass.ALL:
        return [(record.max_persons, "approved scale")]
    return []


class Transfers:
    """Transfer records, the gate every read by a foreign principal passes, and the per-year counters."""

    def __init__(self, db: Database, audit: AuditLog, region: str) -> None:
        self.db = db
        self.audit = audit
        self.region = region

    # ---------------------------------------------------------------- jurisdictions
    def owner_jurisdiction(self, owner: Owner) -> str:
        """Where an owner is: their recorded jurisdiction, or this region's."""
        return owner.jurisdiction or self.region

    def year(self, ms: int | None = None) -> int:
        """The calendar year (the region's civil time) an instant, by default now, is counted in."""
        return year_of(now_ms() if ms is None else ms, self.region)

    def is_domestic(self, jurisdiction: str | None) -> bool:
        """Whether a principal of this jurisdiction is inside this region (None: this region's own)."""
        return jurisdiction is None or jurisdiction == self.region

    # ---------------------------------------------------------------- records
    def create(
        self,
        *,
        route: str,
        recipient_kind: str,
        recipient: str,
        recipient_jurisdiction: str,
        purpose: str,
        categories: Sequence[str],
        max_persons: int,
        from_ms: int,
        to_ms: int,
        approval_reference: str,
        by: Actor,
    ) -> TransferRecord:
        """A new approved record, checked: important data only under a security assessment; recorded in the audit."""
        try:
            route_ = Route(route)
        except ValueError:
            raise ValidationFailed(f"route must be one of {', '.join(Route)}", field="route") from None
        try:
            kind = RecipientKind(recipient_kind)
        except ValueError:
            raise ValidationFailed(
                f"recipient_kind must be one of {', '.join(RecipientKind)}", field="recipient_kind"
            ) from None
        recipient = _text(recipient, "recipient", 300)
        try:
            jurisdiction = region_name(recipient_jurisdiction or "")
        except ValidationFailed as e:
            raise ValidationFailed(e.message, field="recipient_jurisdiction") from None
        if jurisdiction == self.region:
            raise ValidationFailed(
                f"the recipient is in this region ({self.region!r}): no transfer record is needed",
                field="recipient_jurisdiction",
            )
        purpose = _text(purpose, "purpose", 1000)
        reference = _text(approval_reference, "approval_reference", 300)
        names = check_categories(categories)
        important = important_of(names)
        if important and not ROUTES[route_].important_data:
            raise ValidationFailed(
                f"{', '.join(important)} is important data: it leaves only under a security assessment",
                field="route",
                important=important,
            )
        if isinstance(max_persons, bool) or not isinstance(max_persons, int) or not 1 <= max_persons <= 10**9:
            raise ValidationFailed("max_persons is a whole number from 1 to 1,000,000,000", field="max_persons")
        if not 0 <= from_ms < to_ms:
            raise ValidationFailed("the period's end must be after its start", field="period")
        if to_ms - from_ms > MAX_PERIOD_DAYS * DAY_MS:
            raise ValidationFailed(f"a transfer record covers at most {MAX_PERIOD_DAYS} days", field="period")
        if to_ms <= now_ms():
            raise ValidationFailed("the period has already ended", field="period")
        record = TransferRecord(
            route=route_.value,
            recipient_kind=kind.value,
            recipient=recipient,
            recipient_jurisdiction=jurisdiction,
            purpose=purpose,
            categories=json.dumps(names),
            max_persons=max_persons,
            from_ms=from_ms,
            to_ms=to_ms,
            approval_reference=reference,
            status=RecordStatus.APPROVED.value,
            created_by=str(by),
        )
        with self.db.session() as s:
            s.add(record)
        self.audit.record(
            owner_id=None,
            actor=by,
            action=AuditAction.TRANSFER_RECORD,
            legal_basis=f"{LEGAL_OBLIGATION}: PIPL Art. 38",
            detail=record_json(record),
        )
        return record

    def get(self, record_id: int) -> TransferRecord:
        """One record, or ``NotFound``."""
        with self.db.session() as s:
            r = s.get(TransferRecord, record_id)
        if r is None:
            raise NotFound(f"no transfer record {record_id}", record_id=record_id)
        return r

    def list(self, *, status: str | None = None, recipient: str | None = None) -> list[TransferRecord]:
        """Every record, newest first; filtered by status as shown (approved | suspended | expired) or recipient."""
        if status is not None and status not in set(RecordStatus):
            raise ValidationFailed(f"status must be one of {', '.join(RecordStatus)}", field="status")
        q = select(TransferRecord).order_by(TransferRecord.id.desc())
        if recipient:
            q = q.where(TransferRecord.recipient == recipient)
        with self.db.session() as s:
            rows = list(s.scalars(q))
        now = now_ms()
        return [r for r in rows if status is None or record_status(r, now) == status]

    def suspend(self, record_id: int, *, reason: str, by: Actor) -> TransferRecord:
        """Suspend a record: no transfer under it from the next request on; ``Conflict`` if already suspended."""
        reason = _text(reason, "reason", 1000)
        now = now_ms()
        with self.db.session() as s:
            done = rowcount(
                s.execute(
                    update(TransferRecord)
                    .where(TransferRecord.id == record_id, TransferRecord.status == RecordStatus.APPROVED.value)
                    .values(
                        status=RecordStatus.SUSPENDED.value,
                        suspended_ms=now,
                        suspended_by=str(by),
                        suspend_reason=reason,
                    )
                )
            )
        record = self.get(record_id)
        if not done:
            raise Conflict(f"transfer record {record_id} is already suspended", record_id=record_id)
        self.audit.record(
            owner_id=None,
            actor=by,
            action=AuditAction.TRANSFER_SUSPEND,
            legal_basis=f"{LEGAL_OBLIGATION}: PIPL Art. 38",
            detail={"record_id": record_id, "reason": reason, "recipient": record.recipient},
        )
        return record

    # ---------------------------------------------------------------- the gate
    def covering(
        self,
        principal_kind: str,
        principal_id: str,
        jurisdiction: str,
        categories: Collection[str] | None = None,
        *,
        now: int | None = None,
    ) -> TransferRecord | None:
        """The current approved record covering this recipient (and these categories, when given), or None."""
        found, _ = self._covering(
            principal_kind, principal_id, jurisdiction, categories, now_ms() if now is None else now
        )
        return found

    def _covering(
        self,
        principal_kind: str,
        principal_id: str,
        jurisdiction: str,
        categories: Collection[str] | None,
        now: int,
    ) -> tuple[TransferRecord | None, str]:
        """The covering record (security assessments first, then the latest) or None and why none covers."""
        with self.db.session() as s:
            named = list(
                s.scalars(
                    select(TransferRecord)
                    .where(
                        TransferRecord.recipient_kind == principal_kind,
                        TransferRecord.recipient == principal_id,
                        TransferRecord.recipient_jurisdiction == jurisdiction,
                    )
                    .order_by(TransferRecord.id.desc())
                )
            )
        if not named:
            return None, "no transfer record names this recipient"
        wanted = set(categories or ())
        important = important_of(wanted)

        def fits(r: TransferRecord) -> bool:
            covered = wanted <= set(json.loads(r.categories))
            return covered and (not important or ROUTES[Route(r.route)].important_data)

        current = [r for r in named if record_status(r, now) == RecordStatus.APPROVED]
        if categories is None:
            if current:
                return current[0], ""
            return None, f"its transfer record is {record_status(named[0], now).value}"
        covering = sorted(filter(fits, current), key=lambda r: (r.route != Route.SECURITY_ASSESSMENT, -r.id))
        if covering:
            return covering[0], ""
        lapsed = [r for r in named if fits(r)]
        if lapsed:  # the newest record that would cover it is suspended or expired
            return None, f"its transfer record {lapsed[0].id} is {record_status(lapsed[0], now).value}"
        if important and not any(ROUTES[Route(r.route)].important_data for r in named):
            return None, f"{', '.join(important)} is important data, which leaves only under a security assessment"
        return None, f"no transfer record of this recipient covers {', '.join(sorted(wanted))}"

    def check(
        self,
        principal_kind: str,
        principal_id: str,
        jurisdiction: str | None,
        *,
        owner_id: int | None,
        categories: Collection[str],
        vin: str | None = None,
        action: TransferAction | str = TransferAction.QUERY,
        count: bool = True,
    ) -> TransferRecord | None:
        """The one gate: None for a domestic principal (or the owner reading their own data), the covering record
        for a foreign one — counted and logged — and ``CrossBorderTransfer`` otherwise (``TransferCapReached``
        when admitting one more person would pass what the record's route or approved scale covers).

        ``count=False`` only confirms the cover (an open live subscription re-checked twice a second: the
        subscription was counted and logged when it was admitted)."""
        if self.is_domestic(jurisdiction):
            return None
        assert jurisdiction is not None
        if principal_kind == "owner" and owner_id is not None and principal_id == str(owner_id):
            return None  # the data subject, not a recipient
        names = sorted(set(categories))
        unknown = [c for c in names if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}")
        action = TransferAction(action)
        now = now_ms()
        record, why = self._covering(principal_kind, principal_id, jurisdiction, names, now)
        if record is None:
            raise CrossBorderTransfer(
                f"{principal_kind} {principal_id!r} is in {jurisdiction!r}, outside this region ({self.region!r}): a "
                f"cross-border transfer, refused until a transfer record covers it ({why})",
                recipient_jurisdiction=jurisdiction,
                region=self.region,
            )
        if not count:
            return record
        classes = classes_of(names)
        warnings = self._admit(
            record, principal_kind, principal_id, jurisdiction, owner_id, vin, names, classes, action, now
        )
        for w in warnings:
            self._warn(w)
        return record

    def _admit(
        self,
        record: TransferRecord,
        principal_kind: str,
        principal_id: str,
        jurisdiction: str,
        owner_id: int | None,
        vin: str | None,
        names: builtins.list[str],
        classes: set[Klass],
        action: TransferAction,
        now: int,
    ) -> builtins.list[Warning_]:
        """Count the person and log the event in one transaction; ``TransferCapReached`` (nothing kept) past a limit."""
        year = year_of(now, self.region)
        warnings: builtins.list[Warning_] = []
        with self.db.session() as s:
            if owner_id is not None:
                for limit in limits_of(record, classes):
                    persons = self._count(s, year, limit, owner_id)
                    if persons is None:
                        continue  # already counted this year
                    if persons < 0:
                        raise TransferCapReached(
                            f"transfer record {record.id} ({record.route}) does not cover one more person this year: "
                            f"{limit.why} allows at most {limit.most} ({limit.klass.value} persons, "
                            f"{'this region' if limit.scope == REGION_SCOPE else 'this record'})",
                            record_id=record.id,
                            route=record.route,
                            klass=limit.klass.value,
                            limit=limit.most,
                            recipient_jurisdiction=jurisdiction,
                            region=self.region,
                        )
                    for mark, what in warning_marks(limit.scope, limit.klass, record):
                        if persons == warn_mark(mark):
                            warnings.append(Warning_(year, limit.scope, limit.klass, persons, mark, what))
            s.add(
                TransferEvent(
                    at_ms=now,
                    year=year,
                    record_id=record.id,
                    principal=f"{principal_kind}:{principal_id}",
                    jurisdiction=jurisdiction,
                    owner_id=owner_id,
                    vin=vin,
                    categories=json.dumps(names),
                    sensitive=Klass.SENSITIVE in classes,
                    action=action.value,
                )
            )
        return warnings

    def _count(self, s: Session, year: int, limit: Limit, owner_id: int) -> int | None:
        """Count a person once in a counter: None if already counted, the new count, or -1 if the limit forbids it."""
        person = {"year": year, "scope": limit.scope, "klass": limit.klass.value, "owner_id": owner_id}
        if not _insert_ignore(s, TransferPerson.__table__, {**person, "at_ms": now_ms()}):  # type: ignore[arg-type]
            return None
        key = {"year": year, "scope": limit.scope, "klass": limit.klass.value}
        _insert_ignore(s, TransferCounter.__table__, {**key, "persons": 0})  # type: ignore[arg-type]
        q = update(TransferCounter).where(
            TransferCounter.year == year, TransferCounter.scope == limit.scope, TransferCounter.klass == key["klass"]
        )
        if limit.most is not None:
            q = q.where(TransferCounter.persons < limit.most)
        row = s.execute(q.values(persons=TransferCounter.persons + 1).returning(TransferCounter.persons)).first()
        return -1 if row is None else int(row[0])

    def _warn(self, w: Warning_) -> None:
        """Log a crossed warning mark and write it to the region's audit chain."""
        message = (
            f"cross-border transfers {w.year}: {w.persons} {w.klass.value} persons in {w.scope}, "
            f"{int(WARN_AT * 100)} % of {w.limit} ({w.why})"
        )
        log.warning(message)
        self.audit.record(
            owner_id=None,
            actor=Actor("system", "transfers"),
            action=AuditAction.TRANSFER_WARNING,
            legal_basis=f"{LEGAL_OBLIGATION}: PIPL Art. 38–40",
            detail={
                "year": w.year,
                "scope": w.scope,
                "klass": w.klass.value,
                "persons": w.persons,
                "limit": w.limit,
                "what": w.why,
            },
        )

    # ---------------------------------------------------------------- counters and events
    def counters(self, year: int) -> dict[str, Any]:
        """Persons transferred in a year, region-wide and per record, each with its limits and level."""
        with self.db.session() as s:
            rows = list(s.scalars(select(TransferCounter).where(TransferCounter.year == year)))
            records = {r.id: r for r in s.scalars(select(TransferRecord))}
        counts = {(c.scope, c.klass): c.persons for c in rows}
        region = {
            k.value: _level(counts.get((REGION_SCOPE, k.value), 0), warning_marks(REGION_SCOPE, k, None))
            for k in (Klass.SENSITIVE, Klass.PERSONAL)
        }
        per_record = [
            _record_entry(records[rid], counts)
            for rid in sorted({int(scope.split(":")[1]) for scope, _ in counts if scope.startswith("record:")})
            if rid in records
        ]
        warnings = [
            {"scope": REGION_SCOPE, "klass": k, **lim}
            for k, entry in region.items()
            for lim in entry["limits"]
            if lim["level"] != "ok"
        ] + [
            {"scope": record_scope(e["record_id"]), "klass": k.value, **lim}
            for e in per_record
            for k in (Klass.ALL, Klass.SENSITIVE, Klass.PERSONAL)
            for lim in e[k.value]["limits"]
            if lim["level"] != "ok"
        ]
        return {
            "year": year,
            "region": region,
            "records": per_record,
            "warnings": warnings,
            "thresholds": [
                {"name": t.name, "klass": t.klass.value, "persons": t.persons, "source": t.source}
                for t in THRESHOLDS.values()
            ],
        }

    def record_counters(self, record: TransferRecord, year: int) -> dict[str, Any]:
        """One record's persons in a year (all, sensitive, non-sensitive) with its approved scale's level."""
        scope = record_scope(record.id)
        with self.db.session() as s:
            rows = list(
                s.scalars(select(TransferCounter).where(TransferCounter.year == year, TransferCounter.scope == scope))
            )
        return _record_entry(record, {(c.scope, c.klass): c.persons for c in rows})

    def events(
        self,
        *,
        record_id: int | None = None,
        owner_id: int | None = None,
        year: int | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> builtins.list[TransferEvent]:
        """Logged transfers, newest first, filtered."""
        q = select(TransferEvent)
        if record_id is not None:
            q = q.where(TransferEvent.record_id == record_id)
        if owner_id is not None:
            q = q.where(TransferEvent.owner_id == owner_id)
        if year is not None:
            q = q.where(TransferEvent.year == year)
        if before_id is not None:
            q = q.where(TransferEvent.id < before_id)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(TransferEvent.id.desc()).limit(max(1, min(limit, 1000)))))


def _record_entry(r: TransferRecord, counts: dict[tuple[str, str], int]) -> dict[str, Any]:
    """A record's counters in the shape ``counters`` shows them."""
    scope = record_scope(r.id)
    return {
        "record_id": r.id,
        "route": r.route,
        "recipient": r.recipient,
        "status": record_status(r).value,
        **{
            k.value: _level(counts.get((scope, k.value), 0), warning_marks(scope, k, r))
            for k in (Klass.ALL, Klass.SENSITIVE, Klass.PERSONAL)
        },
    }


def _level(persons: int, marks: list[tuple[int, str]]) -> dict[str, Any]:
    """A count with each of its limits and whether it is ok, in warning (≥ 80 %) or reached."""
    limits = []
    for limit, what in marks:
        level = "reached" if persons >= limit else "warning" if persons >= warn_mark(limit) else "ok"
        limits.append({"limit": limit, "what": what, "warn_at": warn_mark(limit), "level": level, "persons": persons})
    return {"persons": persons, "limits": limits}


def _text(value: str, field: str, most: int) -> str:
    """A required one-line text field, stripped; ``ValidationFailed`` if blank or too long."""
    value = (value or "").strip()
    if not value:
        raise ValidationFailed(f"{field} is required", field=field)
    if len(value) > most:
        raise ValidationFailed(f"{field} is at most {most} characters", field=field)
    return value


def _insert_ignore(s: Session, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row unless a unique key already holds it; True if it was inserted (SQLite and PostgreSQL).

    Whether it was inserted is read from ``RETURNING``: psycopg's row count for a skipped ``ON CONFLICT DO
    NOTHING`` is not 0, so a count would call every row new (found by the PostgreSQL test).
    """
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - the two supported backends are above
        stmt = insert(table).values(**values)
    return s.execute(stmt.returning(table.c.id)).first() is not None
