"""Camera frames on the platform: accepted only when bound to a signed batch, stored as content-addressed blobs.

A vehicle uploads a de-identified JPEG with ``POST /api/v1/ingest/frames`` after the ``kind="media"``
batch that describes it. The frame is taken only if ``sha256(body)`` is the ``FrameHash`` of a row of an
accepted media batch of that vehicle whose ``DeIdentified`` is true; the gateway already refused any
batch with unmarked frames, so every stored frame was blurred in the car, and its hash is covered by the
vehicle's signature and the transparency log. Anything else is refused before a byte is written.

Accepted frames are written once, durably and atomically, to the blob store's ``blobs/<ab>/<sha256>.jpg`` (on
the local store the file of that name in the data folder, as always); re-sending one is
answered like the first time. The ``camera_frames`` table indexes which accepted batch names which
frame; it is filled lazily from the stored batch bytes (the evidence), so no other component has to
know about frames, and ``camera_frame_scans`` remembers how far each vehicle's media batches were read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from carvault.errors import (
    BadRequest,
    Conflict,
    DeIdentificationMissing,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnknownVehicle,
    UnsupportedMediaType,
)
from carvault.protocol import CAMERA, payload_view
from carvault.store.blobs import BlobNotFound, BlobStore
from carvault.store.metadata import BatchRecord, Database, Vehicle, now_ms
from carvault.store.segments import SegmentReader
from carvault.store.tables import FrameRecord, FrameScan

FRAME_MEDIA_TYPE = "image/jpeg"
VIN_HEADER = "CarVault-Vin"
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a 1280x720 JPEG at quality 90 is 0.1-0.3 MB
_JPEG_START = b"\xff\xd8\xff"
_HEX = frozenset("0123456789abcdef")


class UnknownFrame(Conflict):
    """No accepted media batch of this vehicle names the frame's SHA-256 (upload that batch first)."""

    code = "unknown_frame"


def frame_json(f: FrameRecord) -> dict[str, Any]:
    """A frame's index entry as the API shows it."""
    return {
        "vin": f.vin,
        "sha256": f.sha256,
        "seq": f.seq,
        "batch_hash": f.batch_hash,
        "t_ms": f.t_ms,
        "position": f.position,
        "deidentified": f.deidentified,
        "redactions": json.loads(f.redactions),
        "detectors": json.loads(f.detectors),
        "bytes": f.size,
        "stored_ms": f.stored_ms,
    }


def is_sha256_hex(text: str) -> bool:
    """64 lower-case hex digits."""
    return len(text) == 64 and set(text) <= _HEX


class FrameStore:
    """Accepts, indexes and serves one region's camera frames."""

    def __init__(
        self, db: Database, segments: SegmentReader, blobs: BlobStore, *, max_bytes: int = MAX_FRAME_BYTES
    ) -> None:
        self.db = db
        self.segments = segments
        self.blobs = blobs
        self.max_bytes = max_bytes

    def delete_vehicle(self, vin: str) -> int:
        """Erase a vehicle's frames (blobs and index); return how many."""
        from sqlalchemy import delete as sql_delete
        from sqlalchemy import select as sql_select

        with self.db.session() as s:
            hashes = list(s.scalars(sql_select(FrameRecord.sha256).where(FrameRecord.vin == vin)))
            s.execute(sql_delete(FrameRecord).where(FrameRecord.vin == vin))
            s.execute(sql_delete(FrameScan).where(FrameScan.vin == vin))
        for h in hashes:
            self.blobs.delete(self.blob_key(h))
        return len(hashes)

    @staticmethod
    def blob_key(sha256: str) -> str:
        """Where a frame's bytes live in the blob store: ``blobs/<first two hex digits>/<sha256>.jpg``."""
        return f"blobs/{sha256[:2]}/{sha256}.jpg"

    def blob_path(self, sha256: str) -> Path | None:
        """The frame's file on this machine when the blob store is a local folder (else None)."""
        return self.blobs.local_path(self.blob_key(sha256))

    # ------------------------------------------------------------------ upload
    def accept(self, vin: str | None, body: bytes, content_type: str | None) -> dict[str, Any]:
        """Store one frame if an accepted batch of ``vin`` names it as de-identified; else raise why not."""
        media = (content_type or "").split(";")[0].strip().lower()
        if media != FRAME_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"frames are sent as {FRAME_MEDIA_TYPE}, not {media or 'nothing'}", expected=FRAME_MEDIA_TYPE
            )
        if len(body) > self.max_bytes:
            raise PayloadTooLarge(f"frame is {len(body)} bytes; the limit is {self.max_bytes}", limit=self.max_bytes)
        if not body.startswith(_JPEG_START):
            raise UnsupportedMediaType("the body is not a JPEG image", expected=FRAME_MEDIA_TYPE)
        vin = (vin or "").strip().upper()
        if not vin:
            raise BadRequest(f"send the vehicle's VIN in the {VIN_HEADER} header", header=VIN_HEADER)
        with self.db.session() as s:
            if s.get(Vehicle, vin) is None:
                raise UnknownVehicle(f"vehicle {vin} is not provisioned in this region", vin=vin)
        sha = hashlib.sha256(body).hexdigest()
        rec = self.find(vin, sha)
        if rec is None:
            self.refresh(vin)
            rec = self.find(vin, sha)
        if rec is None:
            raise UnknownFrame(
                f"no accepted media batch of {vin} names a frame with SHA-256 {sha}; upload the "
                "signed batch that describes the frame first",
                vin=vin,
                sha256=sha,
            )
        if not rec.deidentified:
            raise DeIdentificationMissing(
                "the batch naming this frame does not mark it as de-identified in the "
                "car; faces and licence plates must be blurred before it leaves the "
                "vehicle",
                vin=vin,
                sha256=sha,
                seq=rec.seq,
            )
        duplicate = rec.stored_ms is not None and self.blobs.exists(self.blob_key(sha))
        if not duplicate:
            self._write_blob(sha, body)
            with self.db.session() as s:
                s.execute(
                    update(FrameRecord)
                    .where(FrameRecord.id == rec.id, FrameRecord.stored_ms.is_(None))
                    .values(size=len(body), stored_ms=now_ms())
                )
            rec = self.find(vin, sha) or rec
        return {
            "vin": vin,
            "sha256": sha,
            "bytes": len(body),
            "seq": rec.seq,
            "batch_hash": rec.batch_hash,
            "t_ms": rec.t_ms,
            "stored_ms": rec.stored_ms,
            "duplicate": duplicate,
        }

    def _write_blob(self, sha256: str, body: bytes) -> None:
        """Write once, durably and atomically (the blob store's ``put``); Unavailable when it could not be stored."""
        key = self.blob_key(sha256)
        with contextlib.suppress(BlobNotFound):
            if hashlib.sha256(self.blobs.get(key)).hexdigest() == sha256:
                return  # another replica stored it first
        try:
            self.blobs.put(key, body)
        except Unavailable as e:
            raise Unavailable(f"frame could not be stored: {e.message}") from None

    # ------------------------------------------------------------------ index
    def find(self, vin: str, sha256: str) -> FrameRecord | None:
        """The index entry of a frame of ``vin``, if an indexed batch names it."""
        with self.db.session() as s:
            return s.scalar(select(FrameRecord).where(FrameRecord.vin == vin, FrameRecord.sha256 == sha256))

    def refresh(self, vin: str) -> int:
        """Index the frames named by media batches of ``vin`` accepted since the last scan; return how many."""
        with self.db.session() as s:
            scanned = s.scalar(select(FrameScan.scanned_seq).where(FrameScan.vin == vin)) or 0
            batches = s.execute(
                select(
                    BatchRecord.seq,
                    BatchRecord.batch_hash,
                    BatchRecord.segment,
                    BatchRecord.offset,
                    BatchRecord.length,
                    BatchRecord.payload_key,
                    BatchRecord.columns,
                )
                .where(BatchRecord.vin == vin, BatchRecord.kind == "media", BatchRecord.seq > scanned)
                .order_by(BatchRecord.seq)
            ).all()
        added = 0
        for b in batches:
            if CAMERA + "FrameHash" in b.columns.split(","):
                raw = self.segments.envelope(b)
                added += self._index(vin, b.seq, b.batch_hash, _camera_rows(raw, b.columns.split(",")))
        if batches:
            last = batches[-1].seq
            with self.db.session() as s:
                row = s.get(FrameScan, vin)
                if row is None:
                    s.add(FrameScan(vin=vin, scanned_seq=last))
                elif row.scanned_seq < last:
                    row.scanned_seq = last
        return added

    def _index(self, vin: str, seq: int, batch_hash: str, rows: list[dict[str, Any]]) -> int:
        """Insert rows not yet indexed (the first batch naming a frame wins; another replica may race us)."""
        for _ in range(3):
            try:
                with self.db.session() as s:
                    known = set(
                        s.scalars(
                            select(FrameRecord.sha256).where(
                                FrameRecord.vin == vin, FrameRecord.sha256.in_([r["sha256"] for r in rows])
                            )
                        )
                    )
                    new = 0
                    for r in rows:
                        if r["sha256"] in known:
                            continue
                        known.add(r["sha256"])
                        s.add(FrameRecord(vin=vin, seq=seq, batch_hash=batch_hash, **r))
                        new += 1
                return new
            except IntegrityError:
                continue
        raise Unavailable("the frame index is too busy; try again")

    # ------------------------------------------------------------------ download
    def read(self, vin: str, sha256: str) -> tuple[FrameRecord, bytes]:
        """A stored frame of ``vin`` and its bytes, or ``NotFound``."""
        rec = self.find(vin, sha256) if is_sha256_hex(sha256) else None
        if rec is None or rec.stored_ms is None:
            raise NotFound(f"vehicle {vin} has no stored frame {sha256}", vin=vin, sha256=sha256)
        try:
            data = self.blobs.get(self.blob_key(sha256))
        except (BlobNotFound, Unavailable) as e:
            raise Unavailable(f"frame {sha256} is indexed but its blob cannot be read: {e.message}") from None
        return rec, data


def _camera_rows(envelope: bytes, columns: list[str]) -> list[dict[str, Any]]:
    """The framed rows of a stored media batch, read from its exact bytes."""
    wanted = ["t"] + [
        CAMERA + c
        for c in ("FrameHash", "DeIdentified", "Position", "Redactions", "Detectors")
        if CAMERA + c in columns
    ]
    table = pq.ParquetFile(pa.BufferReader(payload_view(envelope))).read(columns=wanted, use_threads=False)
    cols = {name: table.column(name).to_pylist() for name in wanted if name != "t"}
    t = table.column("t").cast(pa.int64()).to_pylist()
    rows: dict[str, dict[str, Any]] = {}
    for i, sha in enumerate(cols[CAMERA + "FrameHash"]):
        if sha is None or sha in rows:
            continue
        deid = cols.get(CAMERA + "DeIdentified", [None] * len(t))[i]
        rows[sha] = {
            "sha256": sha,
            "t_ms": t[i],
            "deidentified": bool(deid),
            "position": cols.get(CAMERA + "Position", [None] * len(t))[i],
            "redactions": cols.get(CAMERA + "Redactions", [None] * len(t))[i] or "[]",
            "detectors": cols.get(CAMERA + "Detectors", [None] * len(t))[i] or "[]",
        }
    return list(rows.values())
