"""The rights desk as a service: deadlines from their table, the status machine, refusals with reasons, next of kin."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from carvault.compliance.deletion import WORKING_DAYS, add_working_days
from carvault.compliance.rights import DEADLINES, FALLBACK_RULE, Deadline, Kind, Status, Unit, deadline_rule
from carvault.compliance.roles import Role
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import AuditEvent, RightsRequest
from tests.factories import make_staff, vin_for


def _ms(year: int, month: int, day: int, hour: int) -> int:
    return int(dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp() * 1000)


def _day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def _owner(region: Region, name: str) -> int:
    return region.accounts.register(f"{name}@example.com", "correct horse battery").id


# ---------------------------------------------------------------------------------------------- deadlines
def test_china_deadline_is_fifteen_working_days_skipping_weekends() -> None:
    friday = _ms(2026, 11, 20, 12)
    assert _day(DEADLINES["cn"].due(friday)) == dt.date(2026, 12, 11)  # 3 weeks of 5 working days


def test_deletion_deadline_is_the_deletion_services() -> None:
    friday = _ms(2026, 11, 20, 12)
    assert deadline_rule("cn", Kind.DELETION) == "cn.deletion"
    assert DEADLINES["cn.deletion"].due(friday) == add_working_days(friday, WORKING_DAYS)


def test_eu_deadline_is_one_calendar_month_clamped_to_the_months_end() -> None:
    assert deadline_rule("eu", Kind.COMPLAINT) == "eu"
    assert _day(DEADLINES["eu"].due(_ms(2026, 1, 31, 9))) == dt.date(2026, 2, 28)
    assert _day(DEADLINES["eu"].due(_ms(2026, 12, 15, 9))) == dt.date(2027, 1, 15)
    # GDPR has no deletion exception: a deletion request in the EU follows the one-month rule
    assert deadline_rule("eu", Kind.DELETION) == "eu"


def test_unknown_jurisdiction_takes_the_strictest_rule() -> None:
    assert deadline_rule("xx", Kind.ACCESS) == FALLBACK_RULE
    assert deadline_rule("xx", Kind.DELETION) == f"{FALLBACK_RULE}.deletion"
    start = _ms(2026, 3, 2, 8)
    assert all(DEADLINES[FALLBACK_RULE].due(start) <= d.due(start) for k, d in DEADLINES.items() if "." not in k)


def test_every_deadline_names_its_source() -> None:
    for key, d in DEADLINES.items():
        assert isinstance(d, Deadline) and d.amount > 0 and len(d.source) > 20, key
    assert Deadline(45, Unit.CALENDAR_DAYS, "x").due(0) == 45 * 86_400_000


# ---------------------------------------------------------------------------------------------- status machine
def test_filed_request_gets_its_deadline_and_is_visible_to_its_owner_only(region: Region) -> None:
    alice, bob = _owner(region, "alice"), _owner(region, "bob")
    received = _ms(2026, 11, 20, 12)
    r = region.rights.file(region.rights.check(alice, "complaint", details="my data was shared"), now=received)
    assert r.status == Status.RECEIVED and r.deadline_rule == "cn"
    assert r.deadline_ms == DEADLINES["cn"].due(received)
    assert region.rights.mine(alice, r.id).id == r.id
    with pytest.raises(NotFound):
        region.rights.mine(bob, r.id)
    assert [x.id for x in region.rights.of_requester(bob)] == []
    with pytest.raises(NotFound):
        region.rights.withdraw(bob, r.id)


def test_refusal_needs_a_written_reason(region: Region) -> None:
    alice = _owner(region, "alice")
    dpo, _ = make_staff(region, Role.DPO)
    r = region.rights.file(region.rights.check(alice, Kind.EXPLANATION))
    for blank in ("", "   \n"):
        with pytest.raises(ValidationFailed) as e:
            region.rights.refuse(r.id, dpo, blank)
        assert e.value.details["field"] == "reason"
    assert region.rights.get(r.id).status == Status.RECEIVED  # nothing stored by the failed refusal
    refused = region.rights.refuse(r.id, dpo, "The processing rules are already published in full; see /catalogue.")
    assert refused.status == Status.REFUSED and (refused.reason or "").startswith("The processing rules")
    assert refused.handler_role == Role.DPO and refused.closed_ms is not None
    with pytest.raises(Conflict):
        region.rights.refuse(r.id, dpo, "again")


def test_transitions_follow_the_machine(region: Region) -> None:
    alice = _owner(region, "alice")
    dpo, _ = make_staff(region, Role.DPO)
    r = region.rights.file(region.rights.check(alice, Kind.CORRECTION, details="my name is spelled Alicé"))
    with pytest.raises(Conflict):
        region.rights.complete(r.id, dpo, "done")  # not started
    with pytest.raises(ValidationFailed):
        region.rights.complete(r.id, dpo, "")
    started = region.rights.start(r.id, dpo)
    assert started.status == Status.IN_PROGRESS and started.handler == dpo.username and started.started_ms
    with pytest.raises(Conflict):
        region.rights.start(r.id, dpo)
    done = region.rights.complete(r.id, dpo, "Name corrected to Alicé.")
    assert done.status == Status.DONE and done.outcome == "Name corrected to Alicé."
    with pytest.raises(Conflict):
        region.rights.withdraw(alice, r.id)
    # every step is in the owner's access log, named by role and username
    with region.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.owner_id == alice).order_by(AuditEvent.id)))
    actions = [(e.action, e.actor) for e in rows if e.action.startswith("rights.")]
    assert actions == [
        ("rights.request", f"owner:{alice}"),
        ("rights.start", f"staff:dpo:{dpo.username}"),
        ("rights.complete", f"staff:dpo:{dpo.username}"),
    ]
    assert json.loads(rows[-1].detail)["request_id"] == r.id


def test_withdraw_while_open(region: Region) -> None:
    alice = _owner(region, "alice")
    r = region.rights.file(region.rights.check(alice, Kind.RESTRICTION, details="stop using my trips for research"))
    w = region.rights.withdraw(alice, r.id)
    assert w.status == Status.WITHDRAWN and w.closed_ms is not None


def test_validation_rejects_before_storing(region: Region, tmp_path: Path) -> None:
    alice, bob = _owner(region, "alice"), _owner(region, "bob")
    v = provision(region, vin_for(7), tmp_path / "cars")
    region.vehicles.claim(bob, v.vin, v.pairing_code)
    cases = [
        dict(kind="erasure"),  # unknown kind
        dict(kind="complaint"),  # a complaint says what it is about
        dict(kind="portability"),  # names a vehicle
        dict(kind="access", evidence="x"),  # evidence only for next of kin
        dict(kind="next_of_kin", details="my father died", subject_email="dad@example.com"),  # no evidence
        dict(kind="access", details="x" * 5000),
        dict(kind="complaint", details="nul \x00 inside"),  # PostgreSQL text refuses NUL
    ]
    for c in cases:
        with pytest.raises(ValidationFailed):
            region.rights.check(alice, **c)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        region.rights.check(alice, "access", vin=v.vin)  # Bob's car
    with region.db.session() as s:
        assert s.scalar(select(RightsRequest.id)) is None


def test_overdue_requests_surface(region: Region) -> None:
    alice = _owner(region, "alice")
    dpo, _ = make_staff(region, Role.DPO)
    old = region.rights.file(region.rights.check(alice, Kind.ACCESS), now=_ms(2025, 1, 6, 9))
    new = region.rights.file(region.rights.check(alice, Kind.EXPLANATION))
    closed_late = region.rights.file(region.rights.check(alice, Kind.EXPLANATION), now=_ms(2025, 1, 6, 9))
    region.rights.refuse(closed_late.id, dpo, "duplicate of an earlier request")
    assert [r.id for r in region.rights.list(overdue=True)] == [old.id]
    assert {r.id for r in region.rights.list(overdue=False)} == {new.id, closed_late.id}
    assert region.rights.list()[0].id == old.id  # soonest deadline first
    counts = region.rights.counts()
    assert counts["overdue"] == 1 and counts["received"] == 2 and counts["refused"] == 1


def test_next_of_kin_is_verified_before_it_completes(region: Region) -> None:
    deceased, relative = _owner(region, "late.owner"), _owner(region, "daughter")
    dpo, _ = make_staff(region, Role.DPO)
    f = region.rights.check(
        relative,
        Kind.NEXT_OF_KIN,
        details="Please give me a copy of my late father's trips and then delete his account.",
        evidence="Death certificate no. 2026-123; birth certificate showing the relationship.",
        subject_email="Late.Owner@example.com",
    )
    r = region.rights.file(f)
    assert r.owner_id == deceased and r.requester_owner_id == relative
    assert [x.id for x in region.rights.of_requester(relative)] == [r.id]
    assert region.rights.of_requester(deceased) == []
    region.rights.start(r.id, dpo)
    with pytest.raises(Conflict):
        region.rights.complete(r.id, dpo, "copy sent")
    region.rights.verify(r.id, dpo, "certificates checked against the civil registry")
    assert region.rights.complete(r.id, dpo, "A copy was sent to the requester.").status == Status.DONE
    # an unknown account is accepted without saying so, and can only be refused
    u = region.rights.file(
        region.rights.check(relative, Kind.NEXT_OF_KIN, details="x", evidence="y", subject_email="nobody@example.com")
    )
    assert u.owner_id is None
    with pytest.raises(Conflict):
        region.rights.verify(u.id, dpo, "checked")


# ---------------------------------------------------------------------------------------------- the CLI
def _cli(region: Region, *args: str, code: int = 0) -> str:
    from typer.testing import CliRunner

    from carvault.cli import app as cli

    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    result = CliRunner().invoke(cli, ["admin", *args, *where], env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    return result.output


def test_cli_handles_a_request_as_the_local_operator_or_a_named_dpo(region: Region) -> None:
    alice = _owner(region, "alice")
    dpo, _ = make_staff(region, Role.DPO)
    auditor, _ = make_staff(region, Role.AUDITOR)
    r = region.rights.file(region.rights.check(alice, Kind.COMPLAINT, details="the app shows the wrong car"))
    listed = json.loads(_cli(region, "rights", "list", "--json"))
    assert [x["id"] for x in listed["requests"]] == [r.id] and listed["counts"]["received"] == 1
    out = _cli(region, "rights", "start", str(r.id), "--as", auditor.username, code=1)
    assert "role_forbidden" in out  # the role matrix applies on the command line too
    _cli(region, "rights", "start", str(r.id), "--as", dpo.username)
    assert "validation_failed" in _cli(region, "rights", "refuse", str(r.id), "--reason", " ", code=1)
    _cli(region, "rights", "complete", str(r.id), "--outcome", "The car list was fixed.")
    shown = json.loads(_cli(region, "rights", "show", str(r.id), "--json"))
    assert shown["status"] == "done" and shown["handler"] == dpo.username
    r2 = region.rights.file(region.rights.check(alice, Kind.EXPLANATION))
    _cli(region, "rights", "refuse", str(r2.id), "--reason", "Answered by e-mail on request 1.")
    got = region.rights.get(r2.id)
    assert got.status == Status.REFUSED and got.handler_role == "cli"
    with region.db.session() as s:
        actor = s.scalar(
            select(AuditEvent.actor).where(AuditEvent.action == "rights.refuse", AuditEvent.owner_id == alice)
        )
    assert actor is not None and actor.startswith("staff:cli:")


def test_cli_incidents_and_records(region: Region, tmp_path: Path) -> None:
    alice = _owner(region, "alice")
    text = {
        lang: {f: f"{f} ({lang})" for f in ("what", "cause", "harm", "measures", "actions", "contact")}
        for lang in ("en", "zh-CN")
    }
    (tmp_path / "notice.json").write_text(json.dumps(text, ensure_ascii=False), encoding="utf-8")
    out = _cli(
        region,
        "incidents",
        "record",
        "--title",
        "Support laptop stolen",
        "--detected",
        "2026-11-30T08:00:00Z",
        "--content",
        str(tmp_path / "notice.json"),
        "--owner",
        str(alice),
    )
    assert "1 owners affected" in out
    assert _cli(region, "incidents", "notify-owners", "1").strip() == "1 owners notified"
    assert [n.owner_id for n in region.incidents.notices(alice)] == [alice]
    assert "validation_failed" in _cli(
        region,
        "incidents",
        "record",
        "--title",
        "x",
        "--detected",
        "2026-11-30",
        "--content",
        str(tmp_path / "missing.json"),
        "--owner",
        str(alice),
        code=1,
    )
    assert "added" in _cli(region, "records", "sync")
    (tmp_path / "p.json").write_text(
        json.dumps(
            {
                "name": "Support desk contractor",
                "purpose": "first-line support",
                "legal_basis": "contract S-1",
                "retention": "ticket lifetime",
                "jurisdiction": "cn",
            }
        ),
        encoding="utf-8",
    )
    assert "processor support" in _cli(
        region, "records", "add-processor", "support", "--file", str(tmp_path / "p.json")
    )
    rid = region.records.list(kind="processor")[0].id
    assert "record_retained" in _cli(region, "records", "delete", str(rid), code=1)


def test_operator_guide_states_the_deadline_table_of_the_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Rights desk") : doc.index("## Incidents")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {line.split("|")[1].strip().strip("`"): line.split("|")[3].strip() for line in rows}
    assert {k: v for k, v in documented.items() if k in DEADLINES} == {k: d.source for k, d in DEADLINES.items()}
    for kind in Kind:
        assert f"| `{kind.value}` |" in section, kind


def test_every_kind_status_role_and_notice_part_has_english_and_chinese_text() -> None:
    from carvault.compliance.incidents import FIELDS
    from carvault.compliance.rights import CLI_ROLE
    from carvault.web import i18n

    keys = (
        [f"rights.kind.{k.value}" for k in Kind]
        + [f"rights.help.{k.value}" for k in Kind]
        + [f"rights.status.{s.value}" for s in Status]
        + [f"rights.role.{r.value}" for r in Role]
        + [f"rights.role.{CLI_ROLE}", "notice.rights_filed", "notice.rights_withdrawn"]
        + [f"notices.part.{f}" for f in FIELDS]
        + [f"rights.deadline_rule.{k}" for k in DEADLINES]  # the owner reads each rule's source in their language
    )
    for lang in ("en", "zh-CN"):
        messages = i18n.messages(lang)
        assert [k for k in keys if not messages.get(k)] == [], lang


def test_the_owners_own_jurisdiction_counts_when_its_deadline_is_sooner(region: Region) -> None:
    from carvault.compliance.rights import Rights
    from carvault.store.metadata import Owner

    alice, bob = _owner(region, "alice"), _owner(region, "bob")
    with region.db.session() as s:
        s.get(Owner, alice).jurisdiction = "eu"  # type: ignore[union-attr]
    received = _ms(2026, 11, 20, 12)
    # in the cn region, China's 15 working days come before the EU's month: the region's rule stays
    cn = region.rights.file(region.rights.check(alice, Kind.ACCESS), now=received)
    assert cn.deadline_rule == "cn"
    # a region under the 45-day Californian rule: an EU resident gets GDPR's month, a local owner the 45 days
    us = Rights(region.db, region.audit, "us")
    assert us.file(us.check(alice, Kind.ACCESS), now=received).deadline_rule == "eu"
    assert us.file(us.check(bob, Kind.ACCESS), now=received).deadline_rule == "us"


def test_cli_every_incident_and_record_command(region: Region, tmp_path: Path) -> None:
    alice = _owner(region, "alice")
    text = {
        lang: {f: f"{f} {lang}" for f in ("what", "cause", "harm", "measures", "actions", "contact")}
        for lang in ("en", "zh-CN")
    }
    (tmp_path / "n.json").write_text(json.dumps(text, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "report.txt").write_text("Reported under PIPL Art. 57.", encoding="utf-8")
    common = ["--detected", "2026-11-30T08:00:00Z", "--content", str(tmp_path / "n.json")]
    _cli(region, "incidents", "record", "--title", "Laptop stolen", *common, "--owner", str(alice))
    assert _cli(region, "incidents", "affected", "1").split() == [str(alice)]
    assert "Laptop stolen" in _cli(region, "incidents", "list")
    assert json.loads(_cli(region, "incidents", "list", "--json"))[0]["scope"]["owner_ids"] == [alice]
    _cli(
        region,
        "incidents",
        "authority",
        "1",
        "--authority",
        "CAC",
        "--reference",
        "R-9",
        "--content",
        str(tmp_path / "report.txt"),
    )
    shown = json.loads(_cli(region, "incidents", "show", "1"))
    assert shown["authority"]["reference"] == "R-9" and shown["authority"]["content"].startswith("Reported")
    _cli(region, "incidents", "close", "1")
    assert "conflict" in _cli(region, "incidents", "close", "1", code=1)

    (tmp_path / "p.json").write_text(
        json.dumps(
            {
                "name": "Call centre",
                "purpose": "support",
                "legal_basis": "contract C-2",
                "retention": "1 year",
                "jurisdiction": "cn",
            }
        ),
        encoding="utf-8",
    )
    _cli(region, "records", "add-processor", "callcentre", "--file", str(tmp_path / "p.json"))
    rid = region.records.list(kind="processor")[0].id
    (tmp_path / "change.json").write_text(json.dumps({"retention": "2 years"}), encoding="utf-8")
    _cli(region, "records", "update-processor", str(rid), "--file", str(tmp_path / "change.json"))
    assert json.loads(_cli(region, "records", "show", str(rid)))["retention"] == "2 years"
    _cli(region, "records", "retire", str(rid))
    listed = json.loads(_cli(region, "records", "list", "--kind", "processor", "--retired", "--json"))
    assert [r["key"] for r in listed] == ["callcentre"] and listed[0]["deletable_from_ms"] is not None
    assert "callcentre" not in _cli(region, "records", "list", "--current")
