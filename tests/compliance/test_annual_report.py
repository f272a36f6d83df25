"""The annual report: every figure equals an independent SQL query over the same database, across two years.

The region is seeded with owners, vehicles, batches, consents, apps and grants, a transfer record and its events,
incidents, rights and deletion requests, orders, holds and a retention run in 2025 and 2026, with records on both
sides of the 2025/2026 boundary in China time (UTC+8). The expected figures are computed here with plain SQL and
our own year bounds, never with the report's code.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pypdf
import pytest
from sqlalchemy import text

from carvault.access.audit import Actor
from carvault.compliance import report_pdf
from carvault.compliance.annual_report import NOT_RECORDED, apportion, verify_signature, year_bounds
from carvault.errors import FontMissing, InvalidQuery, ReportFinalised, ValidationFailed
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import (
    App,
    AuthorityOrder,
    BatchRecord,
    ConsentRecord,
    DeletionRequest,
    Grant,
    Incident,
    LegalHold,
    Owner,
    PortabilityBundle,
    ProcessingRecord,
    RetentionRun,
    RightsRequest,
    TransferEvent,
    TransferRecord,
    Vehicle,
)
from carvault.web.i18n import messages

CHINA = ZoneInfo("Asia/Shanghai")
SPEED, YAW = "Vehicle.Speed", "Vehicle.AngularVelocity.Yaw"  # driving_dynamics, 10 Hz
LOW_VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"  # body, 1 Hz
LATITUDE = "Vehicle.CurrentLocation.Latitude"  # location (sensitive)
PROFILE = {
    "operator_name": "Example Motors (China) Co., Ltd.",
    "security_lead": "Li Wei",
    "security_lead_contact": "security@example.cn",
    "rights_contact": "Privacy desk",
    "rights_contact_contact": "privacy@example.cn",
}
ADMIN = Actor("staff", "region_admin:alice")


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0, ms: int = 0) -> int:
    """Epoch ms of a China-time wall clock."""
    d = dt.datetime(year, month, day, hour, minute, second, ms * 1000, tzinfo=CHINA)
    return int(d.timestamp() * 1000)


def bounds(year: int) -> tuple[int, int]:
    return at(year, 1, 1, 0), at(year + 1, 1, 1, 0)


VINS = ["LRWYGCEK1NC000001", "LRWYGCEK1NC000002", "LRWYGCEK1NC000003", "LRWYGCEK1NC000004"]


def _batch(vin: str, seq: int, received: int, columns: list[str], samples: int, length: int) -> BatchRecord:
    return BatchRecord(
        vin=vin,
        seq=seq,
        kind="telemetry",
        batch_hash=f"{vin}-{seq}".encode().hex().ljust(64, "0")[:64],
        prev_hash="0" * 64,
        t0=received - 60_000,
        t1=received - 1,
        rows=600,
        samples=samples,
        columns=",".join(columns),
        segment="seg-000001",
        offset=seq * 1000,
        length=length,
        received_ms=received,
    )


def seed(region: Region) -> None:
    """Two years of records, some right at the boundary."""
    with region.db.session() as s:
        owners = [
            Owner(email="o1@example.cn", password_hash="x", created_ms=at(2025, 3, 1)),
            Owner(email="o2@example.cn", password_hash="x", created_ms=at(2026, 2, 1)),
            Owner(email="o3@example.cn", password_hash="x", created_ms=at(2026, 5, 1)),
            Owner(email="o4@example.cn", password_hash="x", created_ms=at(2025, 6, 1)),
        ]
        s.add_all(owners)
        s.flush()
        o1, o2, _o3, o4 = (o.id for o in owners)
        for vin, owner, provisioned, model in (
            (VINS[0], o1, at(2025, 1, 10), "Model A"),
            (VINS[1], o2, at(2026, 1, 15), "Model A"),
            (VINS[2], None, at(2026, 3, 1), "Model B"),
            (VINS[3], o4, at(2025, 6, 1), ""),
        ):
            s.add(
                Vehicle(
                    vin=vin,
                    region="cn",
                    model=model,
                    public_key=bytes(32),
                    pairing_code_hash="x",
                    owner_id=owner,
                    provisioned_ms=provisioned,
                )
            )
        s.flush()
        s.add_all(
            [
                # 23:59:59.999 on 31 Dec 2025 in China: still 2025; one millisecond later: 2026.
                _batch(VINS[0], 1, at(2025, 12, 31, 23, 59, 59, 999), [SPEED, LOW_VOLTAGE], 6_600, 9_001),
                _batch(VINS[0], 2, at(2026, 1, 1, 0, 0, 0, 0), [SPEED, LOW_VOLTAGE, LATITUDE], 7_200, 10_007),
                _batch(VINS[1], 1, at(2026, 4, 2), [SPEED, YAW], 12_000, 15_000),
                _batch(VINS[1], 2, at(2026, 4, 3), [SPEED, YAW], 11_999, 14_999),
                _batch(VINS[2], 1, at(2026, 6, 1), [LOW_VOLTAGE], 60, 333),
                _batch(VINS[3], 1, at(2025, 7, 1), [SPEED], 600, 777),
            ]
        )
        s.add(
            ConsentRecord(
                vin=VINS[0],
                category="location",
                enabled=True,
                purpose="route history",
                starts_ms=at(2026, 1, 1, 0),
                ends_ms=at(2026, 12, 1),
                granted_ms=at(2025, 12, 31, 23, 0),
                granted_by="owner",
            )
        )
        s.add(
            ConsentRecord(
                vin=VINS[1],
                category="location",
                enabled=True,
                purpose="route history",
                starts_ms=at(2026, 2, 1),
                ends_ms=at(2026, 12, 1),
                granted_ms=at(2026, 2, 1),
                granted_by="owner",
            )
        )
        for cid, name, juris in (("app_ins", "Insure", "cn"), ("app_eu", "EU Fleet", "eu")):
            s.add(
                App(
                    client_id=cid,
                    name=name,
                    legal_entity=f"{name} Ltd.",
                    jurisdiction=juris,
                    contact="x@example.com",
                    purposes='["insurance","fleet"]',
                    redirect_uris="[]",
                    status="approved",
                    created_ms=at(2024, 1, 1),
                )
            )
        s.flush()

        def grant(
            owner: int,
            kind: str,
            client: str | None,
            signals: list[str],
            created: int,
            expires: int,
            revoked: int | None = None,
            purpose: str = "insurance",
        ) -> Grant:
            return Grant(
                owner_id=owner,
                kind=kind,
                client_id=client,
                vins=json.dumps(VINS[:1]),
                signals=json.dumps(signals),
                purpose=purpose,
                created_ms=created,
                expires_ms=expires,
                revoked_ms=revoked,
            )

        s.add_all(
            [
                grant(o1, "app", "app_ins", ["Vehicle.Speed"], at(2025, 5, 1), at(2026, 3, 1)),
                grant(
                    o2,
                    "app",
                    "app_ins",
                    ["Vehicle.CurrentLocation"],
                    at(2026, 4, 1),
                    at(2026, 9, 1),
                    revoked=at(2026, 5, 1),
                ),
                grant(o1, "app", "app_eu", ["Vehicle"], at(2024, 1, 1), at(2024, 6, 1), purpose="fleet"),
                grant(o1, "pat", None, ["Vehicle"], at(2026, 1, 5), at(2026, 12, 30), purpose="personal"),
            ]
        )
        record = TransferRecord(
            route="standard_contract",
            recipient_kind="app",
            recipient="app_eu",
            recipient_jurisdiction="eu",
            purpose="fleet management",
            categories='["driving_dynamics","location"]',
            max_persons=100_000,
            from_ms=at(2025, 6, 1),
            to_ms=at(2027, 6, 1),
            approval_reference="SC-2025-17",
            created_ms=at(2025, 5, 20),
        )
        s.add(record)
        s.flush()
        for when, owner, sensitive, action in (
            (at(2026, 3, 1), o1, True, "query"),
            (at(2026, 3, 2), o1, False, "download"),
            (at(2026, 3, 3), o2, False, "export"),
            (at(2025, 12, 31, 23, 59), o4, True, "query"),
        ):
            s.add(
                TransferEvent(
                    at_ms=when,
                    year=dt.datetime.fromtimestamp(when / 1000, dt.UTC).year,
                    record_id=record.id,
                    principal="app:app_eu",
                    jurisdiction="eu",
                    owner_id=owner,
                    vin=None,
                    categories='["location"]' if sensitive else '["driving_dynamics"]',
                    sensitive=sensitive,
                    action=action,
                )
            )
        for title, detected, affected, notified, authority in (
            ("Leaked export link", at(2026, 2, 1), 2, at(2026, 2, 2), at(2026, 2, 3)),
            ("Misrouted e-mail", at(2025, 8, 1), 1, None, None),
        ):
            s.add(
                Incident(
                    title=title,
                    status="notified" if notified else "open",
                    detected_ms=detected,
                    scope_categories='["location"]',
                    content=json.dumps({"en": {"measures": "Link revoked"}, "zh-CN": {"measures": "链接已撤销"}}),
                    affected_owners=affected,
                    recorded_by="staff:dpo:bob",
                    owners_notified_ms=notified,
                    authority="CAC" if authority else None,
                    authority_notified_ms=authority,
                )
            )
        for kind, owner, received, deadline, status, closed, reason in (
            ("access", o1, at(2026, 3, 1), at(2026, 3, 16), "done", at(2026, 3, 10), None),
            ("complaint", o2, at(2026, 4, 1), at(2026, 4, 16), "refused", at(2026, 4, 20), "Not our data."),
            ("deletion", o2, at(2026, 5, 1), at(2026, 5, 15), "in_progress", None, None),
            ("portability", o4, at(2025, 9, 1), at(2025, 9, 16), "done", at(2025, 9, 30), None),
        ):
            s.add(
                RightsRequest(
                    owner_id=owner,
                    requester_owner_id=owner,
                    kind=kind,
                    deadline_rule="test",
                    status=status,
                    received_ms=received,
                    deadline_ms=deadline,
                    closed_ms=closed,
                    reason=reason,
                    outcome="copy sent" if status == "done" else None,
                )
            )
        for key, created, retired in (("cloud", at(2025, 2, 1), None), ("callcentre", at(2024, 1, 1), at(2025, 3, 1))):
            s.add(
                ProcessingRecord(
                    kind="processor",
                    key=key,
                    name=key.title(),
                    purpose="hosting",
                    categories='["driving_dynamics"]',
                    jurisdiction="cn",
                    source="operator",
                    created_ms=created,
                    updated_ms=created,
                    retired_ms=retired,
                )
            )
        s.add(
            DeletionRequest(
                owner_id=o1,
                status="completed",
                requested_ms=at(2026, 6, 1),
                deadline_ms=at(2026, 6, 15),
                completed_ms=at(2026, 6, 2),
            )
        )
        s.add(DeletionRequest(owner_id=o4, status="held", requested_ms=at(2025, 10, 1), deadline_ms=at(2025, 10, 15)))
        s.add(
            AuthorityOrder(
                authority="Court A",
                reference="(2026) 1",
                legal_basis="dispute",
                vin=VINS[0],
                start_ms=at(2026, 1, 1),
                end_ms=at(2026, 1, 2),
                created_ms=at(2026, 7, 1),
            )
        )
        s.add(
            LegalHold(
                vin=VINS[0], authority="Court A", reason="dispute", since_ms=at(2025, 11, 1), released_ms=at(2026, 2, 1)
            )
        )
        s.add(LegalHold(vin=VINS[1], authority="Court B", reason="dispute", since_ms=at(2026, 8, 1)))
        s.add(
            RetentionRun(
                started_ms=at(2026, 9, 1),
                finished_ms=at(2026, 9, 1, 12, 1),
                now_ms=at(2026, 9, 1),
                dry_run=False,
                actor="staff:cli:root",
                status="done",
                cutoffs="{}",
            )
        )
        s.add(
            RetentionRun(
                started_ms=at(2026, 9, 2),
                finished_ms=at(2026, 9, 2, 12, 1),
                now_ms=at(2026, 9, 2),
                dry_run=True,
                actor="staff:cli:root",
                status="done",
                cutoffs="{}",
            )
        )


@pytest.fixture
def seeded(region: Region) -> Region:
    seed(region)
    region.operator_profile.save(PROFILE, ADMIN)
    return region


NOW = at(2026, 12, 3)


def one(region: Region, sql: str, **params: Any) -> Any:
    with region.db.engine.connect() as c:
        return c.execute(text(sql), params).scalar()


def rows(region: Region, sql: str, **params: Any) -> list[Any]:
    with region.db.engine.connect() as c:
        return list(c.execute(text(sql), params).all())


def values(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in section.items() if isinstance(v, dict) and "value" in v}


@pytest.mark.parametrize("year", [2025, 2026])
def test_scale_equals_independent_queries(seeded: Region, year: int) -> None:
    a, b = bounds(year)
    got = values(seeded.reports.compute(year, now=NOW)["sections"]["scale"])
    in_year = "received_ms >= :a AND received_ms < :b"
    assert got["batches"] == one(seeded, f"SELECT COUNT(*) FROM batches WHERE {in_year}", a=a, b=b)
    assert got["samples"] == one(seeded, f"SELECT COALESCE(SUM(samples), 0) FROM batches WHERE {in_year}", a=a, b=b)
    assert got["bytes"] == one(seeded, f"SELECT COALESCE(SUM(length), 0) FROM batches WHERE {in_year}", a=a, b=b)
    assert got["vehicles_with_data"] == one(
        seeded, f"SELECT COUNT(DISTINCT vin) FROM batches WHERE {in_year}", a=a, b=b
    )
    assert got["persons"] == one(
        seeded,
        f"SELECT COUNT(DISTINCT v.owner_id) FROM vehicles v WHERE v.owner_id IS NOT NULL AND v.vin IN "
        f"(SELECT vin FROM batches WHERE {in_year})",
        a=a,
        b=b,
    )
    assert got["vehicles_without_owner"] == one(
        seeded,
        "SELECT COUNT(*) FROM vehicles v WHERE v.owner_id IS NULL AND v.vin IN "
        f"(SELECT vin FROM batches WHERE {in_year})",
        a=a,
        b=b,
    )
    assert got["vehicles_registered"] == one(seeded, "SELECT COUNT(*) FROM vehicles WHERE provisioned_ms < :b", b=b)
    assert got["owners"] == one(seeded, "SELECT COUNT(*) FROM owners WHERE created_ms < :b", b=b)
    assert got["owners_new"] == one(
        seeded, "SELECT COUNT(*) FROM owners WHERE created_ms >= :a AND created_ms < :b", a=a, b=b
    )


def test_the_year_boundary_is_midnight_china_time(seeded: Region) -> None:
    y2025 = values(seeded.reports.compute(2025, now=NOW)["sections"]["scale"])
    y2026 = values(seeded.reports.compute(2026, now=NOW)["sections"]["scale"])
    # 2025: VIN 1's batch at 23:59:59.999 and VIN 4's; 2026: VIN 1's at 00:00:00.000 and three more.
    assert (y2025["batches"], y2025["samples"], y2025["bytes"]) == (2, 6_600 + 600, 9_001 + 777)
    assert (y2026["batches"], y2026["samples"]) == (4, 7_200 + 12_000 + 11_999 + 60)
    assert (y2025["persons"], y2026["persons"]) == (2, 2)  # 2025: o1, o4; 2026: o1, o2 (VIN 3 has no owner)
    assert y2026["vehicles_without_owner"] == 1
    period = seeded.reports.compute(2026, now=NOW)["period"]
    assert (period["from_ms"], period["to_ms"], period["time_zone"]) == (*bounds(2026), "Asia/Shanghai")
    assert period["complete"] is False


def test_samples_and_bytes_by_category_add_up_and_follow_the_rates(seeded: Region) -> None:
    by = {r["category"]: r for r in seeded.reports.compute(2026, now=NOW)["sections"]["scale"]["by_category"]["rows"]}
    a, b = bounds(2026)
    assert sum(r["samples"] for r in by.values()) == one(
        seeded, "SELECT SUM(samples) FROM batches WHERE received_ms >= :a AND received_ms < :b", a=a, b=b
    )
    assert sum(r["bytes"] for r in by.values()) == one(
        seeded, "SELECT SUM(length) FROM batches WHERE received_ms >= :a AND received_ms < :b", a=a, b=b
    )
    rate = {p: seeded.catalogue[p].rate_hz for p in (SPEED, LOW_VOLTAGE, LATITUDE)}
    assert rate[SPEED] == 10 and rate[LOW_VOLTAGE] == 1
    # VIN 1, 2026: 7,200 samples over speed (10 Hz), voltage (1 Hz) and latitude (its rate): split by rate.
    weights = [rate[SPEED], rate[LOW_VOLTAGE], rate[LATITUDE]]
    whole = sum(weights)
    exact = [7_200 * w / whole for w in weights]
    # VIN 2's two batches (same columns) are summed first: 23,999 samples, all driving dynamics.
    assert abs(by["driving_dynamics"]["samples"] - (exact[0] + 23_999)) < 1
    assert abs(by["body"]["samples"] - (exact[1] + 60)) < 1
    assert abs(by["location"]["samples"] - exact[2]) < 1
    assert by["driving_dynamics"]["batches"] == 3 and by["driving_dynamics"]["vehicles"] == 2
    assert by["body"]["batches"] == 2 and by["body"]["vehicles"] == 2
    assert by["location"]["vehicles"] == 1
    collected = {
        r["category"]
        for r in seeded.reports.compute(2026, now=NOW)["sections"]["data_types"]["categories"]
        if r["collected_in_year"]
    }
    assert collected == {"driving_dynamics", "body", "location"}


def test_apportion_is_exact_and_proportional() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7_200, [10, 1, 1]) == [6_000, 600, 600]
    assert apportion(0, [3, 5]) == [0, 0]
    for total in (1, 17, 9_999, 123_457):
        parts = apportion(total, [10, 1, 7, 3])
        assert sum(parts) == total
        assert all(abs(p - total * w / 21) < 1 for p, w in zip(parts, [10, 1, 7, 3], strict=True))
    with pytest.raises(ValueError):
        apportion(5, [0, 0])


@pytest.mark.parametrize("year", [2025, 2026])
def test_provision_transfers_incidents_requests_equal_independent_queries(seeded: Region, year: int) -> None:
    a, b = bounds(year)
    sections = seeded.reports.compute(year, now=NOW)["sections"]
    prov = sections["provision"]
    in_force = rows(
        seeded,
        "SELECT id, owner_id, client_id, created_ms FROM grants WHERE kind IN ('app', 'portability') AND "
        "created_ms < :b AND expires_ms >= :a AND (revoked_ms IS NULL OR revoked_ms >= :a)",
        a=a,
        b=b,
    )
    assert values(prov)["grants_in_force"] == len(in_force)
    assert values(prov)["owners"] == len({r.owner_id for r in in_force})
    assert values(prov)["recipients"] == len({r.client_id for r in in_force})
    assert values(prov)["grants_created"] == sum(1 for r in in_force if a <= r.created_ms < b)
    assert values(prov)["processors"] == one(
        seeded,
        "SELECT COUNT(*) FROM processing_records WHERE kind = 'processor' AND created_ms < :b "
        "AND (retired_ms IS NULL OR retired_ms >= :a)",
        a=a,
        b=b,
    )
    assert values(prov)["processors"] == (2 if year == 2025 else 1)  # the call centre was retired in March 2025

    tr = values(sections["transfers"])
    ev = rows(
        seeded, "SELECT owner_id, sensitive, action FROM transfer_events WHERE at_ms >= :a AND at_ms < :b", a=a, b=b
    )
    assert tr["events"] == len(ev)
    assert tr["persons"] == len({e.owner_id for e in ev})
    assert tr["persons_sensitive"] == len({e.owner_id for e in ev if e.sensitive})
    assert tr["persons_non_sensitive"] == len({e.owner_id for e in ev if not e.sensitive})
    assert tr["records"] == one(
        seeded, "SELECT COUNT(*) FROM transfer_records WHERE created_ms < :b AND from_ms < :b AND to_ms > :a", a=a, b=b
    )

    inc = values(sections["incidents"])
    assert inc["incidents"] == one(
        seeded, "SELECT COUNT(*) FROM incidents WHERE detected_ms >= :a AND detected_ms < :b", a=a, b=b
    )
    assert inc["owners_notified"] == one(
        seeded,
        "SELECT COALESCE(SUM(affected_owners), 0) FROM incidents WHERE detected_ms >= :a AND detected_ms < :b "
        "AND owners_notified_ms IS NOT NULL",
        a=a,
        b=b,
    )
    rq = values(sections["rights_requests"])
    assert rq["requests"] == one(
        seeded, "SELECT COUNT(*) FROM rights_requests WHERE received_ms >= :a AND received_ms < :b", a=a, b=b
    )
    assert rq["complaints"] == one(
        seeded,
        "SELECT COUNT(*) FROM rights_requests WHERE kind = 'complaint' AND received_ms >= :a AND received_ms < :b",
        a=a,
        b=b,
    )
    dl = values(sections["deletion_requests"])
    assert dl["requests"] == one(
        seeded, "SELECT COUNT(*) FROM deletion_requests WHERE requested_ms >= :a AND requested_ms < :b", a=a, b=b
    )
    au = values(sections["authority"])
    assert au["orders"] == one(
        seeded, "SELECT COUNT(*) FROM authority_orders WHERE created_ms >= :a AND created_ms < :b", a=a, b=b
    )
    assert au["holds_in_force_at_year_end"] == one(
        seeded,
        "SELECT COUNT(*) FROM legal_holds WHERE since_ms < :b AND (released_ms IS NULL OR released_ms >= :b)",
        b=b,
    )


def test_the_2026_sections_say_what_happened(seeded: Region) -> None:
    s = seeded.reports.compute(2026, now=NOW)["sections"]
    rows_ = {r["id"]: r for r in s["provision"]["rows"]}
    assert set(rows_) == {"app_ins"}  # the EU app's grant ended in 2024; a personal token is no provision
    ins = rows_["app_ins"]
    assert (ins["legal_entity"], ins["jurisdiction"], ins["owners"], ins["grants_in_force"]) == (
        "Insure Ltd.",
        "cn",
        2,
        2,
    )
    assert ins["categories"] == ["driving_dynamics", "location"] and ins["purposes"] == ["insurance"]
    tr = s["transfers"]
    assert values(tr)["by_action"] == {"download": 1, "export": 1, "query": 1}
    (record,) = tr["rows"]
    assert (record["approval_reference"], record["events"], record["persons"]) == ("SC-2025-17", 3, 2)
    by_kind = values(s["rights_requests"])["by_kind"]
    assert by_kind["access"] == {"done": 1, "late": 0, "on_time": 1, "total": 1}
    assert by_kind["deletion"] == {"in_progress": 1, "late": 1, "on_time": 0, "total": 1}  # open past its deadline
    assert values(s["rights_requests"])["refused_with_reason"] == 1
    assert s["rights_requests"]["refusals"] == [
        {"id": complaint_id(seeded), "kind": "complaint", "reason": "Not our data."}
    ]
    (leak,) = s["incidents"]["rows"]
    assert leak["measures"] == {"en": "Link revoked", "zh-CN": "链接已撤销"}
    (complaint,) = s["rights_requests"]["complaint_outcomes"]
    assert (complaint["status"], complaint["reason"]) == ("refused", "Not our data.")
    assert values(s["deletion_requests"]) == {"requests": 1, "by_status": {"completed": 1}, "completed_on_time": 1}
    assert values(s["authority"])["orders_by_authority"] == {"Court A": 1}
    assert values(s["authority"])["holds_released"] == 1 and values(s["authority"])["holds_placed"] == 1
    assert values(s["storage"])["purge_runs"] == 1  # the dry run does not count
    assert values(s["incidents"])["authority_notified"] == 1
    purposes = {r["category"]: r for r in s["purposes"]["categories"]}
    assert purposes["location"]["consents_given"] == 1 and purposes["location"]["legal_basis"] == "consent"
    assert purposes["driving_dynamics"]["legal_basis"] == "contract"
    op = values(s["operator"])
    assert op["operator_name"] == PROFILE["operator_name"]
    assert op["security_lead"] == {"name": "Li Wei", "contact": "security@example.cn"}


def complaint_id(region: Region) -> int:
    return int(one(region, "SELECT id FROM rights_requests WHERE kind = 'complaint'"))


def test_every_figure_names_its_source(seeded: Region) -> None:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "value" in node:
                yield node
            else:
                for v in node.values():
                    yield from walk(v)

    figures = list(walk(seeded.reports.compute(2026, now=NOW)["sections"]))
    assert len(figures) > 30
    assert all(isinstance(f["source"], str) and f["source"] for f in figures)


def test_a_missing_profile_is_reported_as_not_recorded(region: Region) -> None:
    section = region.reports.compute(2026, now=NOW)["sections"]["operator"]
    assert section["status"] == NOT_RECORDED
    with pytest.raises(ValidationFailed) as e:
        region.operator_profile.save({**PROFILE, "security_lead": "  "}, ADMIN)
    assert e.value.details["field"] == "security_lead"
    with pytest.raises(ValidationFailed):
        region.operator_profile.save({**PROFILE, "rights_contact": "x" * 201}, ADMIN)
    assert region.operator_profile.get() is None  # nothing partial stored


def test_a_finalised_report_does_not_change_and_is_signed(seeded: Region) -> None:
    filed = seeded.reports.finalise(2026, ADMIN)
    assert filed["finalised"]["by"] == str(ADMIN)
    assert verify_signature(filed, seeded.log.vkey)
    with seeded.db.session() as s:
        s.add(_batch(VINS[1], 3, at(2026, 11, 1), [SPEED], 1_000, 2_000))
    assert seeded.reports.report(2026) == filed
    fresh = seeded.reports.compute(2026)["sections"]
    assert [list(v) for v in seeded.reports.report(2026)["sections"].values()] == [list(v) for v in fresh.values()]
    assert seeded.reports.compute(2026)["sections"]["scale"]["batches"]["value"] == 5  # the records did change
    with pytest.raises(ReportFinalised):
        seeded.reports.finalise(2026, ADMIN)
    tampered = json.loads(json.dumps(filed))
    tampered["sections"]["scale"]["batches"]["value"] = 99
    assert not verify_signature(tampered, seeded.log.vkey)
    assert [f["year"] for f in seeded.reports.filings()] == [2026]
    assert seeded.reports.report(2025)["finalised"] is None
    (event,) = seeded.audit.list(None, action="report.finalise")
    assert event.actor == str(ADMIN) and json.loads(event.detail)["year"] == 2026


def test_years_outside_the_records_are_refused(region: Region) -> None:
    for year in (1999, 3000):
        with pytest.raises(InvalidQuery):
            region.reports.report(year)


@pytest.mark.parametrize(
    ("now", "state", "days"),
    [
        (at(2026, 10, 31), "not_yet", 45),
        (at(2026, 11, 1), "due", 44),
        (at(2026, 12, 15, 23, 59), "due", 0),
        (at(2026, 12, 16, 0, 1), "overdue", -1),
    ],
)
def test_the_reminder_runs_from_1_november_to_15_december(region: Region, now: int, state: str, days: int) -> None:
    due = region.reports.due(now)
    assert (due["year"], due["state"], due["days_left"], due["remind"]) == (2026, state, days, state != "not_yet")
    if state == "due":
        assert due["message"]["en"] == f"Annual report for 2026 due by 15 Dec 2026: {days} days left."
        assert "12 月 15 日" in due["message"]["zh-CN"]


def test_the_reminder_stops_once_filed(region: Region) -> None:
    region.reports.finalise(2026, ADMIN)
    assert region.reports.due(at(2026, 12, 1))["state"] == "filed"


def _pdf_text(body: bytes) -> str:
    return "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(body)).pages)


def test_the_pdf_is_chinese_first_and_english_on_request(seeded: Region) -> None:
    report = seeded.reports.report(2026)
    zh = _pdf_text(report_pdf.render(report, messages("zh-CN")))
    assert "汽车数据安全管理情况年度报告" in zh
    assert "2026 年度" in zh and "数据安全负责人" in zh and "Li Wei" in zh and "SC-2025-17" in zh
    assert "链接已撤销" in zh and "Not our data." in zh
    assert "草稿" in zh  # not finalised
    en = _pdf_text(report_pdf.render(report, messages("en")))
    assert "Annual report on automotive data security management" in en and "Insure Ltd." in en
    assert "Link revoked" in en and "链接已撤销" not in en
    assert "Cloud" in en and "Callcentre" not in en  # the processor engaged in 2026, not the one retired in 2025


def test_the_pdf_refuses_without_its_font(seeded: Region, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report_pdf, "FONT_PATH", tmp_path / "no-such-font.ttc")
    with pytest.raises(FontMissing) as e:
        report_pdf.render(seeded.reports.report(2026), messages("zh-CN"))
    assert "fonts-wqy-microhei" in e.value.message


def test_every_pdf_text_exists_in_both_languages() -> None:
    import re

    source = Path(report_pdf.__file__).read_text(encoding="utf-8")
    used = set(re.findall(r't\("(report\.[a-z_.]+)"', source))
    used |= {f"report.s.{s}" for s in report_pdf.SECTIONS}
    for lang in ("en", "zh-CN"):
        missing = [k for k in used if k not in messages(lang)]
        assert not missing, (lang, missing)


def test_a_second_region_instance_serves_the_filed_copy(seeded: Region, settings: Settings) -> None:
    filed = seeded.reports.finalise(2026, ADMIN)
    with Region(settings) as other:  # another replica over the same database
        assert other.reports.report(2026) == filed
        with pytest.raises(ReportFinalised):
            other.reports.finalise(2026, ADMIN)


def test_a_portability_recipient_is_named_from_its_bundle(seeded: Region) -> None:
    with seeded.db.session() as s:
        owner = s.scalar(text("SELECT id FROM owners WHERE email = 'o2@example.cn'"))
        g = Grant(
            owner_id=owner,
            kind="portability",
            client_id=None,
            vins=json.dumps(VINS[1:2]),
            signals='["Vehicle"]',
            purpose="portability",
            created_ms=at(2026, 10, 1),
            expires_ms=at(2026, 10, 8),
        )
        s.add(g)
        s.flush()
        s.add(
            PortabilityBundle(
                id="b" * 32,
                owner_id=owner,
                vin=VINS[1],
                grant_id=g.id,
                recipient=json.dumps({"name": "NewCar", "legal_entity": "NewCar GmbH", "jurisdiction": "eu"}),
                file_name="x.zip",
                sha256="0" * 64,
                size=1,
                batches=1,
                batch_hashes="[]",
                tree_size=1,
                created_ms=at(2026, 10, 1),
                expires_ms=at(2026, 10, 8),
            )
        )
    rows_ = {r["id"]: r for r in seeded.reports.compute(2026, now=NOW)["sections"]["provision"]["rows"]}
    assert set(rows_) == {"app_ins", "NewCar"}
    assert (rows_["NewCar"]["kind"], rows_["NewCar"]["legal_entity"], rows_["NewCar"]["jurisdiction"]) == (
        "portability",
        "NewCar GmbH",
        "eu",
    )
    assert rows_["NewCar"]["purposes"] == ["portability"] and rows_["NewCar"]["owners"] == 1
    assert "not recorded" not in json.dumps(seeded.reports.compute(2025, now=NOW)["sections"])


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_gives_the_same_report(seeded: Region, tmp_path: Path) -> None:
    from carvault.bench.pg_cluster import TemporaryPostgres

    with TemporaryPostgres(fsync=False) as pg:
        settings = Settings(data_dir=tmp_path / "pg", region="cn", database_url=pg.create_database("region_cn"))
        with Region(settings) as other:
            seed(other)
            other.operator_profile.save(PROFILE, ADMIN)
            for year in (2025, 2026):
                mine, theirs = seeded.reports.compute(year, now=NOW), other.reports.compute(year, now=NOW)
                for report in (mine, theirs):
                    report["sections"]["storage"].pop("metadata_backend")
                    report["sections"]["operator"].pop("updated_ms")
                assert theirs == mine
            filed = other.reports.finalise(2026, ADMIN)
            assert verify_signature(filed, other.log.vkey) and other.reports.report(2026) == filed


def test_docs_name_every_figure_and_section(seeded: Region) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "annual-report.md").read_text(encoding="utf-8")
    sections = seeded.reports.compute(2026, now=NOW)["sections"]
    for name, section in sections.items():
        assert f"| {name} " in doc, name
        for key, value in section.items():
            if isinstance(value, dict) and "value" in value or key in ("rows", "categories", "refusals"):
                assert f"`{key}" in doc, (name, key)


def test_the_year_follows_each_region_civil_time() -> None:
    utc = dt.UTC
    assert year_bounds("cn", 2026)[:2] == (
        int(dt.datetime(2025, 12, 31, 16, tzinfo=utc).timestamp() * 1000),
        int(dt.datetime(2026, 12, 31, 16, tzinfo=utc).timestamp() * 1000),
    )
    assert year_bounds("eu", 2026)[0] == int(dt.datetime(2025, 12, 31, 23, tzinfo=utc).timestamp() * 1000)
    assert year_bounds("us", 2026)[0] == int(dt.datetime(2026, 1, 1, 5, tzinfo=utc).timestamp() * 1000)
    assert year_bounds("zz", 2026) == (
        int(dt.datetime(2026, 1, 1, tzinfo=utc).timestamp() * 1000),
        int(dt.datetime(2027, 1, 1, tzinfo=utc).timestamp() * 1000),
        "UTC",
    )
