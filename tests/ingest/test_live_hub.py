"""The region's live hub: last-value store, subscriptions and in-process fan-out."""

from __future__ import annotations

import asyncio

from carvault.ingest.live import LiveHub, LiveUpdate, LiveValue
from tests.factories import run_coroutine

VIN = "LRWTEST0000000001"


def _update(seq: int, speed: float, t_ms: int) -> LiveUpdate:
    path = "Vehicle.Speed"
    return LiveUpdate(VIN, seq, t_ms, {path: LiveValue(path, t_ms, speed, t_ms + 5)})


def test_subscriber_receives_updates_and_latest_is_current() -> None:
    async def run() -> None:
        hub = LiveHub()
        assert hub.latest(VIN) == {} and hub.last_seen_ms(VIN) is None
        sub = hub.subscribe(VIN)
        other = hub.subscribe("WVWTEST0000000002")
        got: list[LiveUpdate] = []

        async def read() -> None:
            async for u in sub:
                got.append(u)
                if len(got) == 2:
                    return

        reader = asyncio.create_task(read())
        await hub.publish_local(_update(1, 10.0, 1000))
        await hub.publish_local(_update(2, 12.5, 2000))
        await asyncio.wait_for(reader, 2)
        assert [u.seq for u in got] == [1, 2]
        assert got[1].values["Vehicle.Speed"].value == 12.5
        assert hub.latest(VIN)["Vehicle.Speed"].value == 12.5
        assert hub.last_seen_ms(VIN) == 2005
        assert other._queue.empty()  # another vehicle's subscriber saw nothing
        # An older frame arriving late never overwrites a newer value.
        await hub.publish_local(_update(3, 1.0, 500))
        assert hub.latest(VIN)["Vehicle.Speed"].value == 12.5
        await hub.close()

    run_coroutine(run())


def test_close_ends_a_waiting_iteration() -> None:
    async def run() -> None:
        hub = LiveHub()
        sub = hub.subscribe(VIN)

        async def read() -> list[LiveUpdate]:
            return [u async for u in sub]

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        await sub.close()
        assert await asyncio.wait_for(reader, 2) == []
        await hub.publish_local(_update(1, 3.0, 1000))  # no subscriber left: nothing breaks
        assert hub.latest(VIN)["Vehicle.Speed"].value == 3.0

    run_coroutine(run())


def test_update_round_trips_through_broker_bytes() -> None:
    u = LiveUpdate(VIN, 7, 99, {"A.B": LiveValue("A.B", 99, True, 100), "C": LiveValue("C", 98, "P", 100)})
    assert LiveUpdate.from_bytes(u.to_bytes()) == u
