"""Records of processing: generated from the catalogue and the grants, processors kept by hand, nothing deleted
within three years of retirement, every change kept in the audit chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from carvault.compliance.records import KEEP_MS, LEGAL_BASIS
from carvault.compliance.roles import Role
from carvault.errors import Conflict, RecordRetained, ValidationFailed
from carvault.provisioning import provision
from carvault.region import Region
from carvault.signals import CATEGORIES
from carvault.store.metadata import AuditEvent, now_ms
from tests.factories import make_staff, vin_for

PROCESSOR = {
    "name": "Shanghai Cloud Hosting Co.",
    "purpose": "hosting the region's servers and storage",
    "legal_basis": "entrustment contract HC-2026-01 (PIPL Art. 21)",
    "retention": "for the contract's term; data returned or erased at its end",
    "jurisdiction": "cn",
    "categories": ["driving_dynamics", "location"],
    "detail": {"contact": "dpo@hosting.example", "contract": "HC-2026-01"},
}


def _app_with_grant(region: Region, tmp_path: Path) -> tuple[str, int]:
    owner = region.accounts.register("alice@example.com", "correct horse battery").id
    car = provision(region, vin_for(3), tmp_path / "cars")
    region.vehicles.claim(owner, car.vin, car.pairing_code)
    app, _ = region.apps.register(
        name="Fair Insurance",
        legal_entity="Fair Insurance Co., Ltd.",
        jurisdiction="cn",
        contact="api@fair.example",
        purposes=["insurance"],
        redirect_uris=["https://fair.example/cb"],
    )
    region.apps.decide(app.client_id, "approved", "test")
    grant = region.grants.create(
        owner,
        kind="app",
        client_id=app.client_id,
        vins=[car.vin],
        signals=["Vehicle.Speed", "Vehicle.CurrentLocation"],
        purpose="insurance",
        expires_ms=now_ms() + 86_400_000,
    )
    return app.client_id, grant.id


def test_activities_follow_the_catalogue(region: Region) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    assert region.records.sync(admin)["added"] == len(CATEGORIES)
    rows = {r.key: r for r in region.records.list(kind="activity")}
    assert set(rows) == set(CATEGORIES)
    for name, c in CATEGORIES.items():
        assert rows[name].purpose == c.purpose and rows[name].legal_basis == LEGAL_BASIS[c.privacy]
        assert json.loads(rows[name].detail)["retention_days"] == c.retention_days
    assert region.records.sync(admin) == {"added": 0, "updated": 0, "retired": 0}  # idempotent


def test_recipients_come_from_grants_and_retire_when_the_grants_end(region: Region, tmp_path: Path) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    client_id, grant_id = _app_with_grant(region, tmp_path)
    region.records.sync(admin)
    [rec] = region.records.list(kind="recipient")
    assert rec.key == f"app:{client_id}" and rec.name == "Fair Insurance" and rec.retired_ms is None
    assert json.loads(rec.categories) == ["driving_dynamics", "location"]
    assert json.loads(rec.detail)["grants_active"] == 1 and rec.jurisdiction == "cn"
    owner = region.accounts.authenticate("alice@example.com", "correct horse battery").id
    region.grants.revoke(owner, grant_id)
    assert region.records.sync(admin)["updated"] == 1
    [rec] = region.records.list(kind="recipient")
    assert rec.retired_ms is not None  # kept, retired
    assert region.records.list(kind="recipient", current=True) == []


def test_processors_are_kept_three_years_after_retirement(region: Region) -> None:
    dpo, _ = make_staff(region, Role.DPO)
    rec = region.records.add_processor(dpo, key="sh-hosting", fields=PROCESSOR)
    with pytest.raises(Conflict):
        region.records.add_processor(dpo, key="sh-hosting", fields=PROCESSOR)
    with pytest.raises(RecordRetained):
        region.records.delete(rec.id, dpo)  # still current
    changed = region.records.update_processor(rec.id, dpo, {"retention": "30 days after the contract ends"})
    assert changed.retention == "30 days after the contract ends" and changed.updated_ms >= rec.updated_ms
    retired = region.records.retire(rec.id, dpo)
    assert retired.retired_ms is not None
    with pytest.raises(RecordRetained) as e:
        region.records.delete(rec.id, dpo, now=retired.retired_ms + KEEP_MS - 1)
    assert e.value.details["deletable_from_ms"] == retired.retired_ms + KEEP_MS
    region.records.delete(rec.id, dpo, now=retired.retired_ms + KEEP_MS)
    assert region.records.list(kind="processor") == []
    # the whole history stays in the region's audit chain, earlier values included
    with region.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action.like("record.%")).order_by(AuditEvent.id)))
    assert [e.action for e in events] == ["record.add", "record.update", "record.retire", "record.delete"]
    assert json.loads(events[1].detail)["before"]["retention"] == PROCESSOR["retention"]
    assert all(e.owner_id is None and e.actor == f"staff:dpo:{dpo.username}" for e in events)


def test_generated_records_are_not_edited_or_retired_by_hand(region: Region) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    region.records.sync(admin)
    act = region.records.list(kind="activity")[0]
    with pytest.raises(Conflict):
        region.records.update_processor(act.id, admin, {"purpose": "something else"})
    with pytest.raises(Conflict):
        region.records.retire(act.id, admin)
    with pytest.raises(RecordRetained):
        region.records.delete(act.id, admin, now=now_ms() + 10 * KEEP_MS)  # current: never


@pytest.mark.parametrize(
    "change",
    [
        {"name": ""},
        {"jurisdiction": "Mars!"},
        {"categories": ["teleportation"]},
        {"purpose": "x" * 5000},
        {"detail": "not an object"},
        {"retention": "ten\x00days"},
    ],
)
def test_processor_fields_are_validated(region: Region, change: dict[str, object]) -> None:
    dpo, _ = make_staff(region, Role.DPO)
    with pytest.raises(ValidationFailed):
        region.records.add_processor(dpo, key="p1", fields={**PROCESSOR, **change})
    with pytest.raises(ValidationFailed):
        region.records.add_processor(dpo, key="Bad Key", fields=PROCESSOR)
    assert region.records.list(kind="processor") == []
