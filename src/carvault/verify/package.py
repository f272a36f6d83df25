"""Offline verification of an incident package (docs/incident-package.md §4).

Imports nothing from the server side: only the wire format (``protocol``), RFC 9162 proofs
(``ledger.merkle``), signed-note checkpoints (``ledger.checkpoint``), certificate checks (``pki``), and the
pure table code (``windows``, ``access.edr``, ``signals``). No network, no database.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carvault.ledger.checkpoint import parse_vkey, verify_checkpoint
from carvault.ledger.merkle import VerificationError, leaf_hash, verify_consistency, verify_inclusion
from carvault.pki import CertificateError, fingerprint, vehicle_key_from_certificate
from carvault.protocol import Envelope, decode_envelope, leaf_data
from carvault.signals import catalogue
from carvault.verify.window import assemble, to_csv

MANIFEST_CONTEXT = b"carvault-package-manifest-v1\n"
PACKAGE_FORMAT = "carvault-incident-package"


@dataclass
class Check:
    """One verification step and its outcome (``ok`` None means not applicable / skipped)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Verdict:
    """Every check of one package."""

    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed and the essential ones ran."""
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        """Record a check."""
        self.checks.append(Check(name, ok, detail))

    def failures(self) -> list[Check]:
        """Checks that failed."""
        return [c for c in self.checks if c.ok is False]


class _Stop(Exception):
    """Nothing further can be checked."""


def verify_package(
    path: Path | str, *, saved_checkpoint: str | None = None, trust: dict[str, Any] | None = None
) -> Verdict:
    """Check everything in a package; never raises for a bad package, it reports."""
    v = Verdict(str(path))
    try:
        _verify(Path(path), v, saved_checkpoint, trust)
    except _Stop:
        pass
    return v


def _verify(path: Path, v: Verdict, saved: str | None, trust: dict[str, Any] | None) -> None:
    # 1. Structure and manifest ------------------------------------------------------------------
    try:
        z = zipfile.ZipFile(path)
        files = {i.filename: z.read(i) for i in z.infolist()}
        manifest_bytes = files.pop("manifest.json")
        signature = base64.b64decode(files.pop("manifest.sig"), validate=True)
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != PACKAGE_FORMAT or manifest.get("version") != 1:
            raise ValueError("not a CarVault incident package v1")
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        v.add("package readable", False, f"cannot read the package: {e}")
        raise _Stop from None
    vin, region = manifest["vin"], manifest["region"]
    v.add("package readable", True, f"vehicle {vin}, region {region}, {len(files)} files")

    # 2. Trust anchors: published region keys if given, else the package's own copy (said plainly).
    own = json.loads(files.get("trust.json", b"{}") or b"{}")
    anchor = trust or own
    source = "the trust file given" if trust else "the package itself (compare with the region's published keys)"
    try:
        vkey = parse_vkey(anchor["log_vkey"])
        ca_pem = anchor["ca_pem"].encode()
    except (KeyError, VerificationError) as e:
        v.add("trust anchors", False, f"no usable log key / CA in {source}: {e}")
        raise _Stop from None
    v.add(
        "trust anchors",
        True if trust else None,
        f"log key {vkey.name} and CA sha256 {fingerprint(ca_pem)[:16]}… from {source}",
    )

    try:
        vkey.public_key.verify(signature, MANIFEST_CONTEXT + manifest_bytes)
        v.add("manifest signed by the region", True, f"signed by log key {vkey.name}")
    except Exception:  # noqa: BLE001 - cryptography raises InvalidSignature without a message
        v.add("manifest signed by the region", False, "the manifest signature does not verify with the region key")

    listed = manifest.get("files", {})
    bad = [n for n, h in listed.items() if n not in files or hashlib.sha256(files[n]).hexdigest() != h]
    extra = sorted(set(files) - set(listed))
    v.add(
        "files match the manifest",
        not bad and not extra,
        "every file is listed with its SHA-256"
        if not bad and not extra
        else f"changed or missing: {bad[:5]}; not listed: {extra[:5]}",
    )

    # 3. Vehicle certificate -> key ---------------------------------------------------------------
    batches = {n: d for n, d in files.items() if n.startswith("batches/")}
    proofs_doc = json.loads(files.get("log/proofs.json", b"{}"))
    proofs = {p["seq"]: p for p in proofs_doc.get("proofs", [])}
    received = [p["received_ms"] for p in proofs.values()] or [manifest["created_ms"]]
    at = dt.datetime.fromtimestamp(min(received) / 1000, dt.UTC)
    try:
        key = vehicle_key_from_certificate(files["certs/vehicle.pem"], ca_pem, vin, at=at)
        v.add("certificate chain", True, f"vehicle certificate for {vin} issued by the region CA")
    except (KeyError, CertificateError) as e:
        v.add("certificate chain", False, f"vehicle certificate does not chain to the region CA: {e}")
        key = None

    # 4. Batches: framing, signatures over the exact bytes, hash chain ----------------------------
    envs: list[Envelope] = []
    bad_sig = []
    for name in sorted(batches):
        try:
            env = decode_envelope(batches[name])
            if env.header.vin != vin or env.header.region != region:
                raise ValueError(f"{name} is a batch of {env.header.vin}/{env.header.region}")
            if name != f"batches/{env.header.seq:012d}.cvb":
                raise ValueError(f"{name} holds batch seq {env.header.seq}")
            if key is not None:
                env.verify(key)
            envs.append(env)
        except Exception as e:  # noqa: BLE001 - any defect of a batch is reported by name
            bad_sig.append(f"{name}: {getattr(e, 'message', e)}")
    v.add(
        "batch signatures",
        not bad_sig and bool(envs) and key is not None,
        f"{len(envs)} batches signed by the vehicle over their exact bytes" if not bad_sig else "; ".join(bad_sig[:5]),
    )
    envs.sort(key=lambda e: e.header.seq)
    breaks = []
    for a, b in zip(envs, envs[1:], strict=False):
        if b.header.seq != a.header.seq + 1:
            breaks.append(f"batches {a.header.seq + 1}..{b.header.seq - 1} missing")
        elif b.header.prev != a.batch_hash:
            breaks.append(f"batch {b.header.seq} does not follow batch {a.header.seq}")
    if envs:
        v.add(
            "hash chain",
            not breaks,
            f"seq {envs[0].header.seq}..{envs[-1].header.seq} continuous" if not breaks else "; ".join(breaks[:5]),
        )

    # 5. Checkpoint and inclusion proofs ------------------------------------------------------------
    cp = None
    try:
        cp = verify_checkpoint(files["log/checkpoint.txt"], vkey.public_key, vkey.name, origin=manifest["log_origin"])
        v.add("checkpoint signature", True, f"{cp.origin} tree size {cp.size}, signed by {vkey.name}")
    except (KeyError, VerificationError) as e:
        v.add("checkpoint signature", False, f"checkpoint is not signed by the region log key: {e}")
    if cp is not None:
        failed = []
        for env in envs:
            p = proofs.get(env.header.seq)
            try:
                if p is None:
                    raise VerificationError("no inclusion proof")
                if p["batch_hash"] != env.batch_hash:
                    raise VerificationError("proof is for other bytes", expected=env.batch_hash, actual=p["batch_hash"])
                leaf = leaf_data(
                    region=region, vin=vin, seq=env.header.seq, batch_hash=env.batch_hash, received_ms=p["received_ms"]
                )
                verify_inclusion(
                    leaf_hash(leaf), p["leaf_index"], cp.size, [base64.b64decode(x) for x in p["proof"]], cp.root
                )
            except (VerificationError, KeyError, ValueError) as e:
                failed.append(f"batch {env.header.seq}: {e}")
        v.add(
            "log inclusion",
            not failed and bool(envs),
            f"all {len(envs)} batches are in the log at tree size {cp.size}" if not failed else "; ".join(failed[:5]),
        )

    # 6. Consistency with a checkpoint the owner saved earlier ------------------------------------
    if saved is not None and cp is not None:
        _check_saved(v, saved, cp, vkey, manifest["log_origin"], files)

    # 7. The readable tables equal what the signed batches say ------------------------------------
    if envs:
        start, end = manifest["window"]["start_ms"], manifest["window"]["end_ms"]
        tables = [e.table() for e in envs]
        window = assemble(tables, start, end, catalogue())
        same_csv = files.get("data/window.csv") == to_csv(window)
        v.add(
            "CSV equals the signed data",
            same_csv,
            f"{window.num_rows} rows recomputed from the batches"
            if same_csv
            else "data/window.csv differs from the data in the signed batches",
        )
        if manifest.get("event"):
            from carvault.verify.edr import edr_csv, edr_elements

            same_edr = files.get("edr/part563.csv") == edr_csv(edr_elements(window, manifest["event"]["t_ms"]))
            v.add(
                "EDR table equals the signed data",
                same_edr,
                "49 CFR 563 elements recomputed from the batches"
                if same_edr
                else "edr/part563.csv differs from the data in the signed batches",
            )
        cov = json.loads(files.get("coverage.json", b"{}"))
        v.add(
            "coverage report",
            cov.get("batches") == len(envs),
            f"{len(cov.get('gaps', []))} gaps listed, chain {cov.get('chain')}"
            if cov.get("batches") == len(envs)
            else "coverage.json does not describe the batches in the package",
        )


def _check_saved(v: Verdict, saved: str, cp: Any, vkey: Any, origin: str, files: dict[str, bytes]) -> None:
    try:
        old = verify_checkpoint(saved, vkey.public_key, vkey.name, origin=origin)
    except VerificationError as e:
        v.add("consistency with saved checkpoint", False, f"the saved checkpoint does not verify: {e}")
        return
    if old.size > cp.size:
        v.add(
            "consistency with saved checkpoint",
            None,
            f"saved checkpoint (size {old.size}) is newer than the package's ({cp.size}); not checkable offline",
        )
        return
    doc = json.loads(files.get("log/consistency.json", b'{"proofs": []}'))
    entry = next((p for p in doc.get("proofs", []) if p["old_size"] == old.size and p["new_size"] == cp.size), None)
    if old.size == cp.size:
        proof: list[bytes] = []
    elif entry is None:
        v.add(
            "consistency with saved checkpoint",
            False,
            f"the package holds no consistency proof from the saved size {old.size} to {cp.size}",
        )
        return
    else:
        proof = [base64.b64decode(x) for x in entry["proof"]]
    try:
        verify_consistency(old.size, cp.size, old.root, cp.root, proof)
        v.add(
            "consistency with saved checkpoint",
            True,
            f"the log at size {cp.size} extends the one you saved at size {old.size}: history not rewritten",
        )
    except VerificationError as e:
        v.add("consistency with saved checkpoint", False, f"THE LOG WAS REWRITTEN since your checkpoint: {e}")
