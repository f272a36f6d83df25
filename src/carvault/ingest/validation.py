"""Checks a decoded batch payload against its header and the signal catalogue, column by column.

Every check is vectorised (pyarrow.compute, or numpy over a column's values where that costs less per call: a
one-minute batch has some forty columns of a few hundred values, so the cost of a call, not of a value, is what
counts); a batch that fails any check is refused whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.dtc import DTC_SIGNAL, parse_dtcs
from carvault.errors import (
    CarVaultError,
    DeIdentificationMissing,
    MalformedBatch,
    PayloadTooLarge,
    TimestampInFuture,
    TimestampOutOfSpan,
    UnknownSignal,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.protocol import CAMERA, EVENT_KINDS, EVENT_META_KEY, REDACTION_KINDS, TIME_TYPE, BatchHeader
from carvault.protocol.json import strict_loads
from carvault.signals import Catalogue, Signal

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
        meta = strict_loads(raw, allow_floats=True)  # one reading: no duplicate members, big ints or NaN
    except ValueError as e:
        raise MalformedBatch(f"carvault.event metadata is not strict JSON: {e}") from None
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
    _check_event_window(header, table, meta)
    return meta


EVENT_PRE_MS = 30_000  # an event window starts at most this long before its first trigger (GB 39732 / UN R160)
EVENT_POST_MS = 10_000  # and ends at most this long after its last; triggers closer than this share a window
EVENT_MAX_SPAN_MS = 5 * 60_000  # however many triggers chain up, one window never covers more than this


def _check_event_window(header: BatchHeader, table: pa.Table, meta: dict[str, Any]) -> None:
    """An event batch covers only its triggers' window, so its legal basis cannot carry routine data past consent.

    The window is the region's own rule, whatever ``pre_s``/``post_s`` the car states: from 30 s before the first
    trigger to 10 s after the last, triggers at most 10 s apart, at most 5 minutes in all; no camera columns;
    ``manual`` events come from the owner, never from a car.
    """
    if meta["kind"] == "manual":
        raise MalformedBatch("a car does not send manual events; the owner records them in the portal")
    if any(n.startswith(CAMERA) for n in table.column_names):
        raise MalformedBatch("event batches carry no camera columns; frames travel in media batches")
    triggers = meta.get("triggers", [])
    if not isinstance(triggers, list) or not all(
        isinstance(t, dict) and t.get("kind") in EVENT_KINDS and type(t.get("t_ms")) is int for t in triggers
    ):
        raise MalformedBatch(
            f"carvault.event triggers must be objects with kind (one of {', '.join(EVENT_KINDS)}) and integer t_ms"
        )
    times = sorted({meta["trigger_ms"], *(t["t_ms"] for t in triggers)})
    if any(b - a > EVENT_POST_MS for a, b in zip(times, times[1:], strict=False)):
        raise MalformedBatch("event triggers more than 10 s apart belong to separate event windows")
    lo, hi = times[0] - EVENT_PRE_MS, times[-1] + EVENT_POST_MS
    if header.t0 < lo or header.t1 > hi or header.t1 - header.t0 > EVENT_MAX_SPAN_MS:
        raise TimestampOutOfSpan(
            "an event batch covers at most 30 s before its first trigger to 10 s after its last (5 minutes in all)",
            t0=header.t0,
            t1=header.t1,
            window_start_ms=lo,
            window_end_ms=hi,
        )


def validate_payload(
    header: BatchHeader,
    table: pa.Table,
    catalogue: Catalogue,
    *,
    now_ms: int,
    max_future_skew_ms: int,
    max_rows: int,
) -> PayloadSummary:
    """Raise the matching ``BadRequest`` for the first defect; return a summary if the batch is sound.

    What depends on the payload's schema alone (names, types, which columns are read) is decided once per schema
    (``_SchemaPlan``); a schema with a defect is never kept, and its batch is refused by the same checks, in the
    same order, as a first sight of it.
    """
    rows = table.num_rows
    if rows != header.rows:
        raise MalformedBatch(f"header says {header.rows} rows but the payload has {rows}")
    if rows > max_rows:
        raise PayloadTooLarge(f"batch has {rows} rows; the limit is {max_rows}", limit=max_rows)
    plan = _plan(catalogue, table.schema)
    if plan is None:
        _check_shape(table.schema)  # raises the defect that kept the schema from being planned, if it is one of these
    _check_time(header, table.column(0), now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    if plan is None:
        plan = _SchemaPlan.of(catalogue, table.schema)  # raises an unknown or mistyped signal

    columns = table.columns
    nulls = [col.null_count for col in columns]
    samples = rows * (len(columns) - 1) - sum(nulls) + nulls[0]
    inspected = [(plan.checks[i - 1], i) for i in plan.inspected if nulls[i] < rows]
    bounds = _bounds(table, [(c, i) for c, i in inspected if c.value_set is None], nulls)
    for check, i in inspected:  # in column order: the first defect is the one reported
        name, sig = check.name, check.signal
        if check.value_set is not None:
            # The distinct values, one call, compared in Python: a column holds a handful of them.
            if any(v is not None and v not in check.allowed for v in pc.unique(columns[i]).to_pylist()):
                raise ValueOutOfRange(
                    f"signal {name} has a value outside {list(check.value_set.to_pylist())}", signal=name
                )
            continue
        lo, hi = bounds[name]  # a NaN among the present values makes both NaN (``_bounds``)
        if check.floating and not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueOutOfRange(f"signal {name} has a NaN or infinite value", signal=name)
        if check.ranged and ((sig.min is not None and lo < sig.min) or (sig.max is not None and hi > sig.max)):
            raise ValueOutOfRange(
                f"signal {name} ranges {lo}..{hi}, outside its allowed {sig.min}..{sig.max} {sig.unit}",
                signal=name,
                min=sig.min,
                max=sig.max,
                got_min=lo,
                got_max=hi,
            )
    if plan.camera:
        _check_camera_frames(table, plan.names)
    if plan.trouble_codes:
        _check_trouble_codes(table, plan.names)
    return PayloadSummary(rows=rows, samples=samples, columns=plan.columns, event=event_meta(header, table))


def _check_shape(schema: pa.Schema) -> None:
    """The payload's columns: ``t`` first, as UTC milliseconds, and no name twice."""
    names = schema.names
    if not names or names[0] != "t":
        raise MalformedBatch("the first payload column must be 't' (UTC milliseconds)")
    if len(set(names)) != len(names):
        raise MalformedBatch("payload has duplicate column names")
    if schema.field("t").type != TIME_TYPE:
        raise WrongSignalType(f"column 't' must be {TIME_TYPE}, got {schema.field('t').type}", signal="t")


@dataclass(frozen=True)
class _ColumnCheck:
    """What the values of one payload column are checked for, decided from its signal once per payload schema."""

    name: str
    signal: Signal
    floating: bool  # NaN and infinities are refused
    ranged: bool  # the signal has a minimum or maximum (booleans and texts have none that apply)
    value_set: pa.Array | None  # an enumerated signal's allowed values
    allowed: frozenset[Any] = frozenset()  # the same values, for comparing a column's distinct values
    dtype: np.dtype[Any] | None = None  # a fixed-width number's layout in Arrow's value buffer, read in place

    @property
    def inspects_values(self) -> bool:
        """Whether any check reads the values."""
        return self.floating or self.ranged or self.value_set is not None


def _column_checks(catalogue: Catalogue, schema: pa.Schema) -> tuple[_ColumnCheck, ...]:
    """The checks of every signal column (all but ``t``), or the error of the first unknown or mistyped one."""
    built = []
    for field in list(schema)[1:]:
        name = field.name
        sig = catalogue.get(name)
        if sig is None:
            raise UnknownSignal(f"signal {name!r} is not in the catalogue; unclassified data is refused", signal=name)
        if field.type != sig.arrow_type:
            raise WrongSignalType(
                f"signal {name} must be {sig.datatype} ({sig.arrow_type}), got {field.type}",
                signal=name,
                expected=sig.datatype,
                got=str(field.type),
            )
        text = pa.types.is_string(field.type)
        built.append(
            _ColumnCheck(
                name=name,
                signal=sig,
                floating=pa.types.is_floating(field.type),
                ranged=(sig.min is not None or sig.max is not None)
                and not pa.types.is_boolean(field.type)
                and not text
                and sig.allowed is None,
                value_set=pa.array(sig.allowed) if sig.allowed is not None else None,
                allowed=frozenset(sig.allowed or ()),
                dtype=_NUMPY_TYPES.get(field.type),
            )
        )
    return tuple(built)


@dataclass(frozen=True)
class _SchemaPlan:
    """Everything the checks decide from a sound payload schema alone, kept per schema (``_plan``)."""

    catalogue: Catalogue
    schema: pa.Schema
    names: tuple[str, ...]  # every column, ``t`` first
    columns: tuple[str, ...]  # the signal columns, as the summary names them
    checks: tuple[_ColumnCheck, ...]  # one per signal column
    inspected: tuple[int, ...]  # indices (in the table) of the columns whose values a check reads
    camera: bool  # the payload has camera columns (their de-identification marks are checked)
    trouble_codes: bool  # the payload has the trouble-code list

    @classmethod
    def of(cls, catalogue: Catalogue, schema: pa.Schema) -> _SchemaPlan:
        """The plan of a schema, or the error of its first defect (``_check_shape``, then ``_column_checks``)."""
        _check_shape(schema)
        checks = _column_checks(catalogue, schema)
        names = tuple(schema.names)
        return cls(
            catalogue=catalogue,
            schema=schema,
            names=names,
            columns=names[1:],
            checks=checks,
            inspected=tuple(i for i, c in enumerate(checks, start=1) if c.inspects_values),
            camera=any(n.startswith(CAMERA) for n in names),
            trouble_codes=DTC_SIGNAL in names,
        )


_PLANS: dict[tuple[int, str], _SchemaPlan] = {}
_PLANS_KEPT = 256  # distinct payload schemas remembered (a fleet sends a handful)


def _plan(catalogue: Catalogue, schema: pa.Schema) -> _SchemaPlan | None:
    """The kept plan of a sound schema (made on first sight), or None if the schema has a defect.

    Hashing an Arrow schema walks every field in Python (≈ 50 µs for a one-minute batch's 41 columns, per batch);
    its text is one call. Texts are not unique (a field name may contain a line that reads like another field),
    so a kept plan is used only for a schema *equal* to the one it was made from; any other gets no keeping.
    """
    key = (id(catalogue), schema.to_string(show_field_metadata=False, show_schema_metadata=False))
    kept = _PLANS.get(key)
    if kept is not None:
        return kept if kept.catalogue is catalogue and kept.schema.equals(schema) else None
    try:
        plan = _SchemaPlan.of(catalogue, schema)
    except CarVaultError:
        return None
    if len(_PLANS) >= _PLANS_KEPT:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


# Arrow's fixed-width numbers whose value buffer numpy reads in place (every catalogue number type).
_NUMPY_TYPES: dict[pa.DataType, np.dtype[Any]] = {
    t: np.dtype(t.to_pandas_dtype())
    for t in (
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int64(),
        pa.uint8(),
        pa.uint16(),
        pa.uint32(),
        pa.uint64(),
        pa.float32(),
        pa.float64(),
    )
}


def _bounds(table: pa.Table, wanted: list[tuple[_ColumnCheck, int]], nulls: list[int]) -> dict[str, tuple[Any, Any]]:
    """Each wanted column's (by index) lowest and highest present value, as Python numbers (ints for integers).

    A one-minute batch has some forty numeric columns of a few hundred values, so calls, not values, are the cost
    (issue 10), and they hold the GIL that every upload shares: the columns are selected in one call and laid out by
    Arrow as one column-major matrix (``RecordBatch.to_tensor``: null slots become NaN, integers the smallest float
    that holds them exactly, 32-bit ones included), reduced by NaN-skipping minimum and maximum in one pass each. A
    column holding more NaNs than nulls has a NaN among its present values: both its bounds are NaN then, which the
    caller refuses. 64-bit integers (not exact as doubles) and other types are reduced on their own.
    """
    bounds: dict[str, tuple[Any, Any]] = {}
    matrix: list[tuple[_ColumnCheck, int]] = []
    for check, i in wanted:
        dtype = check.dtype
        if dtype is None or (dtype.kind != "f" and dtype.itemsize > 4):
            values = _present_values(table.column(i))
            bounds[check.name] = (values.min().item(), values.max().item())
        else:
            matrix.append((check, i))
    if not matrix:
        return bounds
    chosen = table.select([i for _, i in matrix])
    batches = chosen.to_batches()
    if len(batches) != 1:  # columns cut into chunks at different rows
        batches = chosen.combine_chunks().to_batches()
    values = np.asarray(batches[0].to_tensor(null_to_nan=True, row_major=False))
    lows, highs = np.fmin.reduce(values, axis=0).tolist(), np.fmax.reduce(values, axis=0).tolist()
    nans = np.count_nonzero(np.isnan(values), axis=0).tolist()
    for (check, i), lo, hi, nan in zip(matrix, lows, highs, nans, strict=True):
        if nan > nulls[i]:
            bounds[check.name] = (math.nan, math.nan)
        elif check.dtype is not None and check.dtype.kind != "f":
            bounds[check.name] = (int(lo), int(hi))
        else:
            bounds[check.name] = (lo, hi)
    return bounds


def _present_values(col: pa.ChunkedArray) -> np.ndarray:
    """The column's non-null values as one numpy array (a view where Arrow's layout allows)."""
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if arr.null_count:
        arr = arr.drop_null()
    return arr.to_numpy(zero_copy_only=False)


def _check_trouble_codes(table: pa.Table, names: Sequence[str]) -> None:
    """A trouble-code list must be the JSON records carvault/dtc.py defines (the car writes them with it too)."""
    if DTC_SIGNAL not in names:
        return
    for value in pc.unique(table.column(DTC_SIGNAL)).to_pylist():  # sent on change: a handful per batch
        if value is not None:
            parse_dtcs(value)


def _check_camera_frames(table: pa.Table, names: Sequence[str]) -> None:
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
    # The marks must say how the frame was de-identified, in the documented shape: parsed for frame rows only
    # (a few per batch), so the cost is a couple of small JSON documents per frame.
    frames = table.filter(framed).select(["t", CAMERA + "Redactions", CAMERA + "Detectors"]).to_pydict()
    for t, redactions, detectors in zip(
        frames["t"], frames[CAMERA + "Redactions"], frames[CAMERA + "Detectors"], strict=True
    ):
        ran = _detectors(detectors, t)
        _redactions(redactions, ran, t)


_REDACTION_KEYS = frozenset({"kind", "detector", "box", "score"})


def _unmarked(column: str, t: Any, problem: str) -> DeIdentificationMissing:
    at = t.isoformat() if hasattr(t, "isoformat") else str(t)
    return DeIdentificationMissing(
        f"{CAMERA + column} of the frame at {at} {problem}; the platform takes only frames whose "
        "de-identification is described as docs/protocol.md says",
        signal=CAMERA + column,
        problem=problem,
    )


def _json(text: str, column: str, t: Any) -> Any:
    try:
        return strict_loads(text, allow_floats=True)  # signed evidence: one reading for every parser
    except ValueError as e:
        raise _unmarked(column, t, f"is not strict JSON ({e})") from None


def _detectors(text: str, t: Any) -> set[str]:
    """A non-empty JSON list of ``"name/version"`` strings: the detectors that ran on the frame."""
    value = _json(text, "Detectors", t)
    if not isinstance(value, list) or not value:
        raise _unmarked("Detectors", t, "is not a non-empty JSON list")
    for d in value:
        name, _, version = d.partition("/") if isinstance(d, str) else ("", "", "")
        if not (name.strip() and version.strip()) or d != d.strip():
            raise _unmarked("Detectors", t, f"has an entry that is not 'name/version': {d!r}")
    return set(value)


def _is_int(x: Any) -> bool:
    return type(x) is int


def _redactions(text: str, detectors: set[str], t: Any) -> None:
    """A JSON list (empty when nothing was found) of ``{"kind", "detector", "box": [x, y, w, h], "score"}``."""
    value = _json(text, "Redactions", t)
    if not isinstance(value, list):
        raise _unmarked("Redactions", t, "is not a JSON list")
    for r in value:
        if not isinstance(r, dict) or r.keys() != _REDACTION_KEYS:
            raise _unmarked("Redactions", t, "has an entry that is not {kind, detector, box, score}")
        if r["kind"] not in REDACTION_KINDS:
            raise _unmarked("Redactions", t, f"has kind {r['kind']!r}, not one of {', '.join(REDACTION_KINDS)}")
        if not isinstance(r["detector"], str) or r["detector"] not in detectors:
            raise _unmarked("Redactions", t, f"names detector {r['detector']!r}, which Detectors does not list")
        box = r["box"]
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(_is_int(v) for v in box)
            and box[0] >= 0
            and box[1] >= 0
            and box[2] > 0
            and box[3] > 0
        ):
            raise _unmarked("Redactions", t, f"has box {box!r}, not [x, y, width, height] in whole pixels")
        score = r["score"]
        if not (isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1):
            raise _unmarked("Redactions", t, f"has score {score!r}, not a number from 0 to 1")


def _check_time(header: BatchHeader, t: pa.ChunkedArray, *, now_ms: int, max_future_skew_ms: int) -> None:
    """The timestamps: none null, within the header's span, strictly increasing.

    Read as int64 milliseconds in place from Arrow's buffer (the type is checked before): three numpy reductions
    instead of four Arrow calls, for every batch (issue 10).
    """
    if t.null_count:
        raise TimestampOutOfSpan("column 't' has null timestamps")
    arr = t.chunk(0) if t.num_chunks == 1 else t.combine_chunks()
    ms = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr), offset=arr.offset * 8)
    lo, hi = (int(ms.min()), int(ms.max())) if len(ms) else (None, None)
    if header.t0 < EARLIEST_MS:
        raise TimestampOutOfSpan("batch span starts before 2000-01-01", t0=header.t0)
    if header.t1 > now_ms + max_future_skew_ms:
        raise TimestampInFuture(
            f"batch reaches {(header.t1 - now_ms) / 1000:.0f} s into the future "
            f"(allowed skew {max_future_skew_ms // 1000} s)",
            t1=header.t1,
            server_ms=now_ms,
        )
    if lo is None or hi is None:
        raise MalformedBatch("the payload has no rows")
    if lo < header.t0 or hi > header.t1:
        raise TimestampOutOfSpan(
            f"timestamps {lo}..{hi} fall outside the header span {header.t0}..{header.t1}",
            t0=header.t0,
            t1=header.t1,
        )
    if len(ms) > 1 and int(np.diff(ms).min()) <= 0:
        raise TimestampOutOfSpan("timestamps must be strictly increasing")
