"""The simulator's drives as CAN frames: VSS table -> DBC messages -> candump ``-L`` text.

This is the import path run backwards, so simulate -> encode -> import can be checked end to end, and
it makes large realistic logs for the import benchmark. A ``MessagePlan`` says how often a message is
sent and how each of its signals follows from the simulated car (physical values); the frames are
packed with shifts and masks from the cantools signal definitions, all frames of a message at once
(``pack_signals``; the tests compare it with ``cantools`` ``encode_message``). The plan for the Tesla
Model 3 party bus is independent of the mapping file, so a wrong mapping shows up as a mismatch.

Timing: a message of period p <= 100 ms is sent at every simulated row (every 100 ms while the car is
awake) and p apart until the next row, holding that row's values; nothing is sent while the car sleeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.vehicle.can import Frames, frame_key, load_dbc

TESLA_DBC = "opendbc:tesla_model3_party"
IBST_FULL_STROKE_MM = 40.0  # input-rod travel taken as 100 % brake pedal (the mapping's scale = 100 / 40)
BENCH_VIN = "LRWCANBENCH000001"
BENCH_DAY = dt.date(2025, 6, 2)
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class MessagePlan:
    """How one DBC message is produced from the simulator's columns."""

    message: str
    period_ms: int
    signals: dict[str, Callable[[Columns], np.ndarray]]  # physical values per row; NaN -> "not available"
    counter: str | None = None
    checksum: str | None = None  # a Tesla-style additive checksum signal


# ------------------------------------------------------------------------------------------ packing
def _raw_limits(sig: Any) -> tuple[int, int]:
    if sig.is_signed:
        return -(1 << (sig.length - 1)), (1 << (sig.length - 1)) - 1
    return 0, (1 << sig.length) - 1


def _not_available(sig: Any) -> int:
    """The raw value a signal sends when it has no value: its SNA/INVALID code if it has one, else 0."""
    for raw, label in (sig.choices or {}).items():
        if str(label) == "SNA" or str(label).endswith("_SNA"):
            return int(raw)
    return 0


def _place(sig: Any) -> tuple[int, bool]:
    """(least significant bit in the little- or big-endian 64-bit view, big endian?)."""
    if sig.byte_order == "little_endian":
        return sig.start, False
    msb = (7 - sig.start // 8) * 8 + sig.start % 8
    return msb - sig.length + 1, True


def pack_signals(message: Any, values: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Payloads (``Frames.data`` layout) with physical ``values`` per signal; missing signals send raw 0."""
    le = np.zeros(n, np.uint64)
    be = np.zeros(n, np.uint64)
    for sig in message.signals:
        if sig.name not in values:
            continue
        phys = np.asarray(values[sig.name], np.float64)
        lo, hi = _raw_limits(sig)
        if sig.minimum is not None and sig.maximum is not None and sig.minimum < sig.maximum:
            phys = np.clip(phys, sig.minimum, sig.maximum)
        with np.errstate(invalid="ignore"):
            raw = np.round((phys - float(sig.offset)) / float(sig.scale))
        raw = np.where(np.isnan(raw), _not_available(sig), np.clip(raw, lo, hi)).astype(np.int64)
        bits = raw.astype(np.uint64) & np.uint64((1 << sig.length) - 1)
        lsb, big = _place(sig)
        if big:
            be |= bits << np.uint64(lsb)
        else:
            le |= bits << np.uint64(lsb)
    return le | be.byteswap()


def tesla_checksum(key: int, data: np.ndarray, length: int, sig: Any) -> np.ndarray:
    """Tesla's checksum: ID low byte + ID high byte + every other payload byte, modulo 256."""
    by = data.view(np.uint8).reshape(-1, 8)[:, :length].astype(np.int64)
    byte = sig.start // 8
    total = by.sum(axis=1) - by[:, byte] + (key & 0xFF) + ((key >> 8) & 0xFF)
    return (total & 0xFF).astype(np.uint64)


# --------------------------------------------------------------------------------------- the Tesla plan
def _choice(db: Any, message: str, signal: str, name: str) -> float:
    sig = db.get_message_by_name(message).get_signal_by_name(signal)
    for raw, label in sig.choices.items():
        if str(label) == name:
            return float(raw)
    raise KeyError(f"{message}.{signal} has no value {name}")


def tesla_model3_party_plan(db: Any) -> list[MessagePlan]:
    """How a Tesla Model 3 would put the simulated car on its party bus (opendbc's tesla_model3_party.dbc)."""

    def c(message: str, signal: str, name: str) -> float:
        return _choice(db, message, signal, name)

    def pick(cond: np.ndarray, yes: float, no: float, known: np.ndarray | None = None) -> np.ndarray:
        out = np.where(cond, yes, no)
        return out if known is None else np.where(known, out, np.nan)

    def gear(col: Columns) -> np.ndarray:
        g = col["Vehicle.Powertrain.Transmission.SelectedGear"]
        out = np.full(len(g), c("DI_systemStatus", "DI_gear", "DI_GEAR_INVALID"))
        for vss, name in ((126, "DI_GEAR_P"), (127, "DI_GEAR_D"), (-1, "DI_GEAR_R"), (0, "DI_GEAR_N")):
            out[g == vss] = c("DI_systemStatus", "DI_gear", name)
        return out

    def pedal_on(col: Columns) -> np.ndarray:
        return col["Vehicle.Chassis.Brake.PedalPosition"] > 0

    speed = "Vehicle.Speed"
    return [
        MessagePlan(
            "DI_speed",
            20,
            {
                "DI_vehicleSpeed": lambda col: col[speed],
                "DI_uiSpeed": lambda col: np.round(np.abs(col[speed])),
                "DI_uiSpeedUnits": lambda col: np.full(
                    len(col[speed]), c("DI_speed", "DI_uiSpeedUnits", "DI_SPEED_KPH")
                ),
            },
            counter="DI_speedCounter",
            checksum="DI_speedChecksum",
        ),
        MessagePlan(
            "DI_systemStatus",
            20,
            {
                "DI_accelPedalPos": lambda col: col["Vehicle.Chassis.Accelerator.PedalPosition"],
                "DI_brakePedalState": lambda col: pick(
                    pedal_on(col),
                    c("DI_systemStatus", "DI_brakePedalState", "ON"),
                    c("DI_systemStatus", "DI_brakePedalState", "OFF"),
                ),
                "DI_gear": gear,
                "DI_systemState": lambda col: np.full(
                    len(col[speed]), c("DI_systemStatus", "DI_systemState", "DI_SYS_ENABLE")
                ),
            },
            counter="DI_systemStatusCounter",
            checksum="DI_systemStatusChecksum",
        ),
        MessagePlan(
            "DI_torque",
            10,
            {
                "DI_torqueActual": lambda col: col["Vehicle.Powertrain.ElectricMotor.Torque"],
                "DI_torqueCommand": lambda col: col["Vehicle.Powertrain.ElectricMotor.Torque"],
                "DI_axleSpeed": lambda col: col["axle_rpm"],
            },
            counter="DI_torqueCounter",
            checksum="DI_torqueChecksum",
        ),
        MessagePlan(
            "IBST_status",
            20,
            {
                "IBST_sInputRodDriver": lambda col: (
                    col["Vehicle.Chassis.Brake.PedalPosition"] * IBST_FULL_STROKE_MM / 100
                ),
                "IBST_driverBrakeApply": lambda col: pick(
                    pedal_on(col),
                    c("IBST_status", "IBST_driverBrakeApply", "DRIVER_APPLYING_BRAKES"),
                    c("IBST_status", "IBST_driverBrakeApply", "BRAKES_NOT_APPLIED"),
                ),
                "IBST_iBoosterStatus": lambda col: np.full(
                    len(col[speed]), c("IBST_status", "IBST_iBoosterStatus", "IBOOSTER_READY")
                ),
            },
            counter="IBST_statusCounter",
            checksum="IBST_statusChecksum",
        ),
        MessagePlan(
            "ESP_status",
            20,
            {
                "ESP_absBrakeEvent2": lambda col: pick(
                    col["Vehicle.ADAS.ABS.IsEngaged"] > 0,
                    c("ESP_status", "ESP_absBrakeEvent2", "ACTIVE_FRONT_REAR"),
                    c("ESP_status", "ESP_absBrakeEvent2", "NOT_ACTIVE"),
                ),
                "ESP_brakeLamp": lambda col: col["Vehicle.Body.Lights.Brake.IsActive"],
                "ESP_brakeApply": lambda col: pedal_on(col).astype(np.float64),
                "ESP_driverBrakeApply": lambda col: pick(pedal_on(col), 2.0, 1.0),
                "ESP_stabilityControlSts2": lambda col: pick(
                    col["Vehicle.ADAS.ESC.IsEngaged"] > 0,
                    c("ESP_status", "ESP_stabilityControlSts2", "ENGAGED"),
                    c("ESP_status", "ESP_stabilityControlSts2", "ON"),
                ),
            },
            counter="ESP_statusCounter",
            checksum="ESP_statusChecksum",
        ),
        MessagePlan(
            "ESP_B",
            20,
            {
                "ESP_vehicleSpeed": lambda col: np.abs(col[speed]),
                "ESP_vehicleStandstillSts": lambda col: pick(col[speed] == 0, 1.0, 0.0),
                "ESP_wheelSpeedsQF": lambda col: np.ones(len(col[speed])),
            },
            counter="ESP_wheelRotationCounter",
            checksum="ESP_wheelRotationChecksum",
        ),
        MessagePlan(
            "ESP_wheelSpeeds",
            20,
            {
                "ESP_wheelSpeedFrL": lambda col: col["Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed"],
                "ESP_wheelSpeedFrR": lambda col: col["Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed"],
                "ESP_wheelSpeedReL": lambda col: col["Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed"],
                "ESP_wheelSpeedReR": lambda col: col["Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed"],
            },
            counter="ESP_wheelSpeedsCounter",
            checksum="ESP_wheelSpeedsChecksum",
        ),
        MessagePlan(
            "SCCM_steeringAngleSensor",
            10,
            {
                # Tesla counts steering angles positive to the right; VSS to the left.
                "SCCM_steeringAngle": lambda col: -col["Vehicle.Chassis.SteeringWheel.Angle"],
                "SCCM_steeringAngleSpeed": lambda col: -col["steer_rate"],
                "SCCM_steeringAngleValidity": lambda col: np.full(
                    len(col[speed]), c("SCCM_steeringAngleSensor", "SCCM_steeringAngleValidity", "VALID")
                ),
            },
            counter="SCCM_steeringAngleCounter",
        ),
        MessagePlan(
            "DAS_control",
            40,
            {
                "DAS_aebEvent": lambda col: pick(
                    col["Vehicle.EDR.AEB.IsEngaged"] > 0,
                    c("DAS_control", "DAS_aebEvent", "AEB_ACTIVE"),
                    c("DAS_control", "DAS_aebEvent", "AEB_NOT_ACTIVE"),
                ),
                "DAS_setSpeed": lambda col: np.full(len(col[speed]), np.nan),
                "DAS_accelMin": lambda col: np.full(len(col[speed]), np.nan),
                "DAS_accelMax": lambda col: np.full(len(col[speed]), np.nan),
            },
            counter="DAS_controlCounter",
            checksum="DAS_controlChecksum",
        ),
        MessagePlan(
            "DI_state",
            100,
            {
                "DI_cruiseState": lambda col: pick(
                    col["Vehicle.ADAS.CruiseControl.IsActive"] > 0,
                    c("DI_state", "DI_cruiseState", "ENABLED"),
                    c("DI_state", "DI_cruiseState", "STANDBY"),
                    known=~np.isnan(col["Vehicle.ADAS.CruiseControl.IsActive"]),
                ),
                "DI_speedUnits": lambda col: np.full(len(col[speed]), c("DI_state", "DI_speedUnits", "KPH")),
            },
            counter="DI_locStatusCounter",
            checksum="DI_locStatusChecksum",
        ),
        MessagePlan(
            "DAS_status",
            100,
            {
                "DAS_laneDepartureWarning": lambda col: pick(
                    col["Vehicle.ADAS.LaneDepartureDetection.IsWarning"] > 0,
                    c("DAS_status", "DAS_laneDepartureWarning", "LEFT_WARNING"),
                    c("DAS_status", "DAS_laneDepartureWarning", "NONE"),
                    known=~np.isnan(col["Vehicle.ADAS.LaneDepartureDetection.IsWarning"]),
                ),
            },
            counter="DAS_statusCounter",
            checksum="DAS_statusChecksum",
        ),
        MessagePlan(
            "UI_warning",
            100,
            {
                "buckleStatus": lambda col: col["Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted"],
                "leftBlinkerBlinking": lambda col: pick(
                    col["Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling"] > 0, 2.0, 0.0
                ),
                "rightBlinkerBlinking": lambda col: pick(
                    col["Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling"] > 0, 2.0, 0.0
                ),
                "anyDoorOpen": lambda col: col["Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"],
            },
            counter="UI_warningCounter",
            checksum="UI_warningChecksum",
        ),
    ]


# ---------------------------------------------------------------------------------------- encoding
def _segments(t_ms: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's awake stretch (rows 100 ms apart)."""
    start = np.r_[True, np.diff(t_ms) != 100]
    return np.maximum.accumulate(np.where(start, np.arange(len(t_ms)), 0))


def _columns(table: pa.Table, gear_ratio: float = 9.04, wheel_radius_m: float = 0.35) -> Columns:
    """Float columns of a simulated table; 1 Hz signals held between their samples within an awake stretch."""
    t = table.column("t").cast(pa.int64()).to_numpy()
    seg = _segments(t)
    col: Columns = {"t_ms": t}
    for name in table.column_names[1:]:
        arr = (
            table.column(name).combine_chunks()
            if isinstance(table.column(name), pa.ChunkedArray)
            else table.column(name)
        )
        if pa.types.is_string(arr.type):
            vals = np.asarray(pc.equal(arr, "ACTIVE").fill_null(False).to_numpy(zero_copy_only=False), np.float64)
            vals[np.asarray(arr.is_null().to_numpy(zero_copy_only=False))] = np.nan
        else:
            vals = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        if np.isnan(vals).any():
            # Hold the last sample, but never across a sleep (nor before a stretch's first sample).
            have = np.where(~np.isnan(vals), np.arange(len(vals)), -1)
            last = np.maximum.accumulate(have)
            ok = last >= seg
            vals = np.where(ok, vals[np.maximum(last, 0)], np.nan)
        col[name] = vals
    steer = col.get("Vehicle.Chassis.SteeringWheel.Angle", np.zeros(len(t)))
    col["steer_rate"] = np.where(seg == np.arange(len(t)), 0.0, np.r_[0.0, np.diff(steer)] * 10.0)
    motor = col.get("Vehicle.Powertrain.ElectricMotor.Speed", np.zeros(len(t)))
    col["axle_rpm"] = motor / gear_ratio
    return col


def encode_table(table: pa.Table, db: Any, plans: Sequence[MessagePlan], *, gear_ratio: float = 9.04) -> Frames:
    """Frames of every planned message for a simulated table, in time order."""
    col = _columns(table, gear_ratio=gear_ratio)
    t_ms = col["t_ms"]
    n = len(t_ms)
    if n == 0:
        return Frames.empty()
    contiguous = np.r_[np.diff(t_ms) == 100, False]
    parts: list[Frames] = []
    order: list[np.ndarray] = []
    for rank, plan in enumerate(plans):
        msg = db.get_message_by_name(plan.message)
        key = frame_key(msg.frame_id, msg.is_extended_frame)
        p = plan.period_ms
        if p <= 100:
            reps = np.where(contiguous, -(-100 // p), 1)
            row = np.repeat(np.arange(n), reps)
            k = np.arange(len(row)) - np.repeat(np.cumsum(reps) - reps, reps)
            t_us = t_ms[row] * 1000 + k * p * 1000
            keep = t_us < np.where(contiguous[row], (t_ms[row] + 100) * 1000, t_us + 1)
            row, t_us = row[keep], t_us[keep]
        else:
            row = np.flatnonzero(t_ms % p == 0)
            t_us = t_ms[row] * 1000
        values = {s: np.asarray(fn(col), np.float64)[row] for s, fn in plan.signals.items()}
        if plan.counter:
            cs = msg.get_signal_by_name(plan.counter)
            values[plan.counter] = ((t_us // (p * 1000)) % (1 << cs.length)).astype(np.float64)
        data = pack_signals(msg, values, len(row))
        if plan.checksum:
            sig = msg.get_signal_by_name(plan.checksum)
            lsb, _ = _place(sig)
            data |= tesla_checksum(msg.frame_id, data, msg.length, sig) << np.uint64(lsb)
        parts.append(
            Frames(
                t_us.astype(np.int64), np.full(len(row), key, np.uint32), np.full(len(row), msg.length, np.uint8), data
            )
        )
        order.append(np.full(len(row), rank))
    frames = Frames.concat(parts)
    ranks = np.concatenate(order)
    idx = np.lexsort((ranks, frames.t_us))
    return frames.take(idx)


# ----------------------------------------------------------------------------------------- writing
_HEXCHARS = np.frombuffer(b"0123456789ABCDEF", np.uint8)


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """Decimal digits (ASCII) of non-negative ints, zero-padded to ``width``."""
    pw = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((x[:, None] // pw) % 10 + 48).astype(np.uint8)


def format_candump(frames: Frames, channel: str = "can0") -> bytes:
    """candump ``-L`` text for the frames, one line each."""
    n = len(frames)
    if n == 0:
        return b""
    sec = frames.t_us // 1_000_000
    usec = frames.t_us % 1_000_000
    if (sec < 0).any():
        raise ValueError("timestamps before 1970 cannot be written")
    sdig = np.maximum(1, np.floor(np.log10(np.maximum(sec, 1))).astype(np.int64) + 1)
    ext = (frames.key & np.uint32(1 << 31)) != 0
    idlen = np.where(ext, 8, 3)
    dlc = frames.dlc.astype(np.int64)
    ch = channel.encode()
    # "(" sec "." usec ") " channel " " ID "#" DATA "\n"
    length = 1 + sdig + 1 + 6 + 2 + len(ch) + 1 + idlen + 1 + 2 * dlc + 1
    offsets = np.r_[0, np.cumsum(length)[:-1]]
    out = np.empty(int(length.sum()), np.uint8)
    layout = (sdig * 16 + idlen) * 16 + dlc
    ch_arr = np.frombuffer(ch, np.uint8)
    for lay in np.unique(layout):
        sel = np.flatnonzero(layout == lay)
        sd, il, dl = int(sdig[sel[0]]), int(idlen[sel[0]]), int(dlc[sel[0]])
        L = int(length[sel[0]])
        rows = np.empty((len(sel), L), np.uint8)
        pos = 0
        rows[:, pos] = ord("(")
        rows[:, pos + 1 : pos + 1 + sd] = _digits(sec[sel], sd)
        pos += 1 + sd
        rows[:, pos] = ord(".")
        rows[:, pos + 1 : pos + 7] = _digits(usec[sel], 6)
        pos += 7
        rows[:, pos] = ord(")")
        rows[:, pos + 1] = ord(" ")
        pos += 2
        rows[:, pos : pos + len(ch)] = ch_arr
        pos += len(ch)
        rows[:, pos] = ord(" ")
        pos += 1
        ident = (frames.key[sel] & np.uint32(0x1FFFFFFF)).astype(np.int64)
        shifts = 4 * np.arange(il - 1, -1, -1, dtype=np.int64)
        rows[:, pos : pos + il] = _HEXCHARS[(ident[:, None] >> shifts) & 15]
        pos += il
        rows[:, pos] = ord("#")
        pos += 1
        if dl:
            by = frames.data[sel].view(np.uint8).reshape(-1, 8)[:, :dl]
            rows[:, pos : pos + 2 * dl : 2] = _HEXCHARS[by >> 4]
            rows[:, pos + 1 : pos + 2 * dl : 2] = _HEXCHARS[by & 15]
            pos += 2 * dl
        rows[:, pos] = ord("\n")
        out[offsets[sel, None] + np.arange(L)] = rows
    return out.tobytes()


def write_candump(frames: Frames, out: Path | IO[bytes], channel: str = "can0") -> None:
    """Write frames as a candump ``-L`` log (gzipped if the path ends in .gz)."""
    text = format_candump(frames, channel)
    if isinstance(out, Path):
        if out.suffix == ".gz":
            import gzip

            with gzip.open(out, "wb", compresslevel=3) as f:
                f.write(text)
        else:
            out.write_bytes(text)
    else:
        out.write(text)


def simulate_frames(table: pa.Table, *, gear_ratio: float = 9.04, dbc: str = TESLA_DBC) -> Frames:
    """A simulated table as Tesla Model 3 party-bus frames."""
    db = load_dbc(dbc)
    return encode_table(table, db, tesla_model3_party_plan(db), gear_ratio=gear_ratio)


# --------------------------------------------------------------------------------------- bench logs
def write_bench_log(
    path: Path, *, frames: int, bus_rate: int = 50_000, seed: int = 1, window_rows: int = 100, channel: str = "can0"
) -> int:
    """A candump log of exactly ``frames`` frames: a simulated Tesla drive plus filler IDs up to ``bus_rate``/s."""
    from carvault.vehicle.simulator import simulate_day

    db = load_dbc(TESLA_DBC)
    plans = tesla_model3_party_plan(db)
    known = {m.frame_id for m in db.messages}
    rng = np.random.default_rng(seed)
    filler_ids = np.array([i for i in range(0x400, 0x7FF) if i not in known][:120], np.uint32)
    per_row = max(1, bus_rate // 10)
    written = 0
    day = BENCH_DAY
    with open(path, "wb") as out:
        while written < frames:
            sim = simulate_day(BENCH_VIN, seed, day)
            table = sim.table
            gear_ratio = sim.vehicle.gear_ratio
            for a in range(0, table.num_rows, window_rows):
                part = table.slice(a, window_rows)
                car = encode_table(part, db, plans, gear_ratio=gear_ratio)
                t_ms = part.column("t").cast(pa.int64()).to_numpy()
                # Filler: other ECUs' traffic, spread at random over each 100 ms the car is awake.
                per = np.bincount(np.searchsorted(t_ms * 1000, car.t_us, side="right") - 1, minlength=len(t_ms))
                extra = np.maximum(per_row - per, 0)
                m = int(extra.sum())
                row = np.repeat(np.arange(len(t_ms)), extra)
                filler = Frames(
                    t_ms[row] * 1000 + rng.integers(0, 100_000, m),
                    rng.choice(filler_ids, m),
                    np.full(m, 8, np.uint8),
                    rng.integers(0, 2**63, m, dtype=np.int64).astype(np.uint64),
                )
                both = Frames.concat([car, filler])
                block = both.take(np.argsort(both.t_us, kind="stable"))
                if written + len(block) > frames:
                    block = block.take(np.arange(frames - written))
                out.write(format_candump(block, channel))
                written += len(block)
                if written >= frames:
                    break
            day += dt.timedelta(days=1)
    return written


# VSS paths the Tesla plan carries and the shipped mapping reads back.
ROUNDTRIP_PATHS = (
    "Vehicle.Speed",
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed",
    "Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed",
    "Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed",
    "Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed",
    "Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling",
    "Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling",
    "Vehicle.Chassis.Accelerator.PedalPosition",
    "Vehicle.Chassis.Brake.PedalPosition",
    "Vehicle.Chassis.SteeringWheel.Angle",
    "Vehicle.Body.Lights.Brake.IsActive",
    "Vehicle.Powertrain.ElectricMotor.Torque",
    "Vehicle.Powertrain.ElectricMotor.Speed",
    "Vehicle.ADAS.ABS.IsEngaged",
    "Vehicle.ADAS.ESC.IsEngaged",
    "Vehicle.EDR.AEB.IsEngaged",
    "Vehicle.Powertrain.Transmission.SelectedGear",
    "Vehicle.Powertrain.Transmission.CurrentGear",
    "Vehicle.IsMoving",
    "Vehicle.ADAS.CruiseControl.IsActive",
    "Vehicle.ADAS.LaneDepartureDetection.IsWarning",
    "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted",
    "Vehicle.Body.Lights.Hazard.IsSignaling",
)
