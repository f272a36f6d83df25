"""Portability attacked from outside: who may import a bundle as theirs, and what a bundle's holder can do with it.

The recipient who fetched a bundle (or anyone who copied the file) holds every byte of it, so holding the file
proves nothing about whose data it is. Importing it as an owner needs the one-time import code the origin showed
the owner (docs/portability.md §1.3); without it, or with a wrong one, or with another bundle's, nothing is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from carvault.access.packages import trust_document
from carvault.errors import BundleRejected, ImportCodeInvalid, OriginNotTrusted
from carvault.ingest.importer import ORIGINS_FOLDER, import_code_digest, open_bundle
from carvault.store.metadata import AuditEvent, PortabilityBundle
from tests.access import test_portability
from tests.access.test_portability import (
    CODES,
    World,
    bundle_file,
    importer,
    rezip,
    stored_in,
)

world = test_portability.world  # the same fixture: region A with an owner's car and its batches, region B empty


def test_the_bundle_holder_cannot_import_it_as_theirs_without_the_owners_code(world: World) -> None:
    path, _, _ = bundle_file(world)
    mallory = world.b.accounts.register("mallory@example.com", "correct horse battery").id
    for code in (None, "", "   ", "guess", "x" * 5000, "导入码", CODES[path] + "x", CODES[path].upper()):
        with pytest.raises(ImportCodeInvalid) as e:
            importer(world.b).import_bundle(path, import_code=code, owner_id=mallory)
        assert e.value.code == "import_code_invalid" and e.value.status == 403
    assert stored_in(world.b) == (0, 0, 0) and world.b.log.size == 0
    # The owner, with the code the origin showed them, imports it (blanks around the code do not matter).
    result = importer(world.b).import_bundle(path, import_code=f" {CODES[path]} ", owner_id=world.owner_b)
    assert result.added == 4 and stored_in(world.b) == (1, 4, 1)


def test_one_bundles_code_does_not_open_another(world: World) -> None:
    first, _, _ = bundle_file(world)
    second, _, _ = bundle_file(world)
    assert CODES[first] != CODES[second]
    with pytest.raises(ImportCodeInvalid):
        importer(world.b).import_bundle(second, import_code=CODES[first], owner_id=world.owner_b)
    assert stored_in(world.b) == (0, 0, 0)


def test_the_code_is_stored_nowhere_at_the_origin_and_only_as_a_digest_in_the_signed_manifest(world: World) -> None:
    path, row, token = bundle_file(world)
    code = CODES[path]
    manifest = json.loads(open_bundle(path).package.manifest_bytes)
    assert manifest["import_code_sha256"] == import_code_digest(row.id, code)
    assert code.encode() not in path.read_bytes()
    for db_file in world.a.settings.data_dir.rglob("*"):
        if db_file.is_file():
            data = db_file.read_bytes()
            assert code.encode() not in data and token.encode() not in data, db_file
    with world.a.db.session() as s:
        details = [e.detail for e in s.scalars(select(AuditEvent))]
        bundle = s.get(PortabilityBundle, row.id)
    assert bundle is not None and all(code not in d for d in details)
    assert len(code) >= 22  # 128 random bits: the digest cannot be searched back


def test_swapping_in_a_known_code_digest_breaks_the_manifest_signature(world: World, tmp_path: Path) -> None:
    """A holder who rewrites the manifest with a digest of a code they chose fails the origin's signature."""
    path, row, _ = bundle_file(world)

    def own_digest(files: dict[str, bytes]) -> None:
        doc = json.loads(files["manifest.json"])
        doc["import_code_sha256"] = import_code_digest(row.id, "mine")
        files["manifest.json"] = json.dumps(doc).encode()

    forged = rezip(path, tmp_path / "forged.zip", own_digest)
    with pytest.raises(BundleRejected):
        importer(world.b).import_bundle(
            forged, import_code="mine", owner_id=world.owner_b, trust=trust_document(world.a)
        )
    assert stored_in(world.b) == (0, 0, 0)


def test_a_bundle_rebuilt_and_re_signed_with_a_code_of_ones_own_is_refused(world: World, tmp_path: Path) -> None:
    """The whole bundle re-signed by another key (the holder's) with a digest of their own code: the importer
    anchors the bundle with the origin's trust document the operator keeps, and the signature fails."""
    path, row, _ = bundle_file(world)

    def own_digest(files: dict[str, bytes]) -> None:
        doc = json.loads(files["manifest.json"])
        doc["import_code_sha256"] = import_code_digest(row.id, "mine")
        files["manifest.json"] = json.dumps(doc).encode()

    forged = rezip(path, tmp_path / "resigned.zip", own_digest, resign=world.b)
    with pytest.raises(BundleRejected):
        importer(world.b).import_bundle(forged, import_code="mine", owner_id=world.owner_b)
    assert stored_in(world.b) == (0, 0, 0) and world.b.log.size == 0


def test_an_import_as_owner_from_an_origin_the_operator_does_not_trust_is_refused(world: World) -> None:
    """Without the origin's keys, a rebuilt bundle cannot be told from the real one: no owner import unanchored."""
    path, _, _ = bundle_file(world)
    for doc in (world.b.settings.data_dir / "imports" / ORIGINS_FOLDER).glob("*.json"):
        doc.unlink()
    with pytest.raises(OriginNotTrusted) as e:
        importer(world.b).import_bundle(path, import_code=CODES[path], owner_id=world.owner_b)
    assert e.value.code == "origin_not_trusted" and e.value.status == 403
    assert stored_in(world.b) == (0, 0, 0) and world.b.log.size == 0
    # The trust document given directly (the CLI's --trust) anchors it as well.
    result = importer(world.b).import_bundle(
        path, import_code=CODES[path], owner_id=world.owner_b, trust=trust_document(world.a)
    )
    assert result.anchored and result.added == 4
