"""The completeness report against the chain: real signed batches through the real gateway, then the figures."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from carvault.access.accounts import Principal
from carvault.access.completeness import (
    DELETED,
    NOT_SENT,
    NOT_YET_RECEIVED,
    REFUSED,
    REPORT_CONTEXT,
    RETENTION_ERASED,
    gaps_csv,
)
from carvault.errors import BrokenChain, InvalidQuery
from carvault.ledger.checkpoint import parse_vkey
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch, sha256_hex
from carvault.provisioning import provision
from carvault.region import Region
from carvault.store.metadata import BatchRefusal
from carvault.vehicle.identity import VehicleIdentity
from carvault.verify.completeness import main as verify_main
from carvault.verify.completeness import verify_report
from tests.factories import BASE_MS, drive_table, vin_for

DAY = "2025-11-13"
T = BASE_MS  # 2025-11-13T02:13:00Z
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
PATHS = [SPEED, "Vehicle.IsMoving", "Vehicle.TraveledDistance", SOC]


class Car:
    """A provisioned car owned by an account, signing batches and sending them through the region's gateway."""

    def __init__(self, region: Region, tmp_path: Path, n: int = 1) -> None:
        self.region = region
        self.identity: VehicleIdentity = provision(region, vin_for(n), tmp_path / "vehicles")
        self.owner = region.accounts.register(f"owner{n}@example.com", "correct horse battery")
        region.vehicles.claim(self.owner.id, self.identity.vin, self.identity.pairing_code)
        self.seq, self.prev = 0, GENESIS_PREV

    def batch(
        self,
        start_ms: int,
        seconds: int,
        paths: list[str] = PATHS,
        version: str | None = "2025.44.1",
        kind: str = "telemetry",
    ) -> bytes:
        """The next batch of the chain (not yet sent); an event batch carries a hard-braking description."""
        table = drive_table(start_ms, seconds, paths)
        if kind == "event":
            meta = {
                "kind": "hard_braking",
                "trigger_ms": start_ms + 1_000,
                "legal_basis": "safety event record for incident reconstruction (service contract, GB/T 41871-2022)",
                "locked": False,
                "pre_s": 1,
                "post_s": 1,
                "triggers": [],
            }
            table = table.replace_schema_metadata({b"carvault.event": json.dumps(meta).encode()})
        blob = make_batch(
            kind=kind,
            vin=self.identity.vin,
            region="cn",
            seq=self.seq + 1,
            prev=self.prev,
            table=table,
            key=self.identity.key,
            software_version=version,
        )
        self.seq, self.prev = self.seq + 1, sha256_hex(blob)
        return blob

    def send(self, start_ms: int, seconds: int, **kw: object) -> dict:
        return self.region.gateway.accept(self.batch(start_ms, seconds, **kw), BATCH_MEDIA_TYPE)  # type: ignore[arg-type]

    def principal(self) -> Principal:
        return Principal(self.owner.id, self.owner.email, 0, "session")

    def report(self, day: str = DAY, now: int | None = None) -> dict:
        c = self.region.completeness
        lo, hi, zone = c.window(day=day, start_ms=None, end_ms=None, tz="UTC")
        access = self.region.grants.access(self.principal(), self.identity.vin)
        return c.report(access, lo, hi, zone, now=now)


@pytest.fixture
def car(region: Region, tmp_path: Path) -> Car:
    return Car(region, tmp_path)


def _gaps(report: dict, reason: str) -> list[dict]:
    return [g for g in report["gaps"] if g["reason"] == reason]


def test_figures_follow_the_chain(region: Region, car: Car) -> None:
    """Three batches with a ten-minute pause, then a refused one: seconds, samples, gaps and reasons as sent."""
    car.send(T, 60)
    car.send(T + 60_000, 60)
    car.send(T + 720_000, 60, version="2025.46.2")  # after a pause and an update
    car.seq += 1  # the car's next batch skips a seq: the gateway refuses it (broken chain)
    with pytest.raises(BrokenChain):
        car.send(T + 780_000, 60)

    report = car.report(now=T + 3_600_000)
    assert report["chain"]["batches"] == 3 and report["chain"]["head_seq"] == 3
    assert report["chain"]["missing_seqs"] == []
    assert report["totals"]["seconds_with_data"] == 180
    assert report["totals"]["samples"] == sum(b["samples"] for b in report["batches"])
    # The pause: the chain is unbroken across it, so the car sent nothing for that time.
    pause = [g for g in _gaps(report, NOT_SENT) if g["start_ms"] > T]
    assert len(pause) == 1
    assert pause[0]["detail"]["batch_before"] == 2 and pause[0]["detail"]["batch_after"] == 3
    assert T + 119_900 < pause[0]["start_ms"] <= T + 120_000 and pause[0]["end_ms"] == T + 720_000
    # Before the first batch of the day: nothing stored before it, seq 1 is the car's first: not sent.
    first = report["gaps"][0]
    assert first["start_ms"] == report["window"]["start_ms"] and first["reason"] == NOT_SENT
    # After the last stored batch: the car sent seq 5, refused with broken_chain; its span lies there.
    refused = _gaps(report, REFUSED)
    assert len(refused) == 1 and refused[0]["detail"]["codes"] == ["broken_chain"]
    assert refused[0]["detail"]["count"] == 1 and refused[0]["end_ms"] == T + 3_600_000  # up to "now"
    assert report["refusals"][0]["seqs"] == [5, 5] and report["refusals"][0]["span"][0] == T + 780_000
    # Per signal: Speed at 10 Hz over 180 seconds with data.
    dyn = next(c for c in report["categories"] if c["category"] == "driving_dynamics")
    speed = next(s for s in dyn["signals"] if s["path"] == SPEED)
    assert speed == {"path": SPEED, "rate_hz": 10, "sampling": "periodic", "present": 1800, "expected": 1800}
    # Software versions: one run per version, and nothing appeared or vanished (same columns).
    assert [(r["version"], r["batches"]) for r in report["software"]] == [("2025.44.1", 2), ("2025.46.2", 1)]
    assert report["software"][1]["appeared"] == [] and report["software"][1]["vanished"] == []
    # The day's figures add up: every second of the day is either with data or in a gap.
    day = report["days"][0]
    assert day["date"] == DAY and day["seconds"] == 86_400
    gap_seconds = sum(day["gap_seconds"].values())
    assert day["seconds_elapsed"] == (T + 3_600_000 - day["start_ms"]) // 1000
    assert abs(gap_seconds + day["seconds_with_data"] - day["seconds_elapsed"]) < 1


def test_refusals_are_bounded_per_vehicle_code_and_hour(region: Region, car: Car) -> None:
    """A flood of refused batches grows one counter, not the table."""
    car.send(T, 60)
    blobs = []
    for i in range(20):
        car.seq += 1
        blobs.append(car.batch(T + 60_000 * (i + 2), 60))
    for blob in blobs:
        with pytest.raises(BrokenChain):
            region.gateway.accept(blob, BATCH_MEDIA_TYPE)
    with region.db.session() as s:
        rows = list(s.query(BatchRefusal).filter_by(vin=car.identity.vin))
    assert len(rows) == 1 and rows[0].count == 20
    assert (rows[0].seq_min, rows[0].seq_max) == (3, 41)  # every refused batch skipped one more seq
    assert rows[0].t0_min == T + 120_000 and rows[0].t1_max == T + 21 * 60_000 + 59_900
    # Garbage that does not verify is nobody's refusal: nothing is recorded for it.
    forged = bytearray(blobs[0])
    forged[-1] ^= 1
    with pytest.raises(Exception):  # noqa: B017 - bad_signature; the point is what is recorded
        region.gateway.accept(bytes(forged), BATCH_MEDIA_TYPE)
    with region.db.session() as s:
        assert s.query(BatchRefusal).filter_by(vin=car.identity.vin).one().count == 20


def test_consent_off_for_a_category(region: Region, car: Car) -> None:
    """The owner stops battery data after two minutes: the category's off period and expected samples follow."""
    car.send(T, 60)
    car.send(T + 60_000, 60)
    stop = T + 120_000
    region.consents.decide(car.identity.vin, car.owner.id, "battery_charging", enabled=False, at_ms=stop)
    car.send(T + 120_000, 60, paths=[p for p in PATHS if p != SOC])
    report = car.report(now=T + 3_600_000)
    battery = next(c for c in report["categories"] if c["category"] == "battery_charging")
    assert battery["consent_off"] == [
        {
            "start_ms": stop,
            "end_ms": report["window"]["end_ms"],
            "start_utc": "2025-11-13T02:15:00.000Z",
            "end_utc": "2025-11-14T00:00:00.000Z",
            "seconds": (report["window"]["end_ms"] - stop) // 1000,
        }
    ]
    soc = next(s for s in battery["signals"] if s["path"] == SOC)
    assert soc["present"] == 120 and soc["expected"] == 120  # 1 Hz while collecting, none expected after the stop
    assert battery["seconds_collecting_with_data"] == 120


def test_a_deleted_day(region: Region, car: Car) -> None:
    """The owner deletes the car's data; later uploads go on the chain: the erased day says so, by request."""
    car.send(T, 60)
    car.send(T + 60_000, 60)
    req = region.deletions.request(car.owner.id, car.identity.vin, "erase", immediately=True)
    assert req.status == "completed"
    car.send(T + 86_400_000, 60)  # the next day, seq 3
    report = car.report(now=T + 2 * 86_400_000)
    assert report["chain"]["batches"] == 0 and report["totals"]["seconds_with_data"] == 0
    [gap] = report["gaps"]
    assert gap["reason"] == DELETED and gap["seconds"] == 86_400
    assert gap["detail"]["missing_seqs"] == [1, 2] and gap["detail"]["deletion_requests"] == [req.id]
    assert report["deletions"][0]["batches_erased"] == 2
    # The next day: its batch is there; after it, nothing yet.
    nxt = car.report(day="2025-11-14", now=T + 86_400_000 + 120_000)
    assert nxt["chain"]["first_seq"] == 3 and nxt["totals"]["seconds_with_data"] == 60
    assert nxt["gaps"][0]["reason"] == DELETED  # before seq 3 of that day: seqs 1..2 were erased
    assert nxt["gaps"][-1]["reason"] == NOT_YET_RECEIVED


def test_retention_erased_seqs(region: Region, car: Car) -> None:
    """A retention purge's audit entry names the seqs it erased; the report attributes the hole to it."""
    car.send(T, 60)
    car.send(T + 60_000, 60)
    car.send(T + 120_000, 60)
    # Erase seq 2 the way a purge leaves it: row gone, the purge's entry in the owner's chain names the seq.
    from sqlalchemy import delete

    from carvault.access.audit import Actor
    from carvault.store.metadata import BatchRecord

    with region.db.session() as s:
        s.execute(delete(BatchRecord).where(BatchRecord.vin == car.identity.vin, BatchRecord.seq == 2))
    region.audit.record(
        owner_id=car.owner.id,
        vin=car.identity.vin,
        actor=Actor("system", "retention"),
        action="retention.purge",
        legal_basis="storage limitation",
        detail={"run_id": 7, "batches_erased": 1, "erased_seqs": [[2, 2]]},
    )
    report = car.report(now=T + 3_600_000)
    [hole] = _gaps(report, RETENTION_ERASED)
    assert hole["detail"]["missing_seqs"] == [2, 2] and hole["detail"]["retention_runs"] == [7]
    assert report["chain"]["missing_seqs"] == [[2, 2]]


def test_a_hold_freezes_the_figures(region: Region, car: Car) -> None:
    """Under a legal hold the data is kept, not served: the report counts from the batch index and reads no rows."""
    car.send(T, 60)
    region.deletions.place_hold(car.identity.vin, "Shenzhen court", "case 2025-17")
    report = car.report(now=T + 3_600_000)
    assert report["frozen"] is True and report["drives"] is None
    assert report["days"][0]["frozen"] is True
    assert report["totals"]["seconds_with_data"] == 60  # the batch's span, from the index
    assert report["holds"][0]["authority"] == "Shenzhen court"
    dyn = next(c for c in report["categories"] if c["category"] == "driving_dynamics")
    assert all(s["present"] is None for s in dyn["signals"])


def test_signed_and_tamper_evident(region: Region, car: Car) -> None:
    """The region's log key signs the report (the deletion receipts' signer); any change breaks it."""
    car.send(T, 60)
    report = car.report(now=T + 3_600_000)
    assert report["signed_by"] == region.log.vkey
    body = {k: v for k, v in report.items() if k not in ("signature", "signed_by")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    parse_vkey(report["signed_by"]).public_key.verify(base64.b64decode(report["signature"]), REPORT_CONTEXT + canonical)
    assert verify_report(report, log_key=region.log.vkey).ok
    tampered = json.loads(json.dumps(report))
    tampered["totals"]["seconds_with_data"] += 1
    result = verify_report(tampered, log_key=region.log.vkey)
    assert not result.ok and "signature" in result.failures()[0].name


def test_csv_of_gaps_says_utc(region: Region, car: Car) -> None:
    car.send(T, 60)
    text = gaps_csv(car.report(now=T + 3_600_000))
    lines = text.splitlines()
    assert "times in UTC" in lines[0]
    assert lines[1] == "scope,start_utc,end_utc,seconds,reason,detail"
    assert lines[2].startswith("window,2025-11-13T00:00:00.000Z,")


def test_bad_windows(region: Region) -> None:
    c = region.completeness
    for kw in (
        {"day": "13/11/2025", "start_ms": None, "end_ms": None, "tz": None},
        {"day": None, "start_ms": T, "end_ms": None, "tz": None},
        {"day": None, "start_ms": T, "end_ms": T, "tz": None},
        {"day": None, "start_ms": T, "end_ms": T + 8 * 86_400_000, "tz": None},
        {"day": DAY, "start_ms": T, "end_ms": T + 1, "tz": None},
        {"day": DAY, "start_ms": None, "end_ms": None, "tz": "Mars/Olympus"},
    ):
        with pytest.raises(InvalidQuery):
            c.window(**kw)
    lo, hi, zone = c.window(day=DAY, start_ms=None, end_ms=None, tz=None)
    assert zone == "Asia/Shanghai" and hi - lo == 86_400_000 and lo == T - 2 * 3_600_000 - 13 * 60_000 - 8 * 3_600_000


def test_software_version_in_header_and_row(region: Region, car: Car) -> None:
    """The signed header's software_version is stored per batch; an older car without it still uploads."""
    car.send(T, 60, version=None)
    car.send(T + 60_000, 60, version="2025.44.1")
    report = car.report(now=T + 3_600_000)
    assert [b["software_version"] for b in report["batches"]] == [None, "2025.44.1"]


# ---------------------------------------------------------------------- API on the real server, and the verify CLI
def _login(http: httpx.Client, email: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/login", json={"email": email, "password": "correct horse battery"})
    assert r.status_code == 200, r.text
    http.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.mark.slow
def test_api_owner_grant_holder_and_stranger(region: Region, car: Car, http: httpx.Client, tmp_path: Path) -> None:
    """The owner reads and downloads the report; a grant sees its signals only; a stranger learns nothing."""
    car.send(T, 60)
    car.send(T + 600_000, 60)
    vin = car.identity.vin
    url = f"/api/v1/vehicles/{vin}/completeness"
    owner = _login(http, car.owner.email)
    r = http.get(url, params={"day": DAY, "tz": "UTC"}, headers=owner)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["chain"]["batches"] == 2 and _gaps(report, NOT_SENT)
    assert verify_report(report, log_key=region.log.vkey).ok
    # The download is the same signed report, as a file; the CSV says UTC.
    f = http.get(f"{url}.json", params={"day": DAY, "tz": "UTC"}, headers=owner)
    assert f.status_code == 200 and "attachment" in f.headers["content-disposition"]
    saved = tmp_path / "report.json"
    saved.write_bytes(f.content)
    c = http.get(f"{url}.csv", params={"day": DAY, "tz": "UTC"}, headers=owner)
    assert c.status_code == 200 and c.text.splitlines()[0].endswith("times in UTC")
    cal = http.get(f"{url}/calendar", params={"end": str(T + 86_400_000), "days": 3, "tz": "UTC"}, headers=owner)
    assert cal.status_code == 200 and [d["covered_seconds"] for d in cal.json()["days"]][-2] == 120
    # The owner's own reads are in their access log too (report, file, CSV, calendar), as every read of the car's data.
    own = [e for e in http.get("/api/v1/audit", headers=owner).json()["events"] if e["action"] == "completeness.read"]
    assert len(own) == 4 and all("grant_id" not in e["detail"] for e in own)
    # A grant holder (speed only): the categories shown are the grant's; the read is in the owner's access log.
    secret, _ = region.grants.personal_token(car.owner.id, label="script", vins=[vin], signals=[SPEED])
    g = http.get(url, params={"day": DAY, "tz": "UTC"}, headers={"Authorization": f"Bearer {secret}"})
    assert g.status_code == 200, g.text
    assert g.json()["for"] == "grant" and [c["category"] for c in g.json()["categories"]] == ["driving_dynamics"]
    assert [s["path"] for s in g.json()["categories"][0]["signals"]] == [SPEED]
    log = http.get("/api/v1/audit", headers=owner).json()
    assert any(e["action"] == "completeness.read" for e in log.get("events", log if isinstance(log, list) else []))
    # A stranger: not found, as for any vehicle not theirs; bad input: stable codes.
    region.accounts.register("stranger@example.com", "correct horse battery")
    s = http.get(url, params={"day": DAY}, headers=_login(http, "stranger@example.com"))
    assert s.status_code == 404 and s.json()["error"]["code"] == "not_found"
    for params in ({"day": "yesterday"}, {"start_ms": T}, {"start_ms": T, "end_ms": T + 8 * 86_400_000}, {"tz": "X/Y"}):
        bad = http.get(url, params=params, headers=owner)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query", params
    # The offline check of the downloaded file: anchored with the published key, against the region's public log.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carvault",
            "verify",
            "completeness",
            str(saved),
            "--log-key",
            region.log.vkey,
            "--log",
            str(http.base_url),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFIED" in proc.stdout and "2 batches are in the log" in proc.stdout


def test_verify_cli_exit_codes(region: Region, car: Car, tmp_path: Path) -> None:
    """0 anchored, 2 not anchored, 1 tampered or another key, 3 not a report, 4 usage."""
    car.send(T, 60)
    report = car.report(now=T + 3_600_000)
    good = tmp_path / "r.json"
    good.write_text(json.dumps(report))
    assert verify_main([str(good), "--log-key", region.log.vkey]) == 0
    assert verify_main([str(good)]) == 2
    other = tmp_path / "o.json"
    other.write_text(json.dumps({**report, "vin": vin_for(9)}))
    assert verify_main([str(other), "--log-key", region.log.vkey]) == 1
    assert verify_main([str(good), "--log-key", "someone+00000000+AAAA"]) == 1
    junk = tmp_path / "j.json"
    junk.write_text('{"format": "something else"}')
    assert verify_main([str(junk)]) == 3
    assert verify_main([str(tmp_path / "missing.json")]) == 4
    assert verify_main(["--no-such-option"]) == 4


# ---------------------------------------------------------------------- software-version provenance (protocol §10)
def test_header_software_version_is_optional_and_bounded(car: Car) -> None:
    """Without the member a header is serialised as before; a bad one is refused; nothing else trusts it."""
    from carvault.errors import MalformedBatch
    from carvault.protocol import decode_envelope

    plain = decode_envelope(car.batch(T, 1, version=None))
    assert b"software_version" not in plain.header.to_json_bytes()
    named = decode_envelope(car.batch(T + 1_000, 1, version="2025.44.1 (abc)"))
    assert named.header.software_version == "2025.44.1 (abc)"
    for bad in ("", " 1.0", "x" * 65, "版本", "a\\nb"):
        with pytest.raises(MalformedBatch) as e:
            car.batch(T + 2_000, 1, version=bad.replace("\\n", "\n"))
        assert e.value.details["field"] == "software_version"


def test_agent_names_the_version_and_follows_an_update(region: Region, car: Car, tmp_path: Path) -> None:
    """The agent signs each batch with the version it runs; the recorded update mid-way changes the next batches."""
    import pyarrow as pa

    from carvault.protocol import decode_envelope
    from carvault.vehicle.agent import SOFTWARE_VERSION, VehicleAgent

    agent = VehicleAgent(car.identity, tmp_path / "agent", "http://127.0.0.1:9")
    table = drive_table(T, 900, PATHS)
    versions = ["2025.44.1"] * 6000 + ["2025.46.2"] * 3000  # the update installs at T + 600 s
    table = table.append_column(SOFTWARE_VERSION, pa.array(versions, pa.string()))
    agent.process(table, 300)
    headers = [decode_envelope(p.read_bytes()).header for p in agent.pending()]
    routine = [h for h in headers if h.kind == "telemetry"]
    assert [(h.t0, h.software_version) for h in routine] == [
        (T - T % 300_000 + i * 300_000, v) for i, v in enumerate(["2025.44.1", "2025.44.1", "2025.46.2", "2025.46.2"])
    ][: len(routine)]
    for p in agent.pending():  # the region stores what the signed header says
        region.gateway.accept(p.read_bytes(), BATCH_MEDIA_TYPE)
    report = car.report(now=T + 3_600_000)
    # Five-minute slices from 02:10: the third holds the update (02:23) and is signed by the new version.
    assert [(r["version"], r["batches"]) for r in report["software"]] == [("2025.44.1", 2), ("2025.46.2", 2)]


def test_signals_that_appear_or_vanish_after_an_update(region: Region, car: Car) -> None:
    car.send(T, 60, paths=PATHS)
    car.send(
        T + 60_000,
        60,
        paths=[SPEED, "Vehicle.IsMoving", "Vehicle.Powertrain.TractionBattery.CurrentPower"],
        version="2025.46.2",
    )
    [before, after] = car.report(now=T + 3_600_000)["software"]
    assert before["appeared"] == [] and before["vanished"] == []
    assert after["appeared"] == ["Vehicle.Powertrain.TractionBattery.CurrentPower"]
    assert after["vanished"] == [SOC, "Vehicle.TraveledDistance"]


def test_fleet_telemetry_fills_the_version_from_tesla_records(region: Region) -> None:
    """A Tesla's Version field fills the attested batch header; a later batch without it repeats the last one."""
    from sqlalchemy import select

    from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
    from carvault.store.metadata import BatchRecord
    from tests.ingest.fleet_telemetry_client import message, payload, value_of

    vin = vin_for(7)
    region.fleet.register(vin, "PAIRCODE7")
    f = pb.Field
    first = [
        message(
            vin,
            payload(
                T + i * 1000,
                {f.VehicleSpeed: value_of(double_value=20.0), f.Version: value_of(string_value="2025.44.25.1 abc123")},
            ),
            f"tx-{i}",
        )
        for i in range(3)
    ]
    later = [message(vin, payload(T + 10_000, {f.VehicleSpeed: value_of(double_value=21.0)}), "tx-later")]
    region.fleet.ingest(vin, first)
    region.fleet.ingest(vin, later)
    with region.db.session() as s:
        got = s.execute(select(BatchRecord.seq, BatchRecord.software_version).where(BatchRecord.vin == vin)).all()
    assert sorted(got) == [(1, "2025.44.25.1 abc123"), (2, "2025.44.25.1 abc123")]


def test_against_an_incident_package(region: Region, car: Car, tmp_path: Path) -> None:
    """Over the seqs both cover, the report counts exactly the package's batches; a report that differs fails."""
    from carvault.access.audit import Actor
    from carvault.access.packages import PackageBuilder

    for i in range(4):
        car.send(T + i * 60_000, 60)
    builder = PackageBuilder(region)
    row = builder.build(
        car.identity.vin,
        T + 60_000,
        T + 180_000,
        event=None,
        requested_by=Actor("owner", str(car.owner.id)),
        owner_id=car.owner.id,
        legal_basis="owner's request",
    )
    path = tmp_path / "package.zip"
    path.write_bytes(builder.read(row))
    report = car.report(now=T + 3_600_000)
    result = verify_report(report, log_key=region.log.vkey, package=path)
    assert result.ok, result.checks
    check = next(c for c in result.checks if c.name == "package")
    assert check.ok and "seqs 2..3" in check.detail
    other = json.loads(json.dumps(report))
    other["batches"][1]["batch_hash"] = "0" * 64
    failed = verify_report(other, package=path)
    assert next(c for c in failed.checks if c.name == "package").ok is False


def test_every_reason_has_words_in_both_languages() -> None:
    """The page names each reason and explains it in English and Chinese (keys built at run time)."""
    from carvault.access.completeness import REASONS
    from carvault.verify.completeness import REASONS as VERIFIED_REASONS
    from carvault.web import i18n

    assert set(REASONS) == set(VERIFIED_REASONS)  # the verifier knows every reason the report gives
    for lang in ("en", "zh-CN"):
        m = i18n.messages(lang)
        missing = [k for r in REASONS for k in (f"completeness.reason.{r}", f"completeness.why.{r}") if k not in m]
        assert not missing, (lang, missing)


def test_event_batches_in_the_chain_are_not_missing(region: Region, car: Car) -> None:
    """An event batch between two telemetry batches is in the chain: the pause around it is 'not sent'."""
    car.send(T, 60)
    car.send(T + 300_000, 3, kind="event")
    car.send(T + 600_000, 60)
    report = car.report(now=T + 3_600_000)
    [pause] = [g for g in report["gaps"] if T < g["start_ms"] < T + 600_000]
    assert pause["reason"] == NOT_SENT and pause["detail"]["batch_before"] == 1 and pause["detail"]["batch_after"] == 3
    assert report["chain"]["missing_seqs"] == [] and [b["kind"] for b in report["batches"]] == [
        "telemetry",
        "event",
        "telemetry",
    ]


def test_calendar_counts_coverage_and_refusals(region: Region, car: Car) -> None:
    """The strip's figures come from the batch index and the refusal record."""
    car.send(T, 60)
    car.send(T + 60_000, 60)
    car.seq += 1
    with pytest.raises(BrokenChain):
        car.send(T + 180_000, 60)
    days = region.completeness.calendar(car.identity.vin, T + 86_400_000, "UTC", days=2)
    assert [(d["date"], d["covered_seconds"], d["refusals"]) for d in days][-2:] == [
        ("2025-11-13", 120, 1),
        ("2025-11-14", 0, 0),
    ]


def test_window_bounds(region: Region) -> None:
    """Days and instants outside 2000..9998 are refused with a stable code, not a crash (9999-12-31 + 1 day)."""
    c = region.completeness
    for kw in (
        {"day": "9999-12-31", "start_ms": None, "end_ms": None, "tz": "UTC"},
        {"day": "0001-01-01", "start_ms": None, "end_ms": None, "tz": "UTC"},
        {"day": None, "start_ms": 0, "end_ms": 1, "tz": None},
        {"day": None, "start_ms": 2**53, "end_ms": 2**53 + 1, "tz": None},
    ):
        with pytest.raises(InvalidQuery):
            c.window(**kw)


def test_a_grant_holder_is_not_told_when_the_car_was_in_a_masked_place(region: Region, car: Car) -> None:
    """A batch refused as ``location_in_masked_place`` says when the car was at the owner's home (or another masked
    place): the owner's report shows it; a grant holder's shows the gap without that reason, message or count."""
    car.send(T, 60)
    car.send(T + 600_000, 60)
    with region.db.session() as s:
        s.add(
            BatchRefusal(
                vin=car.identity.vin,
                code="location_in_masked_place",
                hour_ms=T - T % 3_600_000,
                count=3,
                first_ms=T + 200_000,
                last_ms=T + 400_000,
                seq_min=2,
                seq_max=2,
                t0_min=T + 120_000,
                t1_max=T + 300_000,
                message="batch carries 5 position(s) inside a place the owner masks in the car",
            )
        )
    owner_report = car.report()
    assert "location_in_masked_place" in json.dumps(owner_report)
    _, grant = region.grants.personal_token(car.owner.id, label="app", vins=[car.identity.vin], signals=PATHS)
    holder = Principal(car.owner.id, car.owner.email, 0, "personal", grant_id=grant.id)
    c = region.completeness
    lo, hi, zone = c.window(day=DAY, start_ms=None, end_ms=None, tz="UTC")
    report = c.report(region.grants.access(holder, car.identity.vin), lo, hi, zone)
    assert report["for"] == "grant" and report["gaps"]
    text = json.dumps(report)
    assert "location_in_masked_place" not in text and "masks" not in text
    assert report["totals"]["refusals"] == 0 and report["refusals"] == []
    calendar = c.calendar(car.identity.vin, T + 86_400_000, "UTC", days=2, owner=False)
    assert sum(d["refusals"] for d in calendar) == 0
    assert sum(d["refusals"] for d in c.calendar(car.identity.vin, T + 86_400_000, "UTC", days=2)) == 3
