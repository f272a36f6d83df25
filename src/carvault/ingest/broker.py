"""Live fan-out brokers: one small interface, chosen by the ``live_broker`` setting.

Every replica of a region publishes each accepted live frame to the broker and receives every frame that any
replica published (its own included), so subscribers and the last-value store on every replica see the same
stream. Backends: ``memory`` (one process, the embedded default), ``nats://host:port`` (a NATS server, e.g.
Debian's ``nats-server``) and ``postgres`` (LISTEN/NOTIFY on the region's PostgreSQL metadata database).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from carvault.errors import Unavailable

# Called with each message the broker delivers (from any replica); must not block.
Deliver = Callable[[bytes], None]

SUBJECT = "carvault.live"  # NATS subject / PostgreSQL channel prefix; the region name is appended


class Broker(ABC):
    """Publish live updates to every replica of one region and deliver theirs to us."""

    @abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect and start delivering every published message to ``deliver`` (idempotent)."""

    @abstractmethod
    async def publish(self, message: bytes) -> None:
        """Send one message to every replica (this one included)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; later publishes fail with Unavailable until started again."""


class MemoryBroker(Broker):
    """The in-process broker: delivery is a direct call (one replica only)."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Remember where to deliver."""
        self._deliver = deliver

    async def publish(self, message: bytes) -> None:
        """Deliver straight back to this process."""
        if self._deliver is None:
            raise Unavailable("the live broker is not started")
        self._deliver(message)

    async def close(self) -> None:
        """Forget the delivery target."""
        self._deliver = None


def broker_of(setting: str, region: str, database_url: str) -> Broker:
    """The broker named by the ``live_broker`` setting; fails clearly when it cannot be used here."""
    if setting in ("", "memory"):
        return MemoryBroker()
    raise ValueError(f"live_broker {setting!r} is not one of: memory, nats://host:port, postgres")
