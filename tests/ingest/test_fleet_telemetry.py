"""Fleet Telemetry without the network: the mapping table, the record checks, and region-attested batches."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import select

from carvault.errors import (
    CarVaultError,
    FleetVinMismatch,
    MalformedBatch,
    MalformedFleetRecord,
    UnknownFleetField,
    UnknownVehicle,
    WrongRegion,
    WrongSignalType,
)
from carvault.ingest.fleet_telemetry import FleetMapping, decode_record, vin_of_certificate
from carvault.ledger.leaves import batch_leaf, log_key_of
from carvault.pki import attested_by
from carvault.protocol import BATCH_MEDIA_TYPE, decode_envelope, make_batch
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.protocol.fleet_telemetry.envelope import decode_answer, encode_stream
from carvault.provisioning import provision
from carvault.region import Region
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord
from tests.factories import BASE_MS, opt_in, vin_for
from tests.ingest.fleet_telemetry_client import FleetPKI, message, payload, value_of

VIN = vin_for(41)
LAT = "Vehicle.CurrentLocation.Latitude"
F = pb.Field


@pytest.fixture(scope="module")
def mapping() -> FleetMapping:
    return FleetMapping.load(catalogue())


def test_mapping_names_tesla_fields_and_catalogue_signals(mapping: FleetMapping) -> None:
    cat = catalogue()
    assert len(mapping.rules) >= 30
    for r in mapping.rules:
        assert pb.Field.Name(r.number) == r.field and r.signal in cat
    units = {r.field: (r.tesla_unit, r.scale) for r in mapping.rules}
    assert units["VehicleSpeed"] == ("mph", 1.609344) and cat["Vehicle.Speed"].unit == "km/h"
    assert units["Odometer"] == ("mi", 1609.344) and cat["Vehicle.TraveledDistance"].unit == "m"
    assert units["TpmsPressureFl"] == ("bar", 100.0)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("NoSuchField,number,Vehicle.Speed,mph,1,0,", "not a Fleet Telemetry field"),
        ("VehicleSpeed,number,Vehicle.NoSuchSignal,mph,1,0,", "not a catalogue signal"),
        ("Gear,shift_state_value,Vehicle.Powertrain.Transmission.SelectedGear,,,,ShiftStateX=1", "not a value of"),
        ("Gear,bogus_kind,Vehicle.Powertrain.Transmission.SelectedGear,,,,", "not a kind of value"),
        ("DoorState,doors.Sunroof,Vehicle.Cabin.Door.Row1.DriverSide.IsOpen,,,,", "names no member"),
        ("LightsHazardsActive,number,Vehicle.Body.Lights.Hazard.IsSignaling,,1,0,", "cannot fill"),
    ],
)
def test_a_bad_mapping_row_fails_loading_with_its_line(row: str, problem: str) -> None:
    text = "field,kind,signal,tesla_unit,scale,offset,values\nVehicleSpeed,number,Vehicle.Speed,mph,1.609344,0,\n" + row
    with pytest.raises(ValueError, match=f"line 3: .*{problem}"):
        FleetMapping.load(catalogue(), text)


def test_values_are_converted_to_catalogue_units(mapping: FleetMapping) -> None:
    rec = payload(
        BASE_MS,
        {
            F.VehicleSpeed: value_of(string_value="62.5"),  # older firmware: numbers as text
            F.Odometer: value_of(double_value=1000.0),
            F.TpmsPressureFl: value_of(float_value=2.5),
            F.Location: value_of(location_value=(22.5431, 114.0579)),
            F.Gear: value_of(shift_state_value=pb.ShiftStateD),
            F.DriverSeatBelt: value_of(buckle_status_value=pb.BuckleStatusLatched),
            F.LightsTurnSignal: value_of(turn_signal_state_value=pb.TurnSignalStateLeft),
            F.DoorState: value_of(door_value={"DriverFront": True}),
            F.OutsideTemp: value_of(invalid=True),  # the car could not read it: no value, no refusal
            F.Soc: value_of(int_value=80),
            F.DetailedChargeState: value_of(detailed_charge_state_value=pb.DetailedChargeStateStarting),
        },
    )
    r = decode_record(VIN, message(VIN, rec, "tx-1"), mapping)
    assert r.t_ms == BASE_MS and r.txid == b"tx-1"
    v = r.values
    assert math.isclose(v["Vehicle.Speed"], 62.5 * 1.609344)
    assert v["Vehicle.TraveledDistance"] == 1_609_344 and v["Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"] == 250
    assert (v["Vehicle.CurrentLocation.Latitude"], v["Vehicle.CurrentLocation.Longitude"]) == (22.5431, 114.0579)
    assert v["Vehicle.Powertrain.Transmission.SelectedGear"] == 127  # VSS: 127 = drive, 126 = park
    assert v["Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted"] is True
    assert v["Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling"] is True
    assert v["Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling"] is False
    assert v["Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"] is True
    assert v["Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen"] is False
    assert v["Vehicle.CarVault.Charging.State"] == "CONNECTED"
    assert (
        "Vehicle.Exterior.AirTemperature" not in v
        and v["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] == 80
    )


def _refusals() -> list[tuple[str, bytes, type[CarVaultError]]]:
    good = payload(BASE_MS, {F.VehicleSpeed: value_of(double_value=30.0)})
    unknown_number = pb.Payload()
    unknown_number.created_at.FromMilliseconds(BASE_MS)
    d = unknown_number.data.add()
    d.key = 9999  # not in Tesla's list (proto3 enums keep unknown numbers)
    d.value.double_value = 1.0
    return [
        ("not an envelope", b"\x00" * 40, MalformedFleetRecord),
        ("truncated envelope", message(VIN, good, "t")[:-30], MalformedFleetRecord),
        ("payload not protobuf", message(VIN, b"\xff\xff\xff\xff", "t"), MalformedFleetRecord),
        ("alerts topic", message(VIN, good, "t", topic=b"alerts"), MalformedFleetRecord),
        (
            "no creation time",
            message(VIN, payload(0, {F.VehicleSpeed: value_of(double_value=1.0)}), "t"),
            MalformedFleetRecord,
        ),
        ("field not in Tesla's list", message(VIN, unknown_number, "t"), UnknownFleetField),
        (
            "field without a signal",
            message(VIN, payload(BASE_MS, {F.VehicleName: value_of(string_value="x")}), "t"),
            UnknownFleetField,
        ),
        (
            "text where a number goes",
            message(VIN, payload(BASE_MS, {F.VehicleSpeed: value_of(string_value="fast")}), "t"),
            WrongSignalType,
        ),
        (
            "bool where a number goes",
            message(VIN, payload(BASE_MS, {F.VehicleSpeed: value_of(boolean_value=True)}), "t"),
            WrongSignalType,
        ),
        (
            "number where a location goes",
            message(VIN, payload(BASE_MS, {F.Location: value_of(double_value=1.0)}), "t"),
            WrongSignalType,
        ),
        ("payload names another VIN", message(VIN, payload(BASE_MS, {}, vin=vin_for(42)), "t"), FleetVinMismatch),
        ("device id names another VIN", message(VIN, good, "t", device_id=vin_for(42)), FleetVinMismatch),
    ]


@pytest.mark.parametrize(("case", "data", "error"), _refusals(), ids=[c[0] for c in _refusals()])
def test_each_bad_record_is_refused_with_its_code(
    mapping: FleetMapping, case: str, data: bytes, error: type[CarVaultError]
) -> None:
    with pytest.raises(error) as caught:
        decode_record(VIN, data, mapping)
    assert caught.value.message and caught.type.code == error.code


def test_the_vin_comes_from_the_certificate_subject(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    pki = FleetPKI(tmp_path)
    assert vin_of_certificate(pki.vehicle(VIN).cert.public_bytes(Encoding.DER)) == VIN
    with pytest.raises(UnknownVehicle, match="not a VIN"):
        vin_of_certificate(pki.issuing.cert.public_bytes(Encoding.DER))  # "Test Vehicle Issuing CA"
    with pytest.raises(UnknownVehicle, match="not readable"):
        vin_of_certificate(b"\x30\x03garbage")


# --------------------------------------------------------------------------------------------------- attestation


def _stream(region: Region, seconds: int, start: int = BASE_MS) -> list[bytes]:
    return [
        message(VIN, payload(start + i * 1000, {F.VehicleSpeed: value_of(double_value=20.0 + i)}), f"tx-{start + i}")
        for i in range(seconds)
    ]


def test_records_become_region_attested_batches_in_the_chain_and_log(region: Region) -> None:
    cert = region.fleet.register(VIN, "PAIRCODE1")
    assert attested_by(cert) == "cn"
    done = region.fleet.ingest(VIN, _stream(region, 5))
    answers = [decode_answer(o.answer) for o in done.outcomes]
    assert all(a.ok for a in answers) and [a.txid for a in answers] == [f"tx-{BASE_MS + i}".encode() for i in range(5)]
    region.fleet.ingest(VIN, _stream(region, 3, BASE_MS + 10_000))
    with region.db.session() as s:
        recs = list(s.scalars(select(BatchRecord).where(BatchRecord.vin == VIN).order_by(BatchRecord.seq)))
    assert [(r.seq, r.rows, r.attested_by) for r in recs] == [(1, 5, "cn"), (2, 3, "cn")]
    assert recs[1].prev_hash == recs[0].batch_hash and recs[0].log_index is not None
    raw = region.segment_reader.read(recs[0].segment, recs[0].offset, recs[0].length)
    env = decode_envelope(raw)
    assert env.header.attested_by == "cn" and env.header.region_attested
    env.verify(region.fleet.key.public_key())  # signed by the region's attestation key, not by any car key
    # The log leaf commits to the mark: the same batch without it would be another leaf.
    key = log_key_of(region.db, VIN)
    leaf = batch_leaf("cn", recs[0], key)
    assert region.log.leaf_hash(recs[0].log_index) != b"" and leaf != batch_leaf("cn", _unmarked(recs[0]), key)
    speeds = _window(region, BASE_MS, BASE_MS + 5_000, "Vehicle.Speed").column("Vehicle.Speed").to_pylist()
    assert speeds == pytest.approx([(20.0 + i) * 1.609344 for i in range(5)], rel=1e-6)


def _window(region: Region, start: int, end: int, *paths: str) -> pa.Table:
    cat = catalogue()
    return region.telemetry.window(VIN, start, end, [cat[p] for p in paths])


def _unmarked(rec: BatchRecord) -> BatchRecord:
    copy = BatchRecord(**{c.name: getattr(rec, c.name) for c in BatchRecord.__table__.columns})
    copy.attested_by = None
    return copy


def test_only_the_region_attests_uploads_are_car_signed(region: Region, tmp_path: Path) -> None:
    region.fleet.register(VIN, "PAIRCODE1")
    table = pa.table(
        {"t": pa.array([BASE_MS], pa.timestamp("ms", tz="UTC")), "Vehicle.Speed": pa.array([1.0], pa.float32())}
    )
    # A batch marked region-attested that arrives as an upload is refused whatever key signed it ...
    forged = make_batch(vin=VIN, region="cn", seq=1, prev="0" * 64, table=table, key=region.fleet.key, attested_by="cn")
    with pytest.raises(MalformedBatch, match="never uploaded"):
        region.gateway.accept(forged, BATCH_MEDIA_TYPE)
    # ... a mark naming another region is malformed, and a native car's batch cannot pass for the region's.
    with pytest.raises(MalformedBatch, match="own region"):
        make_batch(vin=VIN, region="cn", seq=1, prev="0" * 64, table=table, key=region.fleet.key, attested_by="eu")
    native = provision(region, vin_for(43), tmp_path / "vehicles")
    with pytest.raises(UnknownVehicle, match="not registered here as a Fleet Telemetry car"):
        region.fleet.admit(native.vin)
    with pytest.raises(UnknownVehicle):
        region.fleet.admit(vin_for(44))  # not registered at all
    with region.db.session() as s:
        assert s.scalar(select(BatchRecord.id).where(BatchRecord.vin == VIN)) is None


def test_consent_and_precision_apply_as_in_a_car(region: Region) -> None:
    region.fleet.register(VIN, "PAIRCODE1")
    lat, lon = 22.543123, 114.057891
    record = payload(
        BASE_MS, {F.VehicleSpeed: value_of(double_value=30.0), F.Location: value_of(location_value=(lat, lon))}
    )
    region.fleet.ingest(VIN, [message(VIN, record, "a")])
    w = _window(region, BASE_MS, BASE_MS + 1000, "Vehicle.Speed", LAT)
    assert w.num_rows == 1 and w.column(LAT).null_count == 1  # no opt-in: location never kept
    opt_in(region, VIN, "location")
    later = payload(BASE_MS + 1000, {F.Location: value_of(location_value=(lat, lon))})
    region.fleet.ingest(VIN, [message(VIN, later, "b")])
    kept = _window(region, BASE_MS + 1000, BASE_MS + 2000, LAT).column(LAT).to_pylist()[0]
    assert kept != lat and abs(kept - lat) < 0.01  # coarse (an H3 cell's centre) without the precise opt-in
    opt_in(region, VIN, "location_precise")
    region.fleet.ingest(
        VIN, [message(VIN, payload(BASE_MS + 2000, {F.Location: value_of(location_value=(lat, lon))}), "c")]
    )
    assert _window(region, BASE_MS + 2000, BASE_MS + 3000, LAT).column(LAT).to_pylist() == [lat]


def test_a_bad_record_spoils_nothing_else_and_is_answered_with_its_reason(region: Region) -> None:
    region.fleet.register(VIN, "PAIRCODE1")
    good = _stream(region, 3)
    bad = message(VIN, payload(BASE_MS + 500, {F.VehicleSpeed: value_of(double_value=1e6)}), "bad")  # out of range
    spoof = message(VIN, payload(BASE_MS + 600, {}, vin=vin_for(42)), "spoof")
    done = region.fleet.ingest(VIN, [good[0], bad, good[1], spoof, good[2]])
    answers = [decode_answer(o.answer) for o in done.outcomes]
    assert [a.ok for a in answers] == [True, False, True, False, True]
    assert answers[1].reason.startswith("value_out_of_range:") and answers[1].txid == b"bad"
    assert answers[3].reason.startswith("fleet_vin_mismatch:")
    assert _window(region, BASE_MS, BASE_MS + 10_000, "Vehicle.Speed").num_rows == 3


def test_an_unregistered_or_foreign_envelope_is_answered_without_a_txid(region: Region, mapping: FleetMapping) -> None:
    region.fleet.register(VIN, "PAIRCODE1")
    done = region.fleet.ingest(
        VIN, [b"\x01\x02", encode_stream(txid=b"x", topic=b"V", payload=b"", device_id=VIN.encode())]
    )
    a, b = (decode_answer(o.answer) for o in done.outcomes)
    assert not a.ok and a.txid == b"" and a.reason.startswith("malformed_fleet_record:")
    assert not b.ok and b.reason.startswith("malformed_fleet_record:")  # an empty record has no creation time


def test_a_record_sent_again_is_acknowledged_and_kept_once(region: Region) -> None:
    region.fleet.register(VIN, "PAIRCODE1")
    first = _stream(region, 4)
    region.fleet.ingest(VIN, first)
    # The car lost the connection before the acks and sends two of the records again, with one new one.
    again = region.fleet.ingest(VIN, [first[2], first[3], *_stream(region, 1, BASE_MS + 4000)])
    assert all(decode_answer(o.answer).ok for o in again.outcomes)
    assert again.stored is not None and again.stored.num_rows == 1
    assert _window(region, BASE_MS, BASE_MS + 10_000, "Vehicle.Speed").num_rows == 5
    nothing_new = region.fleet.ingest(VIN, first[:2])
    assert nothing_new.stored is None and all(decode_answer(o.answer).ok for o in nothing_new.outcomes)
    with region.db.session() as s:
        assert list(s.scalars(select(BatchRecord.rows).where(BatchRecord.vin == VIN).order_by(BatchRecord.seq))) == [
            4,
            1,
        ]


def test_a_tesla_of_another_region_is_sent_home(tmp_path: Path) -> None:
    directory = tmp_path / "directory.txt"
    directory.write_text(f"{VIN} eu\n")
    settings = Settings(
        data_dir=tmp_path / "cn",
        region="cn",
        region_directory=str(directory),
        region_endpoints={"eu": "http://127.0.0.1:9"},
    )
    with Region(settings) as r:
        with pytest.raises(WrongRegion) as e:
            r.fleet.register(VIN, "PAIRCODE1")
        assert e.value.details["home_region"] == "eu"
        with pytest.raises(WrongRegion):
            r.fleet.admit(VIN)
