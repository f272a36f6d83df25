"""Who runs a region: the operator's legal name, its data-security lead and its user-rights contact.

The one hand-entered input of the annual report (Several Provisions Art. 14 asks for the name and contact of the
person responsible for data security and of the one handling users' rights) and of the data sheet (the data
holder). It lives in the ``operator_profile`` table, one row per region, so a change takes effect in every
replica at once and is audited; a region admin edits it (console, ``PUT /api/v1/admin/reports/operator`` or
``carvault admin reports operator``). Everything else in the reports is computed from records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carvault.access.audit import LEGAL_OBLIGATION, Actor, AuditAction, AuditLog
from carvault.errors import ValidationFailed
from carvault.store.metadata import Database, OperatorProfile, now_ms

# Field name -> (longest accepted length, what it is). The contact fields take an e-mail address or a phone number.
FIELDS: dict[str, tuple[int, str]] = {
    "operator_name": (300, "the operator's legal name"),
    "security_lead": (200, "the person responsible for data security"),
    "security_lead_contact": (320, "how to reach the data-security lead (e-mail or phone)"),
    "rights_contact": (200, "the person or desk handling users' rights"),
    "rights_contact_contact": (320, "how owners reach the rights contact (e-mail or phone)"),
}


@dataclass(frozen=True)
class Profile:
    """The operator's identity as last saved."""

    operator_name: str
    security_lead: str
    security_lead_contact: str
    rights_contact: str
    rights_contact_contact: str
    updated_ms: int
    updated_by: str

    def to_json(self) -> dict[str, Any]:
        """Wire form (every field)."""
        return {name: getattr(self, name) for name in (*FIELDS, "updated_ms", "updated_by")}


def clean(values: dict[str, Any]) -> dict[str, str]:
    """The five fields, trimmed and checked: each required, printable, within its length."""
    out: dict[str, str] = {}
    for name, (longest, what) in FIELDS.items():
        raw = values.get(name)
        if not isinstance(raw, str) or not raw.strip():
            raise ValidationFailed(f"{name} ({what}) is required", field=name)
        text = " ".join(raw.split())  # one line: no control characters or line breaks reach the PDF
        if len(text) > longest or not text.isprintable():
            raise ValidationFailed(f"{name} must be printable text of at most {longest} characters", field=name)
        out[name] = text
    return out


class OperatorProfiles:
    """Reads and saves the operator profile of one region."""

    def __init__(self, db: Database, audit: AuditLog, region: str) -> None:
        self.db = db
        self.audit = audit
        self.region = region

    def get(self) -> Profile | None:
        """The saved profile, or None when the admin has not entered it yet."""
        with self.db.session() as s:
            row = s.get(OperatorProfile, self.region)
            if row is None:
                return None
            return Profile(
                row.operator_name,
                row.security_lead,
                row.security_lead_contact,
                row.rights_contact,
                row.rights_contact_contact,
                row.updated_ms,
                row.updated_by,
            )

    def save(self, values: dict[str, Any], actor: Actor) -> Profile:
        """Replace the profile with these values (all five required); recorded in the region's audit chain."""
        fields = clean(values)
        with self.db.session() as s:
            row = s.get(OperatorProfile, self.region)
            if row is None:
                row = OperatorProfile(region=self.region, **fields, updated_ms=now_ms(), updated_by=str(actor))
                s.add(row)
            else:
                for name, value in fields.items():
                    setattr(row, name, value)
                row.updated_ms, row.updated_by = now_ms(), str(actor)
        self.audit.record(
            owner_id=None, actor=actor, action=AuditAction.REPORT_PROFILE, legal_basis=LEGAL_OBLIGATION, detail=fields
        )
        saved = self.get()
        assert saved is not None
        return saved

    def public(self) -> dict[str, Any]:
        """What anyone may read: the operator's name and the user-rights contact (None when not entered)."""
        p = self.get()
        if p is None:
            return {"name": None, "rights_contact": None, "rights_contact_contact": None}
        return {
            "name": p.operator_name,
            "rights_contact": p.rights_contact,
            "rights_contact_contact": p.rights_contact_contact,
        }
