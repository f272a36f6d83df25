"""CAN import: candump parsing, vectorised DBC decoding, VSS mapping, the simulator round trip, the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from pathlib import Path

import cantools
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from carvault.cli import app as cli
from carvault.errors import BadRequest, NotFound, UnknownSignal
from carvault.server import BackgroundServer
from carvault.vehicle import can_encode
from carvault.vehicle.can import (
    Frames,
    MessageDecoder,
    decode_with_cantools,
    frame_key,
    import_can,
    load_dbc,
    parse_candump,
    read_candump,
    read_log,
)
from carvault.vehicle.can_mapping import load_mapping, parse_mapping
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.simulator import simulate_day
from tests.conftest import make_owner

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "can"
RAV4_LOG = ASSETS / "comma2k19_rav4_2018-08-02_seg40_bus0.candump.log.gz"
RAV4_DBC = ASSETS / "toyota_new_mc_pt_generated.dbc"
KMH = 3.6


def _csv(name: str) -> np.ndarray:
    with gzip.open(ASSETS / name, "rt") as f:
        rows = list(csv.reader(f))
    return np.array(rows[1:], dtype=np.float64)


def _ms(table: pa.Table) -> np.ndarray:
    return table.column("t").cast(pa.int64()).to_numpy()


def _last_at_or_before(ref_t_s: np.ndarray, ref_v: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(np.round(ref_t_s * 1e6).astype(np.int64), t_ms * 1000, side="right") - 1
    assert (idx >= 0).all()
    return ref_v[idx]


@pytest.fixture(scope="module")
def rav4() -> pa.Table:
    return import_can(RAV4_LOG, dbc=RAV4_DBC, mapping="toyota_rav4").table


@pytest.fixture(scope="module")
def tesla_db() -> cantools.database.can.Database:
    return load_dbc(can_encode.TESLA_DBC)


@pytest.fixture(scope="module")
def drive() -> tuple[pa.Table, float]:
    """A simulated stretch with a sleep in it: the first minute of the day, then the crash and 2 min before it."""
    sim = simulate_day("LRWCANTEST0000001", 3, dt.date(2025, 6, 2), incident=True)
    t = _ms(sim.table)
    crash = next(e.t_ms for e in sim.events if e.kind == "crash")
    a, b = np.searchsorted(t, [crash - 120_000, crash + 20_000])
    table = pa.concat_tables([sim.table.slice(0, 600), sim.table.slice(a, b - a)])
    assert (np.diff(_ms(table)) > 1000).sum() == 1
    return table, sim.vehicle.gear_ratio


# ------------------------------------------------------------------------------------ parsing
def test_candump_parse_matches_the_text() -> None:
    frames = Frames.concat(list(read_log(RAV4_LOG)))
    with gzip.open(RAV4_LOG, "rt") as f:
        lines = f.read().splitlines()
    assert len(frames) == len(lines) == 53_800
    for i in (0, 1, 17, 4000, 31_337, len(lines) - 1):
        stamp, channel, frame = lines[i].split()
        ident, data = frame.split("#")
        assert frames.t_us[i] == int(stamp[1:-1].replace(".", ""))
        assert frames.key[i] == int(ident, 16) and frames.payload(i) == bytes.fromhex(data)


def test_parse_handles_extended_ids_short_frames_remote_frames_and_blank_lines() -> None:
    text = (
        b"(1700000000.5) vcan1 18DAF110#0201\r\n\n"
        b"(1700000000.000001) can0 123#\n"
        b"(1700000000.123456789) can0 7FF#R\n"
        b"(1700000001.000000) can0 0AA#0102030405060708\n"
    )
    f = parse_candump(text)
    assert len(f) == 3  # the remote frame carries no data
    assert f.key[0] == frame_key(0x18DAF110, True) and f.dlc[0] == 2 and f.payload(0) == b"\x02\x01"
    assert f.t_us.tolist() == [1_700_000_000_500_000, 1_700_000_000_000_001, 1_700_000_001_000_000]
    assert f.dlc[1] == 0 and f.payload(2) == bytes(range(1, 9))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"garbage here", "not a candump -L line"),
        (b"(1700000000.000000) can0 0AA#01020", "whole bytes"),
        (b"(1700000000.000000) can0 0AA#01020G", "hex digits"),
        (b"(1700000000.000000) can0 8AA#0102", "at most 7FF"),
        (b"(1700000000.000000) can0 0AA##10102", "CAN FD"),
    ],
)
def test_a_malformed_line_is_reported_with_its_number(tmp_path: Path, line: bytes, reason: str) -> None:
    good = b"(1700000000.000000) can0 0AA#0102030405060708\n"
    path = tmp_path / "bad.log"
    path.write_bytes(good * 500 + line + b"\n" + good)
    with pytest.raises(BadRequest) as e:
        for _ in read_candump(path, chunk_bytes=4096):  # the bad line is several chunks in
            pass
    assert f"{path}:501:" in e.value.message and reason in e.value.message
    assert e.value.details["line"] == 501


def test_relative_clock_needs_a_start_time(tmp_path: Path) -> None:
    path = tmp_path / "boot.log"
    path.write_bytes(b"(12.500000) can0 0AA#00\n(12.600000) can0 0AA#01\n")
    with pytest.raises(BadRequest, match="--start"):
        list(read_log(path))
    f = Frames.concat(list(read_log(path, start_us=1_700_000_000_000_000)))
    assert f.t_us.tolist() == [1_700_000_000_000_000, 1_700_000_000_100_000]


def test_python_can_formats_read_the_same_frames(tmp_path: Path) -> None:
    import can

    frames = Frames.concat(list(read_log(RAV4_LOG))).take(np.arange(3000))
    path = tmp_path / "rav4.blf"
    with can.BLFWriter(str(path)) as w:
        for i in range(len(frames)):
            w.on_message_received(
                can.Message(
                    timestamp=frames.t_us[i] / 1e6,
                    arbitration_id=int(frames.key[i]),
                    is_extended_id=False,
                    data=frames.payload(i),
                )
            )
    got = Frames.concat(list(read_log(path)))
    assert np.array_equal(got.key, frames.key) and np.array_equal(got.data, frames.data)
    assert np.abs(got.t_us - frames.t_us).max() <= 1  # BLF keeps times in ns; floats lose < 1 µs


# ------------------------------------------------------------------------------------ decoding
def _compare_with_cantools(db: cantools.database.can.Database, frames: Frames) -> int:
    checked = 0
    for msg in db.messages:
        sel = np.flatnonzero(frames.key == frame_key(msg.frame_id, msg.is_extended_frame))[:400]
        if not len(sel):
            continue
        sub = frames.take(sel)
        names = [s.name for s in msg.signals]
        ours, ref = MessageDecoder(msg).decode(sub), decode_with_cantools(msg, sub, names)
        for n in names:
            np.testing.assert_allclose(ours[n], ref[n], rtol=0, atol=1e-9, err_msg=f"{msg.name}.{n}")
            checked += int((~np.isnan(ref[n])).sum())
    return checked


def test_vectorised_decoding_equals_cantools_on_the_real_log() -> None:
    frames = Frames.concat(list(read_log(RAV4_LOG)))
    assert _compare_with_cantools(load_dbc(RAV4_DBC), frames) > 30_000


def test_vectorised_decoding_equals_cantools_on_random_tesla_frames(tesla_db: cantools.database.can.Database) -> None:
    rng = np.random.default_rng(5)
    blocks = []
    for msg in tesla_db.messages:
        n = 300
        data = rng.integers(0, 2**64, n, dtype=np.uint64)
        dlc = np.full(n, msg.length, np.uint8)
        dlc[:40] = rng.integers(0, msg.length, 40)  # truncated frames: signals past the end are absent
        if msg.is_multiplexed():  # VCFRONT_LVPowerState: the multiplexer selects 0 or 1
            data = (data & ~np.uint64(0x1F)) | rng.integers(0, 2, n).astype(np.uint64)
        data &= np.array([(1 << (8 * int(d))) - 1 for d in dlc], np.uint64)
        key = np.full(n, frame_key(msg.frame_id, msg.is_extended_frame), np.uint32)
        blocks.append(Frames(np.arange(n, dtype=np.int64), key, dlc, data))
    assert any(m.is_multiplexed() for m in tesla_db.messages)
    assert _compare_with_cantools(tesla_db, Frames.concat(blocks)) > 20_000


def test_vectorised_encoding_equals_cantools(tesla_db: cantools.database.can.Database) -> None:
    rng = np.random.default_rng(7)
    for msg in tesla_db.messages:
        if msg.is_multiplexed():
            continue
        values: dict[str, np.ndarray] = {}
        for s in msg.signals:
            lo, hi = (-(1 << (s.length - 1)), (1 << (s.length - 1)) - 1) if s.is_signed else (0, (1 << s.length) - 1)
            raw = rng.integers(lo, hi + 1, 50)
            phys = raw * s.scale + s.offset
            if s.minimum is not None and s.maximum is not None and s.minimum < s.maximum:
                phys = np.clip(phys, s.minimum, s.maximum)
                phys = np.round((phys - s.offset) / s.scale) * s.scale + s.offset
            values[s.name] = phys
        ours = can_encode.pack_signals(msg, values, 50)
        for i in range(50):
            ref = msg.encode({k: float(v[i]) for k, v in values.items()}, strict=False)
            assert int(ours[i]).to_bytes(8, "little")[: msg.length] == ref, msg.name


# ------------------------------------------------------------------------------------ the real RAV4 log
def test_rav4_speed_matches_comma_reference(rav4: pa.Table) -> None:
    ref = _csv("comma2k19_rav4_seg40_can_decoded_reference.csv.gz")
    t = _ms(rav4)
    assert rav4.num_rows == 601 and t[0] == 1_533_226_488_500 and (np.diff(t) == 100).all()
    speed = rav4.column("Vehicle.Speed").to_numpy()
    wheel = rav4.column("Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed").to_numpy()
    # Comma's car speed is the mean of the wheel speeds, in m/s; the DBC resolution is 0.01 km/h, and the
    # catalogue's 0.01 km/h rounding adds at most half of that.
    assert np.abs(speed - _last_at_or_before(ref[:, 0], ref[:, 1], t) * KMH).max() <= 0.01
    assert np.abs(wheel - _last_at_or_before(ref[:, 0], ref[:, 2], t) * KMH).max() <= 0.01
    assert 60 < speed.max() < 160  # highway 280


@pytest.mark.parametrize(
    ("path", "ref_column"),
    [
        ("Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed", 2),
        ("Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed", 3),
        ("Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed", 4),
        ("Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed", 5),
    ],
)
def test_rav4_every_wheel_speed_matches_comma_reference(rav4: pa.Table, path: str, ref_column: int) -> None:
    ref = _csv("comma2k19_rav4_seg40_can_decoded_reference.csv.gz")
    t = _ms(rav4)
    wheel = rav4.column(path).to_numpy()
    assert np.abs(wheel - _last_at_or_before(ref[:, 0], ref[:, ref_column], t) * KMH).max() <= 0.01
    others = [c for c in range(2, 6) if c != ref_column]
    # Each wheel is told apart from the others: on this drive they differ by more than the tolerance.
    for c in others:
        assert np.abs(wheel - _last_at_or_before(ref[:, 0], ref[:, c], t) * KMH).max() > 0.05, (path, c)


def test_rav4_longitudinal_acceleration_follows_the_speed(rav4: pa.Table) -> None:
    """The stability controller's G sensor against the slope of the speed, on the real drive."""
    from carvault.vehicle.edr import speed_acceleration

    acc = rav4.column("Vehicle.Acceleration.Longitudinal").to_numpy(zero_copy_only=False).astype(np.float64)
    slope = speed_acceleration(_ms(rav4), rav4.column("Vehicle.Speed").to_numpy().astype(np.float64))
    # The G sensor is instantaneous, the slope spans the last second: compare each with the G sensor's mean.
    window = np.convolve(acc, np.ones(10) / 10, mode="full")[: len(acc)]
    both = ~np.isnan(slope)
    both[:10] = False
    assert both.sum() > 550 and acc.min() < -2.0
    assert np.corrcoef(window[both], slope[both])[0, 1] > 0.95
    assert np.abs(window[both] - slope[both]).mean() < 0.2


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling", {False}),
        ("Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling", {False}),
        ("Vehicle.Powertrain.CombustionEngine.Speed", None),
        ("Vehicle.ADAS.CruiseControl.IsEnabled", {True}),
        ("Vehicle.ADAS.CruiseControl.SpeedSet", {67.0, 69.0, 71.0, 72.0, 74.0, 76.0, 78.0}),
        ("Vehicle.ADAS.TCS.IsEnabled", {True}),
        ("Vehicle.ADAS.ESC.IsEnabled", {True}),
        ("Vehicle.Chassis.ParkingBrake.IsEngaged", {False}),
        ("Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen", {False}),
        ("Vehicle.Cabin.Door.Row2.DriverSide.IsOpen", {False}),
        ("Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen", {False}),
        ("Vehicle.Body.Lights.Beam.High.IsOn", {False}),
        ("Vehicle.Body.Lights.Fog.Front.IsOn", {False}),
        ("Vehicle.Body.Lights.Parking.IsOn", {False}),
        ("Vehicle.Body.Lights.Running.IsOn", {False}),
    ],
)
def test_rav4_signals_the_log_carries_are_kept(rav4: pa.Table, path: str, values: set[object] | None) -> None:
    """Signals the DBC decodes from this log and VSS has a home for are in the import, with the log's values."""
    col = rav4.column(path).drop_null()
    assert len(col) > 0, path
    if values is None:  # engine speed: a running engine on the highway, in rpm
        x = col.to_numpy()
        assert x.min() > 900 and x.max() < 2600
    else:
        assert set(col.to_pylist()) <= values and len(set(col.to_pylist())) >= 1, path


def test_rav4_steering_matches_comma_reference(rav4: pa.Table) -> None:
    ref = _csv("comma2k19_rav4_seg40_steering_angle_reference.csv.gz")
    t = _ms(rav4)
    angle = rav4.column("Vehicle.Chassis.SteeringWheel.Angle").to_numpy()
    # The catalogue keeps whole degrees (the DBC's fine part has 0.1 degree steps).
    assert np.abs(angle - _last_at_or_before(ref[:, 0], ref[:, 1], t)).max() <= 0.5 + 1e-9


def test_rav4_state_signals_only_on_whole_seconds(rav4: pa.Table) -> None:
    t = _ms(rav4)
    gear = rav4.column("Vehicle.Powertrain.Transmission.SelectedGear")
    valid = gear.is_valid().to_numpy(zero_copy_only=False)
    assert not valid[t % 1000 != 0].any()
    # Every whole second has a gear except 16:14:49.000, before the log's first GEAR_PACKET (49.24).
    assert (t[(t % 1000 == 0) & ~valid] == [1_533_226_489_000]).all() and valid.sum() == 59
    assert set(gear.drop_null().to_pylist()) == {127}  # drive
    odo = rav4.column("Vehicle.TraveledDistance").drop_null().to_numpy()
    assert 15_589 * 1609 <= odo.min() <= odo.max() <= 15_591 * 1610  # miles on the dashboard, metres in VSS
    assert rav4.column("Vehicle.Body.Lights.Brake.IsActive").drop_null().unique().to_pylist() in (
        ["INACTIVE", "ACTIVE"],
        ["ACTIVE", "INACTIVE"],
    )


def test_the_opendbc_package_generates_the_same_rav4_dbc() -> None:
    ours, theirs = load_dbc(RAV4_DBC), load_dbc("opendbc:toyota_new_mc_pt_generated")
    assert [m.name for m in ours.messages] == [m.name for m in theirs.messages]


# ------------------------------------------------------------------------------------ the Tesla round trip
def test_simulated_drive_survives_encode_and_import(tmp_path: Path, drive: tuple[pa.Table, float]) -> None:
    table, gear_ratio = drive
    log = tmp_path / "drive.candump.log.gz"
    can_encode.write_candump(can_encode.simulate_frames(table, gear_ratio=gear_ratio), log)
    got = import_can(log, mapping="tesla_model3_party")
    imported = got.table
    # Same rows: nothing invented while the car slept, before the first frame or after the last.
    assert np.array_equal(_ms(imported), _ms(table))
    assert got.unknown_ids == {} and not any(got.out_of_range.values())
    tolerance = {  # half the DBC resolution, plus half the catalogue's when it rounds again
        "Vehicle.Speed": 0.04 + 0.005,
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed": 0.02 + 0.005,
        "Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed": 0.02 + 0.005,
        "Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed": 0.02 + 0.005,
        "Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed": 0.02 + 0.005,
        "Vehicle.Powertrain.ElectricMotor.Torque": 1.0,
    }
    for path in can_encode.ROUNDTRIP_PATHS:
        a, b = table.column(path), imported.column(path)
        assert a.is_null().equals(b.is_null()), path
        if path == "Vehicle.Powertrain.ElectricMotor.Speed":
            # The mapping assumes a Model 3's 9.04 axle ratio; the simulated car has its own.
            x, y = a.drop_null().to_numpy(), b.drop_null().to_numpy()
            np.testing.assert_allclose(y, x * 9.04 / gear_ratio, atol=1.5 * 9.04, err_msg=path)
        elif path in tolerance:
            diff = np.abs(a.drop_null().to_numpy().astype(float) - b.drop_null().to_numpy().astype(float))
            assert diff.max() <= tolerance[path] + 1e-4, path
        else:
            assert a.equals(b), path
    for path in ("Vehicle.ADAS.ABS.IsEngaged", "Vehicle.EDR.AEB.IsEngaged"):
        assert imported.column(path).to_pylist().count(True) >= 5  # the scripted incident is in the log


def test_a_silent_message_goes_stale_after_one_second(
    tmp_path: Path, drive: tuple[pa.Table, float], tesla_db: cantools.database.can.Database
) -> None:
    table, gear_ratio = drive
    frames = can_encode.simulate_frames(table.slice(0, 300), gear_ratio=gear_ratio)
    speed_key = frame_key(tesla_db.get_message_by_name("DI_speed").frame_id, False)
    cut = int(frames.t_us[0]) + 10_000_000  # DI_speed falls silent 10 s in; the rest of the bus goes on
    frames = frames.take(~((frames.key == speed_key) & (frames.t_us > cut)))
    log = tmp_path / "silent.log"
    can_encode.write_candump(frames, log)
    imported = import_can(log, mapping="tesla_model3_party").table
    t = _ms(imported) * 1000
    speed = imported.column("Vehicle.Speed")
    last = cut - cut % 20_000
    assert speed.is_null().to_numpy(zero_copy_only=False).tolist() == (t - last > 1_000_000).tolist()
    assert imported.column("Vehicle.Chassis.SteeringWheel.Angle").null_count == 0


# ------------------------------------------------------------------------------------ mapping errors
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def test_mapping_to_an_unknown_vss_path_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '[signals."Vehicle.Speeed"]\nmessage = "DI_speed"\nsignal = "DI_vehicleSpeed"\n')
    with pytest.raises(UnknownSignal, match=r"'Vehicle.Speeed' is not a VSS path.*did you mean Vehicle.Speed"):
        load_mapping(path)


def test_mapping_a_signal_the_dbc_lacks_is_refused(tmp_path: Path, tesla_db: cantools.database.can.Database) -> None:
    path = _write(tmp_path, '[signals."Vehicle.Speed"]\nmessage = "DI_speed"\nsignal = "DI_vehicleSped"\n')
    with pytest.raises(
        BadRequest,
        match=r"DI_speed in .* has no signal 'DI_vehicleSped' \(did you mean "
        r"DI_vehicleSpeed\?\)",
    ):
        load_mapping(path).bind(tesla_db, source="tesla.dbc")
    path = _write(tmp_path, '[signals."Vehicle.Speed"]\nexpr = "NoSuchMessage.Speed * 2"\n')
    with pytest.raises(BadRequest, match="has no message 'NoSuchMessage'"):
        load_mapping(path).bind(tesla_db)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('signal = "DI_gear"\nmap = { DI_GEAR_X = 1 }', "has no value named 'DI_GEAR_X'"),
        ('signal = "DI_vehicleSpeed"\nunit = "mm"', "cannot be converted"),
        ("expr = \"__import__('os')\"", "is not allowed"),
        ('expr = "DI_vehicleSpeed +"', "cannot parse"),
        ('signal = "DI_vehicleSpeed"\nrate_hz = 3', "rate_hz"),
        ('signal = "DI_vehicleSpeed"\nscael = 2', "unknown keys"),
        ('signal = "DI_vehicleSpeed"\nnull = ["NOPE"]', "not a value of any input"),
    ],
)
def test_bad_mapping_rules_are_explained(body: str, error: str, tesla_db: cantools.database.can.Database) -> None:
    import tomllib

    with pytest.raises(BadRequest, match=error):
        path = "Vehicle.Powertrain.Transmission.SelectedGear" if "DI_gear" in body else "Vehicle.Speed"
        parse_mapping(tomllib.loads(f'[signals."{path}"]\n{body}\n')).bind(tesla_db)


def test_a_log_from_another_car_is_a_clear_error() -> None:
    with pytest.raises(BadRequest, match="none of the 53,800 frames .* right DBC, and the right bus"):
        import_can(RAV4_LOG, mapping="tesla_model3_party")


def test_missing_dbc_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        import_can(RAV4_LOG, dbc=tmp_path / "nope.dbc", mapping="toyota_rav4")
    with pytest.raises(NotFound, match="opendbc has no DBC named 'tesla_model9'"):
        load_dbc("opendbc:tesla_model9")
    with pytest.raises(NotFound, match="shipped mappings"):
        load_mapping("no_such_car")


def test_units_are_converted_to_the_catalogue_unit(tmp_path: Path, tesla_db: cantools.database.can.Database) -> None:
    from carvault.signals import catalogue
    from carvault.vehicle.can_mapping import convert_units, known_unit

    assert all(known_unit(sig.unit) for sig in catalogue())
    assert convert_units(np.array([10.0]), "m/s", "km/h")[0] == pytest.approx(36.0)
    assert convert_units(np.array([212.0]), "degF", "Celsius")[0] == pytest.approx(100.0)
    assert convert_units(np.array([60.0]), "rpm", "degrees/s")[0] == pytest.approx(360.0)
    msg = tesla_db.get_message_by_name("DAS_status2")  # DAS_accSpeedLimit is in mph, 0.4 mph steps
    n = 30
    data = can_encode.pack_signals(msg, {"DAS_accSpeedLimit": np.full(n, 50.0)}, n)
    t_us = 1_700_000_000_000_000 + np.arange(n, dtype=np.int64) * 100_000
    key = np.full(n, frame_key(msg.frame_id, False), np.uint32)
    log = tmp_path / "mph.log"
    can_encode.write_candump(Frames(t_us, key, np.full(n, msg.length, np.uint8), data), log)
    mapping = _write(
        tmp_path,
        '[mapping]\ndbc = "opendbc:tesla_model3_party"\n'
        '[signals."Vehicle.Speed"]\nsignal = "DAS_accSpeedLimit"\n'
        '[signals."Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed"]\nsignal = "DAS_accSpeedLimit"\n'
        'scale = 0.44704\nunit = "m/s"\n',
    )
    table = import_can(log, mapping=mapping).table
    assert table.num_rows == n
    for path in ("Vehicle.Speed", "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed"):  # 50 mph, two ways
        np.testing.assert_allclose(table.column(path).to_numpy(), 80.47, atol=1e-4)


def test_expressions_use_three_valued_logic(tesla_db: cantools.database.can.Database) -> None:
    import tomllib

    m = parse_mapping(
        tomllib.loads(
            '[mapping]\nnull_choices = ["INVALID"]\n'
            '[signals."Vehicle.Body.Lights.Brake.IsActive"]\n'
            'expr = \'ESP_brakeLamp == "ON" or DI_brakePedalState == "ON"\'\n'
            'map = { "true" = "ACTIVE", "false" = "INACTIVE" }\n'
        )
    ).bind(tesla_db)
    lamp = np.array([1, 0, 0, np.nan, np.nan])
    pedal = np.array([2, 1, 0, 1, 0])  # 2 is INVALID: unknown
    values = {("ESP_status", "ESP_brakeLamp"): lamp, ("DI_systemStatus", "DI_brakePedalState"): pedal}
    rule = m.rules[0]
    v, ok = rule.value(lambda key: np.where(np.isin(values[key], rule.nulls.get(key, [])), np.nan, values[key]))
    # true or unknown = true; false or unknown = unknown; unknown or false = unknown
    assert np.where(ok, v, -1).tolist() == [1.0, 1.0, 0.0, 1.0, -1.0]


# ------------------------------------------------------------------------------------ the command line
def test_import_can_cli_end_to_end(
    tmp_path: Path, server: BackgroundServer, vehicle: VehicleIdentity, drive: tuple[pa.Table, float]
) -> None:
    table, gear_ratio = drive
    # Recent times, so no retention rule ever treats the import as old.
    shift = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(
        hour=0, minute=0, second=0, microsecond=0
    ).timestamp() * 1000
    t = _ms(table)
    moved = table.set_column(0, "t", pa.array(t - t[0] + int(shift), pa.int64()).cast(table.schema.field("t").type))
    log = tmp_path / "tesla.candump.log"
    can_encode.write_candump(can_encode.simulate_frames(moved, gear_ratio=gear_ratio), log)
    folder = tmp_path / "vehicles" / vehicle.vin

    bad = CliRunner().invoke(
        cli,
        [
            "import-can",
            str(log),
            "--mapping",
            "tesla_model3_party",
            "--vehicle-dir",
            str(folder),
            "--dbc",
            str(tmp_path / "missing.dbc"),
            "--endpoint",
            server.url,
        ],
    )
    assert bad.exit_code == 1 and "does not exist" in " ".join(bad.output.split())

    out = CliRunner().invoke(
        cli,
        [
            "import-can",
            str(log),
            "--mapping",
            "tesla_model3_party",
            "--vehicle-dir",
            str(folder),
            "--endpoint",
            server.url,
            "--batch-seconds",
            "60",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "uploaded" in out.output and not list((folder / "spool").glob("*.cvb"))

    expected = import_can(log, mapping="tesla_model3_party").table
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        owner = make_owner(http)
        r = http.post(
            "/api/v1/vehicles/claim",
            headers=owner.headers,
            json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
        )
        assert r.status_code == 201, r.text
        t = _ms(expected)
        r = http.get(
            f"/api/v1/vehicles/{vehicle.vin}/telemetry",
            headers=owner.headers,
            params={
                "start": int(t[0]),
                "end": int(t[-1]) + 1,
                "format": "parquet",
                "signals": ",".join(expected.column_names[1:]),
            },
        )
        assert r.status_code == 200, r.text
        # The car's event recorder ran on the imported drive: the scripted incident is on record.
        kinds = {e["kind"] for e in http.get(f"/api/v1/vehicles/{vehicle.vin}/events", headers=owner.headers).json()}
        assert kinds & {"crash", "abs", "aeb", "hard_braking"}
    got = pq.read_table(io.BytesIO(r.content))
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        assert got.column(name).equals(expected.column(name)), name


# ------------------------------------------------------------------------------------ the benchmark
def test_the_doc_describes_every_shipped_mapping() -> None:
    from carvault.vehicle.can_mapping import shipped_mappings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "can-import.md").read_text()
    assert set(shipped_mappings()) == {"tesla_model3_party", "toyota_rav4"}
    for name in shipped_mappings():
        assert f"`{name}`" in doc
        section = doc.split(f"### `{name}`")[1].split("###")[0]
        for rule in load_mapping(name).rules:
            assert f"`{rule.path}`" in section, (name, rule.path)
