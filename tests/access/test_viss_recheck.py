"""The bulk re-check of open VISS subscriptions (``access/viss.py`` ``Rechecker``), in-process on a real region.

Many sessions on several vehicles and tokens, re-checked by passes run by hand (no sleeping): a revoked grant ends
exactly its own streams, a consent stop exactly the streams of that vehicle and category, a pass with nothing
changed takes no full authorisation, and a grant ending by time ends its streams without any row changing.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from carvault.access.viss import EVENT_TEXTS, Rechecker, VissSession
from carvault.ingest.live import LiveUpdate, LiveValue
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import Database, now_ms
from tests.factories import run_coroutine, vin_for

SPEED = "Vehicle.Speed"  # driving dynamics: collected unless the owner stops it
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
SESSIONS_PER_TOKEN_AND_CAR = 4


def _subscribe(path: str) -> str:
    return json.dumps(
        {
            "action": "subscribe",
            "requestId": path,
            "path": path,
            "filter": {"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}},
        }
    )


class Box:
    """One session and what it sent."""

    def __init__(self, region: Region, vin: str, token: str, rechecker: Rechecker) -> None:
        self.vin, self.token = vin, token
        self.sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any] | bytes) -> None:
            self.sent.append(json.loads(message) if isinstance(message, bytes) else message)

        self.session = VissSession.of_region(region, vin, send, connection_token=token, rechecker=rechecker)

    def ended(self) -> dict[str, str]:
        """subscription id -> error code of the subscriptions the server ended."""
        return {m["subscriptionId"]: m["error"]["code"] for m in self.sent if m.get("action") == "subscription"}


def _pairs(boxes: list[Box]) -> list[tuple[VissSession, Any]]:
    return [(b.session, sub) for b in boxes for sub in list(b.session.subscriptions.values())]


@pytest.fixture
def fleet(region: Region, tmp_path: Path) -> tuple[int, list[str]]:
    owner_id = region.accounts.register("fleet-owner@example.com", "correct horse battery").id
    vins = []
    for n in (11, 12, 13):
        car = provision(region, vin_for(n), tmp_path / "vehicles")
        region.vehicles.claim(owner_id, car.vin, car.pairing_code)
        vins.append(car.vin)
    return owner_id, vins


@pytest.mark.slow  # provisions three cars (an argon2 hash each)
def test_one_revoked_grant_ends_only_its_streams_and_a_quiet_pass_reads_in_bulk(
    region: Region, fleet: tuple[int, list[str]]
) -> None:
    owner_id, vins = fleet
    own, _ = region.accounts.issue(owner_id, "token", label="owner script")
    revoked, grant_a = region.grants.personal_token(owner_id, label="a", vins=vins, signals=[SPEED, SOC], live=True)
    kept, _ = region.grants.personal_token(owner_id, label="b", vins=vins, signals=[SPEED, SOC], live=True)

    async def scenario() -> None:
        rechecker = Rechecker(region.db, period_s=3600)  # passes are run by hand below
        boxes = [
            Box(region, vin, token, rechecker)
            for vin in vins
            for token in (own, revoked, kept)
            for _ in range(SESSIONS_PER_TOKEN_AND_CAR)
        ]
        for b in boxes:
            await b.session.handle(_subscribe(SPEED))
            await b.session.handle(_subscribe(SOC))
            assert [m.get("subscriptionId") for m in b.sent] == ["1", "2"], b.sent
        total = len(boxes) * 2
        assert region.live.subscription_count() == total

        await rechecker.run_pass(_pairs(boxes))  # the first pass authorises each one fully
        assert (rechecker.seen, rechecker.full) == (total, total)
        await rechecker.run_pass(_pairs(boxes))  # nothing changed: the bulk read alone confirms every one
        assert (rechecker.seen, rechecker.full) == (2 * total, total)
        assert not any(b.ended() for b in boxes)

        await asyncio.to_thread(region.grants.revoke, owner_id, grant_a.id)
        await rechecker.run_pass(_pairs(boxes))
        revoked_ends = {"1": "unauthenticated", "2": "unauthenticated"}  # VISS: 401 invalid_token
        for b in boxes:
            assert b.ended() == (revoked_ends if b.token == revoked else {}), b.token
        gone = 2 * len(vins) * SESSIONS_PER_TOKEN_AND_CAR
        assert rechecker.full == total + gone  # only the revoked token's subscriptions were read again
        assert region.live.subscription_count() == total - gone

        # A consent stop on one car ends that car's speed streams, for every token, and nothing else.
        full = rechecker.full
        await asyncio.to_thread(region.consents.decide, vins[1], owner_id, "driving_dynamics", enabled=False)
        await rechecker.run_pass(_pairs(boxes))
        for b in boxes:
            if b.token == revoked:
                continue
            assert b.ended() == ({"1": "consent_not_given"} if b.vin == vins[1] else {}), (b.vin, b.token)
        on_car = 2 * 2 * SESSIONS_PER_TOKEN_AND_CAR  # two tokens' sessions, both subscriptions re-read
        assert rechecker.full == full + on_car
        assert region.live.subscription_count() == total - gone - on_car // 2
        for b in boxes:
            await b.session.close()
        assert region.live.subscription_count() == 0

    run_coroutine(scenario())


@pytest.mark.slow  # provisions three cars (an argon2 hash each)
def test_a_grant_ending_by_time_ends_its_stream_though_no_row_changed(
    region: Region, fleet: tuple[int, list[str]]
) -> None:
    owner_id, vins = fleet
    ends = now_ms() + 1500
    short, _ = region.grants.personal_token(
        owner_id, label="short", vins=vins[:1], signals=[SPEED], live=True, expires_ms=ends
    )
    own, _ = region.accounts.issue(owner_id, "token", label="owner script")

    async def scenario() -> None:
        rechecker = Rechecker(region.db, period_s=3600)
        boxes = [Box(region, vins[0], token, rechecker) for token in (short, own)]
        for b in boxes:
            await b.session.handle(_subscribe(SPEED))
        await rechecker.run_pass(_pairs(boxes))
        await rechecker.run_pass(_pairs(boxes))
        assert rechecker.full == 2 and not any(b.ended() for b in boxes)
        await asyncio.sleep(max(0.0, (ends - now_ms()) / 1000) + 0.05)
        await rechecker.run_pass(_pairs(boxes))
        assert boxes[0].ended() == {"1": "unauthenticated"} and boxes[1].ended() == {}
        assert rechecker.full == 3  # the time, not a changed row, sent it to the full authorisation
        for b in boxes:
            await b.session.close()

    started = time.monotonic()
    run_coroutine(scenario())
    assert time.monotonic() - started < 30


@pytest.mark.slow  # provisions three cars (an argon2 hash each)
def test_a_pass_that_cannot_read_ends_its_streams_rather_than_leave_them_unchecked(
    region: Region, fleet: tuple[int, list[str]], tmp_path: Path
) -> None:
    owner_id, vins = fleet
    own, _ = region.accounts.issue(owner_id, "token", label="owner script")
    unreachable = Database(f"sqlite:///{tmp_path / 'no-such-folder' / 'metadata.db'}")  # cannot be opened

    async def scenario() -> None:
        rechecker = Rechecker(unreachable, period_s=3600)
        boxes = [Box(region, vin, own, rechecker) for vin in vins]
        for b in boxes:
            await b.session.handle(_subscribe(SPEED))
        await rechecker.run_pass(_pairs(boxes))
        assert all(b.ended() == {"1": "unavailable"} for b in boxes), [b.sent for b in boxes]
        assert region.live.subscription_count() == 0

    run_coroutine(scenario())


@pytest.mark.slow  # provisions three cars (an argon2 hash each)
def test_subscribers_of_one_car_share_the_events_text(region: Region, fleet: tuple[int, list[str]]) -> None:
    owner_id, vins = fleet
    own, _ = region.accounts.issue(owner_id, "token", label="owner script")

    async def scenario() -> None:
        rechecker = Rechecker(region.db, period_s=3600)
        boxes = [Box(region, vins[0], own, rechecker) for _ in range(5)] + [Box(region, vins[1], own, rechecker)]
        for b in boxes:
            await b.session.handle(_subscribe(SPEED))
        t = now_ms()
        written = EVENT_TEXTS.written
        for vin, speed in ((vins[0], 1.0), (vins[0], 2.5), (vins[1], 7.0)):
            t += 1000
            await region.live.publish_local(LiveUpdate(vin, t, t, {SPEED: LiveValue(SPEED, t, speed, t)}))
        deadline = time.monotonic() + 5
        while sum(len(b.sent) for b in boxes) < 6 + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        events = [[m for m in b.sent if m.get("action") == "subscription"] for b in boxes]
        # The change filter fires from the second value on: one event for each of the five, none yet on the sixth.
        assert [len(e) for e in events] == [1, 1, 1, 1, 1, 0], events
        assert {json.dumps(e[0]["data"]) for e in events[:5]} == {
            json.dumps({"path": SPEED, "dp": {"value": "2.5", "ts": events[0][0]["data"]["dp"]["ts"]}})
        }
        assert all(e[0]["subscriptionId"] == "1" and e[0]["ts"].endswith("Z") for e in events[:5])
        assert EVENT_TEXTS.written == written + 1  # written once for the five subscribers
        for b in boxes:
            await b.session.close()

    run_coroutine(scenario())
