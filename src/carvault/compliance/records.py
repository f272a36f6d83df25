"""Records of processing (Network Data Security Management Regulations Art. 12: kept for at least three years).

Three kinds of entry, each from its one home:

- ``activity`` — one per signal category, generated from the catalogue (``signals.CATEGORIES``: purpose, privacy
  class, retention period) and the legal basis its privacy class calls for;
- ``recipient`` — one per third-party app that holds or held grants, generated from the grants and apps tables
  (purposes, categories its grants cover, jurisdiction), and one per portability recipient (legal entity);
- ``processor`` — entrusted processors (hosting, support contractors ...), which only the operator knows: added,
  updated and retired by hand.

``sync`` brings the generated entries up to date; an entry whose source is gone is *retired*, never removed. Every
change is written to the region's audit chain with the values it replaced, so the history of a record survives an
update. No entry is deleted before three years have passed since it was retired (``delete`` refuses with
``RecordRetained``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from sqlalchemy import delete, select

from carvault.access.audit import LEGAL_OBLIGATION, Actor, AuditAction, AuditLog
from carvault.compliance.rights import Handler, actor_of, text_field
from carvault.compliance.sharing import PURPOSES
from carvault.errors import Conflict, InvalidQuery, NotFound, RecordRetained, ValidationFailed
from carvault.signals import CATEGORIES, Catalogue, PrivacyClass
from carvault.store.metadata import App, Database, Grant, PortabilityBundle, ProcessingRecord, now_ms, rowcount

KEEP_YEARS = 3
KEEP_MS = KEEP_YEARS * 365 * 86_400_000 + 86_400_000  # three years, counting a leap day
KINDS = ("activity", "recipient", "processor")
# What processing each privacy class rests on (PIPL Art. 13, 29; Several Provisions on Automotive Data Art. 9–10).
LEGAL_BASIS: dict[PrivacyClass, str] = {
    PrivacyClass.TECHNICAL: "performance of the service contract (PIPL Art. 13(1)(2)); no personal information alone",
    PrivacyClass.PERSONAL: "the owner's consent per category, given and withdrawn in the portal (PIPL Art. 13(1)(1))",
    PrivacyClass.SENSITIVE: "the owner's separate consent (PIPL Art. 29), off by default (Several Provisions Art. 9)",
    PrivacyClass.IMPORTANT: "separate consent; important data kept in the region, never exported without a security "
    "assessment (Several Provisions Art. 11–12)",
}
RECIPIENT_BASIS = "the owner's separate consent to provision to this recipient, given as a grant (PIPL Art. 23)"
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def record_json(r: ProcessingRecord) -> dict[str, Any]:
    """A record as the operator API shows it."""
    return {
        "id": r.id,
        "kind": r.kind,
        "key": r.key,
        "name": r.name,
        "purpose": r.purpose,
        "categories": json.loads(r.categories),
        "legal_basis": r.legal_basis,
        "retention": r.retention,
        "jurisdiction": r.jurisdiction,
        "detail": json.loads(r.detail),
        "source": r.source,
        "created_ms": r.created_ms,
        "updated_ms": r.updated_ms,
        "retired_ms": r.retired_ms,
        "deletable_from_ms": r.retired_ms + KEEP_MS if r.retired_ms is not None else None,
    }


def _retention(days: int) -> str:
    return "not kept off the vehicle" if days == 0 else f"{days} days from collection"


class Records:
    """The region's records of processing."""

    def __init__(self, db: Database, audit: AuditLog, catalogue: Catalogue, region: str) -> None:
        self.db = db
        self.audit = audit
        self.catalogue = catalogue
        self.region = region

    # ------------------------------------------------------------------ generated entries
    def activities(self) -> dict[str, dict[str, Any]]:
        """The processing activities as the catalogue defines them now (key: category)."""
        counts: dict[str, int] = defaultdict(int)
        for s in self.catalogue:
            counts[s.category] += 1
        out = {}
        for c in CATEGORIES.values():
            out[c.name] = {
                "name": c.title,
                "purpose": c.purpose,
                "categories": [c.name],
                "legal_basis": LEGAL_BASIS[c.privacy],
                "retention": _retention(c.retention_days),
                "jurisdiction": self.region,
                "detail": {"privacy": c.privacy.value, "retention_days": c.retention_days, "signals": counts[c.name]},
            }
        return out

    def recipients(self, now: int) -> dict[str, tuple[dict[str, Any], bool]]:
        """Recipients from the grants table (key: ``app:<client_id>`` or ``portability:<legal entity>``), each with
        whether it holds an active grant."""
        with self.db.session() as s:
            grants = list(s.scalars(select(Grant).where(Grant.kind.in_(["app", "portability"]))))
            apps = {a.client_id: a for a in s.scalars(select(App))}
            bundles = {b.grant_id: b for b in s.scalars(select(PortabilityBundle))}
        groups: dict[str, list[Grant]] = defaultdict(list)
        entity: dict[str, dict[str, Any]] = {}
        for g in grants:
            if g.kind == "app" and g.client_id in apps:
                a: App = apps[g.client_id]
                key = f"app:{a.client_id}"
                entity[key] = {
                    "name": a.name,
                    "jurisdiction": a.jurisdiction,
                    "detail": {"legal_entity": a.legal_entity, "contact": a.contact, "status": a.status},
                }
            elif g.kind == "portability" and g.id in bundles:
                rcpt = json.loads(bundles[g.id].recipient)
                key = f"portability:{rcpt.get('legal_entity', '')}"[:200]
                entity[key] = {
                    "name": rcpt.get("name", ""),
                    "jurisdiction": rcpt.get("jurisdiction"),
                    "detail": {"legal_entity": rcpt.get("legal_entity", ""), "channel": "portability bundle"},
                }
            else:
                continue
            groups[key].append(g)
        out: dict[str, tuple[dict[str, Any], bool]] = {}
        for key, gs in groups.items():
            cats: set[str] = set()
            for g in gs:
                try:
                    cats |= {sig.category for sig in self.catalogue.select(json.loads(g.signals))}
                except InvalidQuery:
                    continue  # a signal since removed from the catalogue: the rest still counts
            active = [g for g in gs if g.revoked_ms is None and g.expires_ms > now]
            purposes = sorted({g.purpose for g in gs})
            e = entity[key]
            out[key] = (
                {
                    "name": e["name"],
                    "purpose": "; ".join(PURPOSES.get(p, p) for p in purposes),
                    "categories": sorted(cats),
                    "legal_basis": RECIPIENT_BASIS,
                    "retention": "until the owner revokes the grant or it ends; the recipient's own period after",
                    "jurisdiction": e["jurisdiction"],
                    "detail": {
                        **e["detail"],
                        "purposes": purposes,
                        "grants": len(gs),
                        "grants_active": len(active),
                        "owners": len({g.owner_id for g in gs}),
                        "latest_expiry_ms": max(g.expires_ms for g in gs),
                    },
                },
                bool(active),
            )
        return out

    def sync(self, by: Handler | None = None) -> dict[str, int]:
        """Bring activity and recipient entries up to date; returns how many were added, updated and retired."""
        now = now_ms()
        wanted: dict[tuple[str, str], tuple[dict[str, Any], bool, str]] = {}
        for key, fields in self.activities().items():
            wanted[("activity", key)] = (fields, True, "catalogue")
        for key, (fields, active) in self.recipients(now).items():
            wanted[("recipient", key)] = (fields, active, "grants")
        added = updated = retired = 0
        changes: list[tuple[AuditAction, dict[str, Any]]] = []
        with self.db.session() as s:
            rows = {
                (r.kind, r.key): r
                for r in s.scalars(select(ProcessingRecord).where(ProcessingRecord.kind != "processor"))
            }
            for (kind, key), (fields, active, source) in wanted.items():
                row = rows.get((kind, key))
                values = _columns(fields)
                if row is None:
                    row = ProcessingRecord(kind=kind, key=key, source=source, created_ms=now, updated_ms=now, **values)
                    row.retired_ms = None if active else now
                    s.add(row)
                    added += 1
                    changes.append((AuditAction.RECORD_ADD, {"kind": kind, "key": key}))
                    continue
                before = _values(row)
                if before != values or (row.retired_ms is None) != active:
                    for k, v in values.items():
                        setattr(row, k, v)
                    row.retired_ms = None if active else (row.retired_ms or now)
                    row.updated_ms = now
                    updated += 1
                    changes.append((AuditAction.RECORD_UPDATE, {"kind": kind, "key": key, "before": before}))
            for (kind, key), row in rows.items():
                if (kind, key) not in wanted and row.retired_ms is None:
                    row.retired_ms = row.updated_ms = now
                    retired += 1
                    changes.append((AuditAction.RECORD_RETIRE, {"kind": kind, "key": key}))
        actor = actor_of(by) if by is not None else Actor("system", "records")
        for action, detail in changes:
            self._audit(actor, action, detail)
        result = {"added": added, "updated": updated, "retired": retired}
        self._audit(actor, AuditAction.RECORDS_SYNC, result)
        return result

    # ------------------------------------------------------------------ entrusted processors
    def add_processor(self, by: Handler, *, key: str, fields: dict[str, Any]) -> ProcessingRecord:
        """Record an entrusted processor (``key``: a short slug the operator chooses)."""
        if not _SLUG.fullmatch(key):
            raise ValidationFailed("key is a slug: lowercase letters, digits, '.', '_' or '-' (≤ 64)", field="key")
        values = _columns(_check_processor(fields))
        now = now_ms()
        with self.db.session() as s:
            exists = s.scalar(
                select(ProcessingRecord.id).where(ProcessingRecord.kind == "processor", ProcessingRecord.key == key)
            )
            if exists is not None:
                raise Conflict(f"a processor {key!r} is already recorded (id {exists})", record_id=exists)
            row = ProcessingRecord(
                kind="processor", key=key, source="operator", created_ms=now, updated_ms=now, **values
            )
            s.add(row)
        self._audit(actor_of(by), AuditAction.RECORD_ADD, {"kind": "processor", "key": key})
        return row

    def update_processor(self, record_id: int, by: Handler, fields: dict[str, Any]) -> ProcessingRecord:
        """Change an entrusted processor's entry (the previous values go to the audit chain)."""
        row = self.get(record_id)
        if row.kind != "processor":
            raise Conflict("only processors are edited by hand; the other records follow their sources", kind=row.kind)
        merged = {**_values(row), **fields}
        merged["categories"] = fields.get("categories", json.loads(row.categories))
        merged["detail"] = fields.get("detail", json.loads(row.detail))
        values = _columns(_check_processor(merged))
        before = _values(row)
        with self.db.session() as s:
            r = s.get(ProcessingRecord, record_id)
            assert r is not None
            for k, v in values.items():
                setattr(r, k, v)
            r.updated_ms = now_ms()
            row = r
        self._audit(actor_of(by), AuditAction.RECORD_UPDATE, {"kind": "processor", "key": row.key, "before": before})
        return row

    def retire(self, record_id: int, by: Handler) -> ProcessingRecord:
        """End an entrusted processor's engagement: the entry stays, retired, for three more years."""
        row = self.get(record_id)
        if row.kind != "processor":
            raise Conflict("activities and recipients retire when their source does (sync)", kind=row.kind)
        if row.retired_ms is not None:
            raise Conflict("the record is already retired", retired_ms=row.retired_ms)
        with self.db.session() as s:
            r = s.get(ProcessingRecord, record_id)
            assert r is not None
            r.retired_ms = r.updated_ms = now_ms()
            row = r
        self._audit(actor_of(by), AuditAction.RECORD_RETIRE, {"kind": row.kind, "key": row.key})
        return row

    def delete(self, record_id: int, by: Handler, now: int | None = None) -> None:
        """Delete a record retired at least three years ago; any other is refused with ``RecordRetained``."""
        row = self.get(record_id)
        t = now if now is not None else now_ms()
        if row.retired_ms is None or t < row.retired_ms + KEEP_MS:
            until = None if row.retired_ms is None else row.retired_ms + KEEP_MS
            raise RecordRetained(
                f"processing records are kept {KEEP_YEARS} years after they end (Network Data Security Management "
                "Regulations Art. 12); "
                + ("this one is still current" if until is None else "this one may be deleted from its date"),
                deletable_from_ms=until,
            )
        # One conditional DELETE: a sync that brought the record back into force meanwhile keeps it.
        with self.db.session() as s:
            gone = s.execute(
                delete(ProcessingRecord).where(
                    ProcessingRecord.id == record_id,
                    ProcessingRecord.retired_ms.is_not(None),
                    ProcessingRecord.retired_ms <= t - KEEP_MS,
                )
            )
        if rowcount(gone) == 0:
            raise RecordRetained("this processing record came back into force meanwhile; it is kept")
        self._audit(actor_of(by), AuditAction.RECORD_DELETE, {"kind": row.kind, "key": row.key, "before": _values(row)})

    # ------------------------------------------------------------------ reading
    def get(self, record_id: int) -> ProcessingRecord:
        """One record."""
        with self.db.session() as s:
            r = s.get(ProcessingRecord, record_id)
        if r is None:
            raise NotFound("no such processing record", record_id=record_id)
        return r

    def list(self, *, kind: str | None = None, current: bool | None = None) -> list[ProcessingRecord]:
        """Records by kind and key; ``current`` True for entries in force, False for retired ones."""
        if kind is not None and kind not in KINDS:
            raise ValidationFailed(f"kind is one of {', '.join(KINDS)}", field="kind")
        q = select(ProcessingRecord)
        if kind is not None:
            q = q.where(ProcessingRecord.kind == kind)
        if current is True:
            q = q.where(ProcessingRecord.retired_ms.is_(None))
        elif current is False:
            q = q.where(ProcessingRecord.retired_ms.is_not(None))
        with self.db.session() as s:
            return list(s.scalars(q.order_by(ProcessingRecord.kind, ProcessingRecord.key)))

    def _audit(self, actor: Actor, action: AuditAction, detail: dict[str, Any]) -> None:
        self.audit.record(owner_id=None, actor=actor, action=action, legal_basis=LEGAL_OBLIGATION, detail=detail)


_FIELDS = ("name", "purpose", "categories", "legal_basis", "retention", "jurisdiction", "detail")


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values as the table stores them (JSON for the lists and the detail)."""
    return {
        "name": fields["name"],
        "purpose": fields.get("purpose", ""),
        "categories": json.dumps(sorted(fields.get("categories", []))),
        "legal_basis": fields.get("legal_basis", ""),
        "retention": fields.get("retention", ""),
        "jurisdiction": fields.get("jurisdiction"),
        "detail": json.dumps(fields.get("detail", {}), sort_keys=True, ensure_ascii=False),
    }


def _values(r: ProcessingRecord) -> dict[str, Any]:
    return {f: getattr(r, f) for f in _FIELDS}


def _check_processor(fields: dict[str, Any]) -> dict[str, Any]:
    """An entrusted processor's fields, validated (PIPL Art. 21: purpose, period, manner, categories, measures)."""
    out: dict[str, Any] = {}
    for f, limit, required in (
        ("name", 300, True),
        ("purpose", 4000, True),
        ("legal_basis", 4000, True),
        ("retention", 4000, True),
    ):
        v = fields.get(f)
        out[f] = text_field(v if isinstance(v, str) else "", f, required=required, limit=limit)
    j = fields.get("jurisdiction")
    if not isinstance(j, str) or not re.fullmatch(r"[a-z]{2,16}", j):
        raise ValidationFailed("jurisdiction is a region name such as cn, eu or us", field="jurisdiction")
    out["jurisdiction"] = j
    cats = fields.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise ValidationFailed("categories is a list of signal categories", field="categories")
    if unknown := sorted(set(cats) - set(CATEGORIES)):
        raise ValidationFailed(f"unknown category {unknown[0]!r}", field="categories")
    out["categories"] = sorted(set(cats))
    detail = fields.get("detail") or {}
    if not isinstance(detail, dict) or len(json.dumps(detail)) > 8000:
        raise ValidationFailed("detail is an object (contact, contract reference ...), at most 8000 characters")
    out["detail"] = detail
    return out
