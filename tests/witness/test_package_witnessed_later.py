"""A package built before the witnesses cosigned (they were down: right after a crash, say) carries a log-signed
checkpoint only and fails ``--witness … --quorum 2``; once they have cosigned a tree holding it, the next download
carries log/witnessed.json (the cosigned checkpoint and the consistency proof from the package's tree) and
verifies. A forged witnessed.json fails."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from carvault.ledger.checkpoint import format_vkey, parse_checkpoint, parse_vkey
from carvault.region import Region, load_or_create_key, log_origin
from carvault.server import free_port
from carvault.settings import Settings
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.package import WitnessPolicy, verify_package
from tests.conftest import OwnerClient
from tests.verify.test_package import EVENT_MS, consented_drive
from tests.witness.conftest import WitnessProcess, make_witness
from tests.witness.test_verify_quorum import verify

pytestmark = pytest.mark.slow


@pytest.fixture
def witnesses_down(tmp_path: Path) -> Iterator[tuple[Settings, list[WitnessProcess]]]:
    """Region cn configured with two witnesses (quorum 2) that are not running yet."""
    data_dir = tmp_path / "region-cn"
    vkey = format_vkey(log_origin("cn"), load_or_create_key(data_dir / "keys" / "log-ed25519.pem").public_key())
    witnesses = [make_witness(tmp_path, f"w{i}", [vkey]) for i in (1, 2)]
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        region="cn",
        port=port,
        region_endpoints={"cn": f"http://127.0.0.1:{port}"},
        witnesses=";".join(w.entry for w in witnesses),
        witness_quorum=2,
    )
    yield settings, witnesses
    for w in witnesses:
        w.stop()


@pytest.fixture
def settings(witnesses_down: tuple[Settings, list[WitnessProcess]]) -> Settings:
    return witnesses_down[0]


def test_a_package_built_before_cosigning_verifies_once_witnesses_cosigned(
    witnesses_down: tuple[Settings, list[WitnessProcess]],
    http: httpx.Client,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    region: Region,
    tmp_path: Path,
) -> None:
    _, witnesses = witnesses_down
    claim = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=claim).status_code == 201
    agent.record(consented_drive(300), batch_seconds=60)
    agent.upload_pending()
    assert region.witnessing.latest_cosigned() is None  # the witnesses are down
    r = http.post(
        f"/api/v1/vehicles/{vehicle.vin}/packages",
        headers=owner.headers,
        json={"event_time": EVENT_MS, "event_kind": "crash", "minutes_before": 3, "minutes_after": 1},
    )
    assert r.status_code == 201, r.text
    built = r.json()
    trust = tmp_path / "trust.json"
    trust.write_text(http.get("/api/v1/region/trust").text)
    keys = [arg for w in witnesses for arg in ("--witness", w.vkey)]
    policy = WitnessPolicy(tuple(parse_vkey(w.vkey) for w in witnesses), 2)

    first = tmp_path / "first.zip"
    first.write_bytes(http.get(built["download"], headers=owner.headers).content)
    assert "log/witnessed.json" not in zipfile.ZipFile(first).namelist()
    assert hashlib.sha256(first.read_bytes()).hexdigest() == built["sha256"]
    early = verify(first, trust, *keys, "--quorum", "2")
    assert early.returncode == 1 and "NOT WITNESSED ENOUGH" in early.stdout
    assert verify(first, trust).returncode == 0  # without witnesses it verified all along

    # The car goes on uploading after the crash; the witnesses come back and cosign a larger tree.
    later_drive = consented_drive(420).slice(300 * 10)  # the samples after the first drive's 300 s (10 Hz)
    agent.record(later_drive, batch_seconds=60)
    agent.upload_pending()
    for w in witnesses:
        w.start()
    deadline = time.monotonic() + 60
    while (note := region.witnessing.latest_cosigned()) is None or parse_checkpoint(note).size < region.log.size:
        assert time.monotonic() < deadline, region.witnessing.status
        time.sleep(0.05)

    later = tmp_path / "later.zip"
    later.write_bytes(http.get(built["download"], headers=owner.headers).content)
    with zipfile.ZipFile(later) as z:
        witnessed = json.loads(z.read("log/witnessed.json"))
        assert z.read("manifest.json") == zipfile.ZipFile(first).read("manifest.json")  # the signed package as built
    assert witnessed["old_size"] == built["tree_size"] < witnessed["new_size"] == region.log.size
    ok = verify(later, trust, *keys, "--quorum", "2")
    assert ok.returncode == 0, ok.stdout
    assert "2 of the 2 witnesses you know cosigned tree size" in ok.stdout
    assert f"extends the package's tree size {built['tree_size']}" in ok.stdout
    # The stored file was completed once: the listing's SHA-256 and size are the new file's, downloads agree.
    [listed] = http.get(f"/api/v1/vehicles/{vehicle.vin}/packages", headers=owner.headers).json()
    assert listed["sha256"] == hashlib.sha256(later.read_bytes()).hexdigest() and listed["size"] == later.stat().st_size
    assert http.get(built["download"], headers=owner.headers).content == later.read_bytes()

    # A forged witnessed.json: a proof hash changed, or a checkpoint the log key never signed.
    for forge in ("proof", "note"):
        doc = dict(witnessed)
        if forge == "proof":
            raw = bytearray(base64.b64decode(doc["proof"][0]))
            raw[0] ^= 1
            doc["proof"] = [base64.b64encode(bytes(raw)).decode(), *doc["proof"][1:]]
        else:
            doc["checkpoint"] = doc["checkpoint"].replace(f"\n{doc['new_size']}\n", f"\n{doc['new_size'] + 1}\n", 1)
            doc["new_size"] += 1
        forged = tmp_path / f"forged-{forge}.zip"
        with zipfile.ZipFile(later) as src, zipfile.ZipFile(forged, "w") as z:
            for name in src.namelist():
                z.writestr(name, json.dumps(doc) if name == "log/witnessed.json" else src.read(name))
        anchors = json.loads(trust.read_text())
        verdict = verify_package(forged, trust=anchors, witnesses=policy)
        failed = {c.name: c.detail for c in verdict.failures()}
        assert set(failed) == {"later witnessed checkpoint", "witness cosignatures"}, failed
        assert "NOT WITNESSED ENOUGH" in failed["witness cosignatures"]
        assert not verify_package(forged, trust=anchors).ok  # checked even when no witness is named
