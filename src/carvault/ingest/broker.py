"""Live fan-out brokers: one small interface, chosen by the ``live_broker`` setting.

Every replica of a region publishes each accepted live frame to the broker and receives every frame that any
replica published (its own included), so subscribers and the last-value store on every replica see the same
stream. Backends: ``memory`` (one process, the embedded default), ``nats://host:port`` (a NATS server, e.g.
Debian's ``nats-server``) and ``postgres`` (LISTEN/NOTIFY on the region's PostgreSQL metadata database).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

from carvault.errors import Unavailable

# Called with each message the broker delivers (from any replica); must not block.
Deliver = Callable[[bytes], None]

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@")  # user:password@ in a URL


def without_passwords(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:password@host``) replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


SUBJECT = "carvault.live"  # NATS subject prefix; the region name is appended
RECONNECTS = 10  # NATS reconnect attempts (one a second) before the client gives up


class Broker(ABC):
    """Publish live updates to every replica of one region and deliver theirs to us."""

    max_message = 256 * 1024  # bytes a published message may carry (updates are batched up to it)

    @abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect and start delivering every published message to ``deliver`` (idempotent)."""

    @abstractmethod
    async def publish(self, message: bytes) -> None:
        """Send one message to every replica (this one included)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; later publishes fail with Unavailable until started again."""

    @abstractmethod
    def healthy(self) -> bool:
        """Whether the broker is connected now (readiness, web/routes/health.py)."""


class MemoryBroker(Broker):
    """The in-process broker: delivery is a direct call (one replica only)."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Remember where to deliver."""
        self._deliver = deliver

    def healthy(self) -> bool:
        """Started: delivery is a call."""
        return self._deliver is not None

    async def publish(self, message: bytes) -> None:
        """Deliver straight back to this process."""
        if self._deliver is None:
            raise Unavailable("the live broker is not started")
        self._deliver(message)

    async def close(self) -> None:
        """Forget the delivery target."""
        self._deliver = None


class NatsBroker(Broker):
    """A NATS server (core publish/subscribe, no persistence): every replica subscribes to the region's subject."""

    def __init__(self, url: str, region: str) -> None:
        self.url = url
        self.subject = f"{SUBJECT}.{region}"
        self._nc: Any = None
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Connect and subscribe; ``Unavailable`` if the server cannot be reached."""
        if self._nc is not None:
            return
        import nats  # the NATS client is needed only by deployments that choose it
        from nats.errors import Error as NatsError

        async def on_message(msg: Any) -> None:
            deliver(msg.data)

        self._deliver = deliver
        try:
            # Reconnects for a while after an outage; after that the next publish connects afresh (``publish``).
            # Not forever: the client would then retry an unreachable first connection forever too.
            self._nc = await nats.connect(
                self.url, connect_timeout=2, max_reconnect_attempts=RECONNECTS, reconnect_time_wait=1
            )
            await self._nc.subscribe(self.subject, cb=on_message)
            await self._nc.flush()  # the subscription is registered at the server before start returns
        except (NatsError, OSError, TimeoutError) as e:
            self._nc = None
            where = without_passwords(self.url)  # cars read this message: never the broker's password
            raise Unavailable(f"the live broker at {where} cannot be reached: {e or type(e).__name__}") from None

    async def publish(self, message: bytes) -> None:
        """Publish on the region's subject (buffered by the client while reconnecting)."""
        if self._nc is not None and self._nc.is_closed:
            self._nc = None  # gave up reconnecting: connect afresh
        if self._nc is None:
            if self._deliver is None:
                raise Unavailable("the live broker is not started")
            await self.start(self._deliver)
        from nats.errors import Error as NatsError

        try:
            await self._nc.publish(self.subject, message)
        except NatsError as e:
            raise Unavailable(f"the live broker refused a message: {e}") from None

    def healthy(self) -> bool:
        """Connected to the NATS server right now."""
        nc = self._nc
        return nc is not None and bool(nc.is_connected)

    async def close(self) -> None:
        """Disconnect."""
        nc, self._nc, self._deliver = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):  # the server may be gone already; closing must not fail
                await nc.close()


class PostgresBroker(Broker):
    """LISTEN/NOTIFY on the region's PostgreSQL metadata database: no extra service to run."""

    MAX_PAYLOAD = 7900  # NOTIFY payloads must stay under 8000 bytes
    max_message = MAX_PAYLOAD

    def __init__(self, database_url: str, region: str) -> None:
        url = make_url(database_url)
        if not url.drivername.startswith("postgresql"):
            raise ValueError("live_broker postgres needs a PostgreSQL database_url")
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.channel = f"carvault_live_{region}"
        self._listen: Any = None
        self._send: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        """Open a listening and a sending connection; ``Unavailable`` if the database cannot be reached."""
        if self._listen is not None:
            return
        import psycopg

        try:
            self._listen = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            self._send = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            await self._listen.execute(f'LISTEN "{self.channel}"')
        except psycopg.Error as e:
            await self.close()
            raise Unavailable(f"the live broker (PostgreSQL LISTEN) is unavailable: {e}") from None

        async def pump(conn: Any) -> None:
            with contextlib.suppress(psycopg.Error, asyncio.CancelledError):
                async for note in conn.notifies():
                    deliver(note.payload.encode())

        self._task = asyncio.get_running_loop().create_task(pump(self._listen))

    async def publish(self, message: bytes) -> None:
        """NOTIFY every listening replica (delivered when the sending transaction commits: at once, autocommit)."""
        if self._send is None:
            raise Unavailable("the live broker is not started")
        if len(message) > self.MAX_PAYLOAD:
            raise Unavailable(f"a live update of {len(message)} bytes exceeds PostgreSQL's NOTIFY payload limit")
        import psycopg

        try:
            await self._send.execute("SELECT pg_notify(%s, %s)", (self.channel, message.decode()))
        except psycopg.Error as e:
            raise Unavailable(f"the live broker (PostgreSQL NOTIFY) failed: {e}") from None

    def healthy(self) -> bool:
        """Both connections (listening and sending) open."""
        return all(c is not None and not c.closed for c in (self._listen, self._send))

    async def close(self) -> None:
        """Stop listening and close both connections."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for conn in (self._listen, self._send):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._listen = self._send = None


def broker_of(setting: str, region: str, database_url: str) -> Broker:
    """The broker named by the ``live_broker`` setting; ``ValueError`` when it cannot be used here."""
    if setting in ("", "memory"):
        return MemoryBroker()
    if setting.startswith(("nats://", "tls://")):
        return NatsBroker(setting, region)
    if setting == "postgres":
        return PostgresBroker(database_url, region)
    raise ValueError(f"live_broker {setting!r} is not one of: memory, nats://host:port, postgres")
