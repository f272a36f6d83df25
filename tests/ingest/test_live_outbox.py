"""Updates accepted in the same turn of the event loop reach the broker as one message (``LiveHub``)."""

from __future__ import annotations

import asyncio

import pytest

from carvault.errors import Unavailable
from carvault.ingest.broker import MemoryBroker
from carvault.ingest.live import LiveHub, LiveUpdate, LiveValue, decode_message, encode_message
from tests.factories import run_coroutine

SPEED = "Vehicle.Speed"


def _update(n: int) -> LiveUpdate:
    vin = f"LRWTEST{n:010d}"
    return LiveUpdate(vin, 1, 1000 + n, {SPEED: LiveValue(SPEED, 1000 + n, float(n), 2000 + n)})


class CountingBroker(MemoryBroker):
    """The in-process broker, remembering each message it carried."""

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self.max_message = max_message
        self.messages: list[bytes] = []

    async def publish(self, message: bytes) -> None:
        self.messages.append(message)
        await super().publish(message)


def test_updates_of_one_turn_share_messages_within_the_brokers_size() -> None:
    async def run() -> None:
        broker = CountingBroker(max_message=1000)
        hub = LiveHub(broker)
        subs = [hub.subscribe(_update(n).vin) for n in range(40)]
        await asyncio.gather(*(hub.publish_local(_update(n)) for n in range(40)))
        assert 1 < len(broker.messages) < 40 and all(len(m) <= 1000 for m in broker.messages)
        assert [u.vin for m in broker.messages for u in decode_message(m)] == [_update(n).vin for n in range(40)]
        for n, sub in enumerate(subs):  # every subscriber got its vehicle's update
            assert sub._queue.get_nowait().values[SPEED].value == float(n)
            await sub.close()
        await hub.publish_local(_update(99))  # alone in its turn: a message of its own
        assert len(decode_message(broker.messages[-1])) == 1
        await hub.close()

    run_coroutine(run())


def test_a_single_update_message_of_an_older_replica_is_still_read() -> None:
    u = _update(7)
    assert decode_message(u.to_bytes()) == [u]
    assert decode_message(encode_message([u.to_bytes(), _update(8).to_bytes()])) == [u, _update(8)]


def test_every_publisher_of_a_failed_message_hears_of_it() -> None:
    async def run() -> None:
        hub = LiveHub(MemoryBroker())
        await hub.start()
        await hub.broker.close()  # the broker is gone: publishing fails
        results = await asyncio.gather(*(hub.publish_local(_update(n)) for n in range(3)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)

    run_coroutine(run())


def test_garbage_on_the_subject_is_ignored() -> None:
    hub = LiveHub()
    for message in (b"[1, 2]", b"not json", b'{"vin": 1}', b"[]"):
        hub._deliver(message)
    with pytest.raises(ValueError):
        decode_message(b"not json")
