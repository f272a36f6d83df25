"""Portability bundles received: read, re-verify and store another deployment's batches (docs/portability.md).

A bundle is a ZIP read within the incident-package container limits (``verify.container``). Its checks are the
verifier's own (``verify.package``: trust anchors, manifest signature, file hashes, certificate chain, batch
signatures, checkpoint signature, inclusion proofs, coverage) plus three that only bundles need: their layout,
a hash chain that may skip batches the manifest lists as left out, and the vehicle log key opening every v2 leaf.

``Importer.import_bundle`` refuses the whole bundle on any failed check (``BundleRejected``, ``BundleUnreadable``)
and stores nothing; otherwise it writes the batches' exact bytes to this region's segments, indexes them under
the imported vehicle in one transaction, appends them to this region's transparency log, and keeps the bundle
file (its origin proofs and checkpoint) with an ``ImportedBundle`` row saying where the data came from.
Importing the same data twice adds nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carvault.access.accounts import hash_password
from carvault.durable import write_durably
from carvault.errors import (
    AlreadyExists,
    BundleRejected,
    BundleUnreadable,
    CarVaultError,
    ImportCodeInvalid,
    NotFound,
    OriginNotTrusted,
)
from carvault.ingest.validation import validate_payload
from carvault.ledger.leaves import Log, log_batches, seal_log_key
from carvault.pki import vehicle_key_from_certificate
from carvault.protocol import LOG_KEY_LEN, Envelope, decode_envelope, leaf_salt
from carvault.settings import Settings
from carvault.signals import Catalogue
from carvault.store.metadata import BatchRecord, Database, ImportedBundle, Vehicle, VehicleEvent, now_ms
from carvault.store.segments import SegmentWriter
from carvault.verify.container import BATCH_NAME, DEFAULT_LIMITS, ContainerError, Limits, read_container
from carvault.verify.documents import DocumentError, Manifest, load_json, member, nonneg, obj, parse_proofs
from carvault.verify.package import (
    SIGNATURE_LEN,
    Package,
    Pins,
    Verdict,
    check_batches,
    check_certificate,
    check_checkpoint,
    check_coverage,
    check_files,
    check_inclusion,
    check_manifest_signature,
    check_trust,
    run_checks,
)

BUNDLE_FORMAT = "carvault-portability-bundle"
BUNDLE_VERSION = 1
LOG_KEY_FILE = "log/vehicle-log-key.txt"
#: Every fixed file of a bundle (beside ``batches/<seq:012d>.cvb``); all are required.
BUNDLE_FILES = (
    "certs/vehicle.pem",
    "certs/region-ca.pem",
    "log/checkpoint.txt",
    "log/proofs.json",
    LOG_KEY_FILE,
    "trust.json",
    "coverage.json",
)
_DOC_NAMES = {"manifest.json", "manifest.sig"}
IMPORT_CODE_CONTEXT = b"carvault-portability-import-code-v1\n"
#: Under ``<data_dir>/imports/``: the trust documents (``GET /api/v1/region/trust``) of deployments the operator
#: accepts bundles from; an import as an owner is anchored by the one naming the bundle's log origin.
ORIGINS_FOLDER = "origins"
MAX_IMPORT_CODE = 200


def import_code_digest(bundle_id: str, code: str) -> str:
    """What a bundle's signed manifest holds of its owner's one-time import code: SHA-256 bound to the bundle.

    The code is 128 random bits shown once to the owner at the origin, so a plain hash cannot be guessed back.
    """
    return hashlib.sha256(IMPORT_CODE_CONTEXT + bundle_id.encode() + b"\n" + code.strip().encode()).hexdigest()


def trusted_origin(folder: Path, manifest: BundleManifest) -> dict[str, Any] | None:
    """The trust document the operator keeps for a bundle's origin (same region and log origin), if any."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a trust document; the verifier never sees it
        if (
            isinstance(doc, dict)
            and doc.get("log_origin") == manifest.base.log_origin
            and doc.get("region") == manifest.base.region
        ):
            return doc
    return None


def check_import_code(manifest: BundleManifest, code: str | None) -> None:
    """Proof that whoever imports a bundle as its owner is the owner who asked for it: the code the origin gave them.

    ``ImportCodeInvalid`` when it is missing or does not match the digest in the (signature-checked) manifest.
    """
    if not code or not code.strip():
        raise ImportCodeInvalid(
            "importing a bundle as its owner needs the import code the origin showed the owner with the transfer"
        )
    if len(code) > MAX_IMPORT_CODE or not code.isascii():
        raise ImportCodeInvalid("this is not the import code of this bundle")
    if not hmac.compare_digest(import_code_digest(manifest.bundle_id, code), manifest.import_code_sha256):
        raise ImportCodeInvalid("this is not the import code of this bundle")


@dataclass(frozen=True)
class Excluded:
    """A batch the bundle leaves out (never-shareable data the owner did not include), listed by the region."""

    seq: int
    batch_hash: str
    prev_hash: str
    t0: int
    t1: int
    kind: str
    categories: tuple[str, ...]
    attested_by: str | None = None  # the attesting region of a left-out region-attested batch (protocol §9)


@dataclass(frozen=True)
class BundleManifest:
    """manifest.json of a bundle: the package manifest's members plus the recipient and the left-out batches."""

    base: Manifest
    bundle_id: str
    recipient: dict[str, str]
    include_sensitive: bool
    excluded: tuple[Excluded, ...]
    import_code_sha256: str  # the owner's one-time import code, hashed with the bundle id (import_code_digest)


def parse_bundle_manifest(data: bytes) -> BundleManifest:
    """manifest.json of a bundle, every member checked (``DocumentError`` names the first defect)."""
    what = "manifest.json"
    doc = obj(load_json(data, what), what)
    version = doc.get("version")
    if doc.get("format") != BUNDLE_FORMAT or type(version) is not int or version != BUNDLE_VERSION:
        raise DocumentError(f"{what} is not a {BUNDLE_FORMAT} version {BUNDLE_VERSION}")
    span = obj(member(doc, "span", dict, what), f"{what} span")
    files = obj(member(doc, "files", dict, what), f"{what} files")
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise DocumentError(f"{what}: files[{name!r}] must be a lower-case SHA-256 hex string")
    recipient = obj(member(doc, "recipient", dict, what), f"{what} recipient")
    who = {k: member(recipient, k, str, f"{what} recipient") for k in ("name", "legal_entity", "jurisdiction")}
    excluded = tuple(_excluded(e, f"{what} excluded[{i}]") for i, e in enumerate(member(doc, "excluded", list, what)))
    proof = member(doc, "import_code_sha256", str, what)
    if len(proof) != 64 or proof.strip("0123456789abcdef"):
        raise DocumentError(f"{what}: import_code_sha256 must be a lower-case SHA-256 hex string")
    base = Manifest(
        region=member(doc, "region", str, what),
        vin=member(doc, "vin", str, what),
        start_ms=nonneg(span, "start_ms", f"{what} span"),
        end_ms=nonneg(span, "end_ms", f"{what} span"),
        event_kind=None,
        event_ms=None,
        created_ms=nonneg(doc, "created_ms", what),
        log_origin=member(doc, "log_origin", str, what),
        tree_size=nonneg(doc, "tree_size", what),
        files=files,
    )
    return BundleManifest(
        base,
        bundle_id=member(doc, "bundle_id", str, what),
        recipient=who,
        include_sensitive=member(doc, "include_sensitive", bool, what),
        excluded=excluded,
        import_code_sha256=proof,
    )


def _excluded(raw: Any, what: str) -> Excluded:
    e = obj(raw, what)
    hashes = [member(e, k, str, what) for k in ("batch_hash", "prev_hash")]
    for h in hashes:
        if len(h) != 64 or h.strip("0123456789abcdef"):
            raise DocumentError(f"{what}: batch hashes must be lower-case SHA-256 hex strings")
    categories = member(e, "categories", list, what)
    if not all(isinstance(c, str) for c in categories):
        raise DocumentError(f"{what}: categories must be strings")
    attested = e.get("attested_by")
    if "attested_by" in e and (not isinstance(attested, str) or not attested):
        raise DocumentError(f"{what}: attested_by must be a region name when present")
    return Excluded(
        seq=nonneg(e, "seq", what),
        batch_hash=hashes[0],
        prev_hash=hashes[1],
        t0=nonneg(e, "t0", what),
        t1=nonneg(e, "t1", what),
        kind=member(e, "kind", str, what),
        categories=tuple(categories),
        attested_by=attested,
    )


@dataclass(frozen=True)
class Bundle:
    """A bundle read within the container limits: the opened package (for the shared checks) and its manifest."""

    package: Package
    manifest: BundleManifest
    sha256: str


def open_bundle(path: Path, limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """Read a bundle; ``BundleUnreadable`` for a ZIP beyond the limits or a manifest of the wrong shape."""
    try:
        files = dict(read_container(path, limits).files)
    except ContainerError as e:
        raise BundleUnreadable(f"not a readable portability bundle: {e.detail}", check="ZIP container") from None
    manifest_bytes, sig = files.pop("manifest.json", None), files.pop("manifest.sig", None)
    if manifest_bytes is None or sig is None:
        raise BundleUnreadable("the bundle has no manifest.json or no manifest.sig", check="bundle readable")
    try:
        manifest = parse_bundle_manifest(manifest_bytes)
        signature = base64.b64decode(sig.decode("ascii", "replace").strip(), validate=True)
    except (DocumentError, ValueError) as e:
        raise BundleUnreadable(f"the bundle's manifest is unreadable: {getattr(e, 'detail', e)}") from None
    if len(signature) != SIGNATURE_LEN:
        raise BundleUnreadable(f"manifest.sig must be {SIGNATURE_LEN} bytes", check="bundle readable")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Bundle(Package(str(path), files, manifest_bytes, manifest.base, signature), manifest, digest)


# --------------------------------------------------------------------------------------------------------------
# Checks only bundles need (each takes the verifier's run state, like the shared checks)


def _bundle_of(run: Any) -> BundleManifest:
    return parse_bundle_manifest(run.pkg.manifest_bytes)


def check_bundle_layout(run: Any) -> None:
    """Every file is one the bundle format defines, every required one is there, and at least one batch."""
    names = set(run.pkg.files)
    unknown = sorted(n for n in names if n not in BUNDLE_FILES and not BATCH_NAME.fullmatch(n))
    missing = [n for n in BUNDLE_FILES if n not in names]
    batches = sum(1 for n in names if BATCH_NAME.fullmatch(n))
    problems = [f"not part of the bundle format: {unknown[:5]}"] if unknown else []
    problems += [f"missing: {missing}"] if missing else []
    if not batches:
        problems.append("no batch")
    run.add("bundle layout", not problems, "; ".join(problems) or f"{batches} batches and {len(BUNDLE_FILES)} files")


def check_bundle_chain(run: Any) -> None:
    """By seq, the batches and the listed left-out batches are consecutive and each names the previous one's hash."""
    if not run.envs:
        return
    links: dict[int, tuple[str, str, str]] = {
        e.seq: (e.prev_hash, e.batch_hash, "left out") for e in _bundle_of(run).excluded
    }
    for env in run.envs:
        if env.header.seq in links:
            run.add("hash chain", False, f"batch {env.header.seq} is both in the bundle and listed as left out")
            return
        links[env.header.seq] = (env.header.prev, env.batch_hash, "signed")
    seqs = sorted(links)
    breaks = []
    for a, b in zip(seqs, seqs[1:], strict=False):
        if b != a + 1:
            breaks.append(f"batches {a + 1}..{b - 1} missing")
        elif links[b][0] != links[a][1]:
            breaks.append(f"batch {b} does not follow batch {a}")
    left_out = sum(1 for v in links.values() if v[2] == "left out")
    detail = f"seq {seqs[0]}..{seqs[-1]} continuous ({left_out} left out, listed in the manifest)"
    run.add("hash chain", not breaks, detail if not breaks else "; ".join(breaks[:5]))


def check_excluded_logged(run: Any) -> None:
    """Every left-out batch has an inclusion proof too, so the region cannot list a batch that never existed.

    A left-out region-attested batch is listed with its ``attested_by`` mark, which its v2 leaf commits to: the
    proof opens only with the mark the log holds, and the mark must be the one the certificate implies (as for the
    included batches), so a left-out batch can be neither re-labelled car-signed nor passed off as attested.
    """
    excluded = _bundle_of(run).excluded
    if not excluded or run.checkpoint is None:
        return
    from carvault.ledger.merkle import VerificationError, leaf_hash, verify_inclusion
    from carvault.verify.package import leaf_for

    m, cp = run.pkg.manifest, run.checkpoint
    _, entries = parse_proofs(run.pkg.files.get("log/proofs.json", b""))
    failed = []
    for e in excluded:
        entry = entries.get(e.seq)
        try:
            if entry is None or entry.batch_hash != e.batch_hash:
                raise VerificationError("no inclusion proof for the listed hash")
            if run.key is not None and e.attested_by != run.verdict.attested_by:
                said = f"attested by region {e.attested_by}" if e.attested_by else "car-signed"
                raise VerificationError(f"it is listed as {said}, which the vehicle certificate contradicts")
            leaf = leaf_for(entry, region=m.region, vin=m.vin, attested_by=e.attested_by)
            verify_inclusion(leaf_hash(leaf), entry.leaf_index, cp.size, list(entry.proof), cp.root)
        except VerificationError as err:
            failed.append(f"left-out batch {e.seq}: {err}")
    run.add("left-out batches logged", not failed, "; ".join(failed[:5]) or f"all {len(excluded)} are in the log")


def check_log_key(run: Any) -> None:
    """log/vehicle-log-key.txt is the vehicle's log key: it derives the salt of every v2 leaf in the proofs."""
    try:
        key = base64.b64decode(run.pkg.files.get(LOG_KEY_FILE, b"").strip(), validate=True)
        _, entries = parse_proofs(run.pkg.files.get("log/proofs.json", b""))
    except (ValueError, DocumentError) as e:
        run.add("vehicle log key", False, f"unreadable: {getattr(e, 'detail', e)}")
        return
    if len(key) != LOG_KEY_LEN:
        run.add("vehicle log key", False, f"a vehicle log key is {LOG_KEY_LEN} bytes, not {len(key)}")
        return
    wrong = [e.seq for e in entries.values() if e.leaf_version == 2 and e.leaf_salt != leaf_salt(key, e.seq)]
    ok = not wrong
    run.add("vehicle log key", ok, "opens every v2 leaf" if ok else f"does not open the leaves of seq {wrong[:5]}")


BUNDLE_CHECKS: tuple[Callable[[Any], None], ...] = (
    check_bundle_layout,
    check_trust,
    check_manifest_signature,
    check_files,
    check_certificate,
    check_batches,
    check_bundle_chain,
    check_checkpoint,
    check_inclusion,
    check_excluded_logged,
    check_log_key,
    check_coverage,
)


def verify_bundle(bundle: Bundle, *, trust: Any = None, pins: Pins | None = None) -> Verdict:
    """Every check of a bundle, offline (no database); never raises for a bad bundle, it reports."""
    verdict = Verdict(bundle.package.path)
    m = bundle.manifest.base
    verdict.add("bundle readable", True, f"vehicle {m.vin}, region {m.region}, {len(bundle.package.files)} files")
    return run_checks(bundle.package, BUNDLE_CHECKS, verdict, trust=trust, pins=pins)


def require_verified(verdict: Verdict) -> None:
    """``BundleRejected`` naming every failed check, unless the bundle passed them all."""
    failures = verdict.failures()
    if failures or not verdict.ok:
        first = failures[0] if failures else None
        raise BundleRejected(
            f"the bundle fails verification ({first.name}: {first.detail})" if first else "the bundle holds nothing",
            failed=[{"check": c.name, "detail": c.detail} for c in failures],
        )


# --------------------------------------------------------------------------------------------------------------
# Storing


@dataclass
class ImportResult:
    """What one import did."""

    vin: str
    origin_region: str
    bundle_sha256: str
    batches: int
    added: int
    anchored: bool
    duplicate: bool
    excluded: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    attested_by: str | None = None  # the origin region that attested the batches (protocol §9); None: car-signed

    def as_json(self) -> dict[str, Any]:
        """The result as the API and CLI report it."""
        return {
            "vin": self.vin,
            "origin_region": self.origin_region,
            "bundle_sha256": self.bundle_sha256,
            "batches": self.batches,
            "added": self.added,
            "anchored": self.anchored,
            "duplicate": self.duplicate,
            "excluded": self.excluded,
            "provenance": "region-attested" if self.attested_by else "car-signed",
            "attested_by": self.attested_by,
            "checks": self.checks,
        }


class Importer:
    """Imports verified portability bundles into one region's stores."""

    def __init__(
        self, settings: Settings, db: Database, segments: SegmentWriter, log: Log, catalogue: Catalogue
    ) -> None:
        self.settings = settings
        self.db = db
        self.segments = segments
        self.log = log
        self.catalogue = catalogue
        self.folder = settings.data_dir / "imports"

    def import_bundle(
        self,
        path: Path,
        *,
        owner_id: int | None,
        import_code: str | None = None,
        trust: Any = None,
        pins: Pins | None = None,
    ) -> ImportResult:
        """Verify the bundle at ``path`` and store what this region lacks of it (nothing at all if a check fails).

        Data imported for an owner (``owner_id``) needs the owner's one-time ``import_code`` from the origin:
        holding the bundle file (as the recipient who fetched it does) is not proof of being the data's owner.
        The code's digest is only as good as the key that signed the manifest, so such an import must also be
        anchored: by ``trust``/``pins``, or by the origin's trust document in ``imports/origins/``.
        """
        bundle = open_bundle(path)
        if owner_id is not None and trust is None and pins is None:
            trust = trusted_origin(self.folder / ORIGINS_FOLDER, bundle.manifest)
        verdict = verify_bundle(bundle, trust=trust, pins=pins)
        require_verified(verdict)
        if owner_id is not None:
            if not verdict.anchored:
                raise OriginNotTrusted(
                    f"this deployment has no trust document for {bundle.manifest.base.log_origin!r} (region "
                    f"{bundle.manifest.base.region!r}): without the origin's keys a rebuilt bundle cannot be told "
                    "from the real one; the operator adds that region's trust document first",
                    origin=bundle.manifest.base.log_origin,
                )
            check_import_code(bundle.manifest, import_code)
        checks = [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks]
        m = bundle.manifest
        envs = sorted(
            (decode_envelope(data) for name, data in bundle.package.files.items() if BATCH_NAME.fullmatch(name)),
            key=lambda e: e.header.seq,
        )
        vehicle = self._vehicle_for(bundle, envs[0], owner_id)
        with self.db.session() as s:
            done = s.scalar(select(ImportedBundle).where(ImportedBundle.sha256 == bundle.sha256))
            present = set(s.scalars(select(BatchRecord.batch_hash).where(BatchRecord.vin == m.base.vin)))
        result = ImportResult(
            vin=m.base.vin,
            origin_region=m.base.region,
            bundle_sha256=bundle.sha256,
            batches=len(envs),
            added=0,
            anchored=verdict.anchored,
            duplicate=done is not None,
            excluded=len(m.excluded),
            checks=checks,
            attested_by=verdict.attested_by,
        )
        if done is not None:
            return result
        fresh = [e for e in envs if e.batch_hash not in present]
        try:
            result.added = self._store(bundle, vehicle, fresh, verdict, owner_id, len(envs))
        except IntegrityError:
            # Another import of the same data committed first: this one adds nothing (the other stored it all).
            result.duplicate = True
        return result

    def _vehicle_for(self, bundle: Bundle, first: Envelope, owner_id: int | None) -> Vehicle:
        """The vehicle row to import under: new (not yet inserted), or the same imported vehicle of this owner."""
        m = bundle.manifest.base
        cert = bundle.package.files["certs/vehicle.pem"].decode()
        # Checked by "certificate chain" at the time the batches arrived; a certificate expired since still names
        # the key that signed them.
        first_received = min(_received_ms(bundle).values(), default=m.created_ms)
        at = dt.datetime.fromtimestamp(first_received / 1000, dt.UTC)
        ca = bundle.package.files["certs/region-ca.pem"]
        key = vehicle_key_from_certificate(cert, ca, m.vin, at=at).public_bytes_raw()
        with self.db.session() as s:
            v = s.get(Vehicle, m.vin)
        if v is None:
            log_key = base64.b64decode(bundle.package.files[LOG_KEY_FILE].strip())
            assert self.db.data_key is not None, "the region's data key seals imported log keys"
            return Vehicle(
                vin=m.vin,
                region=m.region,  # the home its signed batches name; uploads here stay refused (foreign CA)
                model=f"imported from {m.region}",
                public_key=key,
                certificate_pem=cert,
                pairing_code_hash=hash_password(secrets.token_urlsafe(24)),  # no pairing: the importer owns it
                owner_id=owner_id,
                claimed_ms=now_ms() if owner_id is not None else None,
                last_seq=first.header.seq - 1,
                last_hash=first.header.prev,
                log_key=seal_log_key(self.db.data_key, m.vin, log_key),
            )
        if bytes(v.public_key) != key:
            raise AlreadyExists(
                f"vehicle {m.vin} is registered here with another key; this bundle cannot be imported under it",
                vin=m.vin,
            )
        if owner_id is not None and v.owner_id != owner_id:
            raise NotFound(f"vehicle {m.vin} is registered here to another account", vin=m.vin)
        return v

    def _store(
        self,
        bundle: Bundle,
        vehicle: Vehicle,
        fresh: list[Envelope],
        verdict: Verdict,
        owner_id: int | None,
        batches: int,
    ) -> int:
        """Segments first (unreferenced bytes are harmless), then one transaction, then this region's log."""
        m = bundle.manifest
        summaries = [self._summary(env) for env in fresh]
        locations = self.segments.append_many([env.raw for env in fresh]) if fresh else []
        self.folder.mkdir(parents=True, exist_ok=True)
        file_name = f"{m.base.vin}-{bundle.sha256[:16]}-{secrets.token_hex(4)}.zip"  # a racing import has its own
        write_durably(self.folder / file_name, Path(bundle.package.path).read_bytes())
        received = _received_ms(bundle)
        records: list[BatchRecord] = []
        try:
            with self.db.session() as s:
                if s.get(Vehicle, m.base.vin) is None:
                    s.add(vehicle)
                    s.flush()
                for env, summary, location in zip(fresh, summaries, locations, strict=True):
                    rec = _record(env, summary, location, received.get(env.header.seq, now_ms()))
                    s.add(rec)
                    records.append(rec)
                    if summary.event is not None:
                        s.add(_event(env, summary.event))
                _advance_head(s, m.base.vin, fresh)
                s.add(
                    ImportedBundle(
                        sha256=bundle.sha256,
                        bundle_id=m.bundle_id,
                        vin=m.base.vin,
                        owner_id=owner_id,
                        origin_region=m.base.region,
                        origin_log_origin=m.base.log_origin,
                        origin_log_vkey=verdict.log_vkey,
                        origin_checkpoint=bundle.package.files["log/checkpoint.txt"].decode(),
                        anchored=verdict.anchored,
                        batches=batches,
                        added=len(fresh),
                        file_name=file_name,
                    )
                )
        except BaseException:
            (self.folder / file_name).unlink(missing_ok=True)
            raise
        log_batches(self.db, self.log, self.settings.region, records, fence_dir=self.settings.data_dir)
        return len(fresh)

    def _summary(self, env: Envelope) -> Any:
        """The payload summary the gateway would index (the batch is re-validated against this catalogue)."""
        try:
            return validate_payload(
                env.header,
                env.table(),
                self.catalogue,
                now_ms=now_ms(),
                max_future_skew_ms=self.settings.max_future_skew_s * 1000,
                max_rows=self.settings.max_batch_rows,
            )
        except CarVaultError as e:
            raise BundleRejected(
                f"batch {env.header.seq} is not valid data for this deployment: {e.message}",
                failed=[{"check": "batch payloads", "detail": e.message}],
            ) from None


def _record(env: Envelope, summary: Any, location: tuple[str, int, int], received_ms: int) -> BatchRecord:
    """The batch index row of an imported batch, as the gateway writes one (its leaf index comes later)."""
    h = env.header
    segment, offset, length = location
    return BatchRecord(
        vin=h.vin,
        seq=h.seq,
        kind=h.kind,
        batch_hash=env.batch_hash,
        prev_hash=h.prev,
        t0=h.t0,
        t1=h.t1,
        rows=summary.rows,
        samples=summary.samples,
        columns=",".join(summary.columns),
        segment=segment,
        offset=offset,
        length=length,
        log_index=None,
        received_ms=received_ms,
        attested_by=h.attested_by,
        software_version=h.software_version,
    )


def _event(env: Envelope, ev: dict[str, Any]) -> VehicleEvent:
    """The recorded event of an imported event batch (its signed description)."""
    rest = {k: v for k, v in ev.items() if k not in ("kind", "trigger_ms", "legal_basis")}
    return VehicleEvent(
        vin=env.header.vin,
        kind=ev["kind"],
        t_ms=ev["trigger_ms"],
        batch_seq=env.header.seq,
        legal_basis=ev["legal_basis"],
        detail=json.dumps(rest),
    )


def _received_ms(bundle: Bundle) -> dict[int, int]:
    """When the origin region received each batch (its proofs say; the time is part of its log leaf)."""
    _, entries = parse_proofs(bundle.package.files["log/proofs.json"])
    return {seq: e.received_ms for seq, e in entries.items()}


def _advance_head(s: Any, vin: str, fresh: list[Envelope]) -> None:
    """Move the imported vehicle's chain head to the last batch it now holds (imports arrive in seq order)."""
    if not fresh:
        return
    v = s.get(Vehicle, vin)
    last = fresh[-1]
    if last.header.seq > v.last_seq:
        v.last_seq, v.last_hash = last.header.seq, last.batch_hash


def import_file_bytes(data: bytes, folder: Path) -> Path:
    """Write an uploaded bundle to a private temporary file (the container reader needs a seekable file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload-{secrets.token_hex(8)}.zip"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path
