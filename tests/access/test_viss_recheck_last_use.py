"""A VISS re-check pass ends only what is no longer allowed: a failed bookkeeping write (the streaming tokens'
last use) ends nothing, while the same pass still ends a revoked grant's streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from carvault.access.viss import Rechecker, VissSession
from carvault.provisioning import provision
from carvault.region import Region
from tests.factories import run_coroutine, vin_for

SPEED = "Vehicle.Speed"


def _subscribe(path: str) -> str:
    return json.dumps(
        {
            "action": "subscribe",
            "requestId": path,
            "path": path,
            "filter": {"variant": "change", "parameter": {"logic-op": "ne", "diff": "0"}},
        }
    )


def _session(region: Region, vin: str, token: str, rechecker: Rechecker, sent: list[dict[str, Any]]) -> VissSession:
    async def send(message: dict[str, Any] | bytes) -> None:
        sent.append(json.loads(message) if isinstance(message, bytes) else message)

    return VissSession.of_region(region, vin, send, connection_token=token, rechecker=rechecker)


def _ended(sent: list[dict[str, Any]]) -> dict[str, str]:
    return {m["subscriptionId"]: m["error"]["code"] for m in sent if m.get("action") == "subscription"}


@pytest.mark.slow  # provisions a car (an argon2 hash)
def test_a_failed_last_use_write_ends_no_allowed_stream(region: Region, tmp_path: Path) -> None:
    owner_id = region.accounts.register("last-use@example.com", "correct horse battery").id
    car = provision(region, vin_for(21), tmp_path / "vehicles")
    region.vehicles.claim(owner_id, car.vin, car.pairing_code)
    own, _ = region.accounts.issue(owner_id, "token", label="owner script")
    kept, _ = region.grants.personal_token(owner_id, label="kept", vins=[car.vin], signals=[SPEED], live=True)
    revoked, grant = region.grants.personal_token(owner_id, label="gone", vins=[car.vin], signals=[SPEED], live=True)

    async def scenario() -> None:
        rechecker = Rechecker(region.db, period_s=3600)  # passes run by hand
        sent = {token: [] for token in (own, kept, revoked)}
        sessions = {token: _session(region, car.vin, token, rechecker, sent[token]) for token in sent}
        for s in sessions.values():
            await s.handle(_subscribe(SPEED))
        pairs = [(s, sub) for s in sessions.values() for sub in s.subscriptions.values()]
        await rechecker.run_pass(pairs)
        assert not any(_ended(m) for m in sent.values())
        # Every token's last use is due to be written, and the database refuses that write (a real refusal:
        # a trigger), while reads go on.
        with region.db.engine.begin() as conn:
            conn.execute(text("UPDATE credentials SET last_used_ms = 0"))
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_last_use BEFORE UPDATE OF last_used_ms ON credentials "
                    "BEGIN SELECT RAISE(ABORT, 'last use not writable'); END"
                )
            )
        region.grants.revoke(owner_id, grant.id)
        pairs = [(s, sub) for s in sessions.values() for sub in list(s.subscriptions.values())]
        await rechecker.run_pass(pairs)
        assert _ended(sent[revoked]) == {"1": "unauthenticated"}
        assert _ended(sent[own]) == {} and _ended(sent[kept]) == {}
        assert region.live.subscription_count() == 2
        for s in sessions.values():
            await s.close()

    run_coroutine(scenario())
