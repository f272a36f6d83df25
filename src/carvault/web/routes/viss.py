"""The VISS v3 WebSocket endpoint: ``/api/v1/viss/{vin}`` (docs/live.md).

VISS paths start at ``Vehicle.``, so the VIN picks the vehicle in the URL and every request names signals as
any VISS server would. The sub-protocol ``VISSv3`` is agreed when the client offers it. The token comes in each
request's ``authorization`` member (the spec's way for WebSocket), or once at the upgrade: an
``Authorization: Bearer`` header (scripts, apps) or the portal's session cookie, which is taken only from a page
of this same site (the ``Origin`` header must name this host: a WebSocket is not bound by the same-origin rule,
so another site's page could otherwise ride on the owner's cookie).
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from carvault.access.viss import SUBPROTOCOL, Rechecker, VissSession
from carvault.region import Region
from carvault.web.deps import SESSION_COOKIE

router = APIRouter(tags=["live"])
POLICY_VIOLATION = 1008  # WebSocket close code (RFC 6455 §7.4.1)


def same_origin(websocket: WebSocket) -> bool:
    """The upgrade comes from a page of this site: ``Origin`` names this host and port (as the CSRF check reads it;
    the scheme is left out, since a TLS terminator in front makes the browser's ``https`` our ``http``)."""
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host")
    if not origin or not host or origin == "null":
        return False
    return origin.split("://", 1)[-1].rstrip("/").lower() == host.lower()


def upgrade_token(websocket: WebSocket) -> tuple[str | None, bool]:
    """The token the upgrade carries, and whether the upgrade must be refused (a cross-site cookie)."""
    auth = websocket.headers.get("authorization", "")
    if auth:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None, True
        return secret.strip(), False
    cookie = websocket.cookies.get(SESSION_COOKIE)
    if cookie:
        return (cookie, False) if same_origin(websocket) else (None, True)
    return None, False


@router.websocket("/api/v1/viss/{vin}")
async def viss(websocket: WebSocket, vin: str) -> None:
    """One VISS v3 connection to one vehicle: get, subscribe, unsubscribe (JSON text messages)."""
    token, refuse = upgrade_token(websocket)
    if refuse:
        await websocket.close(code=POLICY_VIOLATION)  # before accept: the client sees the upgrade refused (403)
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    region: Region = websocket.app.state.region
    state = websocket.app.state
    if getattr(state, "viss_rechecker", None) is None:
        state.viss_rechecker = Rechecker(region.db)  # one per app: every open subscription re-checked in one pass

    async def send(message: dict[str, Any] | bytes) -> None:
        await websocket.send_text((message if isinstance(message, bytes) else orjson.dumps(message)).decode())

    session = VissSession.of_region(region, vin[:64], send, connection_token=token, rechecker=state.viss_rechecker)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            await session.handle(text if text is not None else message.get("bytes") or b"")
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away (RuntimeError: a send raced the close)
    finally:
        await session.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()
