"""Issue 13's behaviour edges through the real API and services: the deletion grace period and its cancelling,
car names, one rule for time windows, browser names, counts with their nouns, the legal basis of logging in, and
the owner's page views grouped in the access log."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from carvault.compliance.deletion import DeletionScheduler
from carvault.errors import WindowEmpty, WindowReversed, WindowTooLong
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord, DeletionRequest, now_ms
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.i18n import translator
from carvault.web.user_agents import parse
from carvault.windows import check_window
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, run_coroutine

HOUR_MS = 3_600_000


def _with_data(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent) -> None:
    agent.record(drive_table(BASE_MS, seconds=120, paths=["Vehicle.Speed"]), batch_seconds=60)
    agent.upload_pending()
    r = http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    assert r.status_code == 201, r.text


def _batches(region: Region, vin: str) -> int:
    with region.db.session() as s:
        return s.query(BatchRecord).filter(BatchRecord.vin == vin).count()


def _actions(http: httpx.Client, owner: OwnerClient) -> list[dict]:
    return http.get("/api/v1/audit", headers=owner.headers, params={"limit": 1000}).json()["events"]


# ---------------------------------------------------------------------------------------------- deletion grace


def test_a_deletion_waits_its_grace_period_and_the_owner_can_cancel_it(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    r = http.post("/api/v1/deletion-requests", headers=owner.headers, json={"vin": vehicle.vin, "reason": "sold"})
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "scheduled" and req["receipt"] is None
    assert req["due_ms"] - req["requested_ms"] == 72 * HOUR_MS  # the default grace period, stated
    assert req["due_ms"] < req["deadline_ms"]  # well inside the 10-working-day deadline
    assert region.deletions.resume() == 0 and _batches(region, vehicle.vin) == 2  # not due yet: nothing erased

    stranger = make_owner(http)
    assert http.post(f"/api/v1/deletion-requests/{req['id']}/cancel", headers=stranger.headers).status_code == 404
    c = http.post(f"/api/v1/deletion-requests/{req['id']}/cancel", headers=owner.headers)
    assert c.status_code == 200, c.text
    assert c.json()["status"] == "cancelled" and c.json()["cancelled_ms"] >= req["requested_ms"]
    again = http.post(f"/api/v1/deletion-requests/{req['id']}/cancel", headers=owner.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "deletion_not_cancellable"

    with region.db.session() as s:  # even once its time has come, a cancelled request erases nothing
        s.get(DeletionRequest, req["id"]).due_ms = now_ms() - 1
    assert region.deletions.resume() == 0 and _batches(region, vehicle.vin) == 2
    cancels = [e for e in _actions(http, owner) if e["action"] == "deletion.cancel"]
    assert len(cancels) == 1 and cancels[0]["detail"]["request_id"] == req["id"]
    assert region.audit.verify_chain(owner.owner_id) > 0  # recorded in the owner's chain, which still verifies
    assert all(q["id"] != req["id"] for q in region.deletions.queue())  # not in the operator's queue any more


def test_when_the_grace_period_ends_the_scheduler_erases_and_cancelling_is_refused(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    req = http.post("/api/v1/deletion-requests", headers=owner.headers, json={"vin": vehicle.vin}).json()
    with region.db.session() as s:  # the grace period ends now (as if 72 hours had passed)
        s.get(DeletionRequest, req["id"]).due_ms = now_ms() - 1

    async def one_turn() -> None:  # the in-process trigger, with a short interval, on a real event loop
        import asyncio

        scheduler = DeletionScheduler(region.deletions, interval_s=0.05)
        scheduler.start()
        for _ in range(200):
            await asyncio.sleep(0.05)
            if _batches(region, vehicle.vin) == 0:
                break
        await scheduler.stop()

    run_coroutine(one_turn())
    listed = http.get("/api/v1/deletion-requests", headers=owner.headers).json()
    assert listed[0]["status"] == "completed" and listed[0]["receipt"]["batches_erased"] == 2
    assert _batches(region, vehicle.vin) == 0
    late = http.post(f"/api/v1/deletion-requests/{req['id']}/cancel", headers=owner.headers)
    assert late.status_code == 409 and late.json()["error"]["code"] == "deletion_not_cancellable"


def test_delete_now_skips_the_grace_period(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    r = http.post("/api/v1/deletion-requests", headers=owner.headers, json={"vin": vehicle.vin, "immediately": True})
    assert r.json()["status"] == "completed" and _batches(region, vehicle.vin) == 0
    asked = [e for e in _actions(http, owner) if e["action"] == "deletion.request"]
    assert asked[0]["detail"]["grace_skipped"] is True
    bad = http.post("/api/v1/deletion-requests", headers=owner.headers, json={"vin": None, "immediately": "soon"})
    assert bad.status_code == 422  # a malformed choice stores nothing
    assert len(http.get("/api/v1/deletion-requests", headers=owner.headers).json()) == 1


def test_a_cancel_racing_the_scheduler_has_one_winner(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    req = region.deletions.request(owner.owner_id, vehicle.vin, "race")
    with region.db.session() as s:
        s.get(DeletionRequest, req.id).due_ms = now_ms() - 1
    outcome: dict[str, object] = {}

    def cancel() -> None:
        try:
            outcome["cancel"] = region.deletions.cancel(owner.owner_id, req.id).status
        except Exception as e:  # noqa: BLE001 - the loser's error is the point of the test
            outcome["cancel"] = type(e).__name__

    t = threading.Thread(target=cancel)
    t.start()
    outcome["run"] = region.deletions.run_due()
    t.join()
    with region.db.session() as s:
        final = s.get(DeletionRequest, req.id).status
    if outcome["cancel"] == "cancelled":
        assert final == "cancelled" and outcome["run"] == 0 and _batches(region, vehicle.vin) == 2
    else:
        assert outcome["cancel"] == "DeletionNotCancellable" and final == "completed" and outcome["run"] == 1


def test_the_grace_period_is_a_bounded_setting() -> None:
    assert Settings.from_env({}).deletion_grace_s == 72 * 3600
    assert Settings.from_env({"CARVAULT_DELETION_GRACE_S": "3600"}).deletion_grace_s == 3600
    with pytest.raises(ValueError, match="7 days"):
        Settings.from_env({"CARVAULT_DELETION_GRACE_S": str(8 * 86400)})
    with pytest.raises(ValueError, match="deletion_grace_s"):
        Settings.from_env({"CARVAULT_DELETION_GRACE_S": "-1"})


# ---------------------------------------------------------------------------------------------- car names


def test_owners_name_their_cars(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, region: Region
) -> None:
    _with_data(http, owner, vehicle, agent)
    url = f"/api/v1/vehicles/{vehicle.vin}"
    assert http.get(url, headers=owner.headers).json()["display_name"] == "CarVault EV"  # the model as a fallback
    r = http.patch(url, headers=owner.headers, json={"name": "  Blue   Falcon "})
    assert r.status_code == 200 and r.json()["name"] == "Blue Falcon" and r.json()["display_name"] == "Blue Falcon"
    assert http.get("/api/v1/vehicles", headers=owner.headers).json()[0]["display_name"] == "Blue Falcon"
    for bad, status in (("x" * 41, 422), ("line\nbreak", 422), ("tab\there", 422), ("rtl\u202emark", 422)):
        got = http.patch(url, headers=owner.headers, json={"name": bad})
        assert got.status_code == status and got.json()["error"]["code"] == "validation_failed", bad
    assert http.get(url, headers=owner.headers).json()["name"] == "Blue Falcon"  # nothing partial stored
    stranger = make_owner(http)
    assert http.patch(url, headers=stranger.headers, json={"name": "Mine now"}).status_code == 404
    assert [e for e in _actions(http, owner) if e["action"] == "vehicle.rename"][0]["detail"]["name"] == "Blue Falcon"
    cleared = http.patch(url, headers=owner.headers, json={"name": "   "})
    assert cleared.json()["name"] is None and cleared.json()["display_name"] == "CarVault EV"


def test_two_of_one_owners_cars_never_share_a_name(owner: OwnerClient, region: Region, tmp_path) -> None:  # noqa: ANN001
    from carvault.provisioning import provision

    cars = [provision(region, f"LRWEDGES0000000{i:02d}", tmp_path) for i in range(2)]
    for car in cars:
        region.vehicles.claim(owner.owner_id, car.vin, car.pairing_code)
    region.vehicles.rename(owner.owner_id, cars[0].vin, "Daily")
    from carvault.errors import AlreadyExists

    with pytest.raises(AlreadyExists):
        region.vehicles.rename(owner.owner_id, cars[1].vin, "daily")
    assert region.vehicles.rename(owner.owner_id, cars[0].vin, "Daily").name == "Daily"  # its own name again: fine


# ---------------------------------------------------------------------------------------------- windows


def test_each_window_mistake_has_its_own_code() -> None:
    with pytest.raises(WindowReversed) as reversed_:
        check_window(2000, 1000, 24 * HOUR_MS)
    assert reversed_.value.code == "window_reversed" and "before it starts" in reversed_.value.message
    with pytest.raises(WindowEmpty):
        check_window(1000, 1000, 24 * HOUR_MS)
    with pytest.raises(WindowTooLong) as long_:
        check_window(0, 25 * HOUR_MS, 24 * HOUR_MS, what="a package window")
    assert "at most 24 hours" in long_.value.message and long_.value.details["most_ms"] == 24 * HOUR_MS
    check_window(0, 24 * HOUR_MS, 24 * HOUR_MS)  # the limit itself is allowed


def test_windows_are_refused_by_their_mistake_over_http(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    _with_data(http, owner, vehicle, agent)
    base = f"/api/v1/vehicles/{vehicle.vin}"
    for path, body in (
        (f"{base}/packages", {"start": BASE_MS + 60_000, "end": BASE_MS}),
        (f"{base}/packages", {"start": BASE_MS, "end": BASE_MS + 25 * HOUR_MS}),
    ):
        r = http.post(path, headers=owner.headers, json=body)
        want = "window_reversed" if body["end"] < body["start"] else "window_too_long"
        assert r.status_code == 400 and r.json()["error"]["code"] == want
    for params, code in (
        ({"start": BASE_MS + 60_000, "end": BASE_MS}, "window_reversed"),
        ({"start": BASE_MS, "end": BASE_MS}, "window_empty"),
    ):
        for what in ("telemetry", "timeline"):
            r = http.get(f"{base}/{what}", headers=owner.headers, params=params)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (what, r.text)


# ---------------------------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("ua", "browser", "system"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "Linux",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
            "Safari/537.36 Edg/131.0.2903.86",
            "Edge",
            "Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/18.1 Mobile/15E148 Safari/604.1",
            "Safari",
            "iOS",
        ),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0", "Firefox", "macOS"),
        ("python-httpx/0.28.1", "httpx", None),
    ],
)
def test_browser_names(ua: str, browser: str, system: str | None) -> None:
    agent = parse(ua)
    assert agent is not None and (agent.browser, agent.system) == (browser, system)


def test_unknown_agents_are_none() -> None:
    assert parse("") is None and parse(None) is None and parse("SomeBot") is None and parse("Version/1") is None


def test_counts_have_plurals_and_measure_words() -> None:
    en, zh = translator("en", "UTC", "cn"), translator("zh-CN", "UTC", "cn")
    assert en.retention(365) == "1 year" and en.retention(730) == "2 years" and en.retention(1) == "1 day"
    assert zh.retention(365) == "1 年" and zh.count(3, "signal") == "3 个信号" and zh.count(1, "owner") == "1 位车主"
    assert en.count(1, "signal") == "1 signal" and en.count(1200, "row") == "1,200 rows"
    assert en.period(72 * 3600) == "72 hours" and en.period(5 * 86400) == "5 days" and zh.period(3600) == "1 小时"
    from carvault.web.i18n import messages

    nouns = {k.split(".")[2] for k in messages("en") if k.startswith("edges.n.")}
    for noun in nouns:  # every noun has both forms in both languages
        for lang in ("en", "zh-CN"):
            assert {f"edges.n.{noun}.one", f"edges.n.{noun}.other"} <= set(messages(lang))
    plural_s = re.compile(r"\w\(s\)")  # "notice(s)"; a unit such as "duration (s)" is fine
    assert not [k for k, v in messages("en").items() if plural_s.search(v)]  # no "request(s)" left anywhere


# ---------------------------------------------------------------------------------------------- access log


def test_logging_in_is_not_recorded_as_the_right_of_access(http: httpx.Client, owner: OwnerClient) -> None:
    events = _actions(http, owner)
    bases = {e["action"]: e["legal_basis"] for e in events}
    assert bases["session.create"] == "performance of the service contract"
    assert bases["account.create"] == "performance of the service contract"


def test_the_portal_marks_the_owners_reads_with_the_page_they_showed(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    _with_data(http, owner, vehicle, agent)
    login = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
    http.cookies.set("carvault_session", login.json()["token"])
    drive = f"/vehicles/{vehicle.vin}/drive?start={BASE_MS}&end={BASE_MS + 120_000}"
    for _ in range(3):
        assert http.get(drive).status_code == 200
    reads = [e for e in _actions(http, owner) if e["detail"].get("page") == "drive"]
    assert {e["action"] for e in reads} >= {"telemetry.read", "timeline.read"}
    assert len({e["detail"]["view"] for e in reads}) == 3  # one id per page shown
    page = http.get("/access")
    assert page.status_code == 200
    table = page.text[page.text.index("<tbody>") : page.text.index("</tbody>")]
    rows = re.findall(r'<tr class="page-views" data-views="(\d+)"', table)
    assert rows.count("3") == 1 and "Opened a drive" in table and "Viewed timeline" not in table
    assert table.count("Opened a drive") == 1  # the three views of the drive: one row
    assert "CarVault EV" in table  # the car by its name beside its VIN
    http.cookies.clear()
    # A client may not pass anything else as a page mark: it is ignored, and the read is recorded plainly.
    http.get(
        f"/api/v1/vehicles/{vehicle.vin}/timeline",
        headers={**owner.headers, "X-CarVault-Page": "<script> 1234"},
    )
    assert "page" not in _actions(http, owner)[0]["detail"]


def test_pages_say_window_mistakes_in_the_readers_language(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> None:
    _with_data(http, owner, vehicle, agent)
    login = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
    http.cookies.set("carvault_session", login.json()["token"])
    for lang, words in (("en", "ends before it starts"), ("zh-CN", "结束早于开始")):
        http.cookies.set("carvault_lang", lang)
        timeline = http.get(f"/vehicles/{vehicle.vin}", params={"from": "2026-11-20", "to": "2026-11-10"})
        assert timeline.status_code == 200 and words in timeline.text, lang  # the page, with the mistake named
        drive = http.get(f"/vehicles/{vehicle.vin}/drive", params={"start": BASE_MS + 60_000, "end": BASE_MS})
        assert drive.status_code == 400 and words in drive.text and "24" not in drive.text.split("<main")[1][:2000]
