"""Personal-information security incidents (PIPL Art. 57): the record, the affected owners, the notices, the report.

An incident is recorded with what happened and its scope: vehicles and/or owners named outright, and/or a time
window and signal categories that select the stored batches it touched. The affected owners are computed from the
records (``affected``), never typed in: the owners named, the owners of the vehicles named, and the owners of the
vehicles whose batches fall in the window and carry the categories (within the vehicles named, if any).

The notification's contents are what Art. 57 lists — what happened and which information, the cause, the possible
harm, the measures taken, what owners can do to reduce the harm, and a contact — written in every portal language.
Owners are told by a notice in the portal (``incident_notices``, the text as sent, marked read when opened); the
notification of the authority is recorded with the authority, when, its reference and what was sent.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from carvault.access.audit import LEGAL_OBLIGATION, AuditAction, AuditLog
from carvault.compliance.rights import Handler, actor_of, text_field
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.signals import CATEGORIES, Catalogue
from carvault.store.metadata import BatchRecord, Database, Incident, IncidentNotice, Owner, Vehicle, now_ms

# The notification's parts (PIPL Art. 57), in the order owners read them.
FIELDS = ("what", "cause", "harm", "measures", "actions", "contact")
# The portal's languages (web/i18n.LANGUAGES; a test keeps the two equal): a notice is sent in every one of them.
LANGUAGE_CODES = ("en", "zh-CN")
MAX_FIELD = 4000
MAX_SCOPE = 10_000
NOTIFY_BASIS = "legal obligation: notifying a personal-information incident (PIPL Art. 57)"


class Status:
    """Where an incident stands."""

    OPEN = "open"  # recorded, owners not told yet
    NOTIFIED = "notified"  # owners told
    CLOSED = "closed"


def check_content(content: dict[str, Any], *, complete: bool) -> dict[str, dict[str, str]]:
    """The notification text, validated: English always; with ``complete``, every language and every part."""
    if not isinstance(content, dict):
        raise ValidationFailed("content maps a language to the notification's parts", field="content")
    unknown = set(content) - set(LANGUAGE_CODES)
    if unknown:
        raise ValidationFailed(
            f"unknown language {sorted(unknown)[0]!r}; use {', '.join(LANGUAGE_CODES)}", field="content"
        )
    out: dict[str, dict[str, str]] = {}
    for lang in LANGUAGE_CODES:
        parts = content.get(lang)
        if parts is None:
            if complete or lang == "en":
                raise ValidationFailed(f"the notification needs its text in {lang}", field=f"content.{lang}")
            continue
        if not isinstance(parts, dict) or set(parts) - set(FIELDS):
            raise ValidationFailed(
                f"content.{lang} has exactly these parts: {', '.join(FIELDS)}", field=f"content.{lang}"
            )
        clean = {}
        for f in FIELDS:
            v = parts.get(f, "")
            if not isinstance(v, str):
                raise ValidationFailed(f"content.{lang}.{f} must be text", field=f"content.{lang}.{f}")
            clean[f] = text_field(v, f"content.{lang}.{f}", required=complete or lang == "en", limit=MAX_FIELD)
        out[lang] = clean
    return out


def incident_json(i: Incident) -> dict[str, Any]:
    """An incident as the operator API shows it."""
    return {
        "id": i.id,
        "title": i.title,
        "status": i.status,
        "detected_ms": i.detected_ms,
        "occurred_from_ms": i.occurred_from_ms,
        "occurred_to_ms": i.occurred_to_ms,
        "scope": {
            "vins": json.loads(i.scope_vins),
            "owner_ids": json.loads(i.scope_owner_ids),
            "categories": json.loads(i.scope_categories),
        },
        "content": json.loads(i.content),
        "affected_owners": i.affected_owners,
        "recorded_by": i.recorded_by,
        "created_ms": i.created_ms,
        "updated_ms": i.updated_ms,
        "owners_notified_ms": i.owners_notified_ms,
        "closed_ms": i.closed_ms,
        "authority": None
        if i.authority_notified_ms is None
        else {
            "authority": i.authority,
            "notified_ms": i.authority_notified_ms,
            "reference": i.authority_reference,
            "content": i.authority_content,
        },
    }


def notice_json(n: IncidentNotice, language: str | None = None) -> dict[str, Any]:
    """A notice as its owner sees it: in one language when asked (falling back to English), else all of them."""
    content = json.loads(n.content)
    body: dict[str, Any] = {"id": n.id, "incident_id": n.incident_id, "sent_ms": n.sent_ms, "read_ms": n.read_ms}
    if language is None:
        body["content"] = content
    else:
        body["language"] = language if language in content else "en"
        body |= content.get(language) or content["en"]
    return body


class Incidents:
    """Incidents of one region, their affected owners and the notices sent."""

    def __init__(self, db: Database, audit: AuditLog, catalogue: Catalogue) -> None:
        self.db = db
        self.audit = audit
        self.catalogue = catalogue

    # ------------------------------------------------------------------ recording
    def record(
        self,
        by: Handler,
        *,
        title: str,
        detected_ms: int,
        content: dict[str, Any],
        vins: list[str] | None = None,
        owner_ids: list[int] | None = None,
        categories: list[str] | None = None,
        occurred_from_ms: int | None = None,
        occurred_to_ms: int | None = None,
    ) -> Incident:
        """Record an incident (validated whole before anything is stored)."""
        scope = self._scope(vins or [], owner_ids or [], categories or [], occurred_from_ms, occurred_to_ms)
        title = text_field(title, "title", required=True, limit=300)
        if detected_ms <= 0 or detected_ms > now_ms() + 60_000:
            raise ValidationFailed("detected_ms must be a past moment", field="detected_ms")
        text = check_content(content, complete=False)
        now = now_ms()
        inc = Incident(
            title=title,
            status=Status.OPEN,
            detected_ms=detected_ms,
            occurred_from_ms=occurred_from_ms,
            occurred_to_ms=occurred_to_ms,
            scope_vins=json.dumps(scope["vins"]),
            scope_owner_ids=json.dumps(scope["owner_ids"]),
            scope_categories=json.dumps(scope["categories"]),
            content=json.dumps(text, ensure_ascii=False),
            recorded_by=f"{by.role}:{by.username}",
            created_ms=now,
            updated_ms=now,
        )
        with self.db.session() as s:
            s.add(inc)
        self._audit_region(by, AuditAction.INCIDENT_RECORD, {"incident_id": inc.id, "title": title})
        return inc

    def update(
        self, incident_id: int, by: Handler, *, title: str | None = None, content: dict[str, Any] | None = None
    ) -> Incident:
        """Correct the title or the notification text while owners have not been told yet."""
        inc = self.get(incident_id)
        if inc.status != Status.OPEN:
            raise Conflict(f"the incident is {inc.status}; its notice was already sent as it stands", status=inc.status)
        new_title = inc.title if title is None else text_field(title, "title", required=True, limit=300)
        text = json.loads(inc.content) if content is None else check_content(content, complete=False)
        with self.db.session() as s:
            row = s.get(Incident, incident_id)
            assert row is not None
            row.title, row.content, row.updated_ms = new_title, json.dumps(text, ensure_ascii=False), now_ms()
            inc = row
        self._audit_region(by, AuditAction.INCIDENT_UPDATE, {"incident_id": incident_id})
        return inc

    def _scope(
        self, vins: list[str], owner_ids: list[int], categories: list[str], t0: int | None, t1: int | None
    ) -> dict[str, list[Any]]:
        if len(vins) > MAX_SCOPE or len(owner_ids) > MAX_SCOPE:
            raise ValidationFailed(f"at most {MAX_SCOPE} vehicles and {MAX_SCOPE} owners per incident", field="scope")
        if (t0 is None) != (t1 is None):
            raise ValidationFailed("give both ends of the time window, or neither", field="occurred_to_ms")
        if t0 is not None and t1 is not None and t1 <= t0:
            raise ValidationFailed("the window's end must be after its start", field="occurred_to_ms")
        unknown_cat = sorted(set(categories) - set(CATEGORIES))
        if unknown_cat:
            raise ValidationFailed(f"unknown category {unknown_cat[0]!r}", field="categories")
        vins = sorted(set(vins))
        owner_ids = sorted(set(owner_ids))
        with self.db.session() as s:
            found_v = set(s.scalars(select(Vehicle.vin).where(Vehicle.vin.in_(vins)))) if vins else set()
            found_o = set(s.scalars(select(Owner.id).where(Owner.id.in_(owner_ids)))) if owner_ids else set()
        if missing := [v for v in vins if v not in found_v]:
            raise ValidationFailed(f"no vehicle {missing[0]} in this region", field="vins")
        if missing_o := [o for o in owner_ids if o not in found_o]:
            raise ValidationFailed(f"no owner {missing_o[0]} in this region", field="owner_ids")
        if not vins and not owner_ids and t0 is None and not categories:
            raise ValidationFailed(
                "name the scope: vehicles, owners, or a time window and/or categories", field="scope"
            )
        return {"vins": vins, "owner_ids": owner_ids, "categories": sorted(set(categories))}

    # ------------------------------------------------------------------ who is affected
    def affected(self, incident_id: int) -> list[int]:
        """The owners affected, computed from the records (sorted ids)."""
        inc = self.get(incident_id)
        vins: list[str] = json.loads(inc.scope_vins)
        categories: set[str] = set(json.loads(inc.scope_categories))
        owners: set[int] = set(json.loads(inc.scope_owner_ids))
        by_data = inc.occurred_from_ms is not None or bool(categories)
        with self.db.session() as s:
            if not by_data:
                if vins:
                    owners |= set(s.scalars(select(Vehicle.owner_id).where(Vehicle.vin.in_(vins))).all()) - {None}  # type: ignore[arg-type]
                return sorted(owners)
            q = select(BatchRecord.vin, BatchRecord.columns).distinct()
            if inc.occurred_from_ms is not None and inc.occurred_to_ms is not None:
                # A batch overlaps the window [from, to) when it starts before its end and ends at or after its start.
                q = q.where(BatchRecord.t0 < inc.occurred_to_ms, BatchRecord.t1 >= inc.occurred_from_ms)
            if vins:
                q = q.where(BatchRecord.vin.in_(vins))
            hit: set[str] = set()
            for vin, columns in s.execute(q):
                if vin in hit:
                    continue
                if not categories or self._categories(columns) & categories:
                    hit.add(vin)
            if hit:
                owners |= {o for o in s.scalars(select(Vehicle.owner_id).where(Vehicle.vin.in_(hit))) if o is not None}
        return sorted(owners)

    def _categories(self, columns: str) -> set[str]:
        found = set()
        for path in filter(None, columns.split(",")):
            sig = self.catalogue.get(path)
            if sig is not None:
                found.add(sig.category)
        return found

    # ------------------------------------------------------------------ telling people
    def notify_owners(self, incident_id: int, by: Handler) -> int:
        """Send the notice to every affected owner (each once); returns how many were told this time."""
        inc = self.get(incident_id)
        if inc.status == Status.CLOSED:
            raise Conflict("the incident is closed", status=inc.status)
        text = check_content(json.loads(inc.content), complete=True)  # every language before anyone is told
        owners = self.affected(incident_id)
        body = json.dumps(text, ensure_ascii=False)
        now = now_ms()
        for attempt in range(3):
            try:
                new = self._send(incident_id, owners, body, now)
                break
            except IntegrityError:  # another handler sent some of them at the same moment: look again
                if attempt == 2:
                    raise Conflict("the notices are being sent by someone else right now; try again") from None
        for o in new:
            self.audit.record(
                owner_id=o,
                actor=actor_of(by),
                action=AuditAction.INCIDENT_NOTIFY,
                legal_basis=NOTIFY_BASIS,
                detail={"incident_id": incident_id},
            )
        self._audit_region(by, AuditAction.INCIDENT_NOTIFY, {"incident_id": incident_id, "owners": len(new)})
        return len(new)

    def _send(self, incident_id: int, owners: list[int], body: str, now: int) -> list[int]:
        """In one transaction: a notice to each owner not told yet (the unique pair refuses a second), the
        incident marked notified; returns the owners told now."""
        with self.db.session() as s:
            told = set(s.scalars(select(IncidentNotice.owner_id).where(IncidentNotice.incident_id == incident_id)))
            new = [o for o in owners if o not in told]
            for o in new:
                s.add(IncidentNotice(incident_id=incident_id, owner_id=o, content=body, sent_ms=now))
            s.flush()
            row = s.get(Incident, incident_id)
            assert row is not None
            row.status = Status.NOTIFIED
            row.owners_notified_ms = row.owners_notified_ms or now
            row.affected_owners = len(told | set(new))
            row.updated_ms = now
        return new

    def notify_authority(
        self, incident_id: int, by: Handler, *, authority: str, reference: str, content: str, notified_ms: int | None
    ) -> Incident:
        """Record that (and what) the authority was told."""
        authority = text_field(authority, "authority", required=True, limit=300)
        reference = text_field(reference, "reference", limit=200)
        content = text_field(content, "content", required=True, limit=20_000)
        when = notified_ms if notified_ms is not None else now_ms()
        if when <= 0 or when > now_ms() + 60_000:
            raise ValidationFailed("notified_ms must be a past moment", field="notified_ms")
        self.get(incident_id)
        with self.db.session() as s:
            row = s.get(Incident, incident_id)
            assert row is not None
            row.authority, row.authority_reference, row.authority_content = authority, reference, content
            row.authority_notified_ms, row.updated_ms = when, now_ms()
            inc = row
        # The full record goes to the region's chain: a later correction of it keeps this one there.
        self._audit_region(
            by,
            AuditAction.INCIDENT_AUTHORITY,
            {
                "incident_id": incident_id,
                "authority": authority,
                "reference": reference,
                "notified_ms": when,
                "content": content,
            },
        )
        return inc

    def close(self, incident_id: int, by: Handler) -> Incident:
        """Close an incident once it is handled."""
        inc = self.get(incident_id)
        if inc.status == Status.CLOSED:
            raise Conflict("the incident is already closed", status=inc.status)
        with self.db.session() as s:
            row = s.get(Incident, incident_id)
            assert row is not None
            row.status, row.closed_ms, row.updated_ms = Status.CLOSED, now_ms(), now_ms()
            inc = row
        self._audit_region(by, AuditAction.INCIDENT_CLOSE, {"incident_id": incident_id})
        return inc

    # ------------------------------------------------------------------ reading
    def get(self, incident_id: int) -> Incident:
        """One incident."""
        with self.db.session() as s:
            inc = s.get(Incident, incident_id)
        if inc is None:
            raise NotFound("no such incident", incident_id=incident_id)
        return inc

    def list(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Incident]:
        """Incidents, newest first."""
        q = select(Incident)
        if status is not None:
            q = q.where(Incident.status == status)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(Incident.id.desc()).limit(limit).offset(offset)))

    def notices(self, owner_id: int, *, unread: bool = False) -> builtins.list[IncidentNotice]:
        """The notices sent to an owner, newest first."""
        q = select(IncidentNotice).where(IncidentNotice.owner_id == owner_id)
        if unread:
            q = q.where(IncidentNotice.read_ms.is_(None))
        with self.db.session() as s:
            return list(s.scalars(q.order_by(IncidentNotice.id.desc())))

    def unread_count(self, owner_id: int) -> int:
        """How many of the owner's notices are unread (the portal's banner)."""
        with self.db.session() as s:
            n = s.scalar(
                select(func.count())
                .select_from(IncidentNotice)
                .where(IncidentNotice.owner_id == owner_id, IncidentNotice.read_ms.is_(None))
            )
        return int(n or 0)

    def notice(self, owner_id: int, notice_id: int) -> IncidentNotice:
        """One of the owner's notices (anyone else's is ``NotFound``)."""
        with self.db.session() as s:
            n = s.get(IncidentNotice, notice_id)
        if n is None or n.owner_id != owner_id:
            raise NotFound("no such notice", notice_id=notice_id)
        return n

    def mark_read(self, owner_id: int, notice_id: int) -> IncidentNotice:
        """The owner has read the notice (the first time counts)."""
        self.notice(owner_id, notice_id)
        with self.db.session() as s:
            n = s.get(IncidentNotice, notice_id)
            assert n is not None
            n.read_ms = n.read_ms or now_ms()
            return n

    def _audit_region(self, by: Handler, action: AuditAction, detail: dict[str, Any]) -> None:
        self.audit.record(owner_id=None, actor=actor_of(by), action=action, legal_basis=LEGAL_OBLIGATION, detail=detail)
