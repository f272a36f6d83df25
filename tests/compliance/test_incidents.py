"""Incidents (PIPL Art. 57): affected owners computed from the records equal an independent query; notices reach
exactly the affected owners, in both languages; the authority's notification is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from carvault.compliance.incidents import FIELDS, LANGUAGE_CODES
from carvault.compliance.roles import Role
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.vehicle.agent import VehicleAgent
from carvault.web.i18n import LANGUAGES
from tests.factories import BASE_MS, drive_table, make_staff, opt_in, vin_for

HOUR = 3_600_000
DAY = 24 * HOUR
LAT = ["Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"]


def content(complete: bool = True) -> dict[str, Any]:
    en = {f: f"{f} in English" for f in FIELDS}
    zh = {f: f"{f}（中文）" for f in FIELDS}
    return {"en": en, "zh-CN": zh} if complete else {"en": en}


def test_notice_languages_are_the_portals() -> None:
    assert set(LANGUAGE_CODES) == set(LANGUAGES)


class World:
    """Four owners, four cars (one unclaimed), batches at two times and of two categories."""

    def __init__(self, region: Region, server: BackgroundServer, tmp: Path) -> None:
        self.region = region
        self.owners = {n: region.accounts.register(f"{n}@example.com", "correct horse battery").id for n in "ABCD"}
        self.vins: dict[str, str] = {}
        plan = [  # name, owner, start, paths
            ("v1", "A", BASE_MS, ["Vehicle.Speed"]),
            ("v2", "B", BASE_MS + 2 * DAY, ["Vehicle.Speed"]),
            ("v3", "C", BASE_MS, LAT),
            ("v4", None, BASE_MS, ["Vehicle.Speed"]),
        ]
        for i, (name, owner, start, paths) in enumerate(plan, start=1):
            ident = provision(region, vin_for(100 + i), tmp / "cars")
            if paths == LAT:
                opt_in(region, ident.vin, "location", at_ms=start - DAY)
            agent = VehicleAgent(ident, tmp / "cars" / ident.vin, server.url)
            agent.record(drive_table(start, seconds=60, paths=paths), batch_seconds=60)
            agent.upload_pending()
            if owner is not None:
                region.vehicles.claim(self.owners[owner], ident.vin, ident.pairing_code)
            self.vins[name] = ident.vin

    def ids(self, *names: str) -> list[int]:
        return sorted(self.owners[n] for n in names)

    def independent(self, t0: int | None, t1: int | None, like: str | None, vins: list[str]) -> list[int]:
        """Owners of cars whose batches overlap [t0, t1) and name a column like ``like`` — plain SQL."""
        sql = "SELECT DISTINCT v.owner_id FROM batches b JOIN vehicles v ON v.vin = b.vin WHERE v.owner_id IS NOT NULL"
        params: dict[str, Any] = {}
        if t0 is not None:
            sql += " AND b.t0 < :t1 AND b.t1 >= :t0"
            params |= {"t0": t0, "t1": t1}
        if like is not None:
            sql += " AND b.columns LIKE :like"
            params["like"] = f"%{like}%"
        if vins:
            sql += " AND b.vin IN (" + ",".join(f":v{i}" for i in range(len(vins))) + ")"
            params |= {f"v{i}": v for i, v in enumerate(vins)}
        with self.region.db.engine.connect() as c:
            return sorted(r[0] for r in c.execute(text(sql), params))


@pytest.fixture
def world(region: Region, server: BackgroundServer, tmp_path: Path) -> World:
    return World(region, server, tmp_path)


@pytest.mark.slow
def test_affected_owners_equal_an_independent_query(world: World, region: Region) -> None:
    dpo, _ = make_staff(region, Role.DPO)
    w0, w1 = BASE_MS - HOUR, BASE_MS + HOUR
    cases: list[tuple[dict[str, Any], tuple[Any, ...]]] = [
        (dict(occurred_from_ms=w0, occurred_to_ms=w1, categories=["location"]), (w0, w1, "CurrentLocation", [])),
        (dict(occurred_from_ms=w0, occurred_to_ms=w1), (w0, w1, None, [])),
        (dict(categories=["driving_dynamics"]), (None, None, "Vehicle.Speed", [])),
        (
            dict(occurred_from_ms=w0, occurred_to_ms=w1, vins=[world.vins["v1"], world.vins["v2"]]),
            (w0, w1, None, [world.vins["v1"], world.vins["v2"]]),
        ),
    ]
    expected_by_hand = [world.ids("C"), world.ids("A", "C"), world.ids("A", "B"), world.ids("A")]
    for (scope, query), by_hand in zip(cases, expected_by_hand, strict=True):
        inc = region.incidents.record(dpo, title="t", detected_ms=BASE_MS + 3 * DAY, content=content(), **scope)
        got = region.incidents.affected(inc.id)
        assert got == world.independent(*query) == by_hand, scope
    # named vehicles and owners, without a data selector: the owners of the cars plus the owners named
    inc = region.incidents.record(
        dpo, title="t", detected_ms=BASE_MS, content=content(), vins=[world.vins["v2"]], owner_ids=[world.owners["D"]]
    )
    assert region.incidents.affected(inc.id) == world.ids("B", "D")


@pytest.mark.slow
def test_notices_reach_exactly_the_affected_owners(world: World, region: Region, http: httpx.Client) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    inc = region.incidents.record(
        admin,
        title="Location export bucket left readable",
        detected_ms=BASE_MS + 3 * DAY,
        content=content(complete=False),
        occurred_from_ms=BASE_MS - HOUR,
        occurred_to_ms=BASE_MS + HOUR,
    )
    with pytest.raises(ValidationFailed):  # nobody is told before the Chinese text exists
        region.incidents.notify_owners(inc.id, admin)
    region.incidents.update(inc.id, admin, content=content())
    assert region.incidents.notify_owners(inc.id, admin) == 2
    assert region.incidents.notify_owners(inc.id, admin) == 0  # each owner once
    with pytest.raises(Conflict):
        region.incidents.update(inc.id, admin, title="rewritten after sending")
    told = {o for o, oid in world.owners.items() if region.incidents.notices(oid)}
    assert told == {"A", "C"}
    assert region.incidents.get(inc.id).affected_owners == 2

    # the owner reads it through the API, in either language, and marks it read; others cannot see it
    r = http.post("/api/v1/auth/login", json={"email": "A@example.com", "password": "correct horse battery"})
    a = {"Authorization": f"Bearer {r.json()['token']}"}
    r = http.post("/api/v1/auth/login", json={"email": "B@example.com", "password": "correct horse battery"})
    b = {"Authorization": f"Bearer {r.json()['token']}"}
    notices = http.get("/api/v1/notices", headers=a, params={"lang": "zh-CN", "unread": True}).json()
    assert len(notices) == 1 and notices[0]["what"] == "what（中文）" and notices[0]["read_ms"] is None
    nid = notices[0]["id"]
    assert http.get(f"/api/v1/notices/{nid}", headers=b).status_code == 404
    assert http.post(f"/api/v1/notices/{nid}/read", headers=b).status_code == 404
    assert http.post(f"/api/v1/notices/{nid}/read", headers=a).json()["read_ms"] is not None
    assert http.get("/api/v1/notices", headers=a, params={"unread": True}).json() == []
    assert http.get("/api/v1/notices", headers=b).json() == []

    # the authority's notification is recorded with what was sent
    region.incidents.notify_authority(
        inc.id, admin, authority="CAC Shanghai", reference="SH-2026-77", content="report text", notified_ms=None
    )
    got = region.incidents.get(inc.id)
    assert got.authority == "CAC Shanghai" and got.authority_reference == "SH-2026-77" and got.authority_notified_ms
    assert region.incidents.close(inc.id, admin).status == "closed"
    with pytest.raises(Conflict):
        region.incidents.notify_owners(inc.id, admin)


def test_scope_is_validated_before_anything_is_stored(region: Region) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    bad: list[dict[str, Any]] = [
        {},  # no scope
        {"categories": ["teleportation"]},
        {"vins": [vin_for(999)]},
        {"owner_ids": [12345]},
        {"occurred_from_ms": BASE_MS},  # half a window
        {"occurred_from_ms": BASE_MS, "occurred_to_ms": BASE_MS},  # empty window
    ]
    for scope in bad:
        with pytest.raises(ValidationFailed):
            region.incidents.record(admin, title="t", detected_ms=BASE_MS, content=content(), **scope)
    with pytest.raises(ValidationFailed):
        region.incidents.record(admin, title="t", detected_ms=BASE_MS, content={"zh-CN": content()["zh-CN"]})
    with pytest.raises(ValidationFailed):
        region.incidents.record(admin, title=" ", detected_ms=BASE_MS, content=content(), categories=["location"])
    assert region.incidents.list() == []
    with pytest.raises(NotFound):
        region.incidents.affected(1)


@pytest.mark.postgres
@pytest.mark.slow
def test_desk_incidents_and_records_on_postgres(tmp_path: Path) -> None:
    """The same services on PostgreSQL: a request through its states, an incident's owners from the batches and its
    notices, the records generated and kept."""
    from carvault.bench.pg_cluster import TemporaryPostgres
    from carvault.compliance.records import KEEP_MS
    from carvault.errors import RecordRetained
    from carvault.settings import Settings

    with TemporaryPostgres(fsync=False) as pg:
        region = Region(Settings(data_dir=tmp_path / "cn", region="cn", database_url=pg.create_database("region_cn")))
        try:
            assert not region.db.is_sqlite
            with BackgroundServer(region) as server:
                world = World(region, server, tmp_path)
            dpo, _ = make_staff(region, Role.DPO)
            a = world.owners["A"]
            req = region.rights.file(region.rights.check(a, "complaint", details="wrong car shown"))
            region.rights.start(req.id, dpo)
            assert region.rights.refuse(req.id, dpo, "not our data").status == "refused"
            assert region.rights.counts()["refused"] == 1 and region.rights.list(overdue=True) == []

            inc = region.incidents.record(
                dpo,
                title="t",
                detected_ms=BASE_MS + 3 * DAY,
                content=content(),
                occurred_from_ms=BASE_MS - HOUR,
                occurred_to_ms=BASE_MS + HOUR,
                categories=["location"],
            )
            assert region.incidents.affected(inc.id) == world.ids("C")
            assert region.incidents.notify_owners(inc.id, dpo) == 1
            assert region.incidents.unread_count(world.owners["C"]) == 1

            assert region.records.sync(dpo)["added"] > 0
            rec = region.records.add_processor(
                dpo,
                key="host",
                fields={"name": "H", "purpose": "p", "legal_basis": "c", "retention": "r", "jurisdiction": "cn"},
            )
            retired = region.records.retire(rec.id, dpo)
            assert retired.retired_ms is not None
            with pytest.raises(RecordRetained):
                region.records.delete(rec.id, dpo)
            region.records.delete(rec.id, dpo, now=retired.retired_ms + KEEP_MS)
        finally:
            region.close()
