"""The cross-border transfer gate (compliance/transfers.py) on a real region database.

Owners are real accounts; counters near a legal threshold are seeded straight into ``transfer_counters`` (making
10,000 owners would prove nothing more), while the counting path itself runs on real admissions.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from carvault.access.audit import Actor, AuditAction, AuditLog
from carvault.compliance.transfers import (
    REGION_SCOPE,
    ROUTES,
    THRESHOLDS,
    WARN_AT,
    Klass,
    Route,
    Transfers,
    record_scope,
    warn_mark,
    year_of,
)
from carvault.errors import Conflict, CrossBorderTransfer, TransferCapReached, ValidationFailed
from carvault.region import Region
from carvault.settings import Settings
from carvault.signals import CATEGORIES, PrivacyClass
from carvault.store.metadata import (
    AuditEvent,
    Database,
    TransferCounter,
    TransferEvent,
    TransferPerson,
    TransferRecord,
    now_ms,
)
from carvault.vehicle.identity import VehicleIdentity

DAY_MS = 86_400_000
DPO = Actor("staff", "dpo:test")
PERSONAL = ["driving_dynamics", "powertrain"]  # personal and technical data: non-sensitive persons
SENSITIVE = ["location"]


def owners(region: Region, n: int) -> list[int]:
    """``n`` real owner accounts; their ids."""
    return [
        region.accounts.register(f"t-{secrets.token_hex(5)}@example.com", "correct horse battery").id for _ in range(n)
    ]


def add_record(
    region: Region,
    *,
    route: str = "standard_contract",
    recipient: str = "client-eu",
    kind: str = "app",
    jurisdiction: str = "eu",
    categories: list[str] | None = None,
    max_persons: int = 50_000,
    from_ms: int | None = None,
    days: int = 365,
) -> TransferRecord:
    start = now_ms() - DAY_MS if from_ms is None else from_ms
    return region.transfers.create(
        route=route,
        recipient_kind=kind,
        recipient=recipient,
        recipient_jurisdiction=jurisdiction,
        purpose="usage-based insurance priced in the EU",
        categories=categories or PERSONAL + SENSITIVE,
        max_persons=max_persons,
        from_ms=start,
        to_ms=start + days * DAY_MS,
        approval_reference="SC-2026-0042",
        by=DPO,
    )


def seed(region: Region, scope: str, klass: Klass, persons: int) -> None:
    """Set a counter of this year as if ``persons`` people had already been transferred."""
    year = region.transfers.year()
    with region.db.session() as s:
        row = s.scalar(
            select(TransferCounter).where(
                TransferCounter.year == year, TransferCounter.scope == scope, TransferCounter.klass == klass.value
            )
        )
        if row is None:
            s.add(TransferCounter(year=year, scope=scope, klass=klass.value, persons=persons))
        else:
            row.persons = persons


def counter(region: Region, scope: str, klass: Klass) -> int:
    year = region.transfers.year()
    with region.db.session() as s:
        value = s.scalar(
            select(TransferCounter.persons).where(
                TransferCounter.year == year, TransferCounter.scope == scope, TransferCounter.klass == klass.value
            )
        )
    return int(value or 0)


def events(region: Region) -> int:
    with region.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(TransferEvent)) or 0)


def warnings_audited(region: Region) -> list[dict[str, object]]:
    with region.db.session() as s:
        rows = s.scalars(
            select(AuditEvent).where(
                AuditEvent.chain == "region", AuditEvent.action == AuditAction.TRANSFER_WARNING.value
            )
        )
        return [json.loads(e.detail) for e in rows]


def admit(region: Region, owner_id: int, categories: list[str], recipient: str = "client-eu") -> TransferRecord | None:
    return region.transfers.check("app", recipient, "eu", owner_id=owner_id, categories=categories, vin=None)


# ------------------------------------------------------------------------------------------------ the figures
def test_thresholds_are_one_table_with_sources_and_routes_refer_to_them() -> None:
    assert THRESHOLDS["assessment_sensitive"].persons == 10_000
    assert THRESHOLDS["assessment_personal"].persons == 1_000_000
    assert THRESHOLDS["contract_personal"].persons == 100_000
    assert all(t.source.strip() for t in THRESHOLDS.values())
    for cover in ROUTES.values():
        assert all(t in THRESHOLDS.values() for t in cover.below.values())  # no figure written twice
    # Only the security assessment lets important data out, and it has no person ceiling but the record's scale.
    assert [r for r, c in ROUTES.items() if c.important_data] == [Route.SECURITY_ASSESSMENT]
    assert ROUTES[Route.SECURITY_ASSESSMENT].below == {}
    assert {c.name for c in CATEGORIES.values() if c.privacy is PrivacyClass.IMPORTANT} == {"exterior_camera"}


# -------------------------------------------------------------------------------------------------- the gate
def test_a_domestic_principal_and_the_owner_themself_pass_without_a_record(region: Region) -> None:
    (o,) = owners(region, 1)
    assert region.transfers.check("app", "client-cn", "cn", owner_id=o, categories=SENSITIVE) is None
    assert region.transfers.check("staff", "alice", None, owner_id=o, categories=SENSITIVE) is None
    # An owner abroad reading their own data exercises their access right; it is not a provision to a recipient.
    assert region.transfers.check("owner", str(o), "us", owner_id=o, categories=SENSITIVE) is None
    assert events(region) == 0


def test_a_foreign_principal_is_refused_without_a_record_and_admitted_with_one(region: Region) -> None:
    (o,) = owners(region, 1)
    with pytest.raises(CrossBorderTransfer) as e:
        admit(region, o, PERSONAL)
    assert e.value.code == "cross_border_transfer" and "no transfer record" in e.value.message
    assert e.value.details["recipient_jurisdiction"] == "eu" and e.value.details["region"] == "cn"
    assert events(region) == 0
    rec = add_record(region)
    got = admit(region, o, PERSONAL + SENSITIVE)
    assert got is not None and got.id == rec.id
    assert admit(region, o, PERSONAL) is not None  # the same person again: a second event, counted once
    with region.db.session() as s:
        logged = list(s.scalars(select(TransferEvent).order_by(TransferEvent.id)))
    assert [(e.record_id, e.principal, e.owner_id, e.action, e.sensitive) for e in logged] == [
        (rec.id, "app:client-eu", o, "query", True),
        (rec.id, "app:client-eu", o, "query", False),
    ]
    assert json.loads(logged[0].categories) == sorted(PERSONAL + SENSITIVE)
    assert counter(region, REGION_SCOPE, Klass.SENSITIVE) == 1
    assert counter(region, REGION_SCOPE, Klass.PERSONAL) == 1
    assert counter(region, record_scope(rec.id), Klass.ALL) == 1
    # A record covers only its recipient, jurisdiction and categories.
    with pytest.raises(CrossBorderTransfer, match="no transfer record names"):
        region.transfers.check("app", "client-eu", "us", owner_id=o, categories=PERSONAL)
    with pytest.raises(CrossBorderTransfer, match="no transfer record names"):
        admit(region, o, PERSONAL, recipient="someone-else")
    with pytest.raises(CrossBorderTransfer, match="covers adas"):
        admit(region, o, ["adas"])


def test_important_data_leaves_only_under_a_security_assessment(region: Region) -> None:
    (o,) = owners(region, 1)
    with pytest.raises(ValidationFailed) as e:
        add_record(region, route="standard_contract", categories=["exterior_camera", "driving_dynamics"])
    assert e.value.details["field"] == "route" and e.value.details["important"] == ["exterior_camera"]
    with pytest.raises(ValidationFailed):
        add_record(region, route="certification", categories=["exterior_camera"])
    assert region.transfers.list() == []
    add_record(region, route="standard_contract", kind="staff", recipient="bob", categories=PERSONAL)
    with pytest.raises(CrossBorderTransfer, match="important data"):
        region.transfers.check("staff", "bob", "eu", owner_id=o, categories=["exterior_camera"])
    assessed = add_record(
        region, route="security_assessment", kind="staff", recipient="bob", categories=["exterior_camera"] + PERSONAL
    )
    got = region.transfers.check("staff", "bob", "eu", owner_id=o, categories=["exterior_camera"])
    assert got is not None and got.id == assessed.id


def test_suspension_and_expiry_take_effect_on_the_next_check(region: Region) -> None:
    (o,) = owners(region, 1)
    rec = add_record(region)
    assert admit(region, o, PERSONAL) is not None
    region.transfers.suspend(rec.id, reason="contract under review", by=DPO)
    with pytest.raises(CrossBorderTransfer, match="suspended"):
        admit(region, o, PERSONAL)
    with pytest.raises(Conflict):
        region.transfers.suspend(rec.id, reason="again", by=DPO)
    other = add_record(region)
    assert admit(region, o, PERSONAL) is not None
    with region.db.session() as s:  # its period ends
        s.execute(update(TransferRecord).where(TransferRecord.id == other.id).values(to_ms=now_ms() - 1))
    with pytest.raises(CrossBorderTransfer, match="expired"):
        admit(region, o, PERSONAL)
    assert [r.id for r in region.transfers.list(status="expired")] == [other.id]
    assert [r.id for r in region.transfers.list(status="suspended")] == [rec.id]
    later = add_record(region, from_ms=now_ms() + DAY_MS)  # not begun yet
    with pytest.raises(CrossBorderTransfer):
        admit(region, o, PERSONAL)
    assert [r.id for r in region.transfers.list(status="approved")] == []
    assert later.status == "approved"  # stored status; the period decides what it reads as
    with region.db.session() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.chain == "region")))
    assert actions.count(AuditAction.TRANSFER_RECORD.value) == 3
    assert actions.count(AuditAction.TRANSFER_SUSPEND.value) == 1


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("route", {"route": "handshake"}),
        ("recipient_kind", {"kind": "robot"}),
        ("categories", {"categories": ["no_such_category"]}),
        ("recipient_jurisdiction", {"jurisdiction": "cn"}),
        ("recipient_jurisdiction", {"jurisdiction": "e u!"}),
        ("max_persons", {"max_persons": 0}),
        ("period", {"from_ms": now_ms() - 400 * DAY_MS, "days": 30}),
        ("period", {"days": 4 * 366}),
        ("recipient", {"recipient": "  "}),
    ],
)
def test_a_bad_record_is_refused_with_its_field_and_nothing_is_stored(
    region: Region, field: str, change: dict[str, object]
) -> None:
    with pytest.raises(ValidationFailed) as e:
        add_record(region, **change)  # type: ignore[arg-type]
    assert e.value.details["field"] == field
    assert region.transfers.list() == []


# ------------------------------------------------------------------------------------------------ counting
def test_the_region_wide_sensitive_trigger_warns_at_80_percent_then_refuses_past_the_contract(region: Region) -> None:
    rec = add_record(region, route="standard_contract")
    mark = warn_mark(10_000)
    assert mark == 8_000
    seed(region, REGION_SCOPE, Klass.SENSITIVE, mark - 1)
    a, b, c, d = owners(region, 4)
    assert admit(region, a, SENSITIVE) is not None  # the 8,000th sensitive person
    assert counter(region, REGION_SCOPE, Klass.SENSITIVE) == mark
    warned = warnings_audited(region)
    assert [(w["scope"], w["klass"], w["persons"], w["limit"]) for w in warned] == [
        ("region", "sensitive", 8_000, 10_000)
    ]
    shown = region.transfers.counters(region.transfers.year())
    assert shown["region"]["sensitive"]["persons"] == 8_000
    assert [w["level"] for w in shown["warnings"] if w["scope"] == "region"] == ["warning"]
    assert admit(region, b, SENSITIVE) is not None  # no second warning for the same mark
    assert len(warnings_audited(region)) == 1
    seed(region, REGION_SCOPE, Klass.SENSITIVE, 9_998)
    assert admit(region, c, SENSITIVE) is not None  # the 9,999th: still below 10,000
    before = events(region)
    with pytest.raises(TransferCapReached) as e:
        admit(region, d, SENSITIVE)  # the 10,000th needs a security assessment
    assert e.value.code == "transfer_cap_reached" and isinstance(e.value, CrossBorderTransfer)
    assert e.value.details["klass"] == "sensitive" and e.value.details["limit"] == 9_999
    # Refused: nothing counted, nothing logged; a person already counted this year still passes.
    assert counter(region, REGION_SCOPE, Klass.SENSITIVE) == 9_999 and events(region) == before
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(TransferPerson).where(TransferPerson.owner_id == d)) == 0
    assert admit(region, a, SENSITIVE) is not None
    # Non-sensitive data of the refused person is another class, still covered.
    assert admit(region, d, PERSONAL) is not None
    assert counter(region, record_scope(rec.id), Klass.ALL) == 4


def test_the_non_sensitive_ceilings_of_contract_and_certification(region: Region) -> None:
    contract = add_record(region, route="standard_contract", recipient="contracted")
    certified = add_record(region, route="certification", recipient="certified", max_persons=1_000_000)
    a, b, c, d = owners(region, 4)
    seed(region, REGION_SCOPE, Klass.PERSONAL, 79_999)
    assert admit(region, a, PERSONAL, recipient="contracted") is not None  # 80,000: 80 % of the contract's line
    assert [(w["limit"], w["persons"]) for w in warnings_audited(region)] == [(100_000, 80_000)]
    seed(region, REGION_SCOPE, Klass.PERSONAL, 99_999)
    with pytest.raises(TransferCapReached):
        admit(region, b, PERSONAL, recipient="contracted")
    # Certification covers from 100,000 up to (not including) 1,000,000.
    assert admit(region, b, PERSONAL, recipient="certified") is not None
    seed(region, REGION_SCOPE, Klass.PERSONAL, 799_999)
    assert admit(region, c, PERSONAL, recipient="certified") is not None
    assert (1_000_000, 800_000) in [(w["limit"], w["persons"]) for w in warnings_audited(region)]
    seed(region, REGION_SCOPE, Klass.PERSONAL, 999_999)
    with pytest.raises(TransferCapReached):
        admit(region, d, PERSONAL, recipient="certified")
    assert counter(region, record_scope(contract.id), Klass.ALL) == 1
    assert counter(region, record_scope(certified.id), Klass.ALL) == 2


def test_a_security_assessment_is_bound_by_its_approved_scale_only(region: Region) -> None:
    rec = add_record(region, route="security_assessment", max_persons=3)
    seed(region, REGION_SCOPE, Klass.SENSITIVE, 50_000)  # past every route's trigger: the assessment covers it
    people = owners(region, 4)
    for o in people[:3]:
        assert admit(region, o, SENSITIVE) is not None
    assert [(w["scope"], w["limit"]) for w in warnings_audited(region)] == [(record_scope(rec.id), 3)]  # at 3 of 3
    with pytest.raises(TransferCapReached) as e:
        admit(region, people[3], SENSITIVE)
    assert e.value.details["limit"] == 3
    shown = region.transfers.counters(region.transfers.year())
    (entry,) = shown["records"]
    assert entry["record_id"] == rec.id and entry["all"]["persons"] == 3
    assert entry["all"]["limits"][0]["level"] == "reached"


def test_counters_start_again_each_calendar_year(region: Region) -> None:
    add_record(region, max_persons=1)
    (o, p) = owners(region, 2)
    year = region.transfers.year()
    with region.db.session() as s:  # last year's count was full
        s.add(TransferCounter(year=year - 1, scope=REGION_SCOPE, klass="personal", persons=99_999))
        s.add(TransferPerson(year=year - 1, scope=REGION_SCOPE, klass="personal", owner_id=o))
    assert admit(region, o, PERSONAL) is not None
    assert counter(region, REGION_SCOPE, Klass.PERSONAL) == 1
    assert region.transfers.counters(year - 1)["region"]["personal"]["persons"] == 99_999
    with pytest.raises(TransferCapReached):
        admit(region, p, PERSONAL)  # the record's scale, 1 person this year


def test_two_replicas_admitting_at_once_never_pass_a_ceiling(settings: Settings, region: Region) -> None:
    """Two processes' worth of gates over one database: the database, not Python, decides who is the last."""
    rec = add_record(region, max_persons=5)
    people = owners(region, 16)
    url = settings.resolved_database_url
    replicas = []
    for _ in range(2):
        db = Database(url)  # its own engine, pool and write gate, as another process would have
        replicas.append(Transfers(db, AuditLog(db), "cn"))
    start = threading.Barrier(len(people))

    def one(i: int) -> bool:
        start.wait()
        try:
            replicas[i % 2].check("app", "client-eu", "eu", owner_id=people[i], categories=PERSONAL)
            return True
        except TransferCapReached:
            return False

    with ThreadPoolExecutor(len(people)) as pool:
        admitted = list(pool.map(one, range(len(people))))
    for t in replicas:
        t.db.dispose()
    assert sum(admitted) == 5
    assert counter(region, record_scope(rec.id), Klass.ALL) == 5
    with region.db.session() as s:
        persons = s.scalar(
            select(func.count())
            .select_from(TransferPerson)
            .where(TransferPerson.scope == record_scope(rec.id), TransferPerson.klass == "all")
        )
    assert persons == 5 and events(region) == 5


@pytest.fixture
def old_database(tmp_path: Path) -> Iterator[str]:
    """A database whose owners table predates ``owners.jurisdiction``, with an owner in it."""
    import sqlite3

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE owners (id INTEGER PRIMARY KEY AUTOINCREMENT, email VARCHAR(320) UNIQUE, "
        "password_hash VARCHAR(200), display_name VARCHAR(200), locale VARCHAR(16), created_ms BIGINT)"
    )
    con.execute(
        "INSERT INTO owners (email, password_hash, display_name, locale, created_ms) VALUES ('o@x', 'h', '', 'en', 1)"
    )
    con.commit()
    con.close()
    yield f"sqlite:///{path}"


def test_an_existing_database_gains_the_jurisdiction_column_in_place(old_database: str) -> None:
    from carvault.store.metadata import Owner

    db = Database(old_database)
    added = db.create_schema()
    assert "owners.jurisdiction" in added
    with db.session() as s:
        owner = s.get(Owner, 1)
    assert owner is not None and owner.jurisdiction is None
    assert Transfers(db, AuditLog(db), "cn").owner_jurisdiction(owner) == "cn"  # NULL: this region's own
    db.dispose()


def test_an_order_from_an_authority_abroad_is_refused_without_a_record_and_stores_nothing(
    region: Region, vehicle: VehicleIdentity
) -> None:
    from carvault.compliance.orders import orders, release_to_owner

    def order(jurisdiction: str | None) -> None:
        release_to_owner(
            region,
            vehicle.vin,
            now_ms() - 60_000,
            now_ms(),
            authority="Foreign Court",
            reference="X-1",
            legal_basis="mutual legal assistance request",
            jurisdiction=jurisdiction,
        )

    with pytest.raises(CrossBorderTransfer) as e:
        order("US")
    assert e.value.details["recipient_jurisdiction"] == "us" and "Foreign Court" in e.value.message
    with pytest.raises(ValidationFailed):
        order("not a region")
    # A record that leaves out important data (camera images a package may hold) does not cover an order.
    add_record(region, kind="authority", recipient="Foreign Court", jurisdiction="us", route="standard_contract")
    with pytest.raises(CrossBorderTransfer):
        order("us")
    assert orders(region.db) == [] and events(region) == 0


def test_a_recheck_confirms_the_cover_without_counting_or_logging(region: Region) -> None:
    (o,) = owners(region, 1)
    rec = add_record(region)
    got = region.transfers.check("app", "client-eu", "eu", owner_id=o, categories=PERSONAL, count=False)
    assert got is not None and got.id == rec.id
    assert events(region) == 0 and counter(region, REGION_SCOPE, Klass.PERSONAL) == 0
    region.transfers.suspend(rec.id, reason="review", by=DPO)
    with pytest.raises(CrossBorderTransfer):
        region.transfers.check("app", "client-eu", "eu", owner_id=o, categories=PERSONAL, count=False)


def test_staff_abroad_read_under_a_case_through_the_gate_and_the_owner_sees_the_transfer(
    region: Region, vehicle: VehicleIdentity
) -> None:
    from carvault.compliance.roles import Role
    from tests.factories import make_staff

    owner = region.accounts.register("case-abroad@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vehicle.vin, vehicle.pairing_code)
    dpo, _ = make_staff(region, Role.DPO, jurisdiction="eu")
    case = region.cases.open(
        dpo,
        kind="rights_request",
        vins=[vehicle.vin],
        legal_basis="the owner's access request (PIPL Art. 45)",
        ends_ms=now_ms() + 7 * DAY_MS,
        reference="R-1",
        subject="a copy of last month's trips",
    )
    with pytest.raises(CrossBorderTransfer):
        region.cases.access(dpo, case.id, vehicle.vin)
    shareable = sorted(c for c in CATEGORIES if CATEGORIES[c].privacy is not PrivacyClass.IMPORTANT)
    rec = add_record(region, kind="staff", recipient=dpo.username, categories=shareable)
    access = region.cases.access(dpo, case.id, vehicle.vin)
    assert access.transfer is not None and access.transfer.id == rec.id
    region.grants.record_read(access, AuditAction.TELEMETRY_READ, {"rows": 0})
    (read,) = region.audit.list(owner.id, action=AuditAction.TELEMETRY_READ.value)
    assert read.actor == f"staff:dpo:{dpo.username}"
    note = json.loads(read.detail)["transfer"]
    assert note["record_id"] == rec.id and note["destination"] == "eu" and note["route"] == "standard_contract"
    (event,) = region.transfers.events(record_id=rec.id)
    assert event.principal == f"staff:{dpo.username}" and event.owner_id == owner.id and event.vin == vehicle.vin


def test_the_operator_guide_states_the_figures_the_gate_uses() -> None:
    """docs/operator.md, "Cross-border transfers", against THRESHOLDS and ROUTES (the one home of the figures)."""
    text = (Path(__file__).parents[2] / "docs" / "operator.md").read_text(encoding="utf-8")
    section = text.split("\n## Cross-border transfers\n", 1)[1].split("\n## ", 1)[0]
    for t in THRESHOLDS.values():
        assert f"| {t.persons:,} |" in section, t.name
    for route, cover in ROUTES.items():
        assert f"`{route.value}`" in section
        row = next(line for line in section.splitlines() if line.startswith(f"| {route.value.replace('_', ' ')} |"))
        for klass in (Klass.PERSONAL, Klass.SENSITIVE):
            limit = cover.below.get(klass)
            assert (f"< {limit.persons:,}" if limit else "`max_persons`") in row, (route, klass)
        assert row.rstrip(" |").endswith("yes" if cover.important_data else "no")
    assert f"{int(WARN_AT * 100)} %" in section
    for code in ("cross_border_transfer", "transfer_cap_reached"):
        assert f"`403 {code}`" in section


@pytest.mark.postgres
@pytest.mark.slow
def test_on_postgres_two_replicas_count_each_person_once_and_never_pass_a_ceiling(tmp_path: Path) -> None:
    from carvault.bench.pg_cluster import TemporaryPostgres

    with TemporaryPostgres(fsync=False) as pg:
        settings = Settings(data_dir=tmp_path / "cn", region="cn", database_url=pg.create_database("region_cn"))
        a, b = Region(settings), Region(settings)
        try:
            rec = add_record(a, max_persons=6)
            people = owners(a, 10)
            start = threading.Barrier(len(people) * 2)

            def one(i: int) -> bool:
                start.wait()
                replica = (a, b)[i % 2]
                try:
                    replica.transfers.check(
                        "app", "client-eu", "eu", owner_id=people[i // 2], categories=PERSONAL + SENSITIVE
                    )
                    return True
                except TransferCapReached:
                    return False

            with ThreadPoolExecutor(len(people) * 2) as pool:  # every person asked for on both replicas at once
                admitted = list(pool.map(one, range(len(people) * 2)))
            assert counter(a, record_scope(rec.id), Klass.ALL) == 6
            assert counter(a, REGION_SCOPE, Klass.SENSITIVE) == 6 == counter(a, REGION_SCOPE, Klass.PERSONAL)
            assert sum(admitted) == events(a)
            with a.db.session() as s:
                counted = set(
                    s.scalars(
                        select(TransferPerson.owner_id).where(
                            TransferPerson.scope == record_scope(rec.id), TransferPerson.klass == "all"
                        )
                    )
                )
            assert len(counted) == 6
            # Everyone counted was admitted, on both replicas (the second finds them counted); nobody else was.
            assert {people[i // 2] for i, ok in enumerate(admitted) if ok} == counted
            assert all(admitted[2 * k] == admitted[2 * k + 1] for k in range(len(people))), admitted
            assert events(a) == 12
            # The warning at 80 % of the record's scale (5 of 6) was written once.
            assert [(w["scope"], w["persons"]) for w in warnings_audited(a)] == [(record_scope(rec.id), 5)]
        finally:
            a.close()
            b.close()


def test_an_app_abroad_is_granted_only_what_its_record_covers(region: Region, vehicle: VehicleIdentity) -> None:
    from sqlalchemy import select as select_

    from carvault.store.metadata import Grant

    owner = region.accounts.register("grant-abroad@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vehicle.vin, vehicle.pairing_code)
    app, _ = region.apps.register(
        name="Euro Insure",
        legal_entity="Euro Insure SE",
        jurisdiction="eu",
        contact="dpo@euro.example",
        purposes=["insurance"],
        redirect_uris=["https://euro.example/cb"],
    )
    region.apps.decide(app.client_id, "approved", by="operator")

    def grant(*signals: str) -> object:
        return region.grants.create(
            owner.id,
            kind="app",
            client_id=app.client_id,
            vins=[vehicle.vin],
            signals=list(signals),
            purpose="insurance",
        )

    with pytest.raises(CrossBorderTransfer, match="refused until a transfer record covers it"):
        grant("Vehicle.Speed")
    add_record(region, recipient=app.client_id, categories=["driving_dynamics"])
    with pytest.raises(CrossBorderTransfer, match="covers driving_dynamics, location"):
        grant("Vehicle.Speed", "Vehicle.CurrentLocation")
    with region.db.session() as s:
        assert list(s.scalars(select_(Grant))) == []
    assert grant("Vehicle.Speed") is not None
    assert events(region) == 0  # a grant is a promise, not yet a transfer


def test_a_case_for_an_authority_abroad_reads_only_under_a_record_naming_that_authority(
    region: Region, vehicle: VehicleIdentity
) -> None:
    from carvault.compliance.roles import Role
    from tests.factories import make_staff

    owner = region.accounts.register("order-abroad@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, vehicle.vin, vehicle.pairing_code)
    liaison, _ = make_staff(region, Role.LIAISON)  # works here; the order comes from abroad
    case = region.cases.open(
        liaison,
        kind="authority_order",
        vins=[vehicle.vin],
        legal_basis="mutual legal assistance, approved by the competent authority",
        ends_ms=now_ms() + 7 * DAY_MS,
        reference="MLA-9",
        subject="a crash under investigation",
        authority="Foreign Police",
        jurisdiction="us",
    )
    with pytest.raises(CrossBorderTransfer) as e:
        region.cases.access(liaison, case.id, vehicle.vin)
    assert "Foreign Police" in e.value.message
    shareable = sorted(c for c in CATEGORIES if CATEGORIES[c].privacy is not PrivacyClass.IMPORTANT)
    rec = add_record(
        region,
        kind="authority",
        recipient="Foreign Police",
        jurisdiction="us",
        route="security_assessment",
        categories=shareable,
    )
    access = region.cases.access(liaison, case.id, vehicle.vin)
    assert access.transfer is not None and access.transfer.id == rec.id
    (event,) = region.transfers.events(record_id=rec.id)
    assert event.principal == "authority:Foreign Police" and event.owner_id == owner.id


def test_the_year_is_the_regions_civil_year() -> None:
    """New Year in Beijing comes eight hours before UTC's: a transfer then counts in the new year in region cn."""
    beijing_new_year = 1_798_761_600_000 - 8 * 3_600_000  # 2027-01-01T00:00 China time = 2026-12-31T16:00Z
    assert year_of(beijing_new_year, "cn") == 2027
    assert year_of(beijing_new_year - 1, "cn") == 2026
    assert year_of(beijing_new_year) == 2026  # UTC when no region is named
