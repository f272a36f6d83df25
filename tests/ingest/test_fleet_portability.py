"""Portability of a region-attested car (Fleet Telemetry, docs/protocol.md §9) end to end over real regions.

Region A ("cn") attests a Tesla's records through its Fleet Telemetry service; the owner asks for a bundle, which
verifies offline (``carvault portability verify``) and imports into region B. The batches a bundle leaves out
(cabin data) are region-attested too: their leaves commit to the mark, so the checks must open them with it. In B
the batches stay marked as attested by the ORIGIN region, never re-labelled as car-signed, and B's own log leaves
commit to that mark. A second owner car, signed by the car itself, travels beside it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from carvault.access.packages import trust_document
from carvault.access.portability import Portability, Recipient
from carvault.cli import app as cli
from carvault.errors import BundleRejected, CarVaultError
from carvault.ingest.importer import open_bundle, verify_bundle
from carvault.ledger.leaves import batch_leaf, log_key_of
from carvault.ledger.merkle import leaf_hash
from carvault.pki import attested_by
from carvault.protocol import decode_envelope
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord, Vehicle
from carvault.vehicle.agent import VehicleAgent
from carvault.web.app import create_app
from tests.access.test_portability import PLAIN, importer, rezip, stored_in, trust_origin, upload
from tests.factories import BASE_MS, drive_table, vin_for
from tests.ingest.fleet_telemetry_client import message, payload, value_of

pytestmark = pytest.mark.slow  # two regions with keys, logs and segments per test

TESLA = vin_for(71)
NATIVE = vin_for(72)
F = pb.Field
TO = Recipient("Second Operator", "Second Operator Ltd", "cn")
SPEED = "Vehicle.Speed"


@dataclass
class World:
    """Region A with one owner's Tesla (region-attested) and native car (car-signed); region B trusting A."""

    a: Region
    b: Region
    owner_a: int
    owner_b: int
    folder: Path


def records(start: int, seconds: int, *, cabin: bool = False) -> list[bytes]:
    """A Tesla's records, one a second; with ``cabin``, the inside temperature too (never-shareable cabin data)."""
    out = []
    for i in range(seconds):
        data = {F.VehicleSpeed: value_of(double_value=30.0 + i)}
        if cabin:
            data[F.InsideTemp] = value_of(double_value=21.5)
        out.append(message(TESLA, payload(start + i * 1000, data), f"tx-{start + i}"))
    return out


def make_world(tmp_path: Path, b_region: str) -> World:
    a = Region(Settings(data_dir=tmp_path / "a", region="cn"))
    b = Region(Settings(data_dir=tmp_path / "b", region=b_region))
    owner_a = a.accounts.register("tess@example.com", "correct horse battery").id
    a.fleet.register(TESLA, "PAIRCODE1")
    a.vehicles.claim(owner_a, TESLA, "PAIRCODE1")
    for start, cabin in ((BASE_MS, False), (BASE_MS + 10_000, True), (BASE_MS + 20_000, False)):
        stored = a.fleet.ingest(TESLA, records(start, 5, cabin=cabin)).stored
        assert stored is not None and stored.num_rows == 5  # seq 1, 2 (with cabin data), 3
    native = provision(a, NATIVE, tmp_path / "vehicles")
    a.vehicles.claim(owner_a, NATIVE, native.pairing_code)
    agent = VehicleAgent(native, tmp_path / "vehicles" / NATIVE, "http://127.0.0.1:9")
    agent.record(drive_table(BASE_MS, seconds=120, paths=PLAIN), batch_seconds=60)
    upload(a, agent)
    owner_b = b.accounts.register("tess@example.com", "correct horse battery").id
    trust_origin(b, a)
    return World(a, b, owner_a, owner_b, tmp_path)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, "eu")  # B names itself otherwise, so "attested by cn" cannot be B's own mark
    try:
        yield w
    finally:
        w.a.close()
        w.b.close()


def bundle(w: World, vin: str, *, include_sensitive: bool = False) -> tuple[Path, str]:
    """The bundle file A built for the owner's transfer of ``vin``, and the owner's one-time import code."""
    row, _, code = Portability(w.a).request(w.owner_a, vin, TO, include_sensitive=include_sensitive)
    return w.a.settings.data_dir / "portability" / row.file_name, code


def records_of(region: Region, vin: str) -> list[BatchRecord]:
    with region.db.session() as s:
        return list(s.scalars(select(BatchRecord).where(BatchRecord.vin == vin).order_by(BatchRecord.seq)))


def checks(path: Path, trust: dict) -> dict[str, tuple[bool | None, str]]:
    verdict = verify_bundle(open_bundle(path), trust=trust)
    return {c.name: (c.ok, c.detail) for c in verdict.checks}


# ---------------------------------------------------------------------------------------------- export and verify


def test_attested_bundle_lists_its_left_out_batch_with_the_mark_and_verifies(world: World) -> None:
    path, _ = bundle(world, TESLA)
    b = open_bundle(path)
    assert sorted(n for n in b.package.files if n.startswith("batches/")) == [
        "batches/000000000001.cvb",
        "batches/000000000003.cvb",
    ]
    assert [(e.seq, e.categories, e.attested_by) for e in b.manifest.excluded] == [(2, ("cabin",), "cn")]
    verdict = verify_bundle(b, trust=trust_document(world.a))
    assert verdict.verified, [(c.name, c.detail) for c in verdict.failures()]
    assert verdict.attested_by == "cn"
    got = {c.name: c.detail for c in verdict.checks}
    assert got["left-out batches logged"] == "all 1 are in the log"
    assert got["provenance"] == "attested by region cn, not signed by the car"
    assert got["hash chain"].startswith("seq 1..3 continuous (1 left out")
    # Everything included: the cabin batch travels, attested like the others.
    whole, _ = bundle(world, TESLA, include_sensitive=True)
    verdict = verify_bundle(open_bundle(whole), trust=trust_document(world.a))
    assert verdict.verified and verdict.attested_by == "cn" and not open_bundle(whole).manifest.excluded


def test_a_car_signed_bundle_lists_no_mark(world: World) -> None:
    path, _ = bundle(world, NATIVE)
    verdict = verify_bundle(open_bundle(path), trust=trust_document(world.a))
    assert verdict.verified and verdict.attested_by is None
    manifest = json.loads(open_bundle(path).package.manifest_bytes)
    assert all("attested_by" not in e for e in manifest["excluded"])  # car-signed bundles are as before


def test_cli_verifies_the_attested_bundle_offline_and_says_what_it_proves(world: World) -> None:
    path, _ = bundle(world, TESLA)
    trust = world.folder / "trust-a.json"
    trust.write_text(json.dumps(trust_document(world.a)))
    out = CliRunner().invoke(cli, ["portability", "verify", str(path), "--trust", str(trust)])
    said = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "FAILED" not in said and "left-out batches logged: all 1 are in the log" in said
    assert "attested by region cn, not signed by the car" in said


# ---------------------------------------------------------------------------------------------- tampering


def _edit_excluded(**change: object):  # noqa: ANN202 - an edit for rezip
    def edit(f: dict[str, bytes]) -> None:
        manifest = json.loads(f["manifest.json"])
        for e in manifest["excluded"]:
            for k, v in change.items():
                if v is None:
                    e.pop(k, None)
                else:
                    e[k] = v
        f["manifest.json"] = json.dumps(manifest).encode()

    return edit


@pytest.mark.parametrize(
    ("vin", "change", "said"),
    [
        (TESLA, {"attested_by": None}, "listed as car-signed"),  # the left-out attested batch re-labelled car-signed
        (TESLA, {"attested_by": "eu"}, "listed as attested by region eu"),  # another region's mark
    ],
)
def test_a_relabelled_left_out_batch_is_refused_whole(world: World, vin: str, change: dict, said: str) -> None:
    path, code = bundle(world, vin)
    bad = rezip(path, world.folder / "bad.zip", _edit_excluded(**change), resign=world.a)  # A's own key signs it
    detail = checks(bad, trust_document(world.a))["left-out batches logged"]
    assert detail[0] is False and said in detail[1], detail
    with pytest.raises(BundleRejected) as e:
        importer(world.b).import_bundle(bad, import_code=code, owner_id=world.owner_b)
    assert "left-out batches logged" in [x["check"] for x in e.value.details["failed"]]
    assert stored_in(world.b) == (0, 0, 0) and world.b.log.size == 0


def test_a_car_signed_bundle_cannot_list_a_left_out_batch_as_attested(world: World, tmp_path: Path) -> None:
    # A car-signed vehicle whose bundle leaves a batch out: claiming that batch was attested is refused too.
    native = provision(world.a, vin_for(73), tmp_path / "more")
    world.a.vehicles.claim(world.owner_a, native.vin, native.pairing_code)
    agent = VehicleAgent(native, tmp_path / "more" / native.vin, "http://127.0.0.1:9")
    cabin = [s.path for s in catalogue() if s.category == "cabin"]
    agent.record(drive_table(BASE_MS, seconds=60, paths=PLAIN), batch_seconds=60)
    agent.record(drive_table(BASE_MS + 60_000, seconds=60, paths=PLAIN + cabin), batch_seconds=60)
    upload(world.a, agent)
    row, _, _ = Portability(world.a).request(world.owner_a, native.vin, TO)
    path = world.a.settings.data_dir / "portability" / row.file_name
    assert checks(path, trust_document(world.a))["left-out batches logged"][0] is True
    bad = rezip(path, tmp_path / "bad.zip", _edit_excluded(attested_by="cn"), resign=world.a)
    ok, detail = checks(bad, trust_document(world.a))["left-out batches logged"]
    assert ok is False and "listed as attested by region cn" in detail


# ---------------------------------------------------------------------------------------------- import


def test_import_keeps_the_origin_regions_attestation_beside_car_signed_data(world: World) -> None:
    tesla, tesla_code = bundle(world, TESLA)
    native, native_code = bundle(world, NATIVE)
    imp = importer(world.b)
    said = []
    for path, code in ((tesla, tesla_code), (native, native_code)):
        result = imp.import_bundle(path, import_code=code, owner_id=world.owner_b)
        assert result.anchored and not result.duplicate
        said.append((result.as_json()["provenance"], result.as_json()["attested_by"]))
    assert said == [("region-attested", "cn"), ("car-signed", None)]  # what the API and the audit entry say
    recs = records_of(world.b, TESLA)
    assert [(r.seq, r.attested_by) for r in recs] == [(1, "cn"), (3, "cn")]  # the ORIGIN's mark, not B's ("eu")
    assert all(r.attested_by is None for r in records_of(world.b, NATIVE))  # car-signed stays car-signed
    with world.b.db.session() as s:
        v = s.get(Vehicle, TESLA)
        assert v is not None and v.owner_id == world.owner_b and attested_by(v.certificate_pem or "") == "cn"
    # The exact bytes: the region's attestation signature and mark, verifiable with A's attestation key.
    for r in recs:
        env = decode_envelope(world.b.segment_reader.read(r.segment, r.offset, r.length))
        assert env.header.attested_by == "cn"
        env.verify(world.a.fleet.key.public_key())
    # B's own log commits to the mark: each leaf is the marked one, never what an unmarked batch would be.
    key = log_key_of(world.b.db, TESLA)
    for r in recs:
        assert r.log_index is not None
        logged = world.b.log.leaf_hash(r.log_index)
        assert logged == leaf_hash(batch_leaf("eu", r, key))
        unmarked = BatchRecord(**{c.name: getattr(r, c.name) for c in BatchRecord.__table__.columns})
        unmarked.attested_by = None
        assert logged != leaf_hash(batch_leaf("eu", unmarked, key))
    assert world.b.log.size == len(recs) + len(records_of(world.b, NATIVE))
    # The values read in B are A's, without the left-out cabin batch.
    sig = [catalogue()[SPEED]]
    got = world.b.telemetry.window(TESLA, BASE_MS, BASE_MS + 30_000, sig)
    want = world.a.telemetry.window(TESLA, BASE_MS, BASE_MS + 30_000, sig)
    t = want["t"].cast(pa.int64()).to_pylist()
    keep = [i for i, x in enumerate(t) if not BASE_MS + 10_000 <= x < BASE_MS + 20_000]
    assert got.num_rows == 10 and got.column(SPEED).to_pylist() == [want.column(SPEED)[i].as_py() for i in keep]
    with pytest.raises(CarVaultError, match="no valid certificate from this region's CA"):
        world.b.fleet.admit(TESLA)  # B ("eu") does not stream for a car region cn attests
    # What the owner reads in B through the API says the same (in process, without the lifespan).
    token, _ = world.b.accounts.issue(world.owner_b, "token", label="test")
    http = TestClient(create_app(world.b), base_url="http://eu.test")
    auth = {"Authorization": f"Bearer {token}"}
    car = http.get(f"/api/v1/vehicles/{TESLA}", headers=auth).json()
    assert (car["provenance"], car["attested_by"]) == ("region-attested", "cn"), car
    listed = http.get(
        f"/api/v1/vehicles/{TESLA}/batches", headers=auth, params={"start": BASE_MS, "end": BASE_MS + 60_000}
    )
    assert listed.status_code == 200, listed.text
    assert [(x["seq"], x["provenance"], x["attested_by"]) for x in listed.json()["batches"]] == [
        (1, "region-attested", "cn"),
        (3, "region-attested", "cn"),
    ]
    native_batches = http.get(
        f"/api/v1/vehicles/{NATIVE}/batches", headers=auth, params={"start": BASE_MS, "end": BASE_MS + 200_000}
    )
    assert {(x["provenance"], x["attested_by"]) for x in native_batches.json()["batches"]} == {("car-signed", None)}


def test_a_later_bundle_with_the_cabin_batch_adds_it_still_attested(world: World) -> None:
    first, code = bundle(world, TESLA)
    importer(world.b).import_bundle(first, import_code=code, owner_id=world.owner_b)
    whole, code = bundle(world, TESLA, include_sensitive=True)
    result = importer(world.b).import_bundle(whole, import_code=code, owner_id=world.owner_b)
    assert (result.added, result.batches) == (1, 3)
    assert [(r.seq, r.attested_by) for r in records_of(world.b, TESLA)] == [(1, "cn"), (2, "cn"), (3, "cn")]


def test_a_second_deployment_of_the_same_region_does_not_stream_for_an_imported_tesla(tmp_path: Path) -> None:
    w = make_world(tmp_path, "cn")  # B also calls itself cn: the certificate's title names B's region too
    try:
        path, code = bundle(w, TESLA)
        importer(w.b).import_bundle(path, import_code=code, owner_id=w.owner_b)
        assert [r.attested_by for r in records_of(w.b, TESLA)] == ["cn", "cn"]
        with pytest.raises(CarVaultError) as e:
            w.b.fleet.admit(TESLA)
        assert e.value.code == "unknown_vehicle" and "this region's CA" in e.value.message  # A's CA issued it
        before = w.b.log.size
        outcomes = w.b.fleet.ingest(TESLA, records(BASE_MS + 40_000, 2)).outcomes
        assert all(o.error is not None for o in outcomes) and w.b.log.size == before
    finally:
        w.a.close()
        w.b.close()
