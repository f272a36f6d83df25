"""Vehicle upload protocol v1 over HTTP (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response

from carvault.errors import UnsupportedMediaType
from carvault.protocol.envelope import BATCH_MEDIA_TYPE
from carvault.web.deps import binary_body, get_region, read_body
from carvault.web.errors import INGEST_ERRORS, raises

router = APIRouter(prefix="/api/v1/ingest", tags=["vehicle upload"])
CHECK_THREADS = 4


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
    # The signature covers the exact envelope bytes and the payload is already compressed: a content coding
    # would only add a second reading of the body (and a decompression bomb), so none is taken (docs/protocol.md §3.3).
    codings = [c.strip().lower() for v in request.headers.getlist("content-encoding") for c in v.split(",")]
    if any(c not in ("", "identity") for c in codings):
        raise UnsupportedMediaType(
            f"batches are sent without a Content-Encoding (got {', '.join(codings)[:60]}); "
            "the envelope's payload is compressed already",
            accept_encoding="identity",
        )
    region = get_region(request)  # called, not declared: a dependency costs a resolution per batch (issue 10)
    body = await read_body(request, region.settings.max_batch_bytes, "batch")
    # The checks are CPU work: a few threads keep both cores busy; more only fight over the GIL. The wait for
    # the group commit happens outside the cap, so many batches still share each fsync.
    checked = await anyio.to_thread.run_sync(
        region.gateway.check, body, request.headers.get("content-type"), limiter=_limiter(request)
    )
    if isinstance(checked, dict):
        return _receipt_response(checked)
    return _receipt_response(region.gateway.committed(checked, await asyncio.wrap_future(checked.future)))
