"""The signal catalogue against the COVESA VSS 6.0 reference, and its own rules."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from carvault.errors import InvalidQuery
from carvault.signals import ARROW_TYPES, CATEGORIES, OVERLAY_BRANCHES, PrivacyClass, catalogue

SHARED = Path(os.environ.get("CARVAULT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))
# The shared reference when present; else the identical MPL-2.0 copy kept in tests/assets/vss/.
VSS_CSV = next(
    p
    for p in (
        SHARED / "vss" / "vss_v6.0_tag_generated.csv",
        Path(__file__).parent / "assets" / "vss" / "vss_v6.0_tag_generated.csv",
    )
    if p.exists()
)


@pytest.fixture(scope="module")
def vss() -> dict[str, dict[str, str]]:
    if not VSS_CSV.exists():
        pytest.fail(f"VSS reference not found at {VSS_CSV}; set CARVAULT_REFERENCE_DIR")
    return {r["Signal"]: r for r in csv.DictReader(VSS_CSV.open(encoding="utf-8"))}


def test_every_vss_signal_matches_the_reference(vss: dict[str, dict[str, str]]) -> None:
    for s in catalogue():
        if s.overlay:
            continue
        ref = vss.get(s.path)
        assert ref is not None, f"{s.path} is not a VSS 6.0 path"
        assert ref["Type"] in {"sensor", "actuator", "attribute"}, s.path
        assert ref["DataType"] == s.datatype, (s.path, ref["DataType"], s.datatype)
        assert ref["Unit"] == s.unit, (s.path, ref["Unit"], s.unit)
        # Our plausibility range must lie within any range VSS declares.
        if ref["Min"]:
            assert s.min is not None and s.min >= float(ref["Min"]), s.path
        if ref["Max"]:
            assert s.max is not None and s.max <= float(ref["Max"]), s.path
        if ref["Allowed"]:
            assert s.allowed is not None and set(s.allowed) <= set(eval(ref["Allowed"])), s.path  # noqa: S307


def test_overlay_signals_are_not_in_vss_and_live_in_the_overlay_branch(vss: dict[str, dict[str, str]]) -> None:
    overlay = [s for s in catalogue() if s.overlay]
    assert overlay
    for s in overlay:
        assert s.path.startswith(tuple(b + "." for b in OVERLAY_BRANCHES)), s.path
        assert s.path not in vss and s.description


def test_catalogue_is_big_enough_and_fully_classified() -> None:
    cat = catalogue()
    assert len(cat) >= 250
    for s in cat:
        assert s.category in CATEGORIES and isinstance(s.privacy, PrivacyClass)
        assert s.datatype in ARROW_TYPES and s.rate_hz in (1, 10)
    needed = [
        "Vehicle.Speed",
        "Vehicle.Chassis.Accelerator.PedalPosition",
        "Vehicle.Chassis.Brake.PedalPosition",
        "Vehicle.EDR.BrakeMasterCylinderPressure",
        "Vehicle.ADAS.ABS.IsEngaged",
        "Vehicle.ADAS.ESC.IsEngaged",
        "Vehicle.EDR.AEB.IsEngaged",
        "Vehicle.Chassis.SteeringWheel.Angle",
        "Vehicle.Acceleration.Longitudinal",
        "Vehicle.Acceleration.Lateral",
        "Vehicle.AngularVelocity.Yaw",
        "Vehicle.Powertrain.Transmission.CurrentGear",
        "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted",
        "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed",
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.CurrentLocation.Longitude",
        "Vehicle.EDR.DeltaV.Longitudinal",
    ]
    for p in needed:
        assert p in cat, p
    assert cat["Vehicle.CurrentLocation.Latitude"].privacy is PrivacyClass.SENSITIVE
    assert cat["Vehicle.Driver.HeartRate"].privacy is PrivacyClass.SENSITIVE


def test_select_by_path_and_branch() -> None:
    cat = catalogue()
    assert [s.path for s in cat.select(["Vehicle.Speed"])] == ["Vehicle.Speed"]
    adas = cat.select(["Vehicle.ADAS"])
    assert adas and all(s.path.startswith("Vehicle.ADAS.") for s in adas)
    with pytest.raises(InvalidQuery):
        cat.select(["Vehicle.Spee"])  # a prefix that is not a branch boundary selects nothing


def test_every_signal_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "signals.md").read_text()
    for s in catalogue():
        assert f"`{s.path}`" in doc, s.path


def test_every_enumeration_lists_its_values_in_the_doc() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "signals.md").read_text()
    table = doc.split("## Enumerations")[1]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    enums = [s for s in catalogue() if s.allowed or s.coded]
    assert len(enums) >= 5 and set(rows) == {s.path for s in enums}
    for s in enums:
        for value in s.allowed or [str(k) for k in s.coded or {}]:
            assert f"`{value}`" in rows[s.path], (s.path, value)


FREE_TEXT = {  # string signals that are not enumerations, and what checks them
    "Vehicle.CarVault.Camera.FrameHash",  # ingest: the frame's SHA-256
    "Vehicle.CarVault.Camera.Redactions",  # ingest: the redaction records
    "Vehicle.CarVault.Camera.Detectors",
    "Vehicle.CarVault.Diagnostics.DTCs",  # ingest: carvault.dtc.parse_dtcs
    "Vehicle.CarVault.Software.Version",
    "Vehicle.CarVault.Software.UpdateVersion",
}


def test_every_text_signal_is_an_enumeration_or_a_checked_record() -> None:
    texts = {s.path for s in catalogue() if s.datatype == "string" and not s.allowed}
    assert texts == FREE_TEXT


def test_every_signal_is_described_in_english_and_chinese() -> None:
    for s in catalogue():
        assert s.description and s.description_zh, s.path
        assert any("\u4e00" <= ch <= "\u9fff" for ch in s.description_zh), s.path
        assert s.describe("zh-CN") == s.description_zh and s.describe("en") == s.description
        assert s.to_json()["description_zh"] == s.description_zh


def test_the_catalogue_covers_the_whole_car() -> None:
    cat = catalogue()
    branches = {
        "Vehicle.Body.Hood",
        "Vehicle.Body.Trunk",
        "Vehicle.Body.Windshield.Front.WasherFluid",
        "Vehicle.Body.Mirrors",
        "Vehicle.Cabin.Door.Row1.DriverSide.Window",
        "Vehicle.Cabin.Sunroof",
        "Vehicle.Cabin.HVAC.Station",
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Brake",
        "Vehicle.Powertrain.TractionBattery.CellVoltage",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort",
        "Vehicle.Service",
        "Vehicle.Diagnostics",
        "Vehicle.CarVault.WarningLamp",
        "Vehicle.CarVault.Software",
    }
    for b in branches:
        assert cat.select([b]), b
    occupancy = [s for s in cat if s.path.endswith(".OccupancyStatus")]
    assert len(occupancy) == 5 and all(s.privacy is not PrivacyClass.TECHNICAL for s in occupancy)
    # Precise coordinates live only in CurrentLocation, which consent and grants coarsen (location.coarsen).
    coordinates = {s.path for s in cat if s.path.endswith(("Latitude", "Longitude"))}
    assert coordinates == {"Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"}
    assert {"diagnostics", "service"} <= {s.category for s in cat}
    on_change = [s for s in cat if s.on_change]
    assert len(on_change) >= 150 and all(s.rate_hz == 1 for s in on_change)
    assert sum(1 for s in cat if s.rate_hz == 10) <= 40  # the 10 Hz set stays small
