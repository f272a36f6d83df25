"""The ASGI application of a region: ``create_app(region)`` is what ``carvault serve`` and the tests run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from carvault import __version__
from carvault.region import Region
from carvault.web import errors, views
from carvault.web.routes import (
    audit,
    auth,
    catalogue,
    consents,
    deletion,
    events,
    exports,
    frames,
    ingest,
    log,
    packages,
    timeline,
    vehicles,
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def create_app(region: Region, *, close_region_on_shutdown: bool = False) -> FastAPI:
    """Build the API (and pages) for one region."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_region_on_shutdown:
            region.close()

    app = FastAPI(
        lifespan=lifespan,
        title=f"CarVault region {region.name}",
        version=__version__,
        description="Owner and third-party API of a CarVault region. Errors are JSON: "
        '{"error": {"code": "<stable code>", "message": "<for people>"}}.',
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.region = region
    errors.install(app)
    for r in (
        ingest.router,
        auth.router,
        vehicles.router,
        packages.router,
        catalogue.router,
        audit.router,
        log.router,
        consents.router,
        events.router,
        deletion.router,
        frames.router,
    ):
        app.include_router(r)
    for r in (timeline.router, exports.router):  # the owner portal's API (issue 5)
        app.include_router(r)
    views.install(app)  # the owner portal: HTML pages under /, static files under /static

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/api/v1/health", tags=["operations"], summary="Liveness and the region served")
    def health() -> dict[str, Any]:
        return {"status": "ok", "region": region.name, "version": __version__, "log_size": region.log.size}

    return app
