"""The car's live sender (docs/protocol.md §8): frames at 1 Hz or on change, signed, and committed by the next batch.

``LiveSender`` turns recorded rows into live frames through the agent's own consent, precision and place masking
(``VehicleAgent.routine``, the code its batches go through), signs each with the vehicle key, and remembers the
frame hashes until the next telemetry batch commits to them (``live_first``, ``live_last``, ``live_root``). It
keeps the hashes of the last few committed batches so it can hand anyone the inclusion path of a frame.
``LiveLink`` is the WebSocket to the home region. Frames made while the car is offline are simply not sent;
they are still committed by the batch (the batch stays the evidence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from carvault.durable import write_durably
from carvault.ledger.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from carvault.protocol.live import LIVE_PATH, LIVE_SUBPROTOCOL, Scalar, encode_frame, frame_hash
from carvault.protocol.requests import sign_request
from carvault.vehicle.agent import VehicleAgent

DEFAULT_INTERVAL_MS = 1000
COUNTER_BLOCK = 4096  # counters reserved on disk at a time, so a crash never reuses one
KEEP_BATCHES = 32  # committed batches whose frame hashes the car keeps for proofs


@dataclass
class _Pending:
    counter: int
    t_ms: int
    digest: bytes


@dataclass
class LiveProof:
    """Where a frame sits in a batch's live tree: what ``verify.live`` needs besides the frame and the batch."""

    seq: int
    index: int
    size: int
    path: list[bytes] = field(default_factory=list)


class LiveSender:
    """Makes the car's live frames and the live roots its telemetry batches carry."""

    def __init__(
        self,
        agent: VehicleAgent,
        *,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        deadband: float | Mapping[str, float] | None = None,
        signals: Iterable[str] | None = None,
    ) -> None:
        """``deadband`` None: every ``interval_ms``, the latest value of each signal. Otherwise on change: a signal
        is sent when it moved by more than its deadband (any change for booleans and text) since last sent, at most
        once per ``interval_ms``. ``signals``: the owner's choice of what streams (within consent)."""
        if interval_ms < 1:
            raise ValueError("interval_ms must be positive")
        self.agent = agent
        self.interval_ms = interval_ms
        self.deadband = deadband
        self.signals = frozenset(signals) if signals is not None else None
        self._state_path = agent.state_dir / "live.json"
        state = json.loads(self._state_path.read_text()) if self._state_path.exists() else {}
        self.counter = int(state.get("reserved", 0))  # after a restart, start above anything possibly used
        self._reserved = self.counter
        self._pending: list[_Pending] = []
        self._committed: OrderedDict[int, tuple[int, list[bytes]]] = OrderedDict()  # seq -> (first, hashes)
        self._last_emit = -(10**15)
        self._latest: dict[str, Scalar] = {}  # interval mode: newest value since the last frame
        self._sent: dict[str, Scalar] = {}  # change mode: value last sent
        self._changed: dict[str, Scalar] = {}  # change mode: changes waiting for the interval
        agent.live = self

    # ---------------------------------------------------------------------------------------------- frames
    def _next_counter(self) -> int:
        self.counter += 1
        if self.counter > self._reserved:
            self._reserved = self.counter + COUNTER_BLOCK
            write_durably(self._state_path, json.dumps({"reserved": self._reserved}).encode())
        return self.counter

    def _moved(self, path: str, value: Scalar) -> bool:
        old = self._sent.get(path)
        if old is None or isinstance(value, bool | str) or isinstance(old, bool | str):
            return old != value
        band = self.deadband.get(path, 0.0) if isinstance(self.deadband, Mapping) else float(self.deadband or 0.0)
        return abs(float(value) - float(old)) > band

    def frames(self, table: pa.Table) -> list[bytes]:
        """Sign the live frames of newly recorded rows (``t`` first, in time order), after consent and precision."""
        if table.num_rows == 0:
            return []
        t_all = table.column("t").cast(pa.int64()).to_numpy()
        routine = self.agent.routine(table, self.agent.ignition_of(t_all))
        names = [n for n in routine.column_names[1:] if self.signals is None or n in self.signals]
        if not names or routine.num_rows == 0:
            return []
        times = routine.column("t").cast(pa.int64()).to_pylist()
        columns = {n: routine.column(n).to_pylist() for n in names}
        out: list[bytes] = []
        for i, t in enumerate(times):
            for n in names:
                v = columns[n][i]
                if v is None or (isinstance(v, float) and not math.isfinite(v)):
                    continue
                if self.deadband is None:
                    self._latest[n] = v
                elif self._moved(n, v):
                    self._changed[n] = v
            waiting = self._latest if self.deadband is None else self._changed
            if waiting and t - self._last_emit >= self.interval_ms:
                out.append(self._sign(t, dict(waiting)))
                self._sent.update(waiting)
                waiting.clear()
                self._last_emit = t
        return out

    def _sign(self, t_ms: int, values: dict[str, Scalar]) -> bytes:
        ident = self.agent.identity
        frame = encode_frame(ident.vin, ident.region, self._next_counter(), t_ms, values, ident.key)
        self._pending.append(_Pending(self.counter, t_ms, frame_hash(frame)))
        return frame

    # ---------------------------------------------------------------------------------------------- batches
    def pending_root(self, t1: int) -> tuple[int, int, str] | None:
        """(first, last, hex root) of the uncommitted frames up to ``t1``, in counter order; None if there are none."""
        n = 0
        while n < len(self._pending) and self._pending[n].t_ms <= t1:
            n += 1
        if n == 0:
            return None
        part = self._pending[:n]
        root = root_from_leaf_hashes([leaf_hash(p.digest) for p in part])
        return part[0].counter, part[-1].counter, root.hex()

    def committed(self, seq: int, live: tuple[int, int, str]) -> None:
        """Batch ``seq`` commits to frames ``live[0]..live[1]``: move their hashes to the kept proofs."""
        first, last, _ = live
        done = [p for p in self._pending if first <= p.counter <= last]
        self._pending = [p for p in self._pending if p.counter > last]
        self._committed[seq] = (first, [p.digest for p in done])
        while len(self._committed) > KEEP_BATCHES:
            self._committed.popitem(last=False)

    def proof(self, counter: int) -> LiveProof | None:
        """The inclusion path of a committed frame in its batch's live tree (None once forgotten or not committed)."""
        for seq, (first, hashes) in self._committed.items():
            if first <= counter < first + len(hashes):
                leaves = [leaf_hash(h) for h in hashes]
                index = counter - first
                return LiveProof(seq, index, len(leaves), inclusion_proof(leaves, index, len(leaves)))
        return None


class LiveLink:
    """The car's WebSocket to its home region's live channel (one per car)."""

    def __init__(self, sender: LiveSender, endpoint: str) -> None:
        self.sender = sender
        base = endpoint.rstrip("/")
        self.url = ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base.split("://", 1)[-1]) + (
            LIVE_PATH
        )
        self._ws: ClientConnection | None = None
        self.answers: list[dict[str, Any]] = []

    async def open(self) -> dict[str, Any]:
        """Connect with a vehicle-signed upgrade; the region's first message (``ready``, or the error)."""
        ident = self.sender.agent.identity
        headers = sign_request(ident.key, "GET", LIVE_PATH, ident.vin)
        self._ws = await connect(self.url, additional_headers=headers, subprotocols=[LIVE_SUBPROTOCOL])  # type: ignore[list-item]
        return dict(json.loads(await self._ws.recv()))

    async def send(self, frames: Iterable[bytes], *, wait: bool = True) -> list[dict[str, Any]]:
        """Send frames; with ``wait``, read one answer per frame (acks and refusals) and return them."""
        if self._ws is None:
            raise RuntimeError("the live link is not open")
        sent = 0
        for f in frames:
            await self._ws.send(f)
            sent += 1
        answers = [dict(json.loads(await self._ws.recv())) for _ in range(sent)] if wait else []
        self.answers += answers
        return answers

    async def close(self) -> None:
        """Close the connection."""
        if self._ws is not None:
            await self._ws.close()
            self._ws = None


@dataclass
class StreamReport:
    """What became of a run of frames: acknowledged, refused (by code), or dropped (no connection)."""

    acked: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    dropped: int = 0


async def stream_frames(sender: LiveSender, endpoint: str, frames: list[bytes], *, window: int = 100) -> StreamReport:
    """Send frames over one connection, ``window`` at a time; without a connection they are dropped, never queued."""
    report = StreamReport()
    link = LiveLink(sender, endpoint)
    try:
        ready = await link.open()
    except (OSError, WebSocketException):
        report.dropped = len(frames)
        return report
    if ready.get("type") != "ready":
        code = str(ready.get("error", {}).get("code"))
        report.refused[code] = len(frames)
        await link.close()
        return report
    try:
        for i in range(0, len(frames), window):
            try:
                answers = await link.send(frames[i : i + window])
            except (OSError, WebSocketException):
                report.dropped += len(frames) - i
                break
            for a in answers:
                if a.get("type") == "ack":
                    report.acked += 1
                else:
                    code = str(a.get("error", {}).get("code"))
                    report.refused[code] = report.refused.get(code, 0) + 1
    finally:
        with contextlib.suppress(OSError, WebSocketException):
            await link.close()
    return report


class LiveStreamer:
    """The car's standing connection: sends each batch of new frames, reconnecting when the link is down.

    While there is no connection, frames are dropped (live data is perishable; the batches carry the evidence).
    A failed connection is tried again at most every ``retry_s`` seconds, so an offline car does not spin.
    """

    def __init__(self, sender: LiveSender, endpoint: str, *, retry_s: float = 5.0) -> None:
        self.sender = sender
        self.endpoint = endpoint
        self.retry_s = retry_s
        self.report = StreamReport()
        self._link: LiveLink | None = None
        self._next_try = 0.0

    @property
    def connected(self) -> bool:
        """Whether a link is open now."""
        return self._link is not None

    async def _ensure(self) -> LiveLink | None:
        if self._link is not None:
            return self._link
        now = asyncio.get_running_loop().time()
        if now < self._next_try:
            return None
        self._next_try = now + self.retry_s
        link = LiveLink(self.sender, self.endpoint)
        try:
            ready = await link.open()
        except (OSError, WebSocketException):
            return None
        if ready.get("type") != "ready":
            await link.close()
            return None
        self._link = link
        return link

    async def push(self, frames: list[bytes]) -> None:
        """Send frames now if the region can be reached, else drop them."""
        if not frames:
            return
        link = await self._ensure()
        if link is None:
            self.report.dropped += len(frames)
            return
        try:
            answers = await link.send(frames)
        except (OSError, WebSocketException):
            self._link = None
            self.report.dropped += len(frames)
            return
        for a in answers:
            if a.get("type") == "ack":
                self.report.acked += 1
            else:
                code = str(a.get("error", {}).get("code"))
                self.report.refused[code] = self.report.refused.get(code, 0) + 1

    async def close(self) -> None:
        """Close the link, if open."""
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(OSError, WebSocketException):
                await link.close()
