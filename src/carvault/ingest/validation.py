"""Checks a decoded batch payload against its header and the signal catalogue, column by column.

Every check is vectorised (pyarrow.compute); a batch that fails any check is refused whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from carvault.errors import (
    DeIdentificationMissing,
    MalformedBatch,
    PayloadTooLarge,
    TimestampInFuture,
    TimestampOutOfSpan,
    UnknownSignal,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.protocol import CAMERA, EVENT_KINDS, EVENT_META_KEY, TIME_TYPE, BatchHeader
from carvault.signals import Catalogue

EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: nothing older is plausible telemetry


@dataclass(frozen=True)
class PayloadSummary:
    """What a valid payload holds."""

    rows: int
    samples: int
    columns: tuple[str, ...]
    event: dict[str, Any] | None = None


def event_meta(header: BatchHeader, table: pa.Table) -> dict[str, Any] | None:
    """The signed event description of an event batch (Parquet key-value metadata ``carvault.event``)."""
    raw = (table.schema.metadata or {}).get(EVENT_META_KEY)
    if header.kind != "event":
        if raw is not None:
            raise MalformedBatch("only event batches carry carvault.event metadata")
        return None
    if raw is None:
        raise MalformedBatch("an event batch must describe its event in the payload metadata 'carvault.event'")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise MalformedBatch("carvault.event metadata is not JSON") from None
    if (
        not isinstance(meta, dict)
        or meta.get("kind") not in EVENT_KINDS
        or type(meta.get("trigger_ms")) is not int
        or not isinstance(meta.get("legal_basis"), str)
        or not meta["legal_basis"].strip()
    ):
        raise MalformedBatch(
            f"carvault.event needs kind (one of {', '.join(EVENT_KINDS)}), integer trigger_ms and a legal_basis"
        )
    if not header.t0 <= meta["trigger_ms"] <= header.t1:
        raise TimestampOutOfSpan("the event's trigger time is outside the batch span", trigger_ms=meta["trigger_ms"])
    return meta


def validate_payload(
    header: BatchHeader,
    table: pa.Table,
    catalogue: Catalogue,
    *,
    now_ms: int,
    max_future_skew_ms: int,
    max_rows: int,
) -> PayloadSummary:
    """Raise the matching ``BadRequest`` for the first defect; return a summary if the batch is sound."""
    if table.num_rows != header.rows:
        raise MalformedBatch(f"header says {header.rows} rows but the payload has {table.num_rows}")
    if table.num_rows > max_rows:
        raise PayloadTooLarge(f"batch has {table.num_rows} rows; the limit is {max_rows}", limit=max_rows)
    names = table.column_names
    if not names or names[0] != "t":
        raise MalformedBatch("the first payload column must be 't' (UTC milliseconds)")
    if len(set(names)) != len(names):
        raise MalformedBatch("payload has duplicate column names")
    if table.schema.field("t").type != TIME_TYPE:
        raise WrongSignalType(f"column 't' must be {TIME_TYPE}, got {table.schema.field('t').type}", signal="t")
    _check_time(header, table.column("t"), now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)

    samples = 0
    for name in names[1:]:
        sig = catalogue.get(name)
        if sig is None:
            raise UnknownSignal(f"signal {name!r} is not in the catalogue; unclassified data is refused", signal=name)
        col = table.column(name)
        if col.type != sig.arrow_type:
            raise WrongSignalType(
                f"signal {name} must be {sig.datatype} ({sig.arrow_type}), got {col.type}",
                signal=name,
                expected=sig.datatype,
                got=str(col.type),
            )
        present = len(col) - col.null_count
        samples += present
        if present == 0:
            continue
        if pa.types.is_floating(col.type):
            finite = pc.all(pc.is_finite(col)).as_py()
            if finite is False:
                raise ValueOutOfRange(f"signal {name} has a NaN or infinite value", signal=name)
        if sig.allowed is not None:
            ok = pc.all(pc.is_in(col.drop_null(), value_set=pa.array(sig.allowed))).as_py()
            if ok is False:
                raise ValueOutOfRange(f"signal {name} has a value outside {list(sig.allowed)}", signal=name)
        elif (sig.min is not None or sig.max is not None) and not pa.types.is_boolean(col.type):
            mm = pc.min_max(col).as_py()
            lo, hi = mm["min"], mm["max"]
            if (sig.min is not None and lo < sig.min) or (sig.max is not None and hi > sig.max):
                raise ValueOutOfRange(
                    f"signal {name} ranges {lo}..{hi}, outside its allowed {sig.min}..{sig.max} {sig.unit}",
                    signal=name,
                    min=sig.min,
                    max=sig.max,
                    got_min=lo,
                    got_max=hi,
                )
    _check_camera_frames(table, names)
    return PayloadSummary(
        rows=table.num_rows, samples=samples, columns=tuple(names[1:]), event=event_meta(header, table)
    )


def _check_camera_frames(table: pa.Table, names: list[str]) -> None:
    """Exterior frames are accepted only when the agent marks them de-identified and says how."""
    if CAMERA + "FrameHash" not in names:
        if any(n.startswith(CAMERA) for n in names):
            raise MalformedBatch("camera columns without Vehicle.CarVault.Camera.FrameHash")
        return
    hashes = table.column(CAMERA + "FrameHash")
    framed = pc.is_valid(hashes)
    for col in ("DeIdentified", "Redactions", "Detectors"):
        if CAMERA + col not in names:
            raise DeIdentificationMissing(
                f"camera frames must carry {CAMERA + col}; the platform refuses images not de-identified in the car",
                signal=CAMERA + col,
            )
    marked = pc.fill_null(table.column(CAMERA + "DeIdentified"), False)
    if not pc.all(pc.or_(pc.invert(framed), marked)).as_py():
        raise DeIdentificationMissing(
            "a camera frame is not marked as de-identified in the car; faces and "
            "licence plates must be blurred before a frame leaves the vehicle"
        )
    for col in ("Redactions", "Detectors"):
        if not pc.all(pc.or_(pc.invert(framed), pc.is_valid(table.column(CAMERA + col)))).as_py():
            raise DeIdentificationMissing(f"a camera frame lacks {CAMERA + col}", signal=CAMERA + col)
    if not pc.all(pc.match_substring_regex(hashes.drop_null(), "^[0-9a-f]{64}$")).as_py():
        raise ValueOutOfRange("FrameHash must be 64 lower-case hex digits", signal=CAMERA + "FrameHash")


def _check_time(header: BatchHeader, t: pa.ChunkedArray, *, now_ms: int, max_future_skew_ms: int) -> None:
    if t.null_count:
        raise TimestampOutOfSpan("column 't' has null timestamps")
    ms = t.cast(pa.int64())
    lo, hi = pc.min_max(ms).as_py().values()
    if header.t0 < EARLIEST_MS:
        raise TimestampOutOfSpan("batch span starts before 2000-01-01", t0=header.t0)
    if header.t1 > now_ms + max_future_skew_ms:
        raise TimestampInFuture(
            f"batch reaches {(header.t1 - now_ms) / 1000:.0f} s into the future "
            f"(allowed skew {max_future_skew_ms // 1000} s)",
            t1=header.t1,
            server_ms=now_ms,
        )
    if lo < header.t0 or hi > header.t1:
        raise TimestampOutOfSpan(
            f"timestamps {lo}..{hi} fall outside the header span {header.t0}..{header.t1}",
            t0=header.t0,
            t1=header.t1,
        )
    if len(ms) > 1:
        flat = ms.combine_chunks() if isinstance(ms, pa.ChunkedArray) else ms
        steps = pc.subtract(flat[1:], flat[:-1])
        if pc.min(steps).as_py() <= 0:
            raise TimestampOutOfSpan("timestamps must be strictly increasing")
