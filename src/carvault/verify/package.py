"""Offline verification of an incident package (docs/incident-package.md §4), one function per check.

``open_package`` reads the ZIP within bounded limits (``container``) and parses the manifest strictly
(``documents``); each ``check_*`` function then records one named check in a ``Verdict``. Nothing here raises
for a bad package: every defect is a failed check. No network, no database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carvault.ledger.checkpoint import (
    Checkpoint,
    VerifierKey,
    parse_checkpoint,
    parse_vkey,
    verify_checkpoint,
    verify_cosignatures,
)
from carvault.ledger.merkle import VerificationError, leaf_hash, verify_consistency, verify_inclusion
from carvault.pki import CertificateError, attested_by, fingerprint, vehicle_key_from_certificate
from carvault.protocol import Envelope, decode_envelope, leaf_data_v1, leaf_data_v2
from carvault.verify.container import (
    DEFAULT_LIMITS,
    FIXED_NAMES,
    ContainerError,
    Limits,
    is_package_name,
    read_container,
)
from carvault.verify.documents import (
    PACKAGE_FORMAT,
    DocumentError,
    InclusionEntry,
    Manifest,
    TrustDocument,
    b64,
    load_json,
    parse_consistency,
    parse_coverage,
    parse_manifest,
    parse_proofs,
    parse_trust,
    parse_witnessed,
)
from carvault.verify.exit_codes import (  # noqa: F401 - re-exported: the codes a verdict maps to
    EXIT_FAILED,
    EXIT_NOT_ANCHORED,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    EXIT_VERIFIED,
)
from carvault.verify.prefetch import Prefetch, decode_batches

MANIFEST_CONTEXT = b"carvault-package-manifest-v1\n"
SIGNATURE_LEN = 64
#: A later witnessed checkpoint and the consistency proof to it, added to a package after it was built (the region
#: adds it once its witnesses have cosigned a tree holding the package's): outside the manifest, it proves itself.
WITNESSED = "log/witnessed.json"
#: Files every package holds (edr/part563.csv only with an event).
REQUIRED = ("certs/vehicle.pem", "log/checkpoint.txt", "log/proofs.json", "trust.json", "coverage.json")


__all__ = [
    "MANIFEST_CONTEXT",
    "PACKAGE_FORMAT",
    "Check",
    "Limits",
    "Pins",
    "Verdict",
    "open_package",
    "verify_package",
]


@dataclass
class Check:
    """One verification step and its outcome (``ok`` None means a note: not applicable or not anchored)."""

    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class Pins:
    """Trust anchors pinned from the region's published trust page: the log key and the CA fingerprint."""

    log_vkey: str
    ca_sha256: str


@dataclass(frozen=True)
class WitnessPolicy:
    """The witnesses the verifier knows (cosignature/v1 vkeys) and how many must have cosigned the checkpoint."""

    keys: tuple[VerifierKey, ...]
    quorum: int


@dataclass
class Verdict:
    """Every check of one package, and whether its keys were anchored outside it."""

    path: str
    checks: list[Check] = field(default_factory=list)
    readable: bool = True
    anchored: bool = False
    log_vkey: str = ""
    ca_sha256: str = ""
    # The region that built and signed the batches from records the car did not sign (docs/protocol.md §9), or
    # None when the car signed them itself: the provenance every reader of the verdict must be told.
    attested_by: str | None = None

    @property
    def provenance(self) -> str:
        """Who signed the batches, in words."""
        if self.attested_by is None:
            return "signed by the car"
        return f"attested by region {self.attested_by}, not signed by the car"

    @property
    def ok(self) -> bool:
        """True when the package was read and no check failed (anchored or not: see ``verified``)."""
        return self.readable and bool(self.checks) and all(c.ok is not False for c in self.checks)

    @property
    def verified(self) -> bool:
        """True when no check failed and the keys came from outside the package."""
        return self.ok and self.anchored

    @property
    def exit_code(self) -> int:
        """0 verified and anchored, 1 a check failed, 2 consistent but not anchored, 3 unreadable package."""
        if not self.readable:
            return EXIT_UNREADABLE
        if not self.ok:
            return EXIT_FAILED
        return EXIT_VERIFIED if self.anchored else EXIT_NOT_ANCHORED

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        """Record a check."""
        self.checks.append(Check(name, ok, detail))

    def failures(self) -> list[Check]:
        """Checks that failed."""
        return [c for c in self.checks if c.ok is False]


class Unreadable(Exception):
    """The package cannot be read as a package; ``check`` names the rule it breaks."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check = check
        self.detail = detail


@dataclass(frozen=True)
class Package:
    """A package read within the container limits, with its manifest parsed and its signature decoded."""

    path: str
    files: dict[str, bytes]
    manifest_bytes: bytes
    manifest: Manifest
    signature: bytes


def open_package(path: Path | str, limits: Limits = DEFAULT_LIMITS, prefetch: Prefetch | None = None) -> Package:
    """Read and parse a package; raises ``Unreadable`` naming the failed check.

    ``prefetch``: the read of this same path within these same limits, already under way.
    """
    if prefetch is not None and (prefetch.path, prefetch.limits) != (Path(path), limits):
        raise ValueError(f"the read under way is of {prefetch.path}, not of {path} within the same limits")
    try:
        members = (prefetch.container() if prefetch is not None else read_container(Path(path), limits)).files
    except ContainerError as e:
        raise Unreadable("ZIP container", e.detail) from None
    files = dict(members)
    manifest_bytes = files.pop("manifest.json", None)
    sig_text = files.pop("manifest.sig", None)
    if manifest_bytes is None or sig_text is None:
        raise Unreadable("package readable", "the package has no manifest.json or no manifest.sig")
    try:
        manifest = parse_manifest(manifest_bytes)
        signature = b64(sig_text.decode("ascii", "replace").strip(), "manifest.sig", SIGNATURE_LEN)
    except DocumentError as e:
        raise Unreadable("package readable", e.detail) from None
    return Package(str(path), files, manifest_bytes, manifest, signature)


@dataclass
class _Run:
    """What the checks learn as they go (the anchors, the vehicle key, the batches, the checkpoint)."""

    pkg: Package
    verdict: Verdict
    trust: Any
    pins: Pins | None
    saved: str | None
    vkey: VerifierKey | None = None
    ca_pem: str = ""
    key: Ed25519PublicKey | None = None
    envs: list[Envelope] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    witnessed: str | None = None  # log/witnessed.json's note, once it is proven to extend the package's tree
    witnesses: WitnessPolicy | None = None
    prefetch: Prefetch | None = None  # the package read ahead, its batches decoded

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        """Record a check."""
        self.verdict.add(name, ok, detail)


class _Stop(Exception):
    """Nothing further can be checked."""


def verify_package(
    path: Path | str,
    *,
    saved_checkpoint: str | None = None,
    trust: Any = None,
    pins: Pins | None = None,
    limits: Limits = DEFAULT_LIMITS,
    witnesses: WitnessPolicy | None = None,
    prefetch: Prefetch | None = None,
) -> Verdict:
    """Check everything in a package; never raises for a bad package, it reports.

    ``trust`` is the region's published trust document (parsed JSON); ``pins`` pins its log key and CA
    fingerprint instead. With neither, the package's own keys are used and the verdict is not anchored.
    ``prefetch``: the package read ahead (``Prefetch(path, limits)``), started before this module was imported, as
    `carvault verify` does.
    """
    verdict = Verdict(str(path))
    try:
        return _verify(verdict, path, saved_checkpoint, trust, pins, limits, witnesses, prefetch)
    except MemoryError:
        verdict.readable = False
        verdict.add("package readable", False, "checking this package needs more memory than this computer has")
        return verdict


def _verify(
    verdict: Verdict,
    path: Path | str,
    saved_checkpoint: str | None,
    trust: Any,
    pins: Pins | None,
    limits: Limits,
    witnesses: WitnessPolicy | None = None,
    prefetch: Prefetch | None = None,
) -> Verdict:
    try:
        pkg = open_package(path, limits, prefetch)
    except Unreadable as e:
        verdict.readable = False
        verdict.add(e.check, False, e.detail)
        return verdict
    m = pkg.manifest
    verdict.add("package readable", True, f"vehicle {m.vin}, region {m.region}, {len(pkg.files)} files")
    return run_checks(
        pkg,
        CHECKS,
        verdict,
        trust=trust,
        pins=pins,
        saved_checkpoint=saved_checkpoint,
        witnesses=witnesses,
        prefetch=prefetch,
    )


def run_checks(
    pkg: Package,
    checks: tuple[Callable[[_Run], None], ...],
    verdict: Verdict,
    *,
    trust: Any = None,
    pins: Pins | None = None,
    saved_checkpoint: str | None = None,
    witnesses: WitnessPolicy | None = None,
    prefetch: Prefetch | None = None,
) -> Verdict:
    """Run ``checks`` over an opened package, in order (also used for portability bundles, which share them)."""
    run = _Run(pkg, verdict, trust, pins, saved_checkpoint, witnesses=witnesses, prefetch=prefetch)
    for check in checks:
        try:
            check(run)
        except _Stop:
            break
        except Exception as e:  # noqa: BLE001 - hostile input must give a failed check, never a traceback
            name = (check.__doc__ or check.__name__).split(".")[0]
            verdict.add(check.__name__.removeprefix("check_"), False, f"could not be checked ({name}): {e!r}")
    return verdict


# --------------------------------------------------------------------------------------------------------------
# Structure and anchors


def check_layout(run: _Run) -> None:
    """Every file is one the format defines, and the required ones are there."""
    names = set(run.pkg.files)
    unknown = sorted(n for n in names if not is_package_name(n))
    required = [*REQUIRED, *(("edr/part563.csv",) if run.pkg.manifest.event_ms is not None else ())]
    missing = [n for n in required if n not in names]
    batches = sum(n.startswith("batches/") for n in names)
    problems = ([f"not part of the package format: {unknown[:5]}"] if unknown else []) + (
        [f"missing: {missing}"] if missing else []
    )
    if not batches:
        problems.append("no batch")
    if run.pkg.manifest.event_ms is None and "edr/part563.csv" in names:
        problems.append("an EDR table without an event, which nothing could recompute")
    ok = not problems
    run.add(
        "package layout", ok, f"{batches} batches and {len(names & FIXED_NAMES)} files" if ok else "; ".join(problems)
    )


def check_trust(run: _Run) -> None:
    """Take the anchors from the trust file given, the pins given, or (said plainly) the package itself."""
    own: TrustDocument | None = None
    own_error = ""
    try:
        own = parse_trust(load_json(run.pkg.files.get("trust.json", b"null"), "trust.json"), "trust.json")
    except DocumentError as e:
        own_error = e.detail
    try:
        anchor, source = _anchor(run, own, own_error)
        run.vkey, run.ca_pem = parse_vkey(anchor.log_vkey), anchor.ca_pem
        ca_sha256 = fingerprint(anchor.ca_pem)
    except (DocumentError, VerificationError, CertificateError, ValueError) as e:
        run.add("trust anchors", False, f"no usable log key and CA: {getattr(e, 'detail', e)}")
        raise _Stop from None
    v = run.verdict
    v.log_vkey, v.ca_sha256, v.anchored = anchor.log_vkey, ca_sha256, source != "package"
    contradictions = _contradictions(run, own, own_error, ca_sha256)
    where = {"trust": "the trust file given", "pins": "the pinned key and CA fingerprint"}.get(source, "")
    if contradictions:
        run.add("trust anchors", False, "; ".join(contradictions))
    elif v.anchored:
        run.add("trust anchors", True, f"log key {run.vkey.name} and CA sha256 {ca_sha256[:16]}… from {where}")
    else:
        run.add(
            "trust anchors",
            None,
            f"NOT ANCHORED: log key and CA come from the package itself; compare log key {anchor.log_vkey} "
            f"and CA sha256 {ca_sha256} with the region's published ones",
        )


def _anchor(run: _Run, own: TrustDocument | None, own_error: str) -> tuple[TrustDocument, str]:
    """The anchor document and where it came from ("trust", "pins" or "package")."""
    if run.trust is not None:
        return parse_trust(run.trust, "the trust file"), "trust"
    if own is None:
        raise DocumentError(own_error)
    if run.pins is not None:
        if run.pins.log_vkey != own.log_vkey:
            raise DocumentError(f"the package's log key {own.log_vkey} is not the pinned one {run.pins.log_vkey}")
        if fingerprint(own.ca_pem) != run.pins.ca_sha256.lower():
            raise DocumentError(f"the package's CA (sha256 {fingerprint(own.ca_pem)}) is not the pinned one")
        return own, "pins"
    return own, "package"


def _contradictions(run: _Run, own: TrustDocument | None, own_error: str, ca_sha256: str) -> list[str]:
    """Where the package's own copies of the anchors disagree with the anchors used."""
    out = [own_error] if own_error else []
    if own is not None:
        own_sha256 = _fingerprint_or_none(own.ca_pem.encode())
        if own.log_vkey != run.verdict.log_vkey:
            out.append("trust.json names another log key than the trusted one")
        if own_sha256 is None:
            out.append("trust.json ca_pem is not a PEM certificate")
        elif own.ca_sha256 is not None and own.ca_sha256 != own_sha256:
            out.append("trust.json ca_sha256 is not the SHA-256 of its ca_pem")
        elif own_sha256 != ca_sha256:
            out.append("trust.json holds another CA than the trusted one")
    ca_copy = run.pkg.files.get("certs/region-ca.pem")
    if ca_copy is not None and _fingerprint_or_none(ca_copy) != ca_sha256:
        out.append("certs/region-ca.pem is not the trusted CA")
    return out


def _fingerprint_or_none(pem: bytes) -> str | None:
    try:
        return fingerprint(pem)
    except ValueError:
        return None


def check_manifest_signature(run: _Run) -> None:
    """manifest.sig is the log key's Ed25519 signature over the context and manifest.json."""
    if run.vkey is None:
        return
    try:
        run.vkey.public_key.verify(run.pkg.signature, MANIFEST_CONTEXT + run.pkg.manifest_bytes)
        run.add("manifest signed by the region", True, f"signed by log key {run.vkey.name}")
    except InvalidSignature:
        run.add("manifest signed by the region", False, "the manifest signature does not verify with the region key")


def check_files(run: _Run) -> None:
    """Every file is listed in the manifest with its SHA-256, and nothing else is in the package (but the
    self-proving log/witnessed.json, which is added after the manifest was signed)."""
    files, listed = run.pkg.files, run.pkg.manifest.files
    bad = sorted(n for n, h in listed.items() if n not in files or hashlib.sha256(files[n]).hexdigest() != h)
    extra = sorted(set(files) - set(listed) - {WITNESSED})
    ok = not bad and not extra
    detail = (
        "every file is listed with its SHA-256" if ok else f"changed or missing: {bad[:5]}; not listed: {extra[:5]}"
    )
    run.add("files match the manifest", ok, detail)


# --------------------------------------------------------------------------------------------------------------
# The vehicle's evidence


def check_certificate(run: _Run) -> None:
    """certs/vehicle.pem is issued by the trusted CA to the manifest's VIN, valid when the batches arrived."""
    m = run.pkg.manifest
    try:
        _, entries = parse_proofs(run.pkg.files.get("log/proofs.json", b""))
        received = [e.received_ms for e in entries.values()]
    except DocumentError:
        received = []  # reported by the log inclusion check
    cert = run.pkg.files.get("certs/vehicle.pem")
    try:
        at = dt.datetime.fromtimestamp(min(received or [m.created_ms]) / 1000, dt.UTC)
        if cert is None:
            raise CertificateError("the package has no certs/vehicle.pem")
        run.key = vehicle_key_from_certificate(cert, run.ca_pem, m.vin, at=at)
        run.verdict.attested_by = attested_by(cert)
        if run.verdict.attested_by is not None:
            run.add(
                "certificate chain",
                True,
                f"region-attestation certificate for {m.vin} issued by the region CA: the key is region "
                f"{run.verdict.attested_by}'s, not the car's",
            )
        else:
            run.add("certificate chain", True, f"vehicle certificate for {m.vin} issued by the region CA")
    except (CertificateError, ValueError, OverflowError, OSError) as e:
        run.add("certificate chain", False, f"vehicle certificate does not chain to the region CA: {e}")


def check_batches(run: _Run) -> None:
    """Each batch decodes, belongs to the vehicle and seq its name says, and is signed over its exact bytes."""
    m = run.pkg.manifest
    names = sorted(n for n in run.pkg.files if n.startswith("batches/"))
    problems = []
    for name in names:
        try:
            env = decode_envelope(run.pkg.files[name])
            if env.header.vin != m.vin or env.header.region != m.region:
                raise ValueError(f"it is a batch of {env.header.vin}/{env.header.region}")
            if name != f"batches/{env.header.seq:012d}.cvb":
                raise ValueError(f"it holds batch seq {env.header.seq}")
            if env.header.attested_by != run.verdict.attested_by:
                said = f"attested by region {env.header.attested_by}" if env.header.attested_by else "car-signed"
                cert_kind = "a region-attestation certificate" if run.verdict.attested_by else "the car's certificate"
                raise ValueError(f"it is marked {said}, but the package holds {cert_kind}")
            if run.key is not None:
                env.verify(run.key)
                run.envs.append(env)
        except Exception as e:  # noqa: BLE001 - any defect of a batch is reported by name
            problems.append(f"{name}: {getattr(e, 'message', e)}")
    run.envs.sort(key=lambda e: e.header.seq)
    if run.key is None:
        run.add("batch signatures", False, "no vehicle key to check the batches with (see certificate chain)")
    elif problems or not run.envs:
        run.add("batch signatures", False, "; ".join(problems[:5]) or "no batch")
    else:
        run.add("batch signatures", True, f"{len(run.envs)} batches {run.verdict.provenance}, over their exact bytes")
        run.add("provenance", None, run.verdict.provenance)


def check_chain(run: _Run) -> None:
    """Sorted by seq, the batches are consecutive and each names the previous one's hash."""
    envs = run.envs
    if not envs:
        return
    breaks = []
    for a, b in zip(envs, envs[1:], strict=False):
        if b.header.seq != a.header.seq + 1:
            breaks.append(f"batches {a.header.seq + 1}..{b.header.seq - 1} missing")
        elif b.header.prev != a.batch_hash:
            breaks.append(f"batch {b.header.seq} does not follow batch {a.header.seq}")
    first, last = envs[0].header.seq, envs[-1].header.seq
    run.add("hash chain", not breaks, f"seq {first}..{last} continuous" if not breaks else "; ".join(breaks[:5]))


# --------------------------------------------------------------------------------------------------------------
# The log


def check_checkpoint(run: _Run) -> None:
    """log/checkpoint.txt is signed by the trusted log key, for the manifest's origin and tree size."""
    if run.vkey is None:
        return
    m = run.pkg.manifest
    try:
        text = run.pkg.files.get("log/checkpoint.txt")
        if text is None:
            raise VerificationError("the package has no log/checkpoint.txt")
        cp = verify_checkpoint(text, run.vkey.public_key, run.vkey.name, origin=m.log_origin)
        if cp.size != m.tree_size:
            raise VerificationError("the manifest names another tree size", expected=cp.size, actual=m.tree_size)
    except (VerificationError, ValueError) as e:
        run.add("checkpoint signature", False, f"checkpoint is not signed by the region log key: {e}")
        return
    run.checkpoint = cp
    run.add("checkpoint signature", True, f"{cp.origin} tree size {cp.size}, signed by {run.vkey.name}")


def check_witnessed(run: _Run) -> None:
    """log/witnessed.json, when present: a checkpoint signed by the log key whose tree extends the package's (RFC
    9162 consistency from the package's size and root), so its witnesses' cosignatures cover the package too."""
    data, cp, vkey = run.pkg.files.get(WITNESSED), run.checkpoint, run.vkey
    if data is None or cp is None or vkey is None:
        return
    name = "later witnessed checkpoint"
    try:
        doc = parse_witnessed(data)
        later = verify_checkpoint(doc.checkpoint, vkey.public_key, vkey.name, origin=run.pkg.manifest.log_origin)
        if doc.old_size != cp.size or doc.new_size != later.size:
            raise VerificationError(
                "its sizes are not the package's and the checkpoint's",
                expected=(cp.size, later.size),
                actual=(doc.old_size, doc.new_size),
            )
        if later.size < cp.size:
            raise VerificationError("its checkpoint is older than the package's", expected=cp.size, actual=later.size)
        verify_consistency(cp.size, later.size, cp.root, later.root, list(doc.proof))
    except DocumentError as e:
        run.add(name, False, e.detail)
        return
    except (VerificationError, ValueError) as e:
        run.add(name, False, f"{WITNESSED} does not prove a later tree of this log that extends the package's: {e}")
        return
    run.witnessed = doc.checkpoint
    run.add(name, True, f"tree size {later.size}, signed by {vkey.name}, extends the package's tree size {cp.size}")


def check_witnesses(run: _Run) -> None:
    """At least ``quorum`` of the witnesses the verifier knows cosigned log/checkpoint.txt, or the later checkpoint
    of log/witnessed.json that extends it (C2SP cosignature/v1)."""
    policy, cp = run.witnesses, run.checkpoint
    if policy is None or not policy.keys or cp is None:
        return
    name = "witness cosignatures"
    notes = [(run.pkg.files["log/checkpoint.txt"], cp.size)]
    if run.witnessed is not None:
        notes.append((run.witnessed.encode(), parse_checkpoint(run.witnessed).size))
    counted = []
    for note, size in notes:
        try:
            counted.append((verify_cosignatures(note, list(policy.keys)), size))
        except (VerificationError, ValueError) as e:
            run.add(name, False, f"a cosignature by a known witness does not verify (tampered?): {e}")
            return
    found, size = max(counted, key=lambda fs: len(fs[0]))  # the package's own tree first when as well witnessed
    names = ", ".join(sorted(c.name for c in found)) or "none"
    detail = f"{len(found)} of the {len(policy.keys)} witnesses you know cosigned tree size {size} ({names})"
    if size != cp.size:
        detail += f", which extends the package's tree size {cp.size} ({WITNESSED})"
    if len(found) >= policy.quorum:
        run.add(name, True, f"{detail}; {policy.quorum} required")
    else:
        run.add(name, False, f"NOT WITNESSED ENOUGH: {detail}; --quorum {policy.quorum} needs {policy.quorum}")


def leaf_for(entry: InclusionEntry, *, region: str, vin: str, attested_by: str | None = None) -> bytes:
    """The leaf data a proof entry commits to: leaf v1 (fields in clear) or v2 (keyed by the entry's salt).

    ``attested_by`` is the batch header's region-attestation mark (docs/protocol.md §9), which a v2 leaf commits to.
    """
    seq, batch_hash, received_ms = entry.seq, entry.batch_hash, entry.received_ms
    if entry.leaf_version == 2 and entry.leaf_salt is not None:
        return leaf_data_v2(
            salt=entry.leaf_salt,
            region=region,
            vin=vin,
            seq=seq,
            batch_hash=batch_hash,
            received_ms=received_ms,
            attested_by=attested_by,
        )
    return leaf_data_v1(region=region, vin=vin, seq=seq, batch_hash=batch_hash, received_ms=received_ms)


def check_inclusion(run: _Run) -> None:
    """Each batch has an RFC 9162 inclusion proof to the checkpoint's root (leaf v1 or v2)."""
    cp, m = run.checkpoint, run.pkg.manifest
    if cp is None or not run.envs:
        return
    try:
        tree_size, entries = parse_proofs(run.pkg.files.get("log/proofs.json", b""))
    except DocumentError as e:
        run.add("log inclusion", False, e.detail)
        return
    failed = [] if tree_size == cp.size else [f"proofs.json is for tree size {tree_size}, the checkpoint {cp.size}"]
    versions = set()
    for env in run.envs:
        entry = entries.get(env.header.seq)
        try:
            if entry is None:
                raise VerificationError("no inclusion proof")
            if entry.batch_hash != env.batch_hash:
                raise VerificationError("proof is for other bytes", expected=env.batch_hash, actual=entry.batch_hash)
            leaf = leaf_for(entry, region=m.region, vin=m.vin, attested_by=env.header.attested_by)
            verify_inclusion(leaf_hash(leaf), entry.leaf_index, cp.size, list(entry.proof), cp.root)
            versions.add(entry.leaf_version)
        except VerificationError as e:
            failed.append(f"batch {env.header.seq}: {e}")
    leaves = "/".join(f"v{v}" for v in sorted(versions))
    detail = f"all {len(run.envs)} batches are in the log at tree size {cp.size} (leaf {leaves})"
    run.add("log inclusion", not failed, detail if not failed else "; ".join(failed[:5]))


def check_consistency_document(run: _Run) -> None:
    """log/consistency.json, when present, is well formed even if no saved checkpoint is given to use it."""
    data = run.pkg.files.get("log/consistency.json")
    if data is None:
        return
    try:
        parse_consistency(data)
    except DocumentError as e:
        run.add("consistency proofs", False, e.detail)


def check_saved(run: _Run) -> None:
    """The log at the package's size extends the checkpoint the owner saved (RFC 9162 consistency)."""
    cp, vkey, name = run.checkpoint, run.vkey, "consistency with saved checkpoint"
    if run.saved is None or cp is None or vkey is None:
        return
    try:
        old = verify_checkpoint(run.saved, vkey.public_key, vkey.name, origin=run.pkg.manifest.log_origin)
    except (VerificationError, ValueError) as e:
        run.add(name, False, f"the saved checkpoint does not verify: {e}")
        return
    if old.size > cp.size:
        run.add(
            name, None, f"saved checkpoint (size {old.size}) is newer than the package's ({cp.size}); not checkable"
        )
        return
    try:
        entries = parse_consistency(run.pkg.files.get("log/consistency.json", b'{"proofs": []}'))
    except DocumentError as e:
        run.add(name, False, e.detail)
        return
    entry = next((p for p in entries if p.old_size == old.size and p.new_size == cp.size), None)
    if entry is None and old.size != cp.size:
        run.add(name, False, f"the package holds no consistency proof from the saved size {old.size} to {cp.size}")
        return
    try:
        verify_consistency(old.size, cp.size, old.root, cp.root, list(entry.proof) if entry else [])
        run.add(name, True, f"the log at size {cp.size} extends the one you saved at size {old.size}: not rewritten")
    except VerificationError as e:
        run.add(name, False, f"THE LOG WAS REWRITTEN since your checkpoint: {e}")


# --------------------------------------------------------------------------------------------------------------
# The readable tables


def check_tables(run: _Run) -> None:
    """data/window.csv and edr/part563.csv equal what the signed batches say."""
    if not run.envs or run.key is None:
        return
    decoding = _Decoding(run.envs, run.prefetch)  # Parquet reads release the GIL: they go on while the code below loads
    from carvault.signals import catalogue
    from carvault.verify.edr import edr_csv, edr_elements
    from carvault.verify.window import assemble, csv_equals

    m = run.pkg.manifest
    try:
        window = assemble(decoding.tables(), m.start_ms, m.end_ms, catalogue())
    except Exception as e:  # noqa: BLE001 - a signed payload the kernel cannot read is reported, not raised
        run.add("CSV equals the signed data", False, f"the signed batches cannot be read as tables: {e}")
        return
    same = csv_equals(window, run.pkg.files.get("data/window.csv"))  # data/window.csv == to_csv(window)
    detail = f"{window.num_rows} rows recomputed from the batches" if same else "data/window.csv differs"
    run.add("CSV equals the signed data", same, detail + ("" if same else " from the data in the signed batches"))
    if m.event_ms is not None:
        same = run.pkg.files.get("edr/part563.csv") == edr_csv(edr_elements(window, m.event_ms))
        detail = "49 CFR 563 elements recomputed from the batches" if same else "edr/part563.csv differs"
        run.add("EDR table equals the signed data", same, detail + ("" if same else " from the signed batches"))


class _Decoding:
    """The signed batches' payloads decoded on a thread of their own, in seq order, under one decode budget.

    ``check_tables`` starts it before loading the window, EDR and catalogue code, which holds the GIL while Parquet
    decoding does not; ``tables`` waits for it. The batches, their order and the
    budget are those a loop in the caller would use, so the tables, and any error (raised again by ``tables``), are
    the same. With a prefetch whose tables are those of these batches, they are taken as they are.
    """

    def __init__(self, envs: list[Envelope], prefetch: Prefetch | None = None) -> None:
        self._envs = list(envs)
        self._prefetch = prefetch
        self._tables: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="decode-batches")
        self._thread.start()

    def _run(self) -> None:
        try:
            early = self._prefetch.tables(self._envs) if self._prefetch is not None else None
            self._tables = early if early is not None else [table for _, table in decode_batches(self._envs)]
        except BaseException as e:  # noqa: BLE001 - raised again in the checking thread by ``tables``
            self._error = e

    def tables(self) -> list[Any]:
        """The decoded tables in seq order, once all are read; raises what decoding raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._tables


def check_coverage(run: _Run) -> None:
    """coverage.json is well formed and describes the batches in the package."""
    if not run.envs:
        return
    try:
        cov = parse_coverage(run.pkg.files.get("coverage.json", b""))
    except DocumentError as e:
        run.add("coverage report", False, e.detail)
        return
    ok = cov.batches == len(run.envs)
    gaps = f"{cov.gaps} gap{'' if cov.gaps == 1 else 's'}"
    detail = f"{gaps} listed, chain {cov.chain}" if ok else "coverage.json does not describe the batches"
    run.add("coverage report", ok, detail)


CHECKS: tuple[Callable[[_Run], None], ...] = (
    check_layout,
    check_trust,
    check_manifest_signature,
    check_files,
    check_certificate,
    check_batches,
    check_chain,
    check_checkpoint,
    check_witnessed,
    check_witnesses,
    check_inclusion,
    check_consistency_document,
    check_saved,
    check_tables,
    check_coverage,
)
