"""Portability bundles over real regions (SQLite, segments, logs, keys in tmp_path): build, check, import, refuse.

Region A holds a vehicle's signed batches uploaded through its real gateway; region B is a second deployment with
its own keys. Tampering is done as a dishonest operator would (re-zipping, re-signing with A's key); each case must
be refused whole, with nothing stored in B.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sqlalchemy import func, select, update

from carvault.access.accounts import Principal
from carvault.access.packages import trust_document
from carvault.access.portability import Portability, Recipient
from carvault.compliance.consent import default_on
from carvault.compliance.sharing import NEVER_SHAREABLE
from carvault.errors import (
    AlreadyExists,
    BundleRejected,
    BundleUnreadable,
    Conflict,
    CrossBorderTransfer,
    DataFrozen,
    GatekeeperRefused,
    NotFound,
    OutOfScope,
    Unauthenticated,
    ValidationFailed,
)
from carvault.ingest.importer import Importer, ImportResult, open_bundle, verify_bundle
from carvault.protocol import BATCH_MEDIA_TYPE
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord, Grant, ImportedBundle, PortabilityBundle, Vehicle
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.package import MANIFEST_CONTEXT
from tests.factories import BASE_MS, drive_table, vin_for

PLAIN = [s.path for s in catalogue() if default_on(s.category) and s.category not in NEVER_SHAREABLE]
CABIN = [s.path for s in catalogue() if s.category == "cabin"]
INSURER = Recipient("Second Operator", "Second Operator Ltd", "cn")


@dataclass
class World:
    """Region A with an owner's vehicle and its batches; region B empty with an owner of its own."""

    a: Region
    b: Region
    ident: VehicleIdentity
    owner_a: int
    owner_b: int
    folder: Path


def upload(region: Region, agent: VehicleAgent) -> None:
    """Every spooled batch through the real gateway (checks, durable write, log)."""
    for path in agent.pending():
        region.gateway.accept(path.read_bytes(), BATCH_MEDIA_TYPE)
        path.unlink()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    a = Region(Settings(data_dir=tmp_path / "a", region="cn"))
    b = Region(Settings(data_dir=tmp_path / "b", region="cn"))
    try:
        ident = provision(a, vin_for(31), tmp_path / "vehicles")
        owner_a = a.accounts.register("alice@example.com", "correct horse battery").id
        a.vehicles.claim(owner_a, ident.vin, ident.pairing_code)
        agent = VehicleAgent(ident, tmp_path / "vehicles" / ident.vin, "http://127.0.0.1:9")
        agent.record(drive_table(BASE_MS, seconds=120, paths=PLAIN), batch_seconds=60)  # seq 1, 2
        agent.record(drive_table(BASE_MS + 120_000, seconds=60, paths=PLAIN + CABIN), batch_seconds=60)  # seq 3
        agent.record(drive_table(BASE_MS + 180_000, seconds=120, paths=PLAIN), batch_seconds=60)  # seq 4, 5
        upload(a, agent)
        owner_b = b.accounts.register("alice@example.com", "correct horse battery").id
        trust_origin(b, a)
        yield World(a, b, ident, owner_a, owner_b, tmp_path)
    finally:
        a.close()
        b.close()


# The owner's one-time import code of each bundle file made here (what the origin showed the owner).
CODES: dict[Path, str] = {}


def trust_origin(importer_region: Region, origin: Region) -> None:
    """The operator of ``importer_region`` accepts bundles from ``origin``: its trust document in imports/origins/."""
    folder = importer_region.settings.data_dir / "imports" / "origins"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{origin.name}-{origin.settings.data_dir.name}.json").write_text(json.dumps(trust_document(origin)))


def bundle_file(w: World, *, include_sensitive: bool = False) -> tuple[Path, PortabilityBundle, str]:
    """Ask A for a transfer; the bundle file as stored, its row, and the one-time token (the code is in CODES)."""
    row, token, code = Portability(w.a).request(w.owner_a, w.ident.vin, INSURER, include_sensitive=include_sensitive)
    path = w.a.settings.data_dir / "portability" / row.file_name
    CODES[path] = code
    return path, row, token


def importer(region: Region) -> Importer:
    return Importer(region.settings, region.db, region.segments, region.log, region.catalogue)


def stored_in(region: Region) -> tuple[int, int, int]:
    """Vehicles, batch rows and imported bundles in a region."""
    with region.db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Vehicle)) or 0,
            s.scalar(select(func.count()).select_from(BatchRecord)) or 0,
            s.scalar(select(func.count()).select_from(ImportedBundle)) or 0,
        )


# ---------------------------------------------------------------------------------------------- the bundle


def test_bundle_verifies_and_leaves_out_never_shareable_batches(world: World) -> None:
    path, row, token = bundle_file(world)
    verdict = verify_bundle(open_bundle(path), trust=trust_document(world.a))
    assert verdict.verified, [(c.name, c.detail) for c in verdict.failures()]
    names = {c.name for c in verdict.checks}
    for check in ("batch signatures", "certificate chain", "log inclusion", "checkpoint signature", "hash chain"):
        assert check in names
    bundle = open_bundle(path)
    assert sorted(n for n in bundle.package.files if n.startswith("batches/")) == [
        f"batches/{seq:012d}.cvb" for seq in (1, 2, 4, 5)
    ]
    assert [(e.seq, e.categories) for e in bundle.manifest.excluded] == [(3, ("cabin",))]
    assert row.batches == 4 and row.excluded == 1
    # The exact bytes the car signed: the same as A's segments hold.
    with world.a.db.session() as s:
        rec = s.scalar(select(BatchRecord).where(BatchRecord.seq == 2))
    assert bundle.package.files["batches/000000000002.cvb"] == world.a.segment_reader.read(
        rec.segment, rec.offset, rec.length
    )
    with world.a.db.session() as s:
        grant = s.get(Grant, row.grant_id)
    assert grant is not None and grant.kind == "portability" and grant.purpose == "portability"
    assert world.a.accounts.resolve(token).grant_id == grant.id


def test_owner_may_include_sensitive_batches_explicitly(world: World) -> None:
    path, row, _ = bundle_file(world, include_sensitive=True)
    bundle = open_bundle(path)
    assert row.batches == 5 and row.excluded == 0 and not bundle.manifest.excluded
    assert verify_bundle(bundle).ok


def test_recipient_abroad_or_gatekeeper_is_refused_and_nothing_is_made(world: World) -> None:
    service = Portability(world.a)
    with pytest.raises(CrossBorderTransfer):
        service.request(world.owner_a, world.ident.vin, Recipient("Abroad", "Abroad GmbH", "eu"))
    with pytest.raises(GatekeeperRefused):
        service.request(world.owner_a, world.ident.vin, Recipient("Big", "Big Platform Inc", "cn", gatekeeper=True))
    with pytest.raises(ValidationFailed):
        service.request(world.owner_a, world.ident.vin, Recipient(" ", "X", "cn"))
    with pytest.raises(NotFound):
        other = world.a.accounts.register("mallory@example.com", "correct horse battery").id
        service.request(other, world.ident.vin, INSURER)
    with world.a.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PortabilityBundle)) == 0
        assert s.scalar(select(func.count()).select_from(Grant)) == 0
    assert not (world.a.settings.data_dir / "portability").exists() or not any(
        (world.a.settings.data_dir / "portability").iterdir()
    )


def test_frozen_data_is_refused(world: World) -> None:
    world.a.deletions.place_hold(world.ident.vin, "court", "case 1")
    world.a.deletions.request(world.owner_a, world.ident.vin, "please delete", immediately=True)
    with pytest.raises(DataFrozen):
        Portability(world.a).request(world.owner_a, world.ident.vin, INSURER)


def principal(region: Region, token: str) -> Principal:
    return region.accounts.resolve(token)


def test_fetch_once_then_the_token_is_dead(world: World) -> None:
    _, row, token = bundle_file(world)
    service = Portability(world.a)
    caller = principal(world.a, token)
    with pytest.raises(OutOfScope):  # the token reads nothing but its bundle
        world.a.grants.access(caller, world.ident.vin)
    b, path = service.start_fetch(caller, row.id)
    assert path.exists()
    service.finish_fetch(b, complete=False, caller=caller)  # an interrupted download frees the bundle
    b, path = service.start_fetch(caller, row.id)
    service.finish_fetch(b, complete=True, caller=caller)
    assert not path.exists()
    with pytest.raises(Unauthenticated):
        principal(world.a, token)
    actions = [e.action for e in world.a.audit.list(world.owner_a)]
    assert "portability.fetch" in actions and "portability.export" in actions
    fetch = next(e for e in world.a.audit.list(world.owner_a) if e.action == "portability.fetch")
    assert json.loads(fetch.detail)["recipient"]["name"] == INSURER.name


def test_bundle_of_deleted_data_is_erased_and_withdrawn(world: World) -> None:
    path, row, token = bundle_file(world)
    caller = principal(world.a, token)
    world.a.deletions.request(world.owner_a, world.ident.vin, "erase everything", immediately=True)
    assert not path.exists()  # the deletion erased the unfetched copy too
    with pytest.raises(NotFound):
        Portability(world.a).start_fetch(caller, row.id)
    with pytest.raises(Unauthenticated):
        principal(world.a, token)


# ---------------------------------------------------------------------------------------------- import


def test_import_stores_verified_batches_readable_and_logged_in_b(world: World) -> None:
    path, _, _ = bundle_file(world)
    result = importer(world.b).import_bundle(
        path, import_code=CODES[path], owner_id=world.owner_b, trust=trust_document(world.a)
    )
    assert (result.added, result.batches, result.excluded, result.anchored) == (4, 4, 1, True)
    with world.b.db.session() as s:
        recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.seq)))
        v = s.get(Vehicle, world.ident.vin)
    assert [r.seq for r in recs] == [1, 2, 4, 5] and all(r.log_index is not None for r in recs)
    assert v is not None and v.owner_id == world.owner_b and v.model == "imported from cn"
    assert world.b.log.size == 4
    # Exact bytes kept: each stored batch hashes to its hash.
    for r in recs:
        assert hashlib.sha256(world.b.segment_reader.read(r.segment, r.offset, r.length)).hexdigest() == r.batch_hash
    sigs = [catalogue()["Vehicle.Speed"]]
    window = (BASE_MS, BASE_MS + 300_000)
    got = world.b.telemetry.window(world.ident.vin, *window, sigs)
    want = world.a.telemetry.window(world.ident.vin, *window, sigs)
    t = want["t"].cast(pa.int64())
    left_out = pc.and_(pc.greater_equal(t, BASE_MS + 120_000), pc.less(t, BASE_MS + 180_000))
    assert want.num_rows == 3000 and got.num_rows == 2400  # A also holds the left-out minute
    assert got.equals(want.filter(pc.invert(left_out)))
    again = importer(world.b).import_bundle(path, import_code=CODES[path], owner_id=world.owner_b)
    assert again.duplicate and again.added == 0 and stored_in(world.b) == (1, 4, 1)
    assert world.b.log.size == 4


def test_newer_bundle_adds_only_what_is_new(world: World, tmp_path: Path) -> None:
    first, _, _ = bundle_file(world)
    importer(world.b).import_bundle(first, import_code=CODES[first], owner_id=world.owner_b)
    second, _, _ = bundle_file(world, include_sensitive=True)
    result = importer(world.b).import_bundle(second, import_code=CODES[second], owner_id=world.owner_b)
    assert (result.added, result.batches, result.duplicate) == (1, 5, False)
    assert stored_in(world.b) == (1, 5, 2)


def rezip(src: Path, dst: Path, edit: object, *, resign: Region | None = None) -> Path:
    """Copy a bundle with ``edit(files)`` applied; with ``resign``, the manifest re-hashed and re-signed by it."""
    files = {i.filename: zipfile.ZipFile(src).read(i.filename) for i in zipfile.ZipFile(src).infolist()}
    edit(files)  # type: ignore[operator]
    if resign is not None:
        manifest = json.loads(files["manifest.json"])
        manifest["files"] = {
            n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n not in ("manifest.json", "manifest.sig")
        }
        files["manifest.json"] = json.dumps(manifest, sort_keys=True, indent=1).encode()
        files["manifest.sig"] = base64.b64encode(resign.log_key.sign(MANIFEST_CONTEXT + files["manifest.json"]))
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    dst.write_bytes(sink.getvalue())
    return dst


def _flip_batch_byte(f: dict[str, bytes]) -> None:
    data = bytearray(f["batches/000000000002.cvb"])
    data[-40] ^= 0x01
    f["batches/000000000002.cvb"] = bytes(data)


def _drop_batch(f: dict[str, bytes]) -> None:
    del f["batches/000000000004.cvb"]


def _other_log_key(f: dict[str, bytes]) -> None:
    f["log/vehicle-log-key.txt"] = base64.b64encode(bytes(32)) + b"\n"


def _forget_exclusion(f: dict[str, bytes]) -> None:
    manifest = json.loads(f["manifest.json"])
    manifest["excluded"] = []
    f["manifest.json"] = json.dumps(manifest).encode()


@pytest.mark.parametrize(
    ("edit", "resign", "check"),
    [
        (_flip_batch_byte, False, "files match the manifest"),
        (_flip_batch_byte, True, "batch signatures"),
        (_drop_batch, True, "hash chain"),
        (_other_log_key, True, "vehicle log key"),
        (_forget_exclusion, True, "hash chain"),
    ],
)
def test_tampered_bundle_is_refused_whole_and_nothing_is_stored(
    world: World, tmp_path: Path, edit: object, resign: bool, check: str
) -> None:
    path, _, _ = bundle_file(world)
    bad = rezip(path, tmp_path / "bad.zip", edit, resign=world.a if resign else None)
    with pytest.raises(BundleRejected) as e:
        importer(world.b).import_bundle(bad, owner_id=world.owner_b)
    assert check in [f["check"] for f in e.value.details["failed"]], e.value.details
    assert stored_in(world.b) == (0, 0, 0) and world.b.log.size == 0
    assert not (world.b.settings.data_dir / "imports").exists() or not any(
        (world.b.settings.data_dir / "imports").glob("*.zip")
    )


def test_bundle_signed_by_another_key_fails_against_the_trust_document(world: World, tmp_path: Path) -> None:
    path, _, _ = bundle_file(world)
    forged = rezip(path, tmp_path / "forged.zip", _flip_batch_byte, resign=world.b)  # B's key, not A's
    with pytest.raises(BundleRejected):
        importer(world.b).import_bundle(forged, owner_id=world.owner_b, trust=trust_document(world.a))
    assert stored_in(world.b) == (0, 0, 0)


def test_unreadable_bundles_are_refused_by_name(world: World, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(BundleUnreadable):
        importer(world.b).import_bundle(junk, owner_id=world.owner_b)
    path, _, _ = bundle_file(world)
    no_manifest = rezip(path, tmp_path / "nomanifest.zip", lambda f: f.pop("manifest.json"))
    with pytest.raises(BundleUnreadable):
        importer(world.b).import_bundle(no_manifest, owner_id=world.owner_b)
    package_like = rezip(
        path, tmp_path / "other.zip", lambda f: f.update({"manifest.json": b'{"format": "something else"}'})
    )
    with pytest.raises(BundleUnreadable):
        importer(world.b).import_bundle(package_like, owner_id=world.owner_b)
    assert stored_in(world.b) == (0, 0, 0)


def test_vehicle_of_another_account_here_is_not_imported_over(world: World) -> None:
    path, _, _ = bundle_file(world)
    importer(world.b).import_bundle(path, import_code=CODES[path], owner_id=world.owner_b)
    stranger = world.b.accounts.register("eve@example.com", "correct horse battery").id
    second, _, _ = bundle_file(world, include_sensitive=True)
    with pytest.raises(NotFound):
        importer(world.b).import_bundle(second, import_code=CODES[second], owner_id=stranger)
    assert stored_in(world.b) == (1, 4, 1)


def test_unfetched_bundles_are_removed_when_their_grant_ends(world: World) -> None:
    path, row, _ = bundle_file(world)
    service = Portability(world.a)
    assert service.sweep() == 0 and path.exists()
    with world.a.db.session() as s:
        s.execute(update(PortabilityBundle).where(PortabilityBundle.id == row.id).values(expires_ms=1))
    assert service.sweep() == 1 and not path.exists()


def test_one_download_at_a_time_and_only_with_its_own_token(world: World) -> None:
    _, row, token = bundle_file(world)
    _, other, other_token = bundle_file(world)
    service = Portability(world.a)
    caller = principal(world.a, token)
    with pytest.raises(NotFound):  # another bundle's token does not open this one
        service.start_fetch(principal(world.a, other_token), row.id)
    with pytest.raises(NotFound):  # nor does the owner's own session
        owner = world.a.accounts.issue(world.owner_a, "session")[0]
        service.start_fetch(principal(world.a, owner), row.id)
    b, _ = service.start_fetch(caller, row.id)
    with pytest.raises(Conflict):
        service.start_fetch(caller, row.id)
    service.finish_fetch(b, complete=True, caller=caller)
    assert principal(world.a, other_token).grant_id == other.grant_id  # the other transfer is untouched


def test_vin_registered_here_with_another_key_is_not_imported_over(world: World) -> None:
    native = provision(world.b, world.ident.vin, world.folder / "b-vehicles")  # same VIN, B's own key
    assert native.vin == world.ident.vin
    path, _, _ = bundle_file(world)
    with pytest.raises(AlreadyExists):
        importer(world.b).import_bundle(path, import_code=CODES[path], owner_id=world.owner_b)
    assert stored_in(world.b) == (1, 0, 0) and world.b.log.size == 0


def test_two_imports_of_one_bundle_at_once_store_it_once(world: World) -> None:
    path, _, _ = bundle_file(world)
    results: list[object] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(importer(world.b).import_bundle(path, import_code=CODES[path], owner_id=world.owner_b))
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, ImportResult) for r in results), results
    assert sorted(r.added for r in results if isinstance(r, ImportResult)) == [0, 4]
    assert stored_in(world.b) == (1, 4, 1) and world.b.log.size == 4
    assert len(list((world.b.settings.data_dir / "imports").glob("*.zip"))) == 1
