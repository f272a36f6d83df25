"""Vehicle upload protocol v1 over HTTP (docs/protocol.md).

The batch route is declared here like any other (OpenAPI, route classification), but its requests are served by
``BatchFastPath``, a plain ASGI layer in front of the router: routing through every route of the app, the
exception middleware and FastAPI's request handling cost a batch more than its checks' fixed part (issue 10).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from carvault.errors import CarVaultError, UnsupportedMediaType
from carvault.protocol.envelope import BATCH_MEDIA_TYPE
from carvault.store.metadata import storage_failure
from carvault.web.deps import binary_body, read_body, region_of
from carvault.web.errors import INGEST_ERRORS, error_response, raises

router = APIRouter(prefix="/api/v1/ingest", tags=["vehicle upload"])
CHECK_THREADS = 4
BATCHES_PATH = "/api/v1/ingest/batches"
_log = logging.getLogger(__name__)


def _limiter(request: Request) -> anyio.CapacityLimiter:
    """One limiter per app, made inside its event loop."""
    limiter = getattr(request.app.state, "check_limiter", None)
    if limiter is None:
        limiter = request.app.state.check_limiter = anyio.CapacityLimiter(CHECK_THREADS)
    return limiter


def _receipt_response(receipt: dict[str, Any]) -> Response:
    """The receipt as JSON, encoded here.

    FastAPI's generic encoding of a returned dict (validation against the response model, then a recursive walk)
    costs more than the answer's own bytes, on every batch (issue 10).
    """
    body = json.dumps(receipt, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


@router.post(
    "/batches",
    summary="Upload one signed batch; answered with a receipt once it is durable",
    openapi_extra=binary_body(BATCH_MEDIA_TYPE, "one signed batch envelope (docs/protocol.md), no Content-Encoding"),
    responses=raises(*INGEST_ERRORS),
    response_model=dict[str, Any],
)
async def upload_batch(request: Request) -> Response:
    """Take one batch envelope (Content-Type application/vnd.carvault.batch.v1)."""
    return await _upload(request)


async def _upload(request: Request) -> Response:
    """The batch route's work, for the route and for ``BatchFastPath``."""
    # The signature covers the exact envelope bytes and the payload is already compressed: a content coding
    # would only add a second reading of the body (and a decompression bomb), so none is taken (docs/protocol.md §3.3).
    codings = [c.strip().lower() for v in request.headers.getlist("content-encoding") for c in v.split(",")]
    if any(c not in ("", "identity") for c in codings):
        raise UnsupportedMediaType(
            f"batches are sent without a Content-Encoding (got {', '.join(codings)[:60]}); "
            "the envelope's payload is compressed already",
            accept_encoding="identity",
        )
    region = region_of(request)  # called, not declared: a dependency costs a resolution per batch (issue 10)
    body = await read_body(request, region.settings.max_batch_bytes, "batch")
    # The checks are CPU work: a few threads keep both cores busy; more only fight over the GIL. The wait for
    # the group commit happens outside the cap, so many batches still share each fsync.
    checked = await anyio.to_thread.run_sync(
        region.gateway.check, body, request.headers.get("content-type"), limiter=_limiter(request)
    )
    if isinstance(checked, dict):
        return _receipt_response(checked)
    return _receipt_response(await asyncio.wrap_future(checked.future))


class BatchFastPath:
    """Serves ``POST /api/v1/ingest/batches`` ahead of the router; every other request goes on to ``app``.

    The answers are the route's own: the same checks in the same order, errors as JSON with their stable codes
    (counted as refusals like the app's exception handlers count them), storage failures as 503 and anything else
    as the internal-error answer. It sits inside ``SecurityHeaders``, which adds the headers and counts the answer
    under the route's path.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._route: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != BATCHES_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route or self._find_route(scope)  # the metrics label, as routing would set it
        request = Request(scope, receive)
        try:
            response = await _upload(request)
        except CarVaultError as e:
            response = _refusal(request, e)
        except (OSError, DBAPIError) as e:
            failure = storage_failure(e)
            response = _internal_error(e) if failure is None else _refusal(request, failure)
        except Exception as e:  # noqa: BLE001 - answered as the app's last-resort handler answers
            response = _internal_error(e)
        await response(scope, receive, send)

    def _find_route(self, scope: dict[str, Any]) -> Any:
        for route in scope["app"].state.api_routes:
            if route.path == BATCHES_PATH:
                self._route = route
        return self._route


def _refusal(request: Request, e: CarVaultError) -> Response:
    if e.status >= 500:
        _log.error("%s: %s", e.code, e.message)
    region = getattr(request.app.state, "region", None)
    if region is not None:
        region.metrics.refused(e.code, BATCHES_PATH)
    return error_response(e)


def _internal_error(e: BaseException) -> Response:
    _log.error("unhandled error", exc_info=e)
    return JSONResponse(CarVaultError("the server failed to handle this request").to_json(), status_code=500)
