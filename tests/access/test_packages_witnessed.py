"""Completing a package with a later witnessed checkpoint, without witness processes: the test holds the witnesses'
keys and records their cosignatures through ``Witnessing.accept`` as the region's threads would. The file is
completed once, the row follows it, a crash between storing the file and updating the row heals on the next read,
and two readers at once store one file."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from carvault.access.audit import Actor
from carvault.access.packages import PackageBuilder, trust_document
from carvault.ledger.checkpoint import checkpoint_body, cosign_checkpoint, format_witness_vkey, parse_checkpoint
from carvault.region import Region
from carvault.server import free_port
from carvault.settings import Settings
from carvault.store.metadata import IncidentPackage
from carvault.verify.package import WITNESSED, WitnessPolicy, verify_package
from tests.access.test_completeness import Car, T

KEYS = {f"w.test/{n}": Ed25519PrivateKey.generate() for n in ("a", "b")}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Region cn with two witnesses (quorum 2) that never answer (nothing listens on their port)."""
    dead = free_port()
    entries = [
        f"{name.split('/')[1]}={format_witness_vkey(name, key.public_key())}@http://127.0.0.1:{dead}"
        for name, key in KEYS.items()
    ]
    port = free_port()
    return Settings(
        data_dir=tmp_path / "region-cn",
        region="cn",
        port=port,
        region_endpoints={"cn": f"http://127.0.0.1:{port}"},
        witnesses=";".join(entries),
        witness_quorum=2,
    )


def _cosign(region: Region, size: int) -> None:
    """Both witnesses cosign the log's checkpoint of ``size``, recorded as the region records an answer."""
    note = region.log.checkpoint(size)
    cp = parse_checkpoint(note)
    for w in region.witnessing.witnesses:
        line = cosign_checkpoint(
            checkpoint_body(cp.origin, cp.size, cp.root), KEYS[w.vkey.name], w.vkey.name, int(time.time())
        )
        region.witnessing.accept(w.label, note, size, line)


def _package(region: Region, car: Car) -> IncidentPackage:
    car.send(T, 60)
    car.send(T + 60_000, 60)
    return PackageBuilder(region).build(
        car.identity.vin,
        T,
        T + 120_000,
        event=None,
        requested_by=Actor("owner", str(car.owner.id)),
        owner_id=car.owner.id,
        legal_basis="owner request",
    )


def _verdict(region: Region, data: bytes, tmp_path: Path, quorum: int = 2):  # noqa: ANN202 - a Verdict
    path = tmp_path / f"p-{hashlib.sha256(data).hexdigest()[:8]}.zip"
    path.write_bytes(data)
    keys = tuple(w.vkey for w in region.witnessing.witnesses)
    return verify_package(path, trust=trust_document(region), witnesses=WitnessPolicy(keys, quorum))


def _row(region: Region, package_id: int) -> IncidentPackage:
    with region.db.session() as s:
        row = s.get(IncidentPackage, package_id)
        assert row is not None
        return row


def test_completed_once_cosigned_and_the_row_follows(region: Region, tmp_path: Path) -> None:
    car = Car(region, tmp_path)
    row = _package(region, car)
    builder = PackageBuilder(region)
    first = builder.read(row)
    assert WITNESSED not in zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert not _verdict(region, first, tmp_path).ok  # NOT WITNESSED ENOUGH
    car.send(T + 120_000, 60)  # the log grows past the package's tree before the witnesses come back
    _cosign(region, region.log.size)

    completed = builder.read(_row(region, row.id))
    doc = json.loads(zipfile.ZipFile(io.BytesIO(completed)).read(WITNESSED))
    assert (doc["old_size"], doc["new_size"]) == (row.tree_size, region.log.size)
    verdict = _verdict(region, completed, tmp_path)
    assert verdict.ok, verdict.failures()
    stored = _row(region, row.id)
    assert stored.sha256 == hashlib.sha256(completed).hexdigest() and stored.size == len(completed)
    assert builder.read(stored) == completed  # once: a later read changes nothing
    assert region.blobs.get(f"packages/{row.file_name}") == completed


def test_a_crash_between_file_and_row_heals_on_the_next_read(region: Region, tmp_path: Path) -> None:
    car = Car(region, tmp_path)
    row = _package(region, car)
    _cosign(region, region.log.size)
    completed = PackageBuilder(region).read(row)
    with region.db.session() as s:  # as if the process died after storing the file, before the row said so
        s.execute(update(IncidentPackage).where(IncidentPackage.id == row.id).values(sha256=row.sha256, size=row.size))
    again = PackageBuilder(region).read(_row(region, row.id))
    assert again == completed
    assert _row(region, row.id).sha256 == hashlib.sha256(completed).hexdigest()


def test_two_readers_at_once_store_one_file(region: Region, tmp_path: Path) -> None:
    car = Car(region, tmp_path)
    row = _package(region, car)
    _cosign(region, region.log.size)
    gate, got, errors = threading.Barrier(4), [], []

    def read() -> None:
        gate.wait()
        try:
            got.append(PackageBuilder(region).read(_row(region, row.id)))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    stored = region.blobs.get(f"packages/{row.file_name}")
    assert all(g == stored for g in got)
    assert _row(region, row.id).sha256 == hashlib.sha256(stored).hexdigest()
    assert _verdict(region, stored, tmp_path).ok
