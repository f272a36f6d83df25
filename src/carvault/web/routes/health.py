"""Endpoints for the systems that run a region: liveness, readiness and Prometheus metrics (docs/operations.md).

- ``/livez``: the process answers (a load balancer or orchestrator restarts it when this fails);
- ``/readyz``: this replica can do its work — the metadata database answers, the blob store answers, the log reads,
  the live-data broker is connected. 503 with the failing parts named when not (take it out of rotation);
- ``/metrics``: the Prometheus text format (metrics.py); behind a bearer token when ``metrics_token`` is set;
- ``/api/v1/health``: liveness with the region's name, version and log size (kept for existing clients).
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import make_url

from carvault import __version__
from carvault.errors import Unauthenticated
from carvault.ingest.broker import without_passwords
from carvault.metrics import CONTENT_TYPE
from carvault.region import Region
from carvault.web.deps import region_of

router = APIRouter(tags=["operations"])

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")


def without_secrets(text: str, region: Region) -> str:
    """An error text with URL passwords and the region's known secrets (database password, metrics token, S3 secret
    key) replaced by ``***``."""
    text = without_passwords(text)  # /readyz answers anyone
    try:
        db_password = make_url(region.settings.resolved_database_url).password
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: nothing more to hide from it
        db_password = None
    secrets = [db_password, region.settings.metrics_token, *(os.environ.get(k) for k in _SECRET_ENV)]
    for secret in secrets:
        if secret and len(str(secret)) >= 4:
            text = text.replace(str(secret), "***")
    return text


@router.get("/api/v1/health", summary="Liveness and the region served")
def health(request: Request) -> dict[str, Any]:
    """The region's name, version and log size."""
    region = region_of(request)
    return {"status": "ok", "region": region.name, "version": __version__, "log_size": region.log.size}


@router.get("/livez", summary="Liveness: the process answers", include_in_schema=False)
def livez() -> dict[str, str]:
    """Always ok while the server runs."""
    return {"status": "ok"}


def _checks(region: Region) -> dict[str, Callable[[], object]]:
    """What this replica needs to serve, each a call that raises when it cannot."""

    def database() -> None:
        with region.db.connection() as conn:
            conn.execute(text("SELECT 1"))

    def log_ready() -> None:
        ready = getattr(region.log, "ready", None)  # a log backend may say more (its sequencer, its lease)
        if callable(ready):
            ready()
        else:
            region.log.size  # noqa: B018 - reads the committed size from storage

    def broker() -> None:
        if not region.live.broker.healthy():
            raise ConnectionError(f"live-data broker {region.settings.live_broker} is not connected")

    return {"database": database, "blob_store": region.blobs.check, "log": log_ready, "broker": broker}


@router.get("/readyz", summary="Readiness: the database, blob store, log and broker answer", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    """200 when every part answers; 503 naming the parts that do not."""
    region = region_of(request)
    results: dict[str, dict[str, Any]] = {}
    for name, check in _checks(region).items():
        started = time.perf_counter()
        try:
            check()
        except Exception as e:  # noqa: BLE001 - any failure makes the replica not ready; say which and why
            results[name] = {"ok": False, "error": without_secrets(f"{type(e).__name__}: {e}", region)[:300]}
        else:
            results[name] = {"ok": True}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    ready = all(r["ok"] for r in results.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "region": region.name, "checks": results}
    if not ready:
        failing = ", ".join(n for n, r in results.items() if not r["ok"])
        body["error"] = {"code": "not_ready", "message": f"this replica cannot serve: {failing}"}
    return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The region's metrics in Prometheus' text format."""
    region = region_of(request)
    token = region.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthenticated("metrics need the operator's bearer token (setting metrics_token)")
    return Response(region.metrics.exposition(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
