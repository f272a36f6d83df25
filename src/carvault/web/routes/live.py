"""The car's live channel: a WebSocket at ``/api/v1/vehicles/live`` (docs/protocol.md §8).

The upgrade is a vehicle-signed request (``CarVault-Vin``, ``CarVault-Time``, ``CarVault-Signature`` over
``GET /api/v1/vehicles/live``, as §6). Then the car sends one live frame per binary message; the region answers
each with a text message: ``{"type": "ack", "counter", "duplicate"}`` or ``{"type": "error", "counter",
"error": {"code", "message", ...}}`` (the batch codes), and keeps the connection. A refused upgrade is answered
with one error message, then a close code 4000 + the HTTP status of the error (4401, 4421 ...).
"""

from __future__ import annotations

import contextlib
import json

import anyio
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from carvault.errors import CarVaultError, MalformedFrame, Unauthenticated
from carvault.ingest.vehicle_auth import authenticate_vehicle
from carvault.protocol.live import FRAME_MAGIC, LIVE_PATH, LIVE_SUBPROTOCOL
from carvault.region import Region

router = APIRouter(tags=["vehicle upload"])
CLOSE_BASE = 4000  # application close codes (RFC 6455 §7.4.2): 4000 + the error's HTTP status
CHECK_THREADS = 4


def _limiter(websocket: WebSocket) -> anyio.CapacityLimiter:
    """One limiter per app for the frame checks (CPU and a policy read), made inside its event loop."""
    state = websocket.app.state
    limiter = getattr(state, "live_limiter", None)
    if limiter is None:
        limiter = state.live_limiter = anyio.CapacityLimiter(CHECK_THREADS)
    return limiter


def _error(e: CarVaultError, counter: int | None = None) -> str:
    return json.dumps({"type": "error", "counter": counter, **e.to_json()})


@router.websocket(LIVE_PATH)
async def car_live(websocket: WebSocket) -> None:
    """One car's stream of live frames."""
    region: Region = websocket.app.state.region
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=LIVE_SUBPROTOCOL if LIVE_SUBPROTOCOL in offered else None)
    try:
        vin = websocket.headers.get("carvault-vin", "")
        if not vin:
            raise Unauthenticated("the live channel needs CarVault-Vin, CarVault-Time and CarVault-Signature headers")
        await anyio.to_thread.run_sync(region.live_channel.admit, vin)
        await anyio.to_thread.run_sync(authenticate_vehicle, region.gateway, "GET", LIVE_PATH, websocket.headers)
    except CarVaultError as e:
        await websocket.send_text(_error(e))
        await websocket.close(CLOSE_BASE + e.status, e.code)
        return
    await websocket.send_text(json.dumps({"type": "ready", "vin": vin, "region": region.name}))
    # Its policy joins the streaming cars' reads; counted by the carvault_live_cars gauge.
    region.live_channel.opened(vin)
    try:
        await _stream(websocket, region, vin)
    finally:
        region.live_channel.closed(vin)


async def _stream(websocket: WebSocket, region: Region, vin: str) -> None:
    """Check and publish each frame of an admitted car until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await websocket.send_text(_error(MalformedFrame("live frames are binary messages")))
                continue
            channel = region.live_channel
            try:
                decoded = channel.inline(vin, data)
                if decoded is not None:  # nothing to read from the database: no thread hop (it costs more)
                    frame = channel.check(vin, data, decoded)
                else:
                    frame = await anyio.to_thread.run_sync(channel.check, vin, data, limiter=_limiter(websocket))
                answer = await channel.publish(vin, data, frame)
            except CarVaultError as e:
                region.metrics.refused(e.code, LIVE_PATH)
                await websocket.send_text(_error(e, _counter(data)))
                continue
            await websocket.send_text(orjson.dumps(answer).decode())


def _counter(data: bytes) -> int | None:
    """The counter a frame claims, for the error message (None if it cannot be read)."""
    if len(data) < 23 or data[:4] != FRAME_MAGIC:
        return None
    start = 22 + data[21]
    return int.from_bytes(data[start : start + 8], "big") if len(data) >= start + 8 else None
