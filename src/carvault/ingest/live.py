"""The region's live side: the last-value store, subscriptions and fan-out of accepted live frames (issue 10).

``LiveHub`` is the one object the car channel (``web/routes/live.py``) and the subscriber side (VISS) meet at:
the car channel calls ``publish_local`` after accepting a frame; the hub sends it through the broker to every
replica; each replica's hub updates its last-value store and hands the update to its subscribers of that VIN.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from carvault.ingest.broker import Broker, MemoryBroker

Scalar = bool | int | float | str | None

# A slow subscriber loses its oldest updates rather than holding memory without bound (live data is perishable).
SUBSCRIPTION_QUEUE = 256


@dataclass(frozen=True)
class LiveValue:
    """One signal's value as streamed: the car's sample time and when the region accepted it."""

    path: str
    t_ms: int
    value: Scalar
    received_ms: int


@dataclass(frozen=True)
class LiveUpdate:
    """One accepted live frame, as subscribers see it (only the signals in that frame)."""

    vin: str
    seq: int
    t_ms: int
    values: dict[str, LiveValue]

    def to_bytes(self) -> bytes:
        """The broker message (compact JSON)."""
        doc = {
            "vin": self.vin,
            "seq": self.seq,
            "t_ms": self.t_ms,
            "values": [[v.path, v.t_ms, v.value, v.received_ms] for v in self.values.values()],
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LiveUpdate:
        """Read a broker message written by ``to_bytes``."""
        doc: dict[str, Any] = json.loads(data)
        values = {p: LiveValue(str(p), int(t), v, int(r)) for p, t, v, r in doc["values"]}
        return cls(str(doc["vin"]), int(doc["seq"]), int(doc["t_ms"]), values)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class LiveSubscription:
    """An async iterator of the updates of one vehicle accepted after it was made; ``close()`` ends it."""

    def __init__(self, hub: LiveHub, vin: str) -> None:
        self.vin = vin
        self._hub = hub
        self._queue: asyncio.Queue[LiveUpdate | None] = asyncio.Queue(SUBSCRIPTION_QUEUE)
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.closed = False
        self.dropped = 0  # updates lost because the subscriber did not keep up

    def _offer(self, update: LiveUpdate | None) -> None:
        """Queue an update from whatever thread the broker delivers on."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(update)
        else:
            loop.call_soon_threadsafe(self._put, update)

    def _put(self, update: LiveUpdate | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(update)

    def __aiter__(self) -> AsyncIterator[LiveUpdate]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LiveUpdate]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        await self._hub.start()
        while not self.closed:
            update = await self._queue.get()
            if update is None:
                return
            yield update

    async def close(self) -> None:
        """Stop receiving; a waiting iteration ends."""
        if self.closed:
            return
        self.closed = True
        self._hub._unsubscribe(self)
        self._offer(None)


class LiveHub:
    """The last-value store and subscriptions of one replica, fed through the broker."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, LiveValue]] = {}
        self._seen: dict[str, int] = {}
        self._subs: dict[str, set[LiveSubscription]] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    async def start(self) -> None:
        """Connect to the broker (once); called lazily by publish and subscribe, or by the server at start."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await self.broker.start(self._deliver)
                self._started = True

    async def close(self) -> None:
        """End every subscription and disconnect from the broker."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for s in subs:
            await s.close()
        if self._started:
            await self.broker.close()
            self._started = False

    def latest(self, vin: str) -> dict[str, LiveValue]:
        """The last value of every streamed signal of a vehicle (a copy)."""
        with self._lock:
            return dict(self._latest.get(vin, {}))

    def last_seen_ms(self, vin: str) -> int | None:
        """When the region last accepted a frame from the car, or None if never (since this store began)."""
        with self._lock:
            return self._seen.get(vin)

    def subscribe(self, vin: str) -> LiveSubscription:
        """Start receiving the vehicle's accepted frames from now on."""
        sub = LiveSubscription(self, vin)
        with self._lock:
            self._subs.setdefault(vin, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: LiveSubscription) -> None:
        with self._lock:
            group = self._subs.get(sub.vin)
            if group is not None:
                group.discard(sub)
                if not group:
                    del self._subs[sub.vin]

    async def publish_local(self, update: LiveUpdate) -> None:
        """Fan an accepted frame out to every replica (this one included) through the broker."""
        await self.start()
        await self.broker.publish(update.to_bytes())

    def _deliver(self, message: bytes) -> None:
        """A message from the broker: update the last-value store, then hand it to the VIN's subscribers."""
        try:
            update = LiveUpdate.from_bytes(message)
        except (ValueError, KeyError, TypeError):
            return  # not ours (a foreign publisher on the subject); never stop the stream for it
        self.apply(update)

    def apply(self, update: LiveUpdate) -> None:
        """Record an update in the last-value store and give it to subscribers (no broker)."""
        with self._lock:
            latest = self._latest.setdefault(update.vin, {})
            for path, value in update.values.items():
                old = latest.get(path)
                if old is None or old.t_ms <= value.t_ms:
                    latest[path] = value
            received = max((v.received_ms for v in update.values.values()), default=now_ms())
            self._seen[update.vin] = max(self._seen.get(update.vin, 0), received)
            subs = list(self._subs.get(update.vin, ()))
        for sub in subs:
            sub._offer(update)
