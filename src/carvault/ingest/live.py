"""The region's live side: the last-value store, subscriptions and fan-out of accepted live frames (issue 10).

``LiveHub`` is the one object the car channel (``web/routes/live.py``) and the subscriber side (VISS) meet at:
the car channel calls ``publish_local`` after accepting a frame; the hub sends it through the broker to every
replica; each replica's hub updates its last-value store and hands the update to its subscribers of that VIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from carvault.compliance.consent import Policy, check_batch
from carvault.errors import (
    LiveRootMismatch,
    TimestampOutOfSpan,
    Unauthenticated,
    UnknownSignal,
    UnknownVehicle,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.ingest.broker import Broker, MemoryBroker
from carvault.ingest.gateway import Gateway
from carvault.ingest.validation import validate_payload
from carvault.ledger.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from carvault.location import LAT, LON
from carvault.protocol.columns import TIME_TYPE
from carvault.protocol.envelope import EARLIEST_MS, GENESIS_PREV, BatchHeader
from carvault.protocol.live import LiveFrame, decode_frame
from carvault.signals import Catalogue
from carvault.store.metadata import ConsentRecord, Database, Vehicle

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
    frame_hash: bytes | None = None  # SHA-256 of the signed frame: every replica can check a batch's live_root

    def to_bytes(self) -> bytes:
        """The update as compact JSON (a broker message carries one, or an array of them: ``decode_message``)."""
        doc = {
            "vin": self.vin,
            "seq": self.seq,
            "t_ms": self.t_ms,
            "values": [[v.path, v.t_ms, v.value, v.received_ms] for v in self.values.values()],
        }
        if self.frame_hash is not None:
            doc["hash"] = self.frame_hash.hex()
        return orjson.dumps(doc)  # values are checked finite before (a frame with NaN is refused)

    @classmethod
    def from_bytes(cls, data: bytes) -> LiveUpdate:
        """Read a broker message written by ``to_bytes``."""
        return cls.from_doc(orjson.loads(data))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LiveUpdate:
        """An update from its parsed JSON object."""
        values = {p: LiveValue(str(p), int(t), v, int(r)) for p, t, v, r in doc["values"]}
        digest = bytes.fromhex(doc["hash"]) if "hash" in doc else None
        return cls(str(doc["vin"]), int(doc["seq"]), int(doc["t_ms"]), values, digest)


def encode_message(updates: list[bytes]) -> bytes:
    """One broker message carrying several updates (each ``LiveUpdate.to_bytes``): a JSON array."""
    return b"[" + b",".join(updates) + b"]"


def decode_message(message: bytes) -> list[LiveUpdate]:
    """The updates of a broker message: an array of them, or one (as replicas before batching sent)."""
    doc = orjson.loads(message)
    return [LiveUpdate.from_doc(d) for d in doc] if isinstance(doc, list) else [LiveUpdate.from_doc(doc)]


_TABLES = MetaData()
# The last-value store shared by the replicas (and kept over a restart): one row per streaming vehicle, its newest
# value of every streamed signal as JSON, written at most once a second by the replica that accepted the frames.
LAST_VALUES = Table(
    "live_last_values",
    _TABLES,
    Column("vin", String(17), primary_key=True),
    Column("values_json", Text, nullable=False),
    Column("seen_ms", BigInteger, nullable=False),
)
FLUSH_S = 1.0


class LastValueStore:
    """The ``live_last_values`` table in the region's metadata database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        _TABLES.create_all(db.engine, tables=[LAST_VALUES])

    def load(self, vin: str) -> tuple[dict[str, LiveValue], int] | None:
        """A vehicle's stored last values and last-seen time, if any."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(LAST_VALUES.c.values_json, LAST_VALUES.c.seen_ms).where(LAST_VALUES.c.vin == vin)
            ).first()
        if row is None:
            return None
        values = {p: LiveValue(p, int(t), v, int(r)) for p, t, v, r in json.loads(row.values_json)}
        return values, int(row.seen_ms)

    def save(self, rows: dict[str, tuple[dict[str, LiveValue], int]]) -> None:
        """Write vehicles' last values (newest wins per row: a row only moves forward in ``seen_ms``)."""
        if not rows:
            return
        params = [
            {
                "vin": vin,
                "values_json": orjson.dumps(
                    [[v.path, v.t_ms, v.value, v.received_ms] for v in values.values()]
                ).decode(),
                "seen_ms": seen,
            }
            for vin, (values, seen) in rows.items()
        ]
        dialect = self.db.engine.dialect.name
        insert_ = sqlite_insert if dialect == "sqlite" else pg_insert
        stmt = insert_(LAST_VALUES)
        stmt = stmt.on_conflict_do_update(
            index_elements=[LAST_VALUES.c.vin],
            set_={"values_json": stmt.excluded.values_json, "seen_ms": stmt.excluded.seen_ms},
            where=LAST_VALUES.c.seen_ms <= stmt.excluded.seen_ms,
        )
        with self.db.engine.begin() as conn:
            conn.execute(stmt, params)


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

    def __init__(self, broker: Broker | None = None, store: LastValueStore | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self.store = store
        # Per signal path, the time before which values are past their retention period (compliance/retention.py).
        self.withheld: Callable[[], Mapping[str, int]] | None = None
        self._loaded: set[str] = set()  # vehicles whose stored last values were merged in
        self._dirty: set[str] = set()  # vehicles with frames accepted here and not yet written to the store
        self._flusher: asyncio.Task[None] | None = None
        # Frame hashes of every replica's accepted frames, fed by the broker (set by LiveChannel).
        self.evidence: LiveEvidence | None = None
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, LiveValue]] = {}
        self._seen: dict[str, int] = {}
        self._subs: dict[str, set[LiveSubscription]] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        # Updates accepted during one turn of the event loop go to the broker as one message (per-message broker
        # work is most of the fan-out's cost); each publisher waits for its message to be sent.
        self._outbox: list[tuple[bytes, asyncio.Future[None]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps only weak ones)
        self.messages_published = 0

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
                if self.store is not None:
                    self._flusher = asyncio.get_running_loop().create_task(self._flush_every(FLUSH_S))

    async def close(self) -> None:
        """End every subscription and disconnect from the broker."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for s in subs:
            await s.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
            await asyncio.to_thread(self.flush)
        if self._started:
            await self.broker.close()
            self._started = False

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(self.flush)
            except SQLAlchemyError:
                continue  # the database is away for a moment: the values stay dirty and go with the next flush

    def flush(self) -> None:
        """Write the last values of vehicles that streamed here since the previous flush to the shared store."""
        if self.store is None:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rows = {v: (dict(self._latest.get(v, {})), self._seen.get(v, 0)) for v in dirty}
        try:
            self.store.save(rows)
        except SQLAlchemyError:
            with self._lock:
                self._dirty |= dirty
            raise

    def _merge_stored(self, vin: str) -> None:
        """Once per vehicle: merge in the last values other replicas (or an earlier run) stored."""
        if self.store is None or vin in self._loaded:
            return
        try:
            stored = self.store.load(vin)
        except SQLAlchemyError:
            return  # try again on the next read
        with self._lock:
            self._loaded.add(vin)
            if stored is None:
                return
            values, seen = stored
            latest = self._latest.setdefault(vin, {})
            for path, value in values.items():
                old = latest.get(path)
                if old is None or old.t_ms < value.t_ms:
                    latest[path] = value
            self._seen[vin] = max(self._seen.get(vin, 0), seen)

    def latest(self, vin: str) -> dict[str, LiveValue]:
        """The last value of every streamed signal of a vehicle (a copy)."""
        self._merge_stored(vin)
        with self._lock:
            values = dict(self._latest.get(vin, {}))
        cutoffs = self.withheld() if self.withheld is not None else {}
        return {p: v for p, v in values.items() if v.t_ms >= cutoffs.get(p, v.t_ms)} if cutoffs else values

    def last_seen_ms(self, vin: str) -> int | None:
        """When the region last accepted a frame from the car, or None if never."""
        self._merge_stored(vin)
        with self._lock:
            return self._seen.get(vin)

    def subscription_count(self) -> int:
        """Subscriptions open on this replica."""
        with self._lock:
            return sum(len(subs) for subs in self._subs.values())

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
        """Fan an accepted frame out to every replica (this one included) through the broker.

        Returns once the broker took the message carrying it (``Unavailable`` if it could not); updates published
        in the same turn of the event loop share one message.
        """
        await self.start()
        with self._lock:
            self._dirty.add(update.vin)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._outbox.append((update.to_bytes(), done))
        if len(self._outbox) == 1:
            loop.call_soon(self._send_soon, loop)
        await done

    def _send_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._send_outbox())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_outbox(self) -> None:
        """Send the waiting updates, as few messages as the broker's message size allows."""
        waiting, self._outbox = self._outbox, []
        limit = self.broker.max_message
        start = 0
        while start < len(waiting):
            end, size = start, 2
            while end < len(waiting) and (end == start or size + len(waiting[end][0]) + 1 <= limit):
                size += len(waiting[end][0]) + 1
                end += 1
            part = waiting[start:end]
            try:
                await self.broker.publish(encode_message([body for body, _ in part]))
                self.messages_published += 1
            except Exception as e:  # noqa: BLE001 - every waiting publisher learns of the failure (Unavailable)
                for _, done in part:
                    if not done.done():
                        done.set_exception(e)
            else:
                for _, done in part:
                    if not done.done():
                        done.set_result(None)
            start = end

    def _deliver(self, message: bytes) -> None:
        """A message from the broker: update the last-value store, then hand it to the VINs' subscribers."""
        try:
            updates = decode_message(message)
        except (ValueError, KeyError, TypeError):
            return  # not ours (a foreign publisher on the subject); never stop the stream for it
        for update in updates:
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
            if self.evidence is not None and update.frame_hash is not None:
                self.evidence.add(update.vin, update.seq, update.frame_hash, received)
            self._seen[update.vin] = max(self._seen.get(update.vin, 0), received)
            subs = list(self._subs.get(update.vin, ()))
        for sub in subs:
            sub._offer(update)


# ---------------------------------------------------------------------------------------------- the car channel
POLICY_TTL_MS = 1000  # a consent stop reaches live frames within a second (a batch reads it afresh each time)
POLICY_CHUNK = 500  # vehicles per read of the streaming cars' policies
_V = Vehicle.__table__
_C = ConsentRecord.__table__
# What a live frame's checks need of the database, for many streaming cars in one read: the ignition counter and
# which consent decisions are on record (append-only rows: their count and newest id name the policy exactly, as
# the gateway's batch head read says).
_LIVE_HEADS = (
    select(
        _V.c.vin,
        _V.c.ignition_cycle,
        _V.c.ignition_seen_ms,
        func.count(_C.c.id).label("decisions"),
        func.max(_C.c.id).label("newest"),
    )
    .select_from(_V.outerjoin(_C, _C.c.vin == _V.c.vin))
    .where(_V.c.vin.in_(bindparam("vins", expanding=True)))
    .group_by(_V.c.vin, _V.c.ignition_cycle, _V.c.ignition_seen_ms)
)
EVIDENCE_TTL_MS = 30 * 60 * 1000  # frame hashes kept for root checks and proofs: 5-minute batches, late uploads
HASH_LEN = 32
_TAGS = {bool: "boolean", int: "integer", float: "float", str: "string"}


def _family(datatype: str) -> type:
    """The value kind a catalogue datatype takes in a frame."""
    if datatype == "boolean":
        return bool
    if datatype in ("float", "double"):
        return float
    if datatype == "string":
        return str
    return int


def frame_table(frame: LiveFrame, catalogue: Catalogue) -> pa.Table:
    """A frame as a one-row batch table, typed by the catalogue, so it meets the batch checks unchanged."""
    columns: list[pa.Array] = [pa.array([frame.t_ms], type=TIME_TYPE)]  # epoch ms straight in (no cast)
    names = ["t"]
    for path in sorted(frame.values):
        value = frame.values[path]
        sig = catalogue.get(path)
        if sig is None:
            raise UnknownSignal(f"signal {path!r} is not in the catalogue; unclassified data is refused", signal=path)
        if type(value) is not _family(sig.datatype):
            raise WrongSignalType(
                f"signal {path} must be {sig.datatype}, the frame carries a {_TAGS[type(value)]}",
                signal=path,
                expected=sig.datatype,
                got=_TAGS[type(value)],
            )
        try:
            columns.append(pa.array([value], type=sig.arrow_type))
        except (pa.ArrowInvalid, OverflowError):
            raise ValueOutOfRange(f"signal {path} value {value!r} does not fit {sig.datatype}", signal=path) from None
        names.append(path)
    return pa.Table.from_arrays(columns, names=names)


class _Run:
    """Hashes of consecutive counters, packed: 32 bytes a frame."""

    __slots__ = ("first", "hashes", "received_ms")

    def __init__(self, first: int) -> None:
        self.first = first
        self.hashes = bytearray()
        self.received_ms = 0

    @property
    def end(self) -> int:
        return self.first + len(self.hashes) // HASH_LEN


class LiveEvidence:
    """The hashes of the frames the region's replicas accepted, per vehicle, kept for a limited time (not evidence).

    They let the region check a batch's ``live_root`` against the frames it received and hand out a frame's
    inclusion path while it keeps them: 32 bytes a frame, in runs of consecutive counters of at most ``RUN``
    frames, a run dropped whole once its newest frame is older than ``ttl_ms`` (a streaming car: 30 min at 1 Hz
    is 1,800 frames, 58 KB).
    """

    RUN = 256

    def __init__(self, ttl_ms: int = EVIDENCE_TTL_MS) -> None:
        self.ttl_ms = ttl_ms
        self._lock = threading.Lock()
        self._runs: dict[str, list[_Run]] = {}

    def add(self, vin: str, counter: int, frame_hash: bytes, received_ms: int) -> None:
        """Keep one accepted frame's hash (counters arrive increasing); drop this vehicle's expired runs."""
        with self._lock:
            runs = self._runs.setdefault(vin, [])
            if runs and counter < runs[-1].end:
                return  # a counter already kept (a replayed frame): runs stay in counter order
            if not runs or runs[-1].end != counter or len(runs[-1].hashes) >= self.RUN * HASH_LEN:
                runs.append(_Run(counter))
            run = runs[-1]
            run.hashes += frame_hash
            run.received_ms = received_ms
            while runs and runs[0].received_ms < received_ms - self.ttl_ms:
                runs.pop(0)

    def hashes(self, vin: str, first: int, last: int) -> list[bytes] | None:
        """The frame hashes of ``first..last`` in counter order, or None when any of them was not received."""
        out: list[bytes] = []
        want = first
        with self._lock:
            for run in self._runs.get(vin, ()):
                if run.end <= want or run.first > want:
                    if run.first > want:
                        return None
                    continue
                stop = min(run.end, last + 1)
                raw = run.hashes[(want - run.first) * HASH_LEN : (stop - run.first) * HASH_LEN]
                out += [bytes(raw[i : i + HASH_LEN]) for i in range(0, len(raw), HASH_LEN)]
                want = stop
                if want > last:
                    return out
        return None

    def check_root(self, header: BatchHeader) -> None:
        """A batch's ``live_root`` must match the frames received for its range when all of them were received.

        The car is the authority for its own frames: when the region missed any frame of the range (the car was
        offline, a frame was refused or dropped) it cannot recompute the root and accepts the car's.
        """
        if header.live_first is None or header.live_last is None or header.live_root is None:
            return
        hashes = self.hashes(header.vin, header.live_first, header.live_last)
        if hashes is None:
            return
        root = root_from_leaf_hashes([leaf_hash(h) for h in hashes]).hex()
        if root != header.live_root:
            raise LiveRootMismatch(
                f"live_root does not match the {len(hashes)} live frames {header.live_first}..{header.live_last} "
                "the region received and the car signed",
                expected=root,
                got=header.live_root,
            )

    def proof(self, vin: str, counter: int, first: int, last: int) -> list[bytes] | None:
        """The inclusion path of frame ``counter`` in the tree of ``first..last``, if every hash is still kept."""
        hashes = self.hashes(vin, first, last)
        if hashes is None or not first <= counter <= last:
            return None
        return inclusion_proof([leaf_hash(h) for h in hashes], counter - first, len(hashes))


class LiveChannel:
    """Checks a car's live frames exactly as the gateway checks a batch, then hands them to the hub."""

    def __init__(
        self, gateway: Gateway, catalogue: Catalogue, hub: LiveHub, evidence: LiveEvidence | None = None
    ) -> None:
        self.gateway = gateway
        self.catalogue = catalogue
        self.hub = hub
        self.evidence = evidence or LiveEvidence()
        hub.evidence = self.evidence  # fed through the broker: a batch may arrive at another replica than its frames
        self._last: dict[str, int] = {}  # vin -> highest counter accepted here
        self._open: dict[str, int] = {}  # vin -> live channels open to this replica (``opened``/``closed``)
        self._policies: dict[str, tuple[int, Policy, tuple[int | None, int | None]]] = {}
        self._used: dict[str, int] = {}  # vin -> when a frame last needed its policy
        self._refresh = threading.Lock()
        self.policy_reads = 0  # reads of streaming cars' policies (each for up to POLICY_CHUNK cars)

    def admit(self, vin: str) -> None:
        """A car may stream here only if it lives here (``WrongRegion`` / ``UnknownVehicle`` otherwise)."""
        self.gateway.residency.admit(vin)
        self.gateway.vehicle_key(vin)

    @property
    def connections(self) -> int:
        """Cars with a live channel open to this replica (the ``carvault_live_cars`` gauge)."""
        return sum(self._open.values())

    def opened(self, vin: str) -> None:
        """A channel of ``vin`` opened here: its policy is read with the other streaming cars' from now on.

        So when many cars start streaming at once (a replica restarts, every car reconnects), the first frame's read
        takes the policies of all connected cars, instead of one read per car in the first second, each hopping to
        a thread: a burst of database reads that queued every frame behind it.
        """
        self._open[vin] = self._open.get(vin, 0) + 1

    def closed(self, vin: str) -> None:
        """A channel of ``vin`` closed here."""
        left = self._open.get(vin, 0) - 1
        if left > 0:
            self._open[vin] = left
            return
        self._open.pop(vin, None)
        self._used.pop(vin, None)  # its stream ended here (no frame of it is being checked: the route awaits each)
        self._policies.pop(vin, None)

    def _policy(self, vin: str, at_ms: int) -> tuple[Policy, tuple[int | None, int | None]]:
        """The car's consent policy and ignition counter, read less than ``POLICY_TTL_MS`` ago.

        One read renews them for this car and every car that streamed here lately and is past half that age, so a
        replica with many streaming cars reads their policies a few times a second in all, not once a car.
        """
        self._used[vin] = at_ms
        kept = self._policies.get(vin)
        if kept is not None and at_ms - kept[0] < POLICY_TTL_MS // 2:
            return kept[1], kept[2]
        if kept is not None and at_ms - kept[0] < POLICY_TTL_MS:
            # Half its age: renew it now if no other thread is renewing (which then takes this one along), but
            # never wait for that: the kept policy is still good.
            if self._refresh.acquire(blocking=False):
                try:
                    self._renew(vin)
                finally:
                    self._refresh.release()
        else:
            with self._refresh:
                kept = self._policies.get(vin)
                if kept is None or now_ms() - kept[0] >= POLICY_TTL_MS:  # not renewed by another thread meanwhile
                    self._renew(vin)
        kept = self._policies.get(vin)
        if kept is None:
            self._used.pop(vin, None)
            raise UnknownVehicle(f"vehicle {vin} is not provisioned in region {self.gateway.settings.region}", vin=vin)
        return kept[1], kept[2]

    def _renew(self, vin: str) -> None:
        """Read the policies of ``vin`` and of the other cars streaming or connected here that are past a quarter of
        their age or were never read (their next frames need them): one read for all, wherever they are in their
        second."""
        read_ms = now_ms()
        horizon = read_ms - 2 * POLICY_TTL_MS
        streaming = list(self._used.items())  # one copy: frame checks on other threads keep adding to it
        connected = list(self._open)
        for other, used in streaming:
            if used < horizon and other not in self._open:  # stopped streaming: forget it
                self._used.pop(other, None)
                self._policies.pop(other, None)
        due = [vin]
        for v in dict.fromkeys([v for v, used in streaming if used >= horizon] + connected):
            k = self._policies.get(v)
            if v != vin and (read_ms - k[0] >= POLICY_TTL_MS // 4 if k is not None else v in self._open):
                due.append(v)
        found = set()
        with self.gateway.db.connection() as conn:
            for i in range(0, len(due), POLICY_CHUNK):
                rows = conn.execute(_LIVE_HEADS, {"vins": due[i : i + POLICY_CHUNK]}).all()
                self.policy_reads += 1
                for row in rows:
                    head = {"decisions": row.decisions, "newest": row.newest}
                    policy = self.gateway._policy(row.vin, head)  # built again only when the decisions changed
                    self._policies[row.vin] = (read_ms, policy, (row.ignition_cycle, row.ignition_seen_ms))
                    found.add(row.vin)
        for v in due:
            if v not in found:  # no longer provisioned here
                self._policies.pop(v, None)

    def inline(self, vin: str, data: bytes) -> LiveFrame | None:
        """The decoded frame when checking it reads nothing from the database, else None.

        So it is: the car's policy is fresh (younger than half ``POLICY_TTL_MS``), its key and home were cached when
        its channel was admitted, and the frame carries no position (masked places are read with each position).
        The caller then checks it on the event loop (``check(..., decoded=frame)``) instead of in a thread: the
        hop costs more than the check. ``MalformedFrame`` as ``check``.
        """
        frame = decode_frame(data)
        kept = self._policies.get(vin)
        if kept is None or now_ms() - kept[0] >= POLICY_TTL_MS // 2 or LAT in frame.values or LON in frame.values:
            return None
        return frame

    def check(self, vin: str, data: bytes, decoded: LiveFrame | None = None) -> LiveFrame | None:
        """Every check of one frame from the car connected as ``vin``; None for a counter already accepted.

        ``decoded``: the frame ``inline`` decoded from ``data`` already.
        """
        frame = decoded if decoded is not None else decode_frame(data)
        if frame.vin != vin:
            raise Unauthenticated(f"this connection streams vehicle {vin}, the frame is for {frame.vin}", vin=vin)
        self.gateway.residency.admit(frame.vin)
        frame.verify(self.gateway.vehicle_key(frame.vin))
        self.gateway.residency.check_claim(frame.vin, frame.region)
        if frame.counter <= self._last.get(vin, 0):
            return None
        if frame.t_ms < EARLIEST_MS:
            raise TimestampOutOfSpan("a live frame's t_ms lies before 2000-01-01", t_ms=frame.t_ms)
        table = frame_table(frame, self.catalogue)
        header = BatchHeader(
            vin=vin, region=frame.region, seq=1, prev=GENESIS_PREV, t0=frame.t_ms, t1=frame.t_ms, rows=1
        )
        settings = self.gateway.settings
        validate_payload(
            header,
            table,
            self.catalogue,
            now_ms=now_ms(),
            max_future_skew_ms=settings.max_future_skew_s * 1000,
            max_rows=1,
        )
        policy, previous = self._policy(vin, now_ms())
        check_batch(policy, table, self.catalogue, kind="telemetry", previous=previous)
        if self.gateway.places_check is not None:  # the owner's masked places, as for batches
            self.gateway.places_check(vin, table)
        return frame

    async def accept(self, vin: str, data: bytes) -> dict[str, Any]:
        """Check one frame, keep its hash, update every replica's last values; the acknowledgement to send back."""
        return await self.publish(vin, data, self.check(vin, data))

    async def publish(self, vin: str, data: bytes, frame: LiveFrame | None) -> dict[str, Any]:
        """After ``check``: fan the frame (values and hash) out; the acknowledgement to send back.

        A broker failure raises ``Unavailable`` and accepts nothing: the same frame may be sent again.
        """
        if frame is None or frame.counter <= self._last.get(vin, 0):
            return {"type": "ack", "counter": decode_frame(data).counter, "duplicate": True}
        received = now_ms()
        values = {p: LiveValue(p, frame.t_ms, v, received) for p, v in frame.values.items()}
        await self.hub.publish_local(LiveUpdate(vin, frame.counter, frame.t_ms, values, frame.frame_hash))
        self._last[vin] = max(self._last.get(vin, 0), frame.counter)
        return {"type": "ack", "counter": frame.counter, "duplicate": False}


__all__ = [
    "LiveChannel",
    "LiveEvidence",
    "LiveHub",
    "LiveSubscription",
    "LiveUpdate",
    "LiveValue",
    "frame_table",
    "now_ms",
]
