"""The region's transparency log: checkpoints and proofs for anyone; lookups by vehicle for its owner only.

A public answer names no VIN, seq or receive time: leaf indices, leaf hashes, tree sizes and hashes only
(docs/transparency-log.md). Where a vehicle's batch sits in the log, and the log key that opens its leaves,
are answered only to the vehicle's owner (bearer token or session), alike 404 for a vehicle not theirs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select

from carvault.access.audit import AuditAction
from carvault.errors import InvalidQuery, LogEntriesNotPublished, NotFound, TileNotFound
from carvault.ledger.leaves import LEAF_V2, leaf_opening, log_key_of
from carvault.ledger.tiles import PREFIX, TILE_WIDTH, latest_checkpoint, parse_tile_path, tile_path
from carvault.store.blobs import BlobNotFound
from carvault.store.metadata import BatchRecord
from carvault.web.deps import MAX_DB_INT, Caller, CurrentOwner, RegionDep, RowId
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/log", tags=["transparency log"])
# C2SP tlog-tiles (https://c2sp.org/tlog-tiles): static resources, read from the blob store (ledger/tiles.py).
tiles_router = APIRouter(prefix="/tlog", tags=["transparency log"])
_IMMUTABLE = "public, max-age=31536000, immutable"
_CHECKPOINT_CACHE = "public, max-age=2"  # mutable: the spec asks that it not be cached beyond a few seconds


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode() for x in items]


@router.get(
    "/cosigned-checkpoint",
    response_class=PlainTextResponse,
    summary="Latest checkpoint cosigned by the quorum of the region's witnesses (C2SP cosignature/v1)",
    responses=raises(NotFound),
)
def cosigned_checkpoint(region: RegionDep) -> str:
    note = region.witnessing.latest_cosigned()
    if note is None:
        raise NotFound("no checkpoint is cosigned by the witnesses yet")
    return note


@router.get(
    "/checkpoint", response_class=PlainTextResponse, summary="Latest checkpoint (C2SP tlog-checkpoint signed note)"
)
def checkpoint(region: RegionDep) -> str:
    return region.log.checkpoint()


@router.get("/key", summary="The log's public verifier key (signed-note vkey) and origin")
def key(region: RegionDep) -> dict[str, Any]:
    return {"origin": region.log.origin, "vkey": region.log.vkey}


def _leaf_index(region: RegionDep, leaf_hash: str) -> int:
    """The index of a leaf given its hash (base64 or hex), or NotFound."""
    text = leaf_hash.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise InvalidQuery("leaf_hash must be 32 bytes, in base64 or hex", parameter="leaf_hash")
    with region.db.session() as s:
        index = s.scalar(select(BatchRecord.log_index).where(BatchRecord.leaf_hash == raw))
    if index is None:
        raise NotFound("no logged leaf has this hash")
    return index


@router.get("/proof/inclusion", summary="Inclusion proof of a leaf by index or leaf hash (RFC 9162 §2.1.3)")
def inclusion(
    region: RegionDep,
    index: int | None = Query(None, ge=0, le=MAX_DB_INT),
    leaf_hash: str | None = Query(None, max_length=100, description="the leaf's hash, base64 or hex"),
    size: int | None = Query(None, ge=1, le=MAX_DB_INT),
) -> dict[str, Any]:
    if (index is None) == (leaf_hash is None):
        raise InvalidQuery("give exactly one of index and leaf_hash")
    if index is None:
        index = _leaf_index(region, leaf_hash or "")
    n = size or region.log.size
    if index >= n or n > region.log.size:
        raise InvalidQuery(f"need index < size <= {region.log.size}", index=index, size=n)
    answer: dict[str, Any] = {
        "index": index,
        "size": n,
        "leaf_hash": base64.b64encode(region.log.leaf_hash(index)).decode(),
        "proof": _b64(region.log.inclusion_proof(index, n)),
    }
    # Witnessed evidence (docs/witness.md): the first checkpoint of at least this size that the region's witnesses
    # cosigned, with the consistency proof from `size` to it (empty when the sizes are equal).
    cosigned = region.witnessing.cosigned_at_least(n)
    if cosigned is not None:
        cosigned_size = int(cosigned.splitlines()[1])
        answer["cosigned_checkpoint"] = cosigned
        answer["cosigned_consistency"] = (
            _b64(region.log.consistency_proof(n, cosigned_size)) if cosigned_size > n else []
        )
    return answer


@router.get("/proof/consistency", summary="Consistency proof between two tree sizes (RFC 9162 §2.1.4)")
def consistency(
    region: RegionDep, old: int = Query(ge=1, le=MAX_DB_INT), new: int | None = Query(None, ge=1, le=MAX_DB_INT)
) -> dict[str, Any]:
    n = new or region.log.size
    if old > n or n > region.log.size:
        raise InvalidQuery(f"need old <= new <= {region.log.size}", old=old, new=n)
    return {"old": old, "new": n, "proof": _b64(region.log.consistency_proof(old, n))}


@router.get(
    "/batches/{vin}/{seq}",
    summary="Where one of my vehicle's batches sits in the log (owner, or a grant whose window holds the batch)",
)
def batch_entry(vin: str, seq: RowId, caller: Caller, region: RegionDep) -> dict[str, Any]:
    access = region.grants.access(caller, vin)
    vehicle = access.vehicle
    with region.db.session() as s:
        rec = s.scalar(select(BatchRecord).where(BatchRecord.vin == vehicle.vin, BatchRecord.seq == seq))
    if rec is None or rec.log_index is None:
        raise NotFound(f"no logged batch {seq} of {vin}")
    access.view.window(rec.t0, rec.t1 + 1)
    if not access.view.is_owner:
        region.grants.record_read(access, AuditAction.BATCHES_READ, {"seq": rec.seq, "log_index": rec.log_index})
    n = region.log.size
    return {
        "vin": rec.vin,
        "seq": rec.seq,
        "batch_hash": rec.batch_hash,
        "received_ms": rec.received_ms,
        "index": rec.log_index,
        "size": n,
        "leaf_version": rec.leaf_version or 1,
        **{k: v for k, v in leaf_opening(rec, vehicle.log_key).items() if k == "leaf_salt"},
        "proof": _b64(region.log.inclusion_proof(rec.log_index, n)),
    }


@router.get("/vehicles/{vin}/log-key", summary="My vehicle's log key, which opens its v2 leaves (owner only)")
def vehicle_log_key(vin: str, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    vehicle = region.vehicles.owned_one(owner.owner_id, vin)
    key = log_key_of(region.db, vehicle.vin)
    region.audit.by_owner(owner.owner_id, AuditAction.LOG_KEY_READ, vin=vehicle.vin)
    return {"vin": vehicle.vin, "leaf_version": LEAF_V2, "log_key": base64.b64encode(key).decode()}


@tiles_router.get(
    "/checkpoint",
    response_class=PlainTextResponse,
    summary="The published checkpoint of the tiled log (C2SP tlog-tiles; its tiles are all published)",
)
def tiles_checkpoint(region: RegionDep) -> Response:
    note = latest_checkpoint(region.blobs)
    if note is None:
        raise NotFound("no checkpoint is published yet")
    return PlainTextResponse(note, media_type="text/plain; charset=utf-8", headers={"Cache-Control": _CHECKPOINT_CACHE})


@tiles_router.get(
    "/tile/{path:path}",
    response_class=Response,
    summary="A hash tile `<L>/<N>[.p/<W>]` of the log (C2SP tlog-tiles); entry bundles are not published",
)
def tile(path: str, region: RegionDep) -> Response:
    if path == "entries" or path.startswith("entries/"):
        raise LogEntriesNotPublished(
            "this log publishes hash tiles only: its leaves are commitments that only a car's owner can open"
        )
    try:
        level, index, width = parse_tile_path(path)
    except ValueError as exc:
        raise TileNotFound(f"not a tile path: {exc}") from None
    try:
        data = region.blobs.get(PREFIX + tile_path(level, index, width))
    except BlobNotFound:
        raise TileNotFound("this tile is not published", level=level, index=index, width=width) from None
    if len(data) != width * 32 or width > TILE_WIDTH:
        raise TileNotFound("this tile is not published", level=level, index=index, width=width)
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": _IMMUTABLE})
