"""The ASGI application of a region: ``create_app(region)`` is what ``carvault serve`` and the tests run."""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from carvault import __version__
from carvault.compliance.deletion import DeletionScheduler
from carvault.compliance.retention import RetentionScheduler
from carvault.geo.tiles import tile_origin
from carvault.region import Region
from carvault.store.day_copies import Compactor
from carvault.web import errors, views
from carvault.web.deps import declare_security
from carvault.web.routes import (
    admin,
    apps,
    audit,
    auth,
    catalogue,
    charging,
    completeness,
    consents,
    data_sheet,
    deletion,
    diagnostics,
    events,
    exports,
    frames,
    grants,
    health,
    ingest,
    live,
    log,
    oauth,
    packages,
    places,
    portability,
    rights,
    statistics,
    support,
    timeline,
    vehicles,
    viss,
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


#: The cyclic collector's thresholds in a serving process: a young collection after 50,000 net allocations (Python's
#: default: 700), an older one after 20 young ones. A streaming car and a VISS subscriber hold ~200 tracked objects each
#: (coroutines, queues, the WebSocket's state), so with 1,000 of each a full collection walks ~400 k objects for
#: ~250 ms, the event loop stopped meanwhile; with the default thresholds the requests' short-lived objects, caught
#: alive by the frequent young collections, pushed one every few seconds. Measured over a 30-second run of 1,000 cars
#: and 1,000 subscribers on one worker (docs/benchmarks.md): collections stopped the process 2,081 ms in all with the
#: default thresholds (nine full ones, up to 255 ms each), 232 ms with these (one full, 28 ms; young ones up to 42 ms).
GC_THRESHOLDS = (50_000, 20, 10)


def _settle_heap() -> None:
    """Once a serving process has started: take what start-up built (modules, the catalogue, the routes, the region's
    tables; ~240 k objects) out of the cyclic garbage collector's view for the life of the process, and collect less
    often (``GC_THRESHOLDS``).

    A full collection walks every tracked object: ~80 ms on the bench machine for the imports alone, more with the
    region, each one stopping the event loop, uploads and live frames with it. Start-up objects live as long as the
    process, so walking them finds nothing; what requests allocate is still collected. Garbage left by start-up is
    collected first, so nothing unreachable is frozen with it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(region: Region, *, close_region_on_shutdown: bool = False, own_process: bool = False) -> FastAPI:
    """Build the API (and pages) for one region; ``own_process``: the app is what this process is for (``carvault
    serve`` and its workers), so once started its start-up heap is frozen and collections made rarer
    (``_settle_heap``)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await region.live.start()  # this replica receives every live frame from the broker from now on
        await asyncio.to_thread(region.deletions.resume)  # deletions a killed process left half done
        purges = RetentionScheduler(
            region.retention, region.settings.retention_interval_s, chores=(region.deletions.resume,)
        )
        purges.start()  # a retention purge every interval (docs/retention.md); the lease lets one replica at a time
        deletions = DeletionScheduler(region.deletions)
        deletions.start()  # requests whose grace period has ended are carried out within a minute
        days = region.telemetry.days
        compactor = Compactor(
            region.telemetry.compact,
            region.settings.compaction_interval_s,
            sweep=days.sweep_cache if days is not None else None,
        )
        compactor.start()  # closed days into compact query copies (store/day_copies.py)
        if own_process:
            _settle_heap()
        yield
        await compactor.stop()
        await deletions.stop()
        await purges.stop()
        await region.live.close()
        if close_region_on_shutdown:
            region.close()

    app = FastAPI(
        lifespan=lifespan,
        title=f"CarVault region {region.name}",
        version=__version__,
        description="Owner and third-party API of a CarVault region. Errors are JSON: "
        '{"error": {"code": "<stable code>", "message": "<for people>"}}.',
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # the reference page is the portal's own (views/api_docs.py): vendored viewer, no CDN
        redoc_url=None,
    )
    app.state.region = region
    errors.install(app)
    routers = (
        ingest.router,
        auth.router,
        vehicles.router,
        packages.router,
        catalogue.router,
        audit.router,
        log.router,
        log.tiles_router,  # issue 12: the log as C2SP tlog-tiles, read from the blob store
        consents.router,
        events.router,
        deletion.router,
        rights.router,  # issue 11: the owner's rights requests and incident notices
        frames.router,
        timeline.router,  # the owner portal's API (issue 5)
        places.router,  # issue 13: the owner's places (maps, masked in the car)
        statistics.router,  # issue 13: statistics, states, efficiency, vampire drain, conditions
        charging.router,  # issue 13: charging sessions, tariffs and costs, battery health
        exports.router,
        oauth.router,  # OAuth 2.0 for apps (issue 9); RFC 8414 metadata describes it
        portability.router,
        grants.router,  # sharing (issue 9): the owner's grants and personal access tokens
        apps.router,  # sharing (issue 9): developer sign-up and apps' public metadata
        viss.router,  # live (issue 10): VISS v3 over WebSocket
        data_sheet.router,  # issue 11: the public Data Act Art. 3(2) data sheet
        live.router,  # live (issue 10): the car's live channel (WebSocket, docs/protocol.md §8)
        admin.router,  # the operator's API (issue 11): every route behind a staff role
        support.router,  # issue 11: the owner approves or declines support tickets' access
        diagnostics.router,  # issue 14: trouble codes and warning lamps in plain words
        completeness.router,  # issue 13: what is missing and why, signed by the region
        health.router,  # issue 12: liveness, readiness, Prometheus metrics
    )
    for r in routers:
        app.include_router(r)
    app.state.api_routes = [route for r in routers for route in api_routes(r)]
    generate = app.openapi
    app.openapi = lambda: declare_security(  # type: ignore[method-assign]
        errors.declare(generate(), app.state.api_routes), app.state.api_routes
    )
    views.install(app)  # the owner portal: HTML pages under /, static files under /static

    app.add_middleware(ingest.BatchFastPath)  # batch uploads skip the router (issue 10); inside SecurityHeaders
    app.add_middleware(SecurityHeaders)
    return app


def api_routes(router: APIRouter, prefix: str = "") -> list[APIRoute]:
    """Every API route of a router with its full path, routers it includes walked too.

    FastAPI (0.165) keeps an included router as one lazy entry, so the operator API's area routers, included in
    /api/v1/admin, would otherwise be missing from the error and security declarations and the 405 ``Allow`` list.
    """
    found: list[APIRoute] = []
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if isinstance(inner, APIRouter):
            found += api_routes(inner, prefix + getattr(route.include_context, "prefix", ""))
        elif isinstance(route, APIRoute):
            if prefix:
                route = copy.copy(route)
                route.path = prefix + route.path
                route.path_regex, route.path_format, route.param_convertors = compile_path(route.path)
            found.append(route)
    return found


@functools.lru_cache(maxsize=8)
def _img_src(tile_url: str) -> bytes | None:
    """The img-src directive with the configured tile server's origin (docs/maps.md), or None without one."""
    origin = tile_origin(tile_url)
    return f"img-src 'self' data: {origin}".encode() if origin else None


def _with_img_src(name: bytes, value: bytes, img_src: bytes) -> bytes:
    if name.lower() != b"content-security-policy":
        return value
    return value.replace(b"img-src 'self' data:", img_src)


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` (and ``Cache-Control: no-store`` under /api/) to every HTTP response lacking them.

    A plain ASGI middleware: it only edits the response's start message. (Starlette's ``BaseHTTPMiddleware`` ran
    each request through an extra task and body stream, a large part of a batch upload's fixed cost: issue 10.)
    """

    _PAGE = tuple((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
    _API = (*_PAGE, (b"cache-control", b"no-store"))

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._API if scope["path"].startswith("/api/") else self._PAGE

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: labels stay bounded
                scope["app"].state.region.metrics.answered(route, message["status"])
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                img_src = _img_src(scope["app"].state.region.settings.map_tile_url)
                if img_src:
                    headers = [(n, _with_img_src(n, v, img_src)) for n, v in headers]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
