"""Incident packages end to end and the offline verifier's tamper table.

Most tampering is done as a dishonest operator would: holding the region key, re-signing the manifest.
Each case must still be caught, and by the check that names it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from typer.testing import CliRunner

from carvault.cli import app as cli
from carvault.ledger.checkpoint import sign_checkpoint
from carvault.ledger.log import TransparencyLog
from carvault.protocol import leaf_data
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.package import MANIFEST_CONTEXT, verify_package
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table, vin_for

EVENT_MS = BASE_MS + 200_000


@pytest.fixture
def package(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent, tmp_path: Path
) -> tuple[Path, dict]:
    agent.record(drive_table(BASE_MS, seconds=300), batch_seconds=60)
    agent.upload_pending()
    assert (
        http.post(
            "/api/v1/vehicles/claim",
            headers=owner.headers,
            json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
        ).status_code
        == 201
    )
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


def rewrite(src: Path, dst: Path, mutate: Callable[[dict[str, bytes]], None], key: Ed25519PrivateKey | None) -> None:
    """Copy a package with its files mutated; re-sign the manifest with ``key`` (an operator) if given."""
    z = zipfile.ZipFile(src)
    files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files.pop("manifest.json"))
    sig = files.pop("manifest.sig")
    mutate(files)
    if key is not None:
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
    package: tuple[Path, dict], region: Region, tmp_path: Path, name: str, mutate: Callable, check: str
) -> None:
    path, trust = package
    bad = tmp_path / "tampered.zip"
    rewrite(path, bad, mutate, region.log_key)
    verdict = verify_package(bad, trust=trust)
    assert not verdict.ok
    assert check in {c.name for c in verdict.failures()}, verdict.checks


def test_tampering_without_the_region_key_breaks_the_manifest(package: tuple[Path, dict], tmp_path: Path) -> None:
    path, trust = package
    bad = tmp_path / "tampered.zip"
    rewrite(path, bad, _edit_csv, None)
    failed = {c.name for c in verify_package(bad, trust=trust).failures()}
    assert "files match the manifest" in failed


def test_forged_root_with_the_region_key_fails_inclusion(
    package: tuple[Path, dict], region: Region, tmp_path: Path
) -> None:
    path, trust = package
    bad = tmp_path / "tampered.zip"
    rewrite(path, bad, _forge_checkpoint_same_key(region.log_key), region.log_key)
    assert "log inclusion" in {c.name for c in verify_package(bad, trust=trust).failures()}


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


def test_untrusted_keys_are_flagged(package: tuple[Path, dict]) -> None:
    path, _ = package
    verdict = verify_package(path)  # no trust file: works, but says where the keys came from
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
    agent.record(drive_table(BASE_MS, seconds=180), batch_seconds=60)
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
            rec.log_index = region.log.append(
                [
                    leaf_data(
                        region="cn", vin=rec.vin, seq=rec.seq, batch_hash=rec.batch_hash, received_ms=rec.received_ms
                    )
                ]
            )
    forged = package_now()
    assert verify_package(forged, trust=trust).ok  # alone it looks fine ...
    verdict = verify_package(forged, saved_checkpoint=saved, trust=trust)  # ... but not against what the owner saw
    assert "consistency with saved checkpoint" in {c.name for c in verdict.failures()}
