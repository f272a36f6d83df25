"""The Fleet Telemetry schema: our .proto, the committed module generated from it, Tesla's wire numbers, and the
mapping's agreement with the catalogue's coverage table (src/carvault/data/tesla_fields.csv)."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from carvault.ingest.fleet_telemetry import FleetMapping
from carvault.protocol.fleet_telemetry import vehicle_data_pb2 as pb
from carvault.signals import catalogue

PACKAGE = Path(pb.__file__).parent
PROTO = (PACKAGE / "vehicle_data.proto").read_text()


def _block(kind: str, name: str) -> str:
    m = re.search(rf"^{kind} {name} {{\n(.*?)^}}", PROTO, re.S | re.M)
    assert m, name
    return m.group(1)


def test_the_committed_module_has_every_field_of_the_proto() -> None:
    fields = dict(re.findall(r"^\s+(\w+) = (\d+);", _block("enum", "Field"), re.M))
    assert len(fields) >= 260
    assert {v.name: v.number for v in pb.Field.DESCRIPTOR.values} == {k: int(n) for k, n in fields.items()}
    for message in ("Value", "Datum", "Payload", "LocationValue", "Doors"):
        declared = dict(re.findall(r"^\s+(?:repeated )?[\w.]+ (\w+) = (\d+);", _block("message", message), re.M))
        got = {f.name: f.number for f in getattr(pb, message).DESCRIPTOR.fields}
        assert got == {k: int(n) for k, n in declared.items()}, message


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc (Debian protobuf-compiler) is not installed")
def test_regenerating_gives_the_committed_descriptor(tmp_path: Path) -> None:
    out = [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    subprocess.run(["protoc", f"--proto_path={PACKAGE}", *out, "vehicle_data.proto"], check=True)
    for name in ("vehicle_data_pb2.py", "vehicle_data_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), f"{name}: run scripts/gen_fleet_protos.py"
    assert importlib.util.find_spec("carvault.protocol.fleet_telemetry.vehicle_data_pb2") is not None


# Numbers Tesla's cars put on the wire (teslamotors/fleet-telemetry protos/vehicle_data.proto), pinned here so that a
# slip in our own schema file cannot pass unnoticed.
TESLA_FIELDS = {
    "VehicleSpeed": 4, "Odometer": 5, "PackVoltage": 6, "PackCurrent": 7, "Soc": 8, "Gear": 10, "PedalPosition": 12,
    "Location": 21, "GpsHeading": 23, "RatedRange": 32, "ChargeLimitSoc": 38, "EstBatteryRange": 40,
    "BatteryLevel": 42, "DoorState": 58, "TpmsPressureFl": 69, "TpmsPressureRr": 72, "InsideTemp": 85,
    "OutsideTemp": 86, "DriverSeatBelt": 94, "PassengerSeatBelt": 95, "DiTorqueActualR": 145, "DiStatorTempR": 18,
    "DetailedChargeState": 179, "LightsHazardsActive": 239, "LightsTurnSignal": 240, "LightsHighBeams": 241,
    "SelfDrivingMilesSinceReset": 259,
}  # fmt: skip
TESLA_VALUE_MEMBERS = {
    "string_value": 1, "int_value": 2, "long_value": 3, "float_value": 4, "double_value": 5, "boolean_value": 6,
    "location_value": 7, "shift_state_value": 9, "invalid": 10, "buckle_status_value": 16, "door_value": 21,
    "detailed_charge_state_value": 32, "turn_signal_state_value": 52,
}  # fmt: skip


def test_wire_numbers_are_teslas() -> None:
    assert {k: pb.Field.Value(k) for k in TESLA_FIELDS} == TESLA_FIELDS
    assert {f.name: f.number for f in pb.Value.DESCRIPTOR.fields} == TESLA_VALUE_MEMBERS
    assert [f.number for f in pb.Payload.DESCRIPTOR.fields] == [1, 2, 3, 4]


def test_a_record_encoded_by_hand_reads_as_tesla_means_it() -> None:
    # Payload{data: [Datum{key: VehicleSpeed(4), value: {float_value(4): 2.0}}], vin(3): "V"}, by the wire rules:
    # Datum = 08 04 (key) 12 05 25 00000040 (value: field 4, fixed32 2.0f); Payload = 0a 09 <datum> 1a 01 'V'.
    raw = bytes.fromhex("0a090804120525000000401a0156")
    p = pb.Payload.FromString(raw)
    assert p.vin == "V" and p.data[0].key == pb.VehicleSpeed and p.data[0].value.float_value == 2.0
    assert p.SerializeToString() == raw


def test_the_mapping_agrees_with_the_catalogue_coverage_table() -> None:
    text = resources.files("carvault").joinpath("data/tesla_fields.csv").read_text("utf-8")
    coverage = {row["field"]: row for row in csv.DictReader(text.splitlines())}
    assert len(coverage) >= 260
    mapping = FleetMapping.load(catalogue())
    for rule in mapping.rules:
        row = coverage[rule.field]
        assert int(row["number"]) == rule.number, rule.field
        assert rule.signal in row["paths"].split(), (rule.field, rule.signal, row["paths"])
        if row["tesla_unit"] and rule.kind == "number":
            assert row["tesla_unit"] == rule.tesla_unit, rule.field
