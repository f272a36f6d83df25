"""Witnessed evidence end to end: an incident package carries the cosigned checkpoint; ``carvault verify`` passes
with k of the n witnesses it knows, fails with k+1, and rejects a tampered cosignature; receipts' inclusion
proofs carry a cosigned checkpoint."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.ledger.checkpoint import format_witness_vkey, parse_checkpoint, parse_vkey, verify_cosignatures
from carvault.region import Region
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.package import WitnessPolicy, verify_package
from tests.conftest import OwnerClient
from tests.verify.test_package import EVENT_MS, consented_drive
from tests.witness.conftest import WitnessProcess
from tests.witness.test_region_witnessing import region_with_witnesses

pytestmark = pytest.mark.slow


@pytest.fixture
def witnesses_and_settings(tmp_path: Path) -> Iterator[tuple[Settings, list[WitnessProcess]]]:
    settings, witnesses = region_with_witnesses(tmp_path, 2, 2)
    yield settings, witnesses
    for w in witnesses:
        w.stop()


@pytest.fixture
def settings(witnesses_and_settings: tuple[Settings, list[WitnessProcess]]) -> Settings:
    return witnesses_and_settings[0]


@pytest.fixture
def witnessed_package(
    http: httpx.Client,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    region: Region,
    tmp_path: Path,
) -> tuple[Path, Path]:
    claim = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=claim).status_code == 201
    agent.record(consented_drive(300), batch_seconds=60)
    receipts = agent.upload_pending()
    size = region.log.size
    deadline = time.monotonic() + 30
    while region.witnessing.cosigned_for(size) is None:
        assert time.monotonic() < deadline, region.witnessing.status
        time.sleep(0.05)
    # The receipt's inclusion proof carries a cosigned checkpoint of at least its size.
    proof = http.get("/api/v1/log/proof/inclusion", params={"index": receipts[0]["log_index"]}).json()
    assert parse_checkpoint(proof["cosigned_checkpoint"]).size >= proof["size"]
    assert http.get("/api/v1/log/cosigned-checkpoint").text == region.witnessing.latest_cosigned()
    r = http.post(
        f"/api/v1/vehicles/{vehicle.vin}/packages",
        headers=owner.headers,
        json={"event_time": EVENT_MS, "event_kind": "crash", "minutes_before": 3, "minutes_after": 1},
    )
    assert r.status_code == 201, r.text
    path = tmp_path / "package.zip"
    path.write_bytes(http.get(r.json()["download"], headers=owner.headers).content)
    trust = tmp_path / "trust.json"
    trust.write_text(http.get("/api/v1/region/trust").text)
    return path, trust


def verify(package: Path, trust: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carvault.verify", str(package), "--trust", str(trust), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_needs_k_of_n_known_witnesses(
    witnessed_package: tuple[Path, Path], witnesses_and_settings: tuple[Settings, list[WitnessProcess]]
) -> None:
    package, trust = witnessed_package
    _, witnesses = witnesses_and_settings
    note = zipfile.ZipFile(package).read("log/checkpoint.txt").decode()
    assert {c.name for c in verify_cosignatures(note, [parse_vkey(w.vkey) for w in witnesses])} == {
        w.name for w in witnesses
    }
    stranger = format_witness_vkey("stranger.example/w", Ed25519PrivateKey.generate().public_key())
    known = [arg for w in witnesses for arg in ("--witness", w.vkey)] + ["--witness", stranger]
    ok = verify(package, trust, *known, "--quorum", "2")
    assert ok.returncode == 0, ok.stdout
    assert "2 of the 3 witnesses you know cosigned" in ok.stdout
    short = verify(package, trust, *known, "--quorum", "3")
    assert short.returncode == 1
    assert "NOT WITNESSED ENOUGH" in short.stdout
    # Without --quorum every named witness must have cosigned.
    assert verify(package, trust, *known).returncode == 1
    assert verify(package, trust, "--witness", witnesses[0].vkey).returncode == 0
    # Only the stranger known: 0 of 1.
    assert verify(package, trust, "--witness", stranger, "--quorum", "1").returncode == 1
    # Usage errors: a log key given as a witness, a quorum above the keys given.
    assert verify(package, trust, "--witness", "nonsense").returncode == 4
    assert verify(package, trust, "--witness", stranger, "--quorum", "2").returncode == 4


def test_a_tampered_cosignature_fails_verification(
    witnessed_package: tuple[Path, Path], witnesses_and_settings: tuple[Settings, list[WitnessProcess]], tmp_path: Path
) -> None:
    package, trust = witnessed_package
    _, witnesses = witnesses_and_settings
    with zipfile.ZipFile(package) as z:
        files = {name: z.read(name) for name in z.namelist()}
    note = files["log/checkpoint.txt"].decode()
    lines = note.split("\n")
    target = next(i for i, line in enumerate(lines) if line.startswith(f"\u2014 {witnesses[0].name} "))
    raw = bytearray(base64.b64decode(lines[target].split(" ")[2]))
    raw[12] ^= 0x40  # a bit of the witness's signature
    lines[target] = f"\u2014 {witnesses[0].name} {base64.b64encode(bytes(raw)).decode()}"
    files["log/checkpoint.txt"] = "\n".join(lines).encode()
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    policy = WitnessPolicy(tuple(parse_vkey(w.vkey) for w in witnesses), 1)
    import json

    verdict = verify_package(tampered, trust=json.loads(trust.read_text()), witnesses=policy)
    [check] = [c for c in verdict.checks if c.name == "witness cosignatures"]
    assert check.ok is False and "does not verify" in check.detail
    assert verify(tampered, trust, "--witness", witnesses[0].vkey).returncode == 1
