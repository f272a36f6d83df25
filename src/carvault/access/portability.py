"""Portability: an owner's full copy transferred to a processor they name, as a signed bundle (docs/portability.md).

The owner names the recipient (name, legal entity, jurisdiction). A recipient outside this region, or a designated
gatekeeper, is refused by the sharing rules (``compliance.sharing.check_processor``). The region builds the bundle
at once: every batch of the vehicle still held (deleted data is gone from the index, so never in a bundle) with
its exact signed bytes, the vehicle certificate and the region CA, one checkpoint with an inclusion proof for
every batch, the vehicle's log key, the trust document and a coverage report, listed with their SHA-256 in a
manifest signed by the region's log key. Batches carrying never-shareable categories (camera, biometrics, cabin)
are left out and listed, unless the owner explicitly includes them.

The recipient fetches it once, with a token of a ``portability`` grant made for it: the first complete download
revokes the grant (a second fetch is 401), records ``portability.fetch`` in the owner's audit log and removes the
file. Data frozen by a legal hold is refused at request and at fetch; a bundle whose data was deleted in between
is withdrawn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from carvault.access.accounts import Principal
from carvault.access.audit import OWNER_REQUEST, Actor, AuditAction
from carvault.access.packages import coverage_report, sign_manifest, trust_document
from carvault.compliance.residency import region_name
from carvault.compliance.sharing import DAY_MS, NEVER_SHAREABLE, check_processor
from carvault.compliance.transfers import transfer_note
from carvault.errors import Conflict, InvalidQuery, NotFound, Unavailable, ValidationFailed
from carvault.ingest.importer import BUNDLE_FORMAT, BUNDLE_VERSION, LOG_KEY_FILE, import_code_digest
from carvault.ledger.leaves import leaf_opening, log_key_of
from carvault.store.metadata import BatchRecord, PortabilityBundle, Vehicle, now_ms, rowcount

if TYPE_CHECKING:
    from carvault.region import Region

BUNDLE_DAYS = 7  # the one-time grant, its token and the stored file last this long
FETCH_LEASE_MS = 10 * 60_000  # a download that neither finished nor failed cleanly frees the bundle after this
MAX_NAME = 200
BUNDLE_ID_CHARS = 24  # URL-safe base64 of 18 random bytes; the fetch route matches exactly this shape


@dataclass(frozen=True)
class Recipient:
    """The processor the owner names to receive the copy."""

    name: str
    legal_entity: str
    jurisdiction: str
    gatekeeper: bool = False

    def checked(self) -> Recipient:
        """The recipient with trimmed names and a canonical jurisdiction; ``ValidationFailed`` for empty or long."""
        name, entity = self.name.strip(), self.legal_entity.strip()
        for value, field_ in ((name, "recipient.name"), (entity, "recipient.legal_entity")):
            if not value or len(value) > MAX_NAME:
                raise ValidationFailed(f"{field_} must be 1 to {MAX_NAME} characters", field=field_)
        return Recipient(name, entity, region_name(self.jurisdiction), self.gatekeeper)

    def as_json(self) -> dict[str, str]:
        """What the manifest and the audit log say about the recipient."""
        return {"name": self.name, "legal_entity": self.legal_entity, "jurisdiction": self.jurisdiction}


@dataclass(frozen=True)
class Built:
    """A bundle file's bytes and what it holds."""

    blob: bytes
    batch_hashes: list[str]
    excluded: list[dict[str, Any]]
    tree_size: int


def bundle_json(b: PortabilityBundle) -> dict[str, Any]:
    """A bundle as its owner sees it (never the token)."""
    return {
        "id": b.id,
        "vin": b.vin,
        "recipient": json.loads(b.recipient),
        "include_sensitive": bool(b.include_sensitive),
        "sha256": b.sha256,
        "size": b.size,
        "batches": b.batches,
        "excluded": b.excluded,
        "tree_size": b.tree_size,
        "grant_id": b.grant_id,
        "created_ms": b.created_ms,
        "expires_ms": b.expires_ms,
        "fetched_ms": b.fetched_ms,
        "fetch_url": f"/api/v1/portability/{b.id}",
    }


class Portability:
    """Building portability bundles and serving each once to its recipient."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.folder = region.settings.data_dir / "portability"

    # ---------------------------------------------------------------- request
    def request(
        self, owner_id: int, vin: str, recipient: Recipient, *, include_sensitive: bool = False
    ) -> tuple[PortabilityBundle, str, str]:
        """Build a bundle of the owner's vehicle for ``recipient``: the bundle row, its one-time fetch token (for
        the recipient) and the owner's one-time import code (proof of ownership when the copy is imported
        elsewhere; only its digest, in the signed manifest, is kept)."""
        r = self.region
        recipient = recipient.checked()
        v = r.vehicles.owned_one(owner_id, vin)
        check_processor(
            recipient.name,
            recipient.legal_entity,
            recipient.jurisdiction,
            gatekeeper=recipient.gatekeeper,
            region=r.name,
            transfers=r.transfers,
            recipient=("entity", recipient.legal_entity),
        )
        r.deletions.check_served(v.vin)
        self.sweep()
        bundle_id = secrets.token_urlsafe(BUNDLE_ID_CHARS * 3 // 4)
        import_code = secrets.token_urlsafe(16)
        built = self.build(
            v,
            bundle_id,
            recipient,
            include_sensitive=include_sensitive,
            import_code_sha256=import_code_digest(bundle_id, import_code),
        )
        # A copy for a processor abroad is an export: counted and logged under its transfer record, or refused.
        transfer = r.transfers.check(
            "entity",
            recipient.legal_entity,
            recipient.jurisdiction,
            owner_id=owner_id,
            categories={s.category for s in r.catalogue if include_sensitive or s.category not in NEVER_SHAREABLE},
            vin=v.vin,
            action="export",
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{bundle_id}.zip"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(built.blob)
            f.flush()
            os.fsync(f.fileno())
        try:
            expires = now_ms() + BUNDLE_DAYS * DAY_MS
            grant = r.grants.create(
                owner_id,
                kind="portability",
                vins=[v.vin],
                signals=shareable_paths(r),
                purpose="portability",
                expires_ms=expires,
                label=f"portability to {recipient.name}"[:MAX_NAME],
            )
            secret, _ = r.accounts.issue(
                owner_id,
                "token",
                label=f"portability bundle {bundle_id}",
                ttl_ms=BUNDLE_DAYS * DAY_MS,
                grant_id=grant.id,
                expires_ms=grant.expires_ms,
            )
            row = PortabilityBundle(
                id=bundle_id,
                owner_id=owner_id,
                vin=v.vin,
                grant_id=grant.id,
                recipient=json.dumps(recipient.as_json(), ensure_ascii=False),
                include_sensitive=include_sensitive,
                file_name=path.name,
                sha256=hashlib.sha256(built.blob).hexdigest(),
                size=len(built.blob),
                batches=len(built.batch_hashes),
                batch_hashes=json.dumps(built.batch_hashes),
                excluded=len(built.excluded),
                tree_size=built.tree_size,
                expires_ms=grant.expires_ms,
            )
            with r.db.session() as s:
                s.add(row)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        r.audit.record(
            owner_id=owner_id,
            vin=v.vin,
            actor=Actor("owner", str(owner_id)),
            action=AuditAction.PORTABILITY_EXPORT,
            legal_basis=OWNER_REQUEST,
            detail={
                "bundle_id": bundle_id,
                "recipient": recipient.as_json(),
                "grant_id": grant.id,
                "batches": row.batches,
                "excluded": row.excluded,
                "include_sensitive": include_sensitive,
                "sha256": row.sha256,
                **({"transfer": transfer_note(transfer)} if transfer is not None else {}),
            },
        )
        return row, secret, import_code

    # ------------------------------------------------------------------ build
    def build(
        self,
        vehicle: Vehicle,
        bundle_id: str,
        recipient: Recipient,
        *,
        include_sensitive: bool,
        import_code_sha256: str,
    ) -> Built:
        """The bundle ZIP of every batch the region holds of ``vehicle`` (see the module docstring)."""
        from carvault.access.packages import _json, _zip

        r = self.region
        with r.db.session() as s:
            recs = list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vehicle.vin).order_by(BatchRecord.seq)))
        if not recs:
            raise NotFound(f"the region holds no data of vehicle {vehicle.vin} to transfer", vin=vehicle.vin)
        if any(rec.log_index is None for rec in recs):
            raise Unavailable("some batches are still being logged; try again in a moment")
        if not vehicle.certificate_pem:
            raise Unavailable(f"vehicle {vehicle.vin} has no certificate; it must be re-provisioned")
        log_key = log_key_of(r.db, vehicle.vin)
        checkpoint = r.log.checkpoint()
        tree_size = int(checkpoint.splitlines()[1])
        files: dict[str, bytes] = {}
        proofs: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        excluded: list[dict[str, Any]] = []
        hashes: list[str] = []
        for rec in recs:
            proofs.append(self._proof_entry(rec, log_key, tree_size))
            barred = sorted(self._categories(rec) & NEVER_SHAREABLE)
            if barred and not include_sensitive:
                excluded.append(_excluded_entry(rec, barred))
                continue
            files[f"batches/{rec.seq:012d}.cvb"] = r.segment_reader.envelope(rec)
            records.append(
                {"seq": rec.seq, "t0": rec.t0, "t1": rec.t1, "prev": rec.prev_hash, "batch_hash": rec.batch_hash}
            )
            hashes.append(rec.batch_hash)
        if not records:
            raise InvalidQuery(
                "every batch of this vehicle holds camera, biometric or cabin data; include them to transfer",
                field="include_sensitive",
            )
        start, end = int(records[0]["t0"]), max(int(x["t1"]) for x in records) + 1
        files["certs/vehicle.pem"] = vehicle.certificate_pem.encode()
        files["certs/region-ca.pem"] = r.ca.cert_pem.encode()
        files["log/checkpoint.txt"] = checkpoint.encode()
        files["log/proofs.json"] = _json({"tree_size": tree_size, "region": r.name, "proofs": proofs})
        files[LOG_KEY_FILE] = base64.b64encode(log_key) + b"\n"
        files["trust.json"] = _json(trust_document(r))
        files["coverage.json"] = _json(coverage_report(records, [], start, end))
        created = now_ms()
        manifest = _json(
            {
                "format": BUNDLE_FORMAT,
                "version": BUNDLE_VERSION,
                "bundle_id": bundle_id,
                "region": r.name,
                "vin": vehicle.vin,
                "span": {"start_ms": start, "end_ms": end},
                "created_ms": created,
                "log_origin": r.log.origin,
                "tree_size": tree_size,
                "recipient": recipient.as_json(),
                "include_sensitive": include_sensitive,
                "excluded": excluded,
                "import_code_sha256": import_code_sha256,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
            }
        )
        blob = _zip(files, manifest, sign_manifest(manifest, r), created)
        return Built(blob, hashes, excluded, tree_size)

    def _proof_entry(self, rec: BatchRecord, log_key: bytes, tree_size: int) -> dict[str, Any]:
        """A log/proofs.json entry: where the batch sits in the log, its proof, and the salt of a v2 leaf."""
        proof = self.region.log.inclusion_proof(rec.log_index or 0, tree_size)
        return {
            "seq": rec.seq,
            "batch_hash": rec.batch_hash,
            "received_ms": rec.received_ms,
            "leaf_index": rec.log_index,
            "proof": [base64.b64encode(h).decode() for h in proof],
            **leaf_opening(rec, log_key),
        }

    def _categories(self, rec: BatchRecord) -> set[str]:
        """The privacy categories of the signals a batch carries (frames of a media batch are camera data)."""
        cat = self.region.catalogue
        found = {cat[p].category for p in rec.columns.split(",") if p and p in cat}
        return found | ({"exterior_camera"} if rec.kind == "media" else set())

    # ------------------------------------------------------------------ fetch
    def of_owner(self, owner_id: int, vin: str) -> list[PortabilityBundle]:
        """The owner's bundles of one vehicle, newest first."""
        v = self.region.vehicles.owned_one(owner_id, vin)
        with self.region.db.session() as s:
            return list(
                s.scalars(
                    select(PortabilityBundle)
                    .where(PortabilityBundle.vin == v.vin, PortabilityBundle.owner_id == owner_id)
                    .order_by(PortabilityBundle.created_ms.desc())
                )
            )

    def start_fetch(self, caller: Principal, bundle_id: str) -> tuple[PortabilityBundle, Path]:
        """Check the caller's one-time grant and the data, and lease the bundle for one download."""
        r = self.region
        with r.db.session() as s:
            b = s.get(PortabilityBundle, bundle_id)
        if b is None or caller.grant_id is None or caller.grant_id != b.grant_id:
            raise NotFound("no such portability bundle for this token")
        r.grants.live(b.grant_id)  # revoked or ended: 401
        r.deletions.check_served(b.vin)
        with r.db.session() as s:
            v = s.get(Vehicle, b.vin)
            held = set(s.scalars(select(BatchRecord.batch_hash).where(BatchRecord.vin == b.vin)))
        if v is None or v.owner_id != b.owner_id or not set(json.loads(b.batch_hashes)) <= held:
            self.withdraw(b)
            raise NotFound("the data in this bundle was deleted or its vehicle changed owner; the bundle was withdrawn")
        now = now_ms()
        with r.db.session() as s:
            claimed = rowcount(
                s.execute(
                    update(PortabilityBundle)
                    .where(
                        PortabilityBundle.id == bundle_id,
                        PortabilityBundle.fetched_ms.is_(None),
                        (PortabilityBundle.fetch_started_ms.is_(None))
                        | (PortabilityBundle.fetch_started_ms < now - FETCH_LEASE_MS),
                    )
                    .values(fetch_started_ms=now)
                )
            )
        if claimed != 1:
            raise Conflict("this bundle is being downloaded right now; it is served once")
        return b, self.folder / b.file_name

    def finish_fetch(self, b: PortabilityBundle, *, complete: bool, caller: Principal) -> None:
        """After the download: complete, the grant ends and the owner's audit log says who took it; else release."""
        r = self.region
        if not complete:
            with r.db.session() as s:
                s.execute(update(PortabilityBundle).where(PortabilityBundle.id == b.id).values(fetch_started_ms=None))
            return
        recipient = json.loads(b.recipient)
        with r.db.session() as s:
            s.execute(update(PortabilityBundle).where(PortabilityBundle.id == b.id).values(fetched_ms=now_ms()))
        by = Actor("recipient", recipient["name"][:100])
        r.grants.revoke(b.owner_id, b.grant_id, by=by)
        r.audit.record(
            owner_id=b.owner_id,
            vin=b.vin,
            actor=by,
            action=AuditAction.PORTABILITY_FETCH,
            legal_basis=f"owner's request to transfer a copy (portability, grant {b.grant_id})",
            detail={
                "bundle_id": b.id,
                "recipient": recipient,
                "grant_id": b.grant_id,
                "credential_id": caller.credential_id,
                "batches": b.batches,
                "sha256": b.sha256,
                "purpose": "portability",
            },
        )
        (self.folder / b.file_name).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove the files of bundles whose grant ended unfetched (no copy outlives its 7 days); how many."""
        with self.region.db.session() as s:
            ended = list(
                s.scalars(
                    select(PortabilityBundle.file_name).where(
                        PortabilityBundle.fetched_ms.is_(None), PortabilityBundle.expires_ms <= now_ms()
                    )
                )
            )
        gone = 0
        for name in ended:
            path = self.folder / name
            if path.exists():
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    def withdraw(self, b: PortabilityBundle) -> None:
        """End a bundle that may no longer be served: its grant revoked, its file removed."""
        self.region.grants.revoke(b.owner_id, b.grant_id, by=Actor("system", "portability"))
        (self.folder / b.file_name).unlink(missing_ok=True)


def _excluded_entry(rec: BatchRecord, categories: list[str]) -> dict[str, Any]:
    """A manifest ``excluded`` entry: enough to keep the hash chain checkable across the left-out batch."""
    return {
        "seq": rec.seq,
        "batch_hash": rec.batch_hash,
        "prev_hash": rec.prev_hash,
        "t0": rec.t0,
        "t1": rec.t1,
        "kind": rec.kind,
        "categories": categories,
        # A region-attested batch's leaf commits to its mark (docs/protocol.md §9): without it here the recipient
        # could not open the left-out batch's leaf, and with it the mark is checked against the log.
        **({"attested_by": rec.attested_by} if rec.attested_by is not None else {}),
    }


def shareable_paths(region: Region) -> list[str]:
    """Every catalogue signal a grant may name (what a portability grant says it covers)."""
    return [s.path for s in region.catalogue if s.category not in NEVER_SHAREABLE]
