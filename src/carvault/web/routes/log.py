"""The region's transparency log: checkpoints and proofs, public to anyone."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from carvault.errors import InvalidQuery, NotFound
from carvault.store.metadata import BatchRecord
from carvault.web.deps import MAX_DB_INT, RegionDep, RowId

router = APIRouter(prefix="/api/v1/log", tags=["transparency log"])


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode() for x in items]


@router.get(
    "/checkpoint", response_class=PlainTextResponse, summary="Latest checkpoint (C2SP tlog-checkpoint signed note)"
)
def checkpoint(region: RegionDep) -> str:
    return region.log.checkpoint()


@router.get("/key", summary="The log's public verifier key (signed-note vkey) and origin")
def key(region: RegionDep) -> dict[str, Any]:
    return {"origin": region.log.origin, "vkey": region.log.vkey}


@router.get("/proof/inclusion", summary="Inclusion proof of a leaf (RFC 9162 §2.1.3)")
def inclusion(
    region: RegionDep, index: int = Query(ge=0, le=MAX_DB_INT), size: int | None = Query(None, ge=1, le=MAX_DB_INT)
) -> dict[str, Any]:
    n = size or region.log.size
    if index >= n or n > region.log.size:
        raise InvalidQuery(f"need index < size <= {region.log.size}", index=index, size=n)
    return {
        "index": index,
        "size": n,
        "leaf_hash": base64.b64encode(region.log.leaf_hash(index)).decode(),
        "proof": _b64(region.log.inclusion_proof(index, n)),
    }


@router.get("/proof/consistency", summary="Consistency proof between two tree sizes (RFC 9162 §2.1.4)")
def consistency(
    region: RegionDep, old: int = Query(ge=1, le=MAX_DB_INT), new: int | None = Query(None, ge=1, le=MAX_DB_INT)
) -> dict[str, Any]:
    n = new or region.log.size
    if old > n or n > region.log.size:
        raise InvalidQuery(f"need old <= new <= {region.log.size}", old=old, new=n)
    return {"old": old, "new": n, "proof": _b64(region.log.consistency_proof(old, n))}


@router.get("/batches/{vin}/{seq}", summary="Where a batch sits in the log, with its inclusion proof")
def batch_entry(vin: str, seq: RowId, region: RegionDep) -> dict[str, Any]:
    with region.db.session() as s:
        rec = s.scalar(select(BatchRecord).where(BatchRecord.vin == vin.upper(), BatchRecord.seq == seq))
    if rec is None or rec.log_index is None:
        raise NotFound(f"no logged batch {seq} of {vin}")
    n = region.log.size
    return {
        "vin": rec.vin,
        "seq": rec.seq,
        "batch_hash": rec.batch_hash,
        "received_ms": rec.received_ms,
        "index": rec.log_index,
        "size": n,
        "proof": _b64(region.log.inclusion_proof(rec.log_index, n)),
    }
