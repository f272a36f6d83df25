"""Vehicle upload protocol v1 over HTTP (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from carvault.errors import PayloadTooLarge
from carvault.web.deps import RegionDep

router = APIRouter(prefix="/api/v1/ingest", tags=["vehicle upload"])


@router.post("/batches", summary="Upload one signed batch; answered with a receipt once it is durable")
async def upload_batch(request: Request, region: RegionDep) -> dict[str, Any]:
    """Take one batch envelope (Content-Type application/vnd.carvault.batch.v1)."""
    limit = region.settings.max_batch_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"batch is {declared} bytes; the limit is {limit}", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"batch exceeds the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    return await run_in_threadpool(region.gateway.accept, body, request.headers.get("content-type"))
