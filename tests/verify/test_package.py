"""Incident packages end to end and the offline verifier's tamper table.

Most tampering is done as a dishonest operator would: holding the region key, re-signing the manifest.
Each case must still be caught, and by the check that names it. The container table feeds the verifier
hostile ZIPs (bombs, duplicate and unsafe names, malformed JSON): each is a named failed check and an exit
code, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from typer.testing import CliRunner

from carvault.access.packages import trust_document
from carvault.cli import app as cli
from carvault.compliance.consent import default_on
from carvault.ledger.checkpoint import sign_checkpoint
from carvault.ledger.leaves import batch_leaf, log_key_of
from carvault.ledger.log import TransparencyLog
from carvault.ledger.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from carvault.protocol import leaf_data_v1, leaf_data_v2
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.package import (
    EXIT_NOT_ANCHORED,
    EXIT_UNREADABLE,
    MANIFEST_CONTEXT,
    Limits,
    Pins,
    verify_package,
)
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, vin_for
from tests.verify.process import run_verify

EVENT_MS = BASE_MS + 200_000


def consented_drive(seconds: int) -> pa.Table:
    """A drive of every signal collected without the owner's opt-in (the gateway refuses the others)."""
    paths = [s.path for s in catalogue() if default_on(s.category) and s.category != "exterior_camera"]
    return drive_table(BASE_MS, seconds=seconds, paths=paths)


@pytest.fixture
def package(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, tmp_path: Path
) -> tuple[Path, dict]:
    assert (
        http.post(
            "/api/v1/vehicles/claim",
            headers=owner.headers,
            json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
        ).status_code
        == 201
    )
    agent.record(consented_drive(300), batch_seconds=60)
    agent.upload_pending()
    r = http.post(
        f"/api/v1/vehicles/{vehicle.vin}/packages",
        headers=owner.headers,
        json={"event_time": EVENT_MS, "event_kind": "crash", "minutes_before": 3, "minutes_after": 1},
    )
    assert r.status_code == 201, r.text
    meta = r.json()
    blob = http.get(meta["download"], headers=owner.headers).content
    path = tmp_path / "package.zip"
    path.write_bytes(blob)
    trust = http.get("/api/v1/region/trust").json()
    return path, trust


def test_package_verifies_and_holds_what_the_contract_lists(
    package: tuple[Path, dict], http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    path, trust = package
    names = set(zipfile.ZipFile(path).namelist())
    assert {
        "manifest.json",
        "manifest.sig",
        "certs/vehicle.pem",
        "certs/region-ca.pem",
        "log/checkpoint.txt",
        "log/proofs.json",
        "coverage.json",
        "data/window.csv",
        "edr/part563.csv",
        "report/report.html",
        "report/report.pdf",
    } <= names
    assert sum(n.startswith("batches/") for n in names) == 5  # window 20 s..260 s overlaps all 5 one-minute batches
    verdict = verify_package(path, trust=trust)
    assert verdict.ok, [c for c in verdict.checks if not c.ok]
    assert {c.name for c in verdict.checks} >= {
        "batch signatures",
        "hash chain",
        "certificate chain",
        "log inclusion",
        "checkpoint signature",
        "CSV equals the signed data",
        "EDR table equals the signed data",
        "manifest signed by the region",
    }
    # The server-side verification answer agrees, and the owner's audit log shows the package.
    pid = http.get(f"/api/v1/vehicles/{vehicle.vin}/packages", headers=owner.headers).json()[0]["id"]
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}/packages/{pid}/verification", headers=owner.headers).json()["ok"]
    actions = {e["action"] for e in http.get("/api/v1/audit", headers=owner.headers).json()["events"]}
    assert {"package.create", "package.download"} <= actions


def test_cli_verify_exit_codes(package: tuple[Path, dict], tmp_path: Path) -> None:
    path, trust = package
    tf = tmp_path / "trust.json"
    tf.write_text(json.dumps(trust))
    ok = CliRunner().invoke(cli, ["verify", str(path), "--trust", str(tf)])
    assert ok.exit_code == 0 and "VERIFIED" in ok.output
    bad = tmp_path / "bad.zip"
    rewrite(path, bad, lambda f: f.__setitem__("data/window.csv", f["data/window.csv"].replace(b",", b";", 1)), None)
    out = CliRunner().invoke(cli, ["verify", str(bad), "--trust", str(tf)])
    assert out.exit_code == 1 and "NOT VERIFIED" in out.output


def rewrite(
    src: Path,
    dst: Path,
    mutate: Callable[[dict[str, bytes]], None],
    key: Ed25519PrivateKey | None,
    manifest_changes: dict | None = None,
) -> None:
    """Copy a package with its files mutated; re-sign the manifest with ``key`` (an operator) if given."""
    z = zipfile.ZipFile(src)
    files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files.pop("manifest.json"))
    sig = files.pop("manifest.sig")
    mutate(files)
    if key is not None:
        manifest.update(manifest_changes or {})
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}
        mbytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
        sig = base64.b64encode(key.sign(MANIFEST_CONTEXT + mbytes))
    else:
        mbytes = z.read("manifest.json")
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as out:
        out.writestr("manifest.json", mbytes)
        out.writestr("manifest.sig", sig)
        for n, d in files.items():
            out.writestr(n, d)
    dst.write_bytes(sink.getvalue())


def _flip_payload_byte(f: dict[str, bytes]) -> None:
    name = sorted(n for n in f if n.startswith("batches/"))[1]
    b = bytearray(f[name])
    b[len(b) // 2] ^= 0x40
    f[name] = bytes(b)


def _drop_middle_batch(f: dict[str, bytes]) -> None:
    del f[sorted(n for n in f if n.startswith("batches/"))[1]]


def _swap_batches(f: dict[str, bytes]) -> None:
    a, b = sorted(n for n in f if n.startswith("batches/"))[1:3]
    f[a], f[b] = f[b], f[a]


def _edit_csv(f: dict[str, bytes]) -> None:
    lines = f["data/window.csv"].split(b"\n")
    cells = lines[5].split(b",")
    cells[1] = b"12.5"
    lines[5] = b",".join(cells)
    f["data/window.csv"] = b"\n".join(lines)


def _edit_edr(f: dict[str, bytes]) -> None:
    f["edr/part563.csv"] = f["edr/part563.csv"].replace(b"on", b"off", 1)


def _forge_checkpoint(f: dict[str, bytes]) -> None:
    lines = f["log/checkpoint.txt"].decode().split("\n")
    origin, size = lines[0], int(lines[1])
    f["log/checkpoint.txt"] = sign_checkpoint(origin, size, bytes(32), Ed25519PrivateKey.generate(), origin).encode()


def _forge_checkpoint_same_key(region_key: Ed25519PrivateKey) -> Callable[[dict[str, bytes]], None]:
    def forge(f: dict[str, bytes]) -> None:
        lines = f["log/checkpoint.txt"].decode().split("\n")
        f["log/checkpoint.txt"] = sign_checkpoint(
            lines[0], int(lines[1]), hashlib.sha256(b"other").digest(), region_key, lines[0]
        ).encode()

    return forge


TAMPER = [
    ("changed byte in a batch", _flip_payload_byte, "batch signatures"),
    ("dropped batch", _drop_middle_batch, "hash chain"),
    ("reordered batches", _swap_batches, "batch signatures"),
    ("edited CSV", _edit_csv, "CSV equals the signed data"),
    ("edited EDR table", _edit_edr, "EDR table equals the signed data"),
    ("forged checkpoint (other key)", _forge_checkpoint, "checkpoint signature"),
]


@pytest.mark.parametrize(("name", "mutate", "check"), TAMPER, ids=[t[0] for t in TAMPER])
def test_tampering_by_the_operator_is_caught_and_named(
    built: Built, tmp_path: Path, name: str, mutate: Callable, check: str
) -> None:
    bad = tmp_path / "tampered.zip"
    rewrite(built.path, bad, mutate, built.log_key)
    verdict = verify_package(bad, trust=built.trust)
    assert not verdict.ok
    assert check in {c.name for c in verdict.failures()}, verdict.checks


def test_tampering_without_the_region_key_breaks_the_manifest(built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "tampered.zip"
    rewrite(built.path, bad, _edit_csv, None)
    failed = {c.name for c in verify_package(bad, trust=built.trust).failures()}
    assert "files match the manifest" in failed


def test_forged_root_with_the_region_key_fails_inclusion(built: Built, tmp_path: Path) -> None:
    bad = tmp_path / "tampered.zip"
    rewrite(built.path, bad, _forge_checkpoint_same_key(built.log_key), built.log_key)
    assert "log inclusion" in {c.name for c in verify_package(bad, trust=built.trust).failures()}


def test_swapped_certificate_is_caught(package: tuple[Path, dict], region: Region, tmp_path: Path) -> None:
    path, trust = package
    other = provision(region, vin_for(55), tmp_path / "others")
    bad = tmp_path / "tampered.zip"
    rewrite(path, bad, lambda f: f.__setitem__("certs/vehicle.pem", other.certificate_pem.encode()), region.log_key)
    assert "certificate chain" in {c.name for c in verify_package(bad, trust=trust).failures()}
    # A certificate from another CA for the right VIN and key is refused too.
    from carvault.pki import RegionCA

    rogue = RegionCA.load_or_create(Ed25519PrivateKey.generate(), tmp_path / "rogue.pem", "cn")
    z = zipfile.ZipFile(path)
    vin = json.loads(z.read("manifest.json"))["vin"]
    from cryptography import x509

    pub = x509.load_pem_x509_certificate(z.read("certs/vehicle.pem")).public_key().public_bytes_raw()
    rewrite(path, bad, lambda f: f.__setitem__("certs/vehicle.pem", rogue.issue(vin, pub).encode()), region.log_key)
    assert "certificate chain" in {c.name for c in verify_package(bad, trust=trust).failures()}


def test_untrusted_keys_are_flagged(built: Built) -> None:
    verdict = verify_package(built.path)  # no trust file: works, but says where the keys came from
    anchor = next(c for c in verdict.checks if c.name == "trust anchors")
    assert anchor.ok is None and "package itself" in anchor.detail


def test_log_rewritten_behind_a_saved_checkpoint(
    http: httpx.Client,
    owner: OwnerClient,
    region: Region,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    tmp_path: Path,
) -> None:
    agent.record(consented_drive(180), batch_seconds=60)
    agent.upload_pending()
    http.post(
        "/api/v1/vehicles/claim", headers=owner.headers, json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    )
    saved = http.get("/api/v1/log/checkpoint").text
    assert http.post("/api/v1/log/saved-checkpoints", headers=owner.headers, json={"note": saved}).status_code == 201
    (tmp_path / "saved.txt").write_text(saved)

    def package_now() -> Path:
        r = http.post(
            f"/api/v1/vehicles/{vehicle.vin}/packages",
            headers=owner.headers,
            json={"start": BASE_MS, "end": BASE_MS + 180_000},
        )
        assert r.status_code == 201, r.text
        p = tmp_path / f"pkg-{r.json()['id']}.zip"
        p.write_bytes(http.get(r.json()["download"], headers=owner.headers).content)
        return p

    honest = package_now()
    trust = http.get("/api/v1/region/trust").json()
    ok = verify_package(honest, saved_checkpoint=saved, trust=trust)
    assert ok.ok and next(c for c in ok.checks if c.name == "consistency with saved checkpoint").ok

    # The operator rebuilds the log (same key) with other history, then re-logs the real batches.
    logdir = region.settings.data_dir / "log"
    region.log.close()
    shutil.move(logdir, tmp_path / "old-log")
    region.log = TransparencyLog(
        logdir, origin=region.log.origin, private_key=region.log_key, key_name=region.log.key_name
    )
    region.log.append([b"rewritten history"] * 5)
    with region.db.session() as s:
        for rec in s.scalars(select(BatchRecord).order_by(BatchRecord.seq)):
            rec.log_index = region.log.append([batch_leaf("cn", rec, log_key_of(region.db, rec.vin))])
    forged = package_now()
    assert verify_package(forged, trust=trust).ok  # alone it looks fine ...
    verdict = verify_package(forged, saved_checkpoint=saved, trust=trust)  # ... but not against what the owner saw
    assert "consistency with saved checkpoint" in {c.name for c in verdict.failures()}


# ----------------------------------------------------------------------------------------------------------------
# Hostile containers, malformed documents, anchoring and leaf v2: one package built once for the module.


@dataclass(frozen=True)
class Built:
    """A real package from a real region, the region's published trust document and its log key."""

    path: Path
    trust: dict
    log_key: Ed25519PrivateKey
    origin: str
    key_name: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    folder = tmp_path_factory.mktemp("built")
    settings = Settings(data_dir=folder / "region", region="cn", port=free_port())
    region = Region(settings)
    try:
        with BackgroundServer(region, port=settings.port) as server, httpx.Client(base_url=server.url) as http:
            ident = provision(region, vin_for(7), folder / "vehicles")
            agent = VehicleAgent(ident, folder / "vehicles" / ident.vin, server.url)
            owner = make_owner(http)
            claim = {"vin": ident.vin, "pairing_code": ident.pairing_code}
            assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=claim).status_code == 201
            agent.record(consented_drive(300), batch_seconds=60)
            agent.upload_pending()
            r = http.post(
                f"/api/v1/vehicles/{ident.vin}/packages",
                headers=owner.headers,
                json={"event_time": EVENT_MS, "event_kind": "crash", "minutes_before": 3, "minutes_after": 1},
            )
            assert r.status_code == 201, r.text
            path = folder / "package.zip"
            path.write_bytes(http.get(r.json()["download"], headers=owner.headers).content)
            trust = http.get("/api/v1/region/trust").json()
        yield Built(path, trust, region.log_key, region.log.origin, region.log.key_name)
    finally:
        region.close()


def members(path: Path) -> list[tuple[str, bytes]]:
    """The package's members in order."""
    z = zipfile.ZipFile(path)
    return [(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(dst: Path, entries: list[tuple[str, bytes]], compress: int = zipfile.ZIP_DEFLATED) -> Path:
    """A ZIP holding exactly ``entries`` (duplicates and unsafe names included)."""
    with warnings.catch_warnings(), zipfile.ZipFile(dst, "w", compression=compress) as z:
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names; writing one is the point
        for name, data in entries:
            z.writestr(name, data)
    return dst


def _replace(entries: list[tuple[str, bytes]], name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(n, data if n == name else d) for n, d in entries]


def _zeros(n: int) -> bytes:
    return bytes(n)


def _edited_duplicate(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    csv = dict(entries)["data/window.csv"]
    return [*entries, ("data/window.csv", csv.replace(b",", b";", 1))]


def _edited_duplicate_first(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    csv = dict(entries)["data/window.csv"]
    return [("data/window.csv", csv.replace(b",", b";", 1)), *entries]


CONTAINER = [
    # (case, make the entries from the good ones, compression, limits, failed check, exit code)
    ("ratio bomb", lambda e: _replace(e, "data/window.csv", _zeros(64 << 20)), zipfile.ZIP_DEFLATED, None),
    ("member over the size limit", lambda e: e, zipfile.ZIP_STORED, Limits(max_member_bytes=100_000)),
    ("total over the size limit", lambda e: e, zipfile.ZIP_STORED, Limits(max_total_bytes=1_000_000)),
    ("too many members", lambda e: e + [(f"batches/{i:012d}.cvb", b"") for i in range(10**6, 10**6 + 5001)], 0, None),
    ("duplicate name, edited one last", _edited_duplicate, zipfile.ZIP_DEFLATED, None),
    ("duplicate name, edited one first", _edited_duplicate_first, zipfile.ZIP_DEFLATED, None),
    ("path traversal", lambda e: [*e, ("../../etc/evil.txt", b"x")], zipfile.ZIP_DEFLATED, None),
    ("absolute name", lambda e: [*e, ("/tmp/evil.txt", b"x")], zipfile.ZIP_DEFLATED, None),
    ("dot-dot inside", lambda e: [*e, ("batches/../manifest.json", b"x")], zipfile.ZIP_DEFLATED, None),
    ("backslash name", lambda e: [*e, ("data\\window.csv", b"x")], zipfile.ZIP_DEFLATED, None),
    ("directory entry", lambda e: [*e, ("extra/", b"")], zipfile.ZIP_DEFLATED, None),
    ("bzip2 members", lambda e: e, zipfile.ZIP_BZIP2, None),
]


@pytest.mark.parametrize(("case", "make", "compress", "limits"), CONTAINER, ids=[c[0] for c in CONTAINER])
def test_hostile_container_is_refused_by_name(
    built: Built, tmp_path: Path, case: str, make: Callable, compress: int, limits: Limits | None
) -> None:
    bad = write_zip(tmp_path / "hostile.zip", make(members(built.path)), compress or zipfile.ZIP_STORED)
    verdict = verify_package(bad, trust=built.trust, limits=limits or Limits())
    assert not verdict.readable and verdict.exit_code == EXIT_UNREADABLE
    assert [c.name for c in verdict.failures()] == ["ZIP container"], verdict.checks


def test_the_default_limits_hold_the_packages_we_build(built: Built) -> None:
    verdict = verify_package(built.path, trust=built.trust, limits=Limits())
    assert verdict.verified and verdict.exit_code == 0, verdict.failures()


def test_not_a_zip_and_truncated_zip_are_unreadable(built: Built, tmp_path: Path) -> None:
    blob = built.path.read_bytes()
    for name, data in [("text", b"hello, court"), ("truncated", blob[: len(blob) // 2]), ("empty", b"")]:
        f = tmp_path / f"{name}.zip"
        f.write_bytes(data)
        verdict = verify_package(f, trust=built.trust)
        assert verdict.exit_code == EXIT_UNREADABLE and verdict.failures()[0].name == "ZIP container", name


def _manifest(text: bytes) -> Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]:
    return lambda e: _replace(e, "manifest.json", text)


def _manifest_without(key: str) -> Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]:
    def make(e: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        doc = json.loads(dict(e)["manifest.json"])
        del doc[key]
        return _replace(e, "manifest.json", json.dumps(doc).encode())

    return make


def _manifest_with(key: str, value: object) -> Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]:
    def make(e: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        doc = json.loads(dict(e)["manifest.json"])
        doc[key] = value
        return _replace(e, "manifest.json", json.dumps(doc).encode())

    return make


UNREADABLE_MANIFEST = [
    ("manifest not JSON", _manifest(b"{not json")),
    ("manifest a list", _manifest(b"[1, 2, 3]")),
    ("manifest not UTF-8", _manifest(b'{"format": "\xff"}')),
    ("manifest with a duplicate key", _manifest(b'{"format": "carvault-incident-package", "format": "x"}')),
    ("manifest without vin", _manifest_without("vin")),
    ("manifest without files", _manifest_without("files")),
    ("window a string", _manifest_with("window", "yesterday")),
    ("tree_size a boolean", _manifest_with("tree_size", True)),
    ("tree_size a float", _manifest_with("tree_size", 12.0)),
    ("files not hashes", _manifest_with("files", {"data/window.csv": 12})),
    ("event without t_ms", _manifest_with("event", {"kind": "crash"})),
    ("NaN created_ms", _manifest(b'{"format": "carvault-incident-package", "version": 1, "created_ms": NaN}')),
    ("manifest.sig not base64", lambda e: _replace(e, "manifest.sig", b"!!!")),
    ("no manifest", lambda e: [(n, d) for n, d in e if n != "manifest.json"]),
]


@pytest.mark.parametrize(("case", "make"), UNREADABLE_MANIFEST, ids=[c[0] for c in UNREADABLE_MANIFEST])
def test_malformed_manifest_is_unreadable_not_a_traceback(
    built: Built, tmp_path: Path, case: str, make: Callable
) -> None:
    bad = write_zip(tmp_path / "bad.zip", make(members(built.path)))
    verdict = verify_package(bad, trust=built.trust)
    assert verdict.exit_code == EXIT_UNREADABLE
    assert [c.name for c in verdict.failures()] == ["package readable"], verdict.checks


def _set_json(name: str, value: object) -> Callable[[dict[str, bytes]], None]:
    return lambda f: f.__setitem__(name, json.dumps(value).encode())


def _proofs_edit(edit: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
    def mutate(f: dict[str, bytes]) -> None:
        doc = json.loads(f["log/proofs.json"])
        edit(doc)
        f["log/proofs.json"] = json.dumps(doc).encode()

    return mutate


def _add_file(f: dict[str, bytes]) -> None:
    f["notes/readme.txt"] = b"trust me"


def _without_salt(entry: dict) -> None:
    entry["leaf_version"] = 2
    entry.pop("leaf_salt", None)


def _with_salt(entry: dict, salt: bytes) -> None:
    entry.update(leaf_version=2, leaf_salt=base64.b64encode(salt).decode())


MALFORMED_SIGNED = [
    # Re-signed by the operator, so only the named check can catch it.
    ("extra file", _add_file, "package layout"),
    ("proofs.json not JSON", lambda f: f.__setitem__("log/proofs.json", b"{"), "log inclusion"),
    ("proofs.json a list", _set_json("log/proofs.json", []), "log inclusion"),
    ("leaf_index a string", _proofs_edit(lambda d: d["proofs"][0].__setitem__("leaf_index", "3")), "log inclusion"),
    ("proof hash not base64", _proofs_edit(lambda d: d["proofs"][0].__setitem__("proof", ["%%%"])), "log inclusion"),
    ("proofs without seq", _proofs_edit(lambda d: d["proofs"][0].pop("seq")), "log inclusion"),
    ("unknown leaf version", _proofs_edit(lambda d: d["proofs"][0].__setitem__("leaf_version", 3)), "log inclusion"),
    ("v2 without salt", _proofs_edit(lambda d: _without_salt(d["proofs"][0])), "log inclusion"),
    ("salt of 16 bytes", _proofs_edit(lambda d: _with_salt(d["proofs"][0], bytes(16))), "log inclusion"),
    ("trust.json garbage", lambda f: f.__setitem__("trust.json", b"\x00garbage"), "trust anchors"),
    ("trust.json wrong types", _set_json("trust.json", {"log_vkey": 5, "ca_pem": []}), "trust anchors"),
    ("coverage.json wrong types", _set_json("coverage.json", {"batches": "5", "gaps": {}}), "coverage report"),
    ("consistency.json a string", _set_json("log/consistency.json", "proofs"), "consistency proofs"),
    (
        "consistency proof sizes as text",
        _set_json("log/consistency.json", {"proofs": [{"old_size": "1"}]}),
        "consistency proofs",
    ),
    ("no checkpoint", lambda f: f.pop("log/checkpoint.txt"), "checkpoint signature"),
    ("no vehicle certificate", lambda f: f.pop("certs/vehicle.pem"), "certificate chain"),
    ("certificate garbage", lambda f: f.__setitem__("certs/vehicle.pem", b"-----BEGIN junk"), "certificate chain"),
]


@pytest.mark.parametrize(("case", "mutate", "check"), MALFORMED_SIGNED, ids=[c[0] for c in MALFORMED_SIGNED])
def test_malformed_documents_fail_a_named_check(
    built: Built, tmp_path: Path, case: str, mutate: Callable, check: str
) -> None:
    bad = tmp_path / "bad.zip"
    rewrite(built.path, bad, mutate, built.log_key)
    verdict = verify_package(bad, trust=built.trust)
    assert verdict.exit_code == 1
    assert check in {c.name for c in verdict.failures()}, verdict.checks


def test_a_package_from_someone_elses_keys_is_not_anchored(built: Built, tmp_path: Path) -> None:
    # A package is internally consistent whoever built it: here, a region the court has never heard of.
    alone = verify_package(built.path)
    assert alone.ok and not alone.anchored and not alone.verified and alone.exit_code == EXIT_NOT_ANCHORED
    assert alone.log_vkey == built.trust["log_vkey"] and alone.ca_sha256 == built.trust["ca_sha256"]
    # Against the real region's published keys it fails; pinned to the right ones it is anchored.
    real = Region(Settings(data_dir=tmp_path / "real-region", region="cn"))
    try:
        other = verify_package(built.path, trust=trust_document(real))
    finally:
        real.close()
    assert other.exit_code == 1 and "trust anchors" in {c.name for c in other.failures()}
    pinned = verify_package(built.path, pins=Pins(built.trust["log_vkey"], built.trust["ca_sha256"]))
    assert pinned.verified and pinned.exit_code == 0
    wrong_pin = verify_package(built.path, pins=Pins(built.trust["log_vkey"], "00" * 32))
    assert wrong_pin.exit_code == 1 and "trust anchors" in {c.name for c in wrong_pin.failures()}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `carvault verify`, as a user runs it."""
    exe = Path(sys.executable).with_name("carvault")
    return subprocess.run([str(exe), "verify", *args], capture_output=True, text=True, timeout=60, check=False)


def test_cli_exit_codes_and_messages(built: Built, tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(built.trust))
    bomb = write_zip(tmp_path / "bomb.zip", _replace(members(built.path), "data/window.csv", _zeros(64 << 20)))
    no_json = write_zip(tmp_path / "nojson.zip", _manifest(b"{")(members(built.path)))
    edited = tmp_path / "edited.zip"
    rewrite(built.path, edited, _edit_csv, built.log_key)
    cases = [
        ((str(built.path), "--trust", str(trust)), 0, "VERIFIED"),
        ((str(built.path),), 2, "NOT ANCHORED"),
        ((str(edited), "--trust", str(trust)), 1, "NOT VERIFIED: CSV equals the signed data"),
        ((str(bomb), "--trust", str(trust)), 3, "UNREADABLE"),
        ((str(no_json), "--trust", str(trust)), 3, "package readable"),
        ((str(tmp_path / "missing.zip"),), 4, ""),
        ((str(built.path), "--trust", str(bomb)), 4, ""),
        ((str(built.path), "--log-key", built.trust["log_vkey"]), 4, ""),
    ]
    for args, code, text in cases:
        out = _cli(*args)
        assert out.returncode == code, (args, out.stdout, out.stderr)
        assert text in out.stdout and "Traceback" not in out.stderr, (args, out.stdout, out.stderr)
    unanchored = _cli(str(built.path)).stdout
    assert built.trust["log_vkey"] in unanchored and built.trust["ca_sha256"] in unanchored
    as_json = json.loads(_cli(str(built.path), "--json").stdout)
    assert as_json["anchored"] is False and as_json["consistent"] is True and as_json["ok"] is False


# ----------------------------------------------------------------------------------------------------------------
# Leaf v2: proofs.json entries with "leaf_version": 2 and the batch's salt; v1 entries still verify.


def relog(
    built: Built, dst: Path, versions: Callable[[int], int], salt_for: Callable[[int], bytes]
) -> tuple[dict, list[bytes]]:
    """Re-log the package's batches in a fresh log (leaf v1 or v2 per batch), as a region on leaf v2 would."""
    z = zipfile.ZipFile(built.path)
    manifest = json.loads(z.read("manifest.json"))
    proofs = json.loads(z.read("log/proofs.json"))
    leaves, entries = [b"an earlier leaf"], []
    for p in sorted(proofs["proofs"], key=lambda p: p["seq"]):
        fields = {
            "region": manifest["region"],
            "vin": manifest["vin"],
            "seq": p["seq"],
            "batch_hash": p["batch_hash"],
            "received_ms": p["received_ms"],
        }
        v = versions(p["seq"])
        salt = salt_for(p["seq"])
        leaves.append(leaf_data_v2(salt=salt, **fields) if v == 2 else leaf_data_v1(**fields))
        entry = {k: x for k, x in p.items() if k not in ("leaf_version", "leaf_salt")} | {"leaf_index": len(leaves) - 1}
        if v == 2:
            entry.update(leaf_version=2, leaf_salt=base64.b64encode(salt).decode())
        entries.append(entry)
    hashes = [leaf_hash(x) for x in leaves]
    size, root = len(hashes), root_from_leaf_hashes(hashes)
    for e in entries:
        e["proof"] = [base64.b64encode(h).decode() for h in inclusion_proof(hashes, e["leaf_index"], size)]
    checkpoint = sign_checkpoint(built.origin, size, root, built.log_key, built.key_name)

    def mutate(f: dict[str, bytes]) -> None:
        f["log/proofs.json"] = json.dumps({"tree_size": size, "region": manifest["region"], "proofs": entries}).encode()
        f["log/checkpoint.txt"] = checkpoint.encode()

    rewrite(built.path, dst, mutate, built.log_key, manifest_changes={"tree_size": size})
    return manifest, leaves


LEAF_CASES = [
    # (case, leaf version per seq, salt in the package per seq, verifies)
    ("all v2", lambda s: 2, lambda s: hashlib.sha256(b"salt %d" % s).digest(), True),
    ("v1 and v2 mixed", lambda s: 2 if s % 2 else 1, lambda s: hashlib.sha256(b"salt %d" % s).digest(), True),
    ("all v1 (old packages)", lambda s: 1, lambda s: bytes(32), True),
]


@pytest.mark.parametrize(("case", "versions", "salt", "ok"), LEAF_CASES, ids=[c[0] for c in LEAF_CASES])
def test_leaf_versions_verify(
    built: Built, tmp_path: Path, case: str, versions: Callable, salt: Callable, ok: bool
) -> None:
    pkg = tmp_path / "relogged.zip"
    relog(built, pkg, versions, salt)
    verdict = verify_package(pkg, trust=built.trust)
    assert verdict.verified is ok, verdict.failures()
    detail = next(c.detail for c in verdict.checks if c.name == "log inclusion")
    assert ("v2" in detail) is (versions(1) == 2 or versions(2) == 2)


def test_a_wrong_salt_fails_inclusion(built: Built, tmp_path: Path) -> None:
    pkg = tmp_path / "relogged.zip"
    relog(built, pkg, lambda s: 2, lambda s: hashlib.sha256(b"salt %d" % s).digest())
    bad = tmp_path / "wrong-salt.zip"

    def swap_salt(f: dict[str, bytes]) -> None:
        doc = json.loads(f["log/proofs.json"])
        doc["proofs"][0]["leaf_salt"] = base64.b64encode(bytes(32)).decode()
        f["log/proofs.json"] = json.dumps(doc).encode()

    rewrite(pkg, bad, swap_salt, built.log_key)
    verdict = verify_package(bad, trust=built.trust)
    assert "log inclusion" in {c.name for c in verdict.failures()}


#: What `carvault verify` must never load: it has to start in a fraction of a second, offline.
NOT_IN_VERIFY = ("typer", "rich", "click", "sqlalchemy", "fastapi", "starlette", "uvicorn", "httpx")
NOT_IN_VERIFY_CARVAULT = (
    "carvault.cli",
    "carvault.region",
    "carvault.web",
    "carvault.store",
    "carvault.access",
    "carvault.ingest",
)


def test_carvault_verify_loads_only_the_kernel(built: Built, tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(built.trust))
    result = run_verify(str(built.path), "--trust", str(trust))
    assert result.code == 0 and "VERIFIED: every check holds" in result.out, (result.out, result.err)
    stray = [m for m in result.modules if m.split(".")[0] in NOT_IN_VERIFY or m.startswith(NOT_IN_VERIFY_CARVAULT)]
    assert not stray, stray
    # Nor pyarrow's file systems (pyarrow.parquet loads them; the payloads are read from memory), nor the wrappers of
    # pyarrow.compute (carvault.protocol.kernels calls the kernels): each costs start-up time and serves nothing here.
    assert not {"pyarrow.parquet", "pyarrow.fs", "pyarrow.compute"} & result.modules, sorted(result.modules)


def _declare_size(blob: bytes, name: bytes, size: int) -> bytes:
    """The archive with the central directory's uncompressed size of ``name`` replaced (a lying header)."""
    out = bytearray(blob)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(out[at + 28 : at + 30], "little")
        if out[at + 46 : at + 46 + name_len] == name:
            out[at + 24 : at + 28] = size.to_bytes(4, "little")
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} not in the archive")


@pytest.mark.parametrize("declared", [10, 2**32 - 1], ids=["smaller than it is", "4 GiB"])
def test_declared_sizes_are_not_trusted(built: Built, tmp_path: Path, declared: int) -> None:
    noise = random.Random(0).randbytes(2 << 20)  # incompressible: no ratio limit trips, only the lie can
    blob = write_zip(tmp_path / "ok.zip", _replace(members(built.path), "data/window.csv", noise)).read_bytes()
    bad = tmp_path / "lying.zip"
    bad.write_bytes(_declare_size(blob, b"data/window.csv", declared))
    verdict = verify_package(bad, trust=built.trust)
    assert verdict.exit_code == EXIT_UNREADABLE and verdict.failures()[0].name == "ZIP container", verdict.checks


def test_an_edr_table_without_an_event_fails_the_layout(built: Built, tmp_path: Path) -> None:
    """With no event nothing recomputes edr/part563.csv, so a package carrying one is refused, not half-checked."""
    bad = tmp_path / "edr-without-event.zip"
    rewrite(built.path, bad, lambda files: None, built.log_key, manifest_changes={"event": None})
    verdict = verify_package(bad, trust=built.trust)
    layout = next(c for c in verdict.checks if c.name == "package layout")
    assert layout.ok is False and "EDR table without an event" in layout.detail
