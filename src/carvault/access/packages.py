"""Incident packages: one ZIP an owner can hand to a court, verifiable offline (docs/incident-package.md).

The builder gathers the window's original signed batches byte for byte, the vehicle certificate and the
region CA, a fresh checkpoint with an inclusion proof per batch (and the salt that opens its v2 leaf),
consistency proofs from the owner's saved checkpoints, the coverage and gap list, readable CSV, the
49 CFR 563 EDR table and a report, then signs the manifest (the list of files and their SHA-256)
with the region's log key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import uuid
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from sqlalchemy import func, select, update

from carvault.access.audit import Actor
from carvault.errors import NotFound, Unavailable
from carvault.ledger.checkpoint import parse_checkpoint, verify_cosignatures
from carvault.ledger.leaves import leaf_opening
from carvault.ledger.merkle import VerificationError
from carvault.pki import fingerprint
from carvault.protocol import decode_envelope
from carvault.store.metadata import BatchRecord, IncidentPackage, SavedCheckpoint, Vehicle, now_ms
from carvault.verify.documents import PACKAGE_VERSION
from carvault.verify.package import MANIFEST_CONTEXT, PACKAGE_FORMAT, WITNESSED
from carvault.verify.window import assemble, to_csv
from carvault.windows import check_window

if TYPE_CHECKING:
    from carvault.region import Region

_LOG = logging.getLogger("carvault.access.packages")
MAX_WINDOW_MS = 24 * 3600 * 1000
TIME_GAP_MS = 2000
VERIFY_HINT = (
    "Run `carvault verify <this file> --trust <region trust file>` on any computer, offline. It "
    "checks every vehicle signature over the original bytes, the certificate chain, the hash chain, "
    "every log inclusion proof and the checkpoint signature, and that the tables equal the signed data."
)


@dataclass(frozen=True)
class Event:
    """The event a package is about (time zero)."""

    kind: str
    t_ms: int


def coverage_report(
    records: list[dict[str, Any]], tables: list[pa.Table], start_ms: int, end_ms: int
) -> dict[str, Any]:
    """Chain continuity and every gap (in the chain, in batch spans, in samples) over the window."""
    gaps: list[dict[str, Any]] = []
    recs = sorted(records, key=lambda r: r["seq"])
    chain = "continuous"
    for a, b in zip(recs, recs[1:], strict=False):
        if b["seq"] != a["seq"] + 1:
            chain = "broken"
            gaps.append(
                {
                    "kind": "chain",
                    "from_ms": a["t1"],
                    "to_ms": b["t0"],
                    "detail": f"batches {a['seq'] + 1}..{b['seq'] - 1} are not in the package",
                }
            )
        elif b["prev"] != a["batch_hash"]:
            chain = "broken"
            gaps.append(
                {
                    "kind": "chain",
                    "from_ms": a["t1"],
                    "to_ms": b["t0"],
                    "detail": f"batch {b['seq']} does not name batch {a['seq']} as its predecessor",
                }
            )
    cursor = start_ms
    for r in sorted(recs, key=lambda r: r["t0"]):
        if r["t0"] > cursor and r["t0"] > start_ms:
            gaps.append(
                {
                    "kind": "no batch",
                    "from_ms": cursor,
                    "to_ms": min(r["t0"], end_ms),
                    "detail": "no batch covers this time (vehicle off or data not uploaded)",
                }
            )
        cursor = max(cursor, r["t1"] + 1)
    if cursor < end_ms:
        gaps.append(
            {
                "kind": "no batch",
                "from_ms": cursor,
                "to_ms": end_ms,
                "detail": "no batch covers this time (vehicle off or data not uploaded)",
            }
        )
    ts = (
        np.sort(np.concatenate([t.column("t").cast(pa.int64()).to_numpy() for t in tables]))
        if tables
        else np.empty(0, np.int64)
    )
    ts = ts[(ts >= start_ms) & (ts < end_ms)]
    for i in np.flatnonzero(np.diff(ts) > TIME_GAP_MS).tolist():
        lo, hi = int(ts[i]), int(ts[i + 1])
        gaps.append(
            {
                "kind": "no samples",
                "from_ms": lo,
                "to_ms": hi,
                "detail": f"{(hi - lo) / 1000:.1f} s without samples inside covered batches",
            }
        )
    return {
        "window": {"start_ms": start_ms, "end_ms": end_ms},
        "batches": len(recs),
        "first_seq": recs[0]["seq"] if recs else None,
        "last_seq": recs[-1]["seq"] if recs else None,
        "chain": chain,
        "gaps": gaps,
    }


def sign_manifest(manifest: bytes, region: Region) -> str:
    """Base64 Ed25519 signature of the manifest by the region log key (domain-separated)."""
    return base64.b64encode(region.log_key.sign(MANIFEST_CONTEXT + manifest)).decode()


def trust_document(region: Region) -> dict[str, Any]:
    """What a verifier must trust for this region: log origin and key, and the vehicle CA."""
    return {
        "region": region.name,
        "log_origin": region.log.origin,
        "log_vkey": region.log.vkey,
        "ca_pem": region.ca.cert_pem,
        "ca_sha256": fingerprint(region.ca.cert_pem),
    }


class PackageBuilder:
    """Builds and stores incident packages for one region."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.blobs = region.blobs  # packages/<name>.zip in the region's blob store

    def build(
        self,
        vin: str,
        start_ms: int,
        end_ms: int,
        *,
        event: Event | None,
        requested_by: Actor,
        owner_id: int | None,
        legal_basis: str,
        order_id: int | None = None,
    ) -> IncidentPackage:
        """Build, store and record a package for ``vin`` over [start_ms, end_ms)."""
        from carvault.access.report import render_report
        from carvault.verify.edr import edr_csv, edr_elements

        check_window(start_ms, end_ms, MAX_WINDOW_MS, what="a package window")
        r = self.region
        with r.db.session() as s:
            vehicle = s.get(Vehicle, vin)
            if vehicle is None:
                raise NotFound(f"no vehicle {vin}")
            seqs = s.execute(
                select(func.min(BatchRecord.seq), func.max(BatchRecord.seq)).where(
                    BatchRecord.vin == vin, BatchRecord.t0 < end_ms, BatchRecord.t1 >= start_ms
                )
            ).one()
            # Every batch signed between the window's first and last one (event records included), so the
            # hash chain across the window is complete and a dropped batch cannot go unnoticed.
            recs = (
                list(
                    s.scalars(
                        select(BatchRecord)
                        .where(
                            BatchRecord.vin == vin,
                            BatchRecord.seq >= (seqs[0] or 0),
                            BatchRecord.seq <= (seqs[1] or -1),
                        )
                        .order_by(BatchRecord.seq)
                    )
                )
                if seqs[0] is not None
                else []
            )
            saved = (
                list(s.scalars(select(SavedCheckpoint).where(SavedCheckpoint.owner_id == owner_id)))
                if owner_id is not None
                else []
            )
        if not recs:
            raise NotFound("no data of this vehicle in that window", vin=vin, start_ms=start_ms, end_ms=end_ms)
        if any(rec.log_index is None for rec in recs):
            raise Unavailable("some batches of this window are still being logged; try again in a moment")
        if not vehicle.certificate_pem:
            raise Unavailable(f"vehicle {vin} has no certificate; it must be re-provisioned")

        files: dict[str, bytes] = {}
        tables = []
        records = []
        checkpoint = r.log.checkpoint()
        tree_size = int(checkpoint.splitlines()[1])
        # A witnessed tree that holds every batch is preferred: its note carries the witnesses' cosignatures.
        cosigned = r.witnessing.latest_cosigned()
        if cosigned is not None:
            cosigned_size = int(cosigned.splitlines()[1])
            if cosigned_size > max((rec.log_index or 0) for rec in recs) and cosigned_size <= tree_size:
                checkpoint, tree_size = cosigned, cosigned_size
        proofs = []
        for rec in recs:
            raw = r.segment_reader.envelope(rec)  # byte-exact, wherever its payload lives
            env = decode_envelope(raw)
            files[f"batches/{rec.seq:012d}.cvb"] = raw
            tables.append(env.table())
            records.append(
                {"seq": rec.seq, "t0": rec.t0, "t1": rec.t1, "prev": rec.prev_hash, "batch_hash": rec.batch_hash}
            )
            proofs.append(
                {
                    "seq": rec.seq,
                    "batch_hash": rec.batch_hash,
                    "received_ms": rec.received_ms,
                    "leaf_index": rec.log_index,
                    "proof": [
                        base64.b64encode(h).decode() for h in r.log.inclusion_proof(rec.log_index or 0, tree_size)
                    ],
                    **leaf_opening(rec, vehicle.log_key),  # v2: leaf_version and the salt that opens this leaf
                }
            )
        consistency = [
            {
                "old_size": c.tree_size,
                "new_size": tree_size,
                "proof": [base64.b64encode(h).decode() for h in r.log.consistency_proof(c.tree_size, tree_size)],
            }
            for c in saved
            if 0 < c.tree_size <= tree_size
        ]
        window = assemble(tables, start_ms, end_ms, r.catalogue)
        coverage = coverage_report(records, tables, start_ms, end_ms)
        elements = edr_elements(window, event.t_ms) if event else []
        html, pdf = render_report(
            table=window,
            event_ms=event.t_ms if event else None,
            window=(start_ms, end_ms),
            vin=vin,
            region=r.name,
            coverage=coverage,
            edr=elements,
            verification_hint=VERIFY_HINT,
        )
        files["certs/vehicle.pem"] = vehicle.certificate_pem.encode()
        files["certs/region-ca.pem"] = r.ca.cert_pem.encode()
        files["log/checkpoint.txt"] = checkpoint.encode()
        files["log/proofs.json"] = _json({"tree_size": tree_size, "region": r.name, "proofs": proofs})
        files["log/consistency.json"] = _json({"proofs": consistency})
        files["trust.json"] = _json(trust_document(r))
        files["coverage.json"] = _json(coverage)
        files["data/window.csv"] = to_csv(window)
        if event:
            files["edr/part563.csv"] = edr_csv(elements)
        files["report/report.html"] = html
        files["report/report.pdf"] = pdf
        created = now_ms()
        manifest = _json(
            {
                "format": PACKAGE_FORMAT,
                "version": PACKAGE_VERSION,
                "region": r.name,
                "vin": vin,
                "window": {"start_ms": start_ms, "end_ms": end_ms},
                "event": {"kind": event.kind, "t_ms": event.t_ms} if event else None,
                "created_ms": created,
                "log_origin": r.log.origin,
                "tree_size": tree_size,
                "requested_by": str(requested_by),
                "legal_basis": legal_basis,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
            }
        )
        blob = _zip(files, manifest, sign_manifest(manifest, r), created)
        name = f"{vin}-{start_ms}-{end_ms}-{uuid.uuid4().hex[:8]}.zip"
        self.blobs.put(f"packages/{name}", blob)  # durable before the row names it
        row = IncidentPackage(
            owner_id=owner_id,
            vin=vin,
            start_ms=start_ms,
            end_ms=end_ms,
            event_kind=event.kind if event else None,
            event_ms=event.t_ms if event else None,
            requested_by=str(requested_by),
            order_id=order_id,
            file_name=name,
            sha256=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
            batches=len(recs),
            tree_size=tree_size,
            created_ms=created,
        )
        with r.db.session() as s:
            s.add(row)
        r.audit.record(
            owner_id=owner_id,
            vin=vin,
            actor=requested_by,
            action="package.create",
            legal_basis=legal_basis,
            detail={
                "package_id": row.id,
                "start_ms": start_ms,
                "end_ms": end_ms,
                "batches": len(recs),
                "sha256": row.sha256,
                "order_id": order_id,
            },
        )
        return row

    def read(self, row: IncidentPackage) -> bytes:
        """The stored package file, completed with log/witnessed.json first when it can be (``witnessed``)."""
        data = self.blobs.get(f"packages/{row.file_name}")
        try:
            return self.witnessed(row, data)
        except Unavailable:  # the database or the store is down: the package as it is still verifies
            _LOG.warning("completing package %s with a witnessed checkpoint failed", row.id, exc_info=True)
            return data

    def witnessed(self, row: IncidentPackage, data: bytes) -> bytes:
        """The package, completed with the latest witnessed checkpoint when its own lacks the witnesses' quorum.

        A package built before the region's witnesses cosigned a tree holding its batches (right after a crash, or
        while a witness is down) carries a log-signed checkpoint only. Once a cosigned checkpoint of at least its
        tree size exists, ``log/witnessed.json`` is added: that note and the RFC 9162 consistency proof from the
        package's tree to it (docs/incident-package.md). It proves itself, so it stays outside the signed manifest;
        the stored file is replaced once, and the row's SHA-256 and size follow it.
        """
        witnessing = self.region.witnessing
        if not witnessing.witnesses:
            return data
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if WITNESSED in z.namelist():
                return self._settle(row, data)  # completed before (a crash may have left the row behind)
            own = z.read("log/checkpoint.txt").decode()
        try:
            if len(verify_cosignatures(own, [w.vkey for w in witnessing.witnesses])) >= witnessing.needed:
                return data
        except VerificationError:  # a cosignature line that does not verify counts for nothing here
            pass
        later = witnessing.cosigned_at_least(row.tree_size)
        if later is None:
            return data
        size = parse_checkpoint(later).size
        if size > self.region.log.size:  # this process has not caught up with the log yet: next time
            return data
        proof = self.region.log.consistency_proof(row.tree_size, size) if row.tree_size < size else []
        doc = {
            "checkpoint": later,
            "old_size": row.tree_size,
            "new_size": size,
            "proof": [base64.b64encode(h).decode() for h in proof],
        }
        sink = io.BytesIO(data)
        with zipfile.ZipFile(sink, "a") as z:
            info = zipfile.ZipInfo(WITNESSED, date_time=_zip_time(row.created_ms))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, _json(doc))
        return self._settle(row, sink.getvalue(), replace=True)

    def _settle(self, row: IncidentPackage, data: bytes, *, replace: bool = False) -> bytes:
        """Make the stored file and the row agree on ``data`` (stored first when ``replace``), holding the row's
        write lock, so two replicas completing one package at once store one file; the file the row names."""
        sha = hashlib.sha256(data).hexdigest()
        if sha == row.sha256 and not replace:
            return data
        key = f"packages/{row.file_name}"
        with self.region.db.session() as s:
            s.execute(update(IncidentPackage).where(IncidentPackage.id == row.id).values(size=IncidentPackage.size))
            current = s.get(IncidentPackage, row.id)
            if current is None:
                raise NotFound("no such package")
            if replace and current.sha256 != row.sha256:  # another replica completed it meanwhile
                stored = self.blobs.get(key)
                row.sha256, row.size = current.sha256, current.size
                return stored
            if replace:
                self.blobs.put(key, data)  # durable before the row names its hash
            current.sha256, current.size = sha, len(data)
        row.sha256, row.size = sha, len(data)
        return data


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False).encode()


def _zip_time(created_ms: int) -> tuple[int, int, int, int, int, int]:
    import datetime as dt

    y, mo, d, h, mi, sec = dt.datetime.fromtimestamp(created_ms / 1000, dt.UTC).timetuple()[:6]
    return y, mo, d, h, mi, sec


def _zip(files: dict[str, bytes], manifest: bytes, signature: str, created_ms: int) -> bytes:
    when = _zip_time(created_ms)
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        for name, data in [("manifest.json", manifest), ("manifest.sig", signature.encode()), *sorted(files.items())]:
            info = zipfile.ZipInfo(name, date_time=when)
            # Batches and PDFs are already compressed; deflate the text.
            info.compress_type = zipfile.ZIP_STORED if name.endswith((".cvb", ".pdf")) else zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return sink.getvalue()
