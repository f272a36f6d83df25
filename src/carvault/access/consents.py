"""Owners' consents on the platform: recorded, audited, and served to the car as its collection policy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from carvault.access.audit import Actor, AuditLog
from carvault.compliance.consent import MAX_CONSENT_DAYS, Consent, Policy, default_on, needs_opt_in, statuses
from carvault.errors import ValidationFailed
from carvault.signals import CATEGORIES
from carvault.store.metadata import ConsentRecord, Database, Vehicle, now_ms

RIGHTS_EMAIL, RIGHTS_PHONE = "privacy@carvault.example", "+86 400 000 0000"  # the portal names the desk in its language
RIGHTS_CONTACT = f"{RIGHTS_EMAIL} · {RIGHTS_PHONE} · CarVault data protection officer"


def _consent(r: ConsentRecord) -> Consent:
    return Consent(
        category=r.category,
        enabled=r.enabled,
        purpose=r.purpose,
        lasting=r.lasting,
        starts_ms=r.starts_ms,
        ends_ms=r.ends_ms,
        granted_ms=r.granted_ms,
    )


class Consents:
    """Consent decisions per vehicle and category."""

    def __init__(self, db: Database, audit: AuditLog, region: str) -> None:
        self.db = db
        self.audit = audit
        self.region = region

    def policy(self, vin: str) -> Policy:
        """Every decision for the vehicle, as the car's policy (version = newest decision id)."""
        with self.db.session() as s:
            rows = list(s.scalars(select(ConsentRecord).where(ConsentRecord.vin == vin).order_by(ConsentRecord.id)))
        return Policy(vin=vin, consents=tuple(_consent(r) for r in rows), version=rows[-1].id if rows else 0)

    def decide(
        self,
        vin: str,
        owner_id: int,
        category: str,
        *,
        enabled: bool,
        purpose: str = "",
        ends_ms: int | None = None,
        lasting: bool = False,
        at_ms: int | None = None,
    ) -> Consent:
        """Record a grant (with an end date) or a stop, effective at once (or ``at_ms``, for set-up); audited."""
        if category not in CATEGORIES:
            raise ValidationFailed(f"no data category {category!r}", field="category")
        now = at_ms if at_ms is not None else now_ms()
        if enabled:
            if ends_ms is None:
                raise ValidationFailed(
                    "a consent must have an end date; permanent consent is not allowed", field="ends"
                )
            if ends_ms <= now:
                raise ValidationFailed("the end date must be in the future", field="ends")
            if ends_ms > now + MAX_CONSENT_DAYS * 86_400_000:
                raise ValidationFailed(f"a consent may last at most {MAX_CONSENT_DAYS} days", field="ends")
            if not purpose.strip():
                raise ValidationFailed("say what the data is for (purpose)", field="purpose")
        rec = ConsentRecord(
            vin=vin,
            category=category,
            enabled=enabled,
            purpose=purpose.strip()[:400],
            lasting=lasting and enabled,
            starts_ms=now,
            ends_ms=ends_ms if enabled else None,
            granted_ms=now,
            granted_by=str(Actor("owner", str(owner_id))),
        )
        with self.db.session() as s:
            s.add(rec)
        self.audit.by_owner(
            owner_id,
            "consent.grant" if enabled else "consent.stop",
            vin=vin,
            detail={"category": category, "purpose": rec.purpose, "ends_ms": rec.ends_ms, "lasting": rec.lasting},
        )
        return _consent(rec)

    def mark_fetched(self, vin: str, version: int) -> None:
        """Remember which policy version the car has fetched."""
        with self.db.session() as s:
            s.execute(update(Vehicle).where(Vehicle.vin == vin).values(policy_applied=version))

    def overview(self, vin: str) -> dict[str, Any]:
        """The notice and status page data: every category with class, purpose, retention, region, status."""
        policy = self.policy(vin)
        now = now_ms()
        status = statuses(policy, now)
        with self.db.session() as s:
            applied = s.scalar(select(Vehicle.policy_applied).where(Vehicle.vin == vin)) or 0
            n = s.scalar(select(func.count()).select_from(ConsentRecord).where(ConsentRecord.vin == vin)) or 0
        cats = []
        for c in CATEGORIES.values():
            latest = policy.latest(c.name, now)
            cats.append(
                {
                    "category": c.name,
                    "title": c.title,
                    "privacy": c.privacy.value,
                    "purpose": c.purpose,
                    "retention_days": c.retention_days,
                    "storage_region": self.region,
                    "status": status[c.name],
                    "default": "collecting" if default_on(c.name) else "off",
                    "needs_opt_in": needs_opt_in(c.name),
                    "consent": None
                    if latest is None
                    else {
                        "enabled": latest.enabled,
                        "purpose": latest.purpose,
                        "lasting": latest.lasting,
                        "starts_ms": latest.starts_ms,
                        "ends_ms": latest.ends_ms,
                        "granted_ms": latest.granted_ms,
                    },
                }
            )
        return {
            "vin": vin,
            "rights_contact": RIGHTS_CONTACT,
            "policy_version": policy.version,
            "car_has_version": applied,
            "in_sync": applied >= policy.version or n == 0,
            "categories": cats,
        }
