"""Every sharing rule (compliance/sharing.py) and the Grants service (access/grants.py) on a real region."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import update

from carvault.access.accounts import Principal
from carvault.compliance.sharing import (
    DAY_MS,
    DEFAULT_GRANT_DAYS,
    MAX_GRANT_DAYS,
    NEVER_SHAREABLE,
    PURPOSES,
    Scope,
    ScopedView,
    check_end,
    check_purpose,
    check_recipient,
    check_window,
    narrowed,
    parse_scope,
    shareable_signals,
)
from carvault.errors import (
    AppNotApproved,
    CrossBorderTransfer,
    GatekeeperRefused,
    InvalidQuery,
    NotFound,
    NotShareable,
    OutOfScope,
    OwnerOnly,
    Unauthenticated,
    ValidationFailed,
)
from carvault.location import LAT, LON, coarsen
from carvault.provisioning import provision
from carvault.region import Region
from carvault.signals import catalogue
from carvault.store.metadata import App, Credential, Grant, Vehicle, now_ms
from tests.factories import vin_for

NOW = 1_800_000_000_000


# ---------------------------------------------------------------- scope tokens
def test_parse_scope_reads_every_token_kind_and_keeps_unknown_ones() -> None:
    req = parse_scope("vss:Vehicle.Speed  vss:Vehicle.Chassis.Brake history live location:precise vss:Vehicle.Speed")
    assert req.signals == ("Vehicle.Speed", "Vehicle.Chassis.Brake")  # duplicates dropped, order kept
    assert req.live and req.precise_location and req.history and req.unknown == ()
    bare = parse_scope("vss:Vehicle.Speed")
    assert not bare.live and not bare.precise_location and not bare.history
    odd = parse_scope("vss: vss:Vehicle.Speed admin LIVE location:coarse")
    assert odd.signals == ("Vehicle.Speed",)
    assert odd.unknown == ("vss:", "admin", "LIVE", "location:coarse")  # case matters; an empty vss: is unknown
    assert parse_scope(None).signals == () and parse_scope("").unknown == ()


def test_scope_round_trips_through_oauth_tokens() -> None:
    scope = Scope(("V" * 17,), ("Vehicle.Speed", "Vehicle.ADAS"), None, None, True, True, "insurance", NOW)
    assert scope.oauth_scope() == "vss:Vehicle.Speed vss:Vehicle.ADAS history live location:precise"
    again = parse_scope(scope.oauth_scope())
    assert again.signals == scope.signals and again.live and again.precise_location
    plain = Scope(("V" * 17,), ("Vehicle.Speed",), None, None, False, False, "insurance", NOW)
    assert plain.oauth_scope() == "vss:Vehicle.Speed history"


# ---------------------------------------------------------------- never shareable
def test_never_shareable_categories_are_refused_by_path_and_by_branch() -> None:
    cat = catalogue()
    for category in sorted({s.category for s in cat if s.category in NEVER_SHAREABLE}):
        one = next(s.path for s in cat if s.category == category)
        with pytest.raises(NotShareable) as e:
            shareable_signals(cat, [one])
        assert e.value.code == "not_shareable" and category in e.value.message
        # The branch just above the signal, and the whole tree, contain it too.
        with pytest.raises(NotShareable):
            shareable_signals(cat, [one.rsplit(".", 1)[0]])
    with pytest.raises(NotShareable) as e:
        shareable_signals(cat, ["Vehicle"])
    assert {"exterior_camera", "driver_monitoring", "cabin"} <= set(e.value.message.replace(",", " ").split())
    # A branch mixing shareable and never-shareable signals is refused as a whole, not silently trimmed.
    with pytest.raises(NotShareable):
        shareable_signals(cat, ["Vehicle.Speed", "Vehicle.Cabin"])


def test_shareable_signals_validates_paths() -> None:
    cat = catalogue()
    got = shareable_signals(cat, [" Vehicle.Chassis.Brake ", "Vehicle.Speed", "Vehicle.Speed"])
    assert "Vehicle.Speed" in {s.path for s in got}
    assert all(s.path == "Vehicle.Speed" or s.path.startswith("Vehicle.Chassis.Brake.") for s in got)
    assert len(got) == len({s.path for s in got})
    for bad in ([], ["", "  "], ["Vehicle.Nope"], ["vehicle.speed"], ["Vehicle.Spe"]):
        with pytest.raises(ValidationFailed) as e:
            shareable_signals(cat, bad)
        assert e.value.code == "validation_failed" and e.value.details.get("field") == "signals"


# ---------------------------------------------------------------- purposes, end dates, windows
def test_purposes_come_from_the_fixed_list_and_the_apps_declaration() -> None:
    for p in PURPOSES:
        assert check_purpose(p) == p
    for bad in ("", "marketing", "Insurance"):
        with pytest.raises(ValidationFailed):
            check_purpose(bad)
    assert check_purpose("repair", ["repair", "insurance"]) == "repair"
    with pytest.raises(ValidationFailed) as e:
        check_purpose("research", ["repair"])
    assert "repair" in e.value.message
    with pytest.raises(ValidationFailed):
        check_purpose("research", [])


def test_end_date_is_in_the_future_and_at_most_366_days_away() -> None:
    assert check_end(None, NOW) == NOW + DEFAULT_GRANT_DAYS * DAY_MS
    assert check_end(NOW + 1, NOW) == NOW + 1
    assert check_end(NOW + MAX_GRANT_DAYS * DAY_MS, NOW) == NOW + MAX_GRANT_DAYS * DAY_MS
    for bad in (NOW, NOW - 1, NOW + MAX_GRANT_DAYS * DAY_MS + 1, 2**62):
        with pytest.raises(ValidationFailed) as e:
            check_end(bad, NOW)
        assert e.value.details.get("field") == "expires"


def test_history_window_ends_are_in_order() -> None:
    check_window(None, None)
    check_window(5, None)
    check_window(None, 5)
    check_window(5, 6)
    check_window(0, 253_402_300_799_999)
    for lo, hi in ((5, 5), (6, 5), (-1, 5), (5, 2**63), (None, -3), (2**62, None)):
        with pytest.raises(ValidationFailed):
            check_window(lo, hi)


def test_the_owner_can_only_narrow_what_the_app_asked_for() -> None:
    req = parse_scope("vss:Vehicle.Chassis vss:Vehicle.Speed")
    assert narrowed(req, ["Vehicle.Chassis.Brake", "Vehicle.Speed"]) == ("Vehicle.Chassis.Brake", "Vehicle.Speed")
    for wider in (["Vehicle"], ["Vehicle.ChassisX"], ["Vehicle.SpeedLimit"], ["Vehicle.Powertrain"]):
        with pytest.raises(ValidationFailed):
            narrowed(req, wider)


# ---------------------------------------------------------------- recipients
def _app(**kw: object) -> App:
    base: dict[str, object] = {
        "client_id": "cv_test",
        "name": "Insurer",
        "legal_entity": "Insurer Ltd",
        "jurisdiction": "cn",
        "contact": "a@example.com",
        "purposes": json.dumps(["insurance"]),
        "redirect_uris": "[]",
        "gatekeeper": False,
        "status": "approved",
    }
    return App(**{**base, **kw})


def test_recipient_checks() -> None:
    check_recipient(_app(), "cn")
    for status in ("pending", "suspended", "rejected"):
        with pytest.raises(AppNotApproved) as e:
            check_recipient(_app(status=status), "cn")
        assert e.value.code == "app_not_approved" and e.value.status == 403 and status in e.value.message
    with pytest.raises(GatekeeperRefused) as g:
        check_recipient(_app(gatekeeper=True), "cn")
    assert g.value.code == "gatekeeper_refused" and "Art. 5(3)" in g.value.message
    with pytest.raises(CrossBorderTransfer) as x:
        check_recipient(_app(jurisdiction="eu"), "cn")
    assert x.value.code == "cross_border_transfer" and x.value.details["recipient_jurisdiction"] == "eu"
    # Approval is checked before anything else: a pending foreign gatekeeper is 'not approved'.
    with pytest.raises(AppNotApproved):
        check_recipient(_app(status="pending", gatekeeper=True, jurisdiction="eu"), "cn")


# ---------------------------------------------------------------- the scoped view
def _view(signals: tuple[str, ...], lo: int | None = None, hi: int | None = None, precise: bool = False) -> ScopedView:
    scope = Scope((vin_for(1),), signals, lo, hi, False, precise, "insurance", NOW)
    return ScopedView(catalogue(), vin_for(1), scope)


def test_view_serves_exactly_the_granted_signals() -> None:
    view = _view(("Vehicle.Chassis.Brake", "Vehicle.Speed"))
    allowed = {s.path for s in view.allowed()}
    assert "Vehicle.Speed" in allowed and all(
        p == "Vehicle.Speed" or p.startswith("Vehicle.Chassis.Brake.") for p in allowed
    )
    assert {s.path for s in view.signals(None)} == allowed
    assert [s.path for s in view.signals(["Vehicle.Speed"])] == ["Vehicle.Speed"]
    assert [s.path for s in view.signals(["Vehicle.Speed", " Vehicle.Speed", "Vehicle.Speed"])] == ["Vehicle.Speed"]
    # A branch partly outside the grant is refused, naming what is outside; nothing is silently trimmed.
    with pytest.raises(OutOfScope) as e:
        view.signals(["Vehicle.Chassis"])
    assert e.value.code == "out_of_scope" and e.value.status == 403
    assert e.value.details["outside"] and all(
        not p.startswith("Vehicle.Chassis.Brake.") for p in e.value.details["outside"]
    )
    with pytest.raises(OutOfScope):
        view.signals(["Vehicle.Powertrain.TractionBattery"])
    with pytest.raises(InvalidQuery):
        view.signals(["Vehicle.Nope"])


def test_blank_selectors_mean_the_default_not_nothing() -> None:
    view = _view(("Vehicle.Speed",))
    assert [s.path for s in view.signals(["", " "])] == ["Vehicle.Speed"]
    owner = ScopedView(catalogue(), vin_for(1), None)
    assert len(owner.signals(["", ""])) == len(list(catalogue()))


def test_view_windows_are_inside_the_grant_with_end_exclusive() -> None:
    view = _view(("Vehicle.Speed",), 1000, 2000)
    assert view.window(1000, 2000) == (1000, 2000)  # both edges: start inclusive, end exclusive
    assert view.window(1500, 1600) == (1500, 1600)
    for lo, hi in ((999, 2000), (1000, 2001), (0, 10**13), (2500, 3000)):
        with pytest.raises(OutOfScope) as e:
            view.window(lo, hi)
        assert e.value.details["grant_from_ms"] == 1000 and e.value.details["grant_to_ms"] == 2000
    assert view.clip(0, 10**13) == (1000, 2000)
    assert view.clip(1200, 1300) == (1200, 1300)
    assert view.clip(3000, 4000) == (3000, 3000)  # an empty window, never a widened one
    open_ended = _view(("Vehicle.Speed",), 1000, None)
    assert open_ended.window(1000, 10**13) == (1000, 10**13)
    with pytest.raises(OutOfScope):
        open_ended.window(999, 1001)
    owner = ScopedView(catalogue(), vin_for(1), None)
    assert owner.window(0, 10**13) == (0, 10**13) and owner.clip(5, 6) == (5, 6)


def test_view_require_and_owner_only() -> None:
    view = _view(("Vehicle.Speed",))
    view.require(["Vehicle.Speed"], "x")
    view.require(["Vehicle.NotInCatalogue"], "x")  # a path the catalogue lacks is nobody's to grant
    with pytest.raises(OutOfScope) as e:
        view.require(["Vehicle.Speed", LAT], "the route")
    assert e.value.details["outside"] == [LAT] and "the route" in e.value.message
    with pytest.raises(OwnerOnly) as o:
        view.owner_only("packages")
    assert o.value.code == "owner_only"
    owner = ScopedView(catalogue(), vin_for(1), None)
    owner.require([LAT], "x")
    owner.owner_only("packages")
    assert owner.is_owner and not view.is_owner


def test_location_is_coarse_unless_precise_was_granted() -> None:
    table = pa.table({"t": [1, 2], LAT: [31.2304123, None], LON: [121.4737456, None]})
    coarse = _view((LAT, LON)).location(table)
    assert coarse.equals(coarsen(table)) and not coarse.equals(table)
    assert coarse.column(LAT)[1].as_py() is None
    assert _view((LAT, LON), precise=True).location(table).equals(table)
    assert ScopedView(catalogue(), vin_for(1), None).location(table).equals(table)


# ---------------------------------------------------------------- the Grants service on a real region
@pytest.fixture
def people(region: Region, tmp_path: Path) -> dict[str, int]:
    """Two owners: A with cars 1 and 2, B with car 3; ids by name."""
    a = region.accounts.register("a@example.com", "correct horse battery")
    b = region.accounts.register("b@example.com", "correct horse battery")
    for n, who in ((1, a), (2, a), (3, b)):
        car = provision(region, vin_for(n), tmp_path / "vehicles")
        region.vehicles.claim(who.id, car.vin, car.pairing_code)
    return {"a": a.id, "b": b.id}


def _approved_app(region: Region, **kw: object) -> App:
    app, _ = region.apps.register(
        name="Insurer",
        legal_entity="Insurer Ltd",
        jurisdiction=str(kw.pop("jurisdiction", "cn")),
        contact="dev@example.com",
        purposes=["insurance", "repair"],
        gatekeeper=bool(kw.pop("gatekeeper", False)),
    )
    return region.apps.decide(app.client_id, "approved", "operator")


def _principal(region: Region, owner_id: int, grant: Grant, client_id: str | None = None) -> Principal:
    secret, _ = region.accounts.issue(owner_id, "access", grant_id=grant.id, client_id=client_id)
    return region.accounts.resolve(secret)


def test_create_checks_every_rule_and_audits(region: Region, people: dict[str, int]) -> None:
    app = _approved_app(region)
    g = region.grants.create(
        people["a"],
        kind="app",
        client_id=app.client_id,
        vins=[vin_for(1).lower(), vin_for(1)],
        signals=["Vehicle.Speed", " Vehicle.Speed"],
        purpose="insurance",
    )
    assert json.loads(g.vins) == [vin_for(1)] and json.loads(g.signals) == ["Vehicle.Speed"]
    assert g.expires_ms - now_ms() == pytest.approx(DEFAULT_GRANT_DAYS * DAY_MS, abs=60_000)
    events = region.audit.list(people["a"], action="grant.create")
    assert len(events) == 1 and json.loads(events[0].detail)["client_id"] == app.client_id
    refusals = [
        ({"vins": [vin_for(3)]}, NotFound),  # B's car
        ({"vins": [vin_for(1), vin_for(9)]}, NotFound),  # no such car; nothing stored
        ({"vins": []}, ValidationFailed),
        ({"signals": ["Vehicle.Driver"]}, NotShareable),
        ({"signals": []}, ValidationFailed),
        ({"purpose": "research"}, ValidationFailed),  # not declared by the app
        ({"expires_ms": now_ms() + 400 * DAY_MS}, ValidationFailed),
        ({"from_ms": 10, "to_ms": 10}, ValidationFailed),
        ({"client_id": None}, ValidationFailed),
        ({"client_id": "cv_nobody"}, NotFound),
    ]
    for change, error in refusals:
        args = {
            "kind": "app",
            "client_id": app.client_id,
            "vins": [vin_for(1)],
            "signals": ["Vehicle.Speed"],
            "purpose": "insurance",
            **change,
        }
        with pytest.raises(error):
            region.grants.create(people["a"], **args)  # type: ignore[arg-type]
    assert len(region.grants.of_owner(people["a"], include_ended=True)) == 1
    for kw, error in (({"gatekeeper": True}, GatekeeperRefused), ({"jurisdiction": "eu"}, CrossBorderTransfer)):
        other = _approved_app(region, **kw)
        with pytest.raises(error):
            region.grants.create(
                people["a"],
                kind="app",
                client_id=other.client_id,
                vins=[vin_for(1)],
                signals=["Vehicle.Speed"],
                purpose="insurance",
            )
    pending, _ = region.apps.register(
        name="P", legal_entity="P Ltd", jurisdiction="cn", contact="p@example.com", purposes=["insurance"]
    )
    with pytest.raises(AppNotApproved):
        region.grants.create(
            people["a"],
            kind="app",
            client_id=pending.client_id,
            vins=[vin_for(1)],
            signals=["Vehicle.Speed"],
            purpose="insurance",
        )


def test_personal_token_is_scoped_and_hashed(region: Region, people: dict[str, int]) -> None:
    secret, g = region.grants.personal_token(people["a"], label="script", vins=[vin_for(1)], signals=["Vehicle.Speed"])
    assert g.kind == "pat" and g.purpose == "personal" and g.client_id is None
    with region.db.session() as s:
        creds = s.query(Credential).filter(Credential.grant_id == g.id).all()
    assert len(creds) == 1 and secret not in creds[0].token_hash and creds[0].expires_ms <= g.expires_ms
    p = region.accounts.resolve(secret)
    assert p.grant_id == g.id and not p.is_owner
    access = region.grants.access(p, vin_for(1))
    assert access.actor.kind == "token" and access.actor.id == str(p.credential_id)
    assert [s.path for s in access.view.allowed()] == ["Vehicle.Speed"]


def test_access_reaches_only_the_granted_car_of_the_granting_owner(region: Region, people: dict[str, int]) -> None:
    app = _approved_app(region)
    g = region.grants.create(
        people["a"], kind="app", client_id=app.client_id, vins=[vin_for(1)], signals=["Vehicle.Speed"], purpose="repair"
    )
    p = _principal(region, people["a"], g, app.client_id)
    access = region.grants.access(p, vin_for(1).lower())  # VIN case does not matter
    assert access.vin == vin_for(1) and str(access.actor) == f"app:{app.client_id}"
    assert "grant" in access.legal_basis and "repair" in access.legal_basis
    assert [v.vin for v in region.grants.vehicles(p)] == [vin_for(1)]
    for other in (vin_for(2), vin_for(3), vin_for(99), "not a vin"):
        with pytest.raises(OutOfScope):
            region.grants.access(p, other)
    # The owner's own session reaches both of their cars and nobody else's.
    secret, _ = region.accounts.issue(people["a"], "session")
    owner = region.accounts.resolve(secret)
    assert region.grants.access(owner, vin_for(2)).view.is_owner
    assert [v.vin for v in region.grants.vehicles(owner)] == [vin_for(1), vin_for(2)]
    with pytest.raises(NotFound):
        region.grants.access(owner, vin_for(3))
    # The car is sold: the grant the old owner made covers nothing any more.
    with region.db.session() as s:
        s.execute(update(Vehicle).where(Vehicle.vin == vin_for(1)).values(owner_id=people["b"]))
    with pytest.raises(OutOfScope):
        region.grants.access(p, vin_for(1))
    assert region.grants.vehicles(p) == []


def test_revoke_expire_and_suspend_stop_the_next_request(region: Region, people: dict[str, int]) -> None:
    app = _approved_app(region)

    def grant() -> tuple[Grant, Principal, str]:
        g = region.grants.create(
            people["a"],
            kind="app",
            client_id=app.client_id,
            vins=[vin_for(1)],
            signals=["Vehicle.Speed"],
            purpose="repair",
        )
        secret, _ = region.accounts.issue(people["a"], "access", grant_id=g.id, client_id=app.client_id)
        return g, region.accounts.resolve(secret), secret

    g, p, secret = grant()
    region.grants.revoke(people["a"], g.id)
    with pytest.raises(Unauthenticated):
        region.accounts.resolve(secret)  # its credentials are revoked with it
    with pytest.raises(Unauthenticated):
        region.grants.access(p, vin_for(1))  # and the grant itself no longer holds
    assert len(region.audit.list(people["a"], action="grant.revoke")) == 1
    region.grants.revoke(people["a"], g.id)  # twice is harmless and recorded once
    assert len(region.audit.list(people["a"], action="grant.revoke")) == 1
    with pytest.raises(NotFound):
        region.grants.revoke(people["b"], g.id)  # not B's grant

    g, p, _ = grant()
    with region.db.session() as s:
        s.execute(update(Grant).where(Grant.id == g.id).values(expires_ms=now_ms() - 1))
    with pytest.raises(Unauthenticated):
        region.grants.access(p, vin_for(1))
    assert g.id not in [x.id for x, _ in region.grants.of_owner(people["a"])]
    assert g.id in [x.id for x, _ in region.grants.of_owner(people["a"], include_ended=True)]

    g, p, _ = grant()
    region.apps.decide(app.client_id, "suspended", "operator")
    with pytest.raises(AppNotApproved):
        region.grants.access(p, vin_for(1))
    with pytest.raises(AppNotApproved):
        region.grants.vehicles(p)
    region.apps.decide(app.client_id, "approved", "operator")
    assert region.grants.access(p, vin_for(1)).vin == vin_for(1)
    # Designated a gatekeeper, or moved abroad, after the grant: refused on the next request.
    for change, error in (({"gatekeeper": True}, GatekeeperRefused), ({"jurisdiction": "eu"}, CrossBorderTransfer)):
        with region.db.session() as s:
            s.execute(update(App).where(App.client_id == app.client_id).values(**change))
        with pytest.raises(error):
            region.grants.access(p, vin_for(1))
        with region.db.session() as s:
            s.execute(update(App).where(App.client_id == app.client_id).values(gatekeeper=False, jurisdiction="cn"))
    assert region.grants.access(p, vin_for(1)).vin == vin_for(1)


def test_record_read_audits_the_recipient_and_counts_use(region: Region, people: dict[str, int]) -> None:
    app = _approved_app(region)
    g = region.grants.create(
        people["a"], kind="app", client_id=app.client_id, vins=[vin_for(1)], signals=["Vehicle.Speed"], purpose="repair"
    )
    access = region.grants.access(_principal(region, people["a"], g, app.client_id), vin_for(1))
    region.grants.record_read(access, "telemetry.read", {"rows": 7}, rows=7)
    region.grants.record_read(access, "telemetry.read", {"rows": 3}, rows=3)
    after = region.grants.get(people["a"], g.id)
    assert after.reads == 2 and after.rows_served == 10 and after.last_access_ms is not None
    reads = region.audit.list(people["a"], action="telemetry.read")
    assert len(reads) == 2 and all(e.actor == f"app:{app.client_id}" and e.vin == vin_for(1) for e in reads)
    detail = json.loads(reads[0].detail)
    assert detail["grant_id"] == g.id and detail["purpose"] == "repair"
    assert app.name in reads[0].legal_basis
    with pytest.raises(NotFound):
        region.grants.get(people["b"], g.id)


def test_tokens_act_only_for_a_grant_of_their_own_account(region: Region, people: dict[str, int]) -> None:
    secret, _ = region.accounts.issue(people["a"], "access")  # an app token without a grant never acts as owner
    with pytest.raises(Unauthenticated):
        region.accounts.resolve(secret)
    g = region.grants.create(
        people["a"], kind="pat", vins=[vin_for(1)], signals=["Vehicle.Speed"], purpose="personal", label="x"
    )
    stray = _principal(region, people["b"], g)  # issued to B, naming A's grant
    with pytest.raises(Unauthenticated):
        region.grants.access(stray, vin_for(1))
    with pytest.raises(Unauthenticated):
        region.grants.vehicles(stray)
