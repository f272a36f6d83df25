"""Running a region's app under uvicorn: in the foreground (``carvault serve``) or in a thread (demo, tests)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from uvicorn._compat import asyncio_run

from carvault.ingest.fleet_telemetry import FleetListener, server_context
from carvault.region import Region
from carvault.web.app import create_app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def uvicorn_config(
    region: Region, host: str, port: int, log_level: str = "warning", *, own_process: bool = False
) -> uvicorn.Config:
    """The uvicorn configuration CarVault uses (``own_process``: ``carvault serve``, see ``create_app``)."""
    return uvicorn.Config(
        create_app(region, own_process=own_process),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=30,
        # Connections and tasks at once: a streaming car holds one WebSocket, each VISS subscriber another.
        limit_concurrency=5000,
        # No permessage-deflate: live frames are signed binary (incompressible) and VISS events a few hundred
        # bytes; deflating each cost ~0.9 ms of CPU a message and ~100 KiB of state a connection (carvault bench).
        ws_per_message_deflate=False,
    )


async def serve_region(server: uvicorn.Server, region: Region, host: str, fleet_port: int = 0) -> None:
    """The API under uvicorn and, when ``fleet_port`` is set, the Fleet Telemetry mTLS listener, in one event loop.

    One loop, so the listener's live updates reach the same hub (and broker connection) as the API's subscribers.
    """
    listener = None
    if fleet_port:
        s = region.settings
        listener = FleetListener(region.fleet, server_context(s.fleet_tls_cert, s.fleet_tls_key, s.fleet_issuer_cas))
        await listener.start(host, fleet_port)
    try:
        await server.serve()
    finally:
        if listener is not None:
            await listener.close()


def run_region(server: uvicorn.Server, region: Region, host: str, fleet_port: int = 0) -> None:
    """Run ``serve_region`` until the server stops (``carvault serve``, ``BackgroundServer``)."""
    asyncio_run(serve_region(server, region, host, fleet_port), loop_factory=server.config.get_loop_factory())


class BackgroundServer:
    """A real HTTP server for a region on loopback, in a thread of this process (and its Fleet Telemetry listener)."""

    def __init__(
        self, region: Region, host: str = "127.0.0.1", port: int | None = None, *, fleet_port: int = 0
    ) -> None:
        self.region = region
        self.host = host
        self.port = port or free_port(host)
        self.fleet_port = fleet_port
        self.server = uvicorn.Server(uvicorn_config(region, self.host, self.port))
        self.thread = threading.Thread(
            target=run_region, args=(self.server, region, host, fleet_port), name=f"uvicorn-{region.name}", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20) -> BackgroundServer:
        """Start and wait until it accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server for region {self.region.name} did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving (the region stays open)."""
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
