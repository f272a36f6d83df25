"""49 CFR Part 563 event-data-recorder (EDR) elements, computed from the telemetry around an event.

Pure and deterministic: the incident-package builder calls it on the window it exports, and the offline
verifier calls it again on the signed batches and compares the CSV bytes. It reads only pyarrow, numpy, the
standard library and the signal catalogue; nothing here touches a server, a database or the clock.

The element list, windows, ranges and resolutions come from ``carvault/data/part563_elements.csv`` (49 CFR 563
Tables I-III, US government work in the public domain), in Part 563 order. Every Table I element is always
reported; a Table II element only when the table carries its source signal(s).

How values are derived (``method`` in the element list):

- ``sampled``: one value per instant ``event + window_start + k / rate`` (for pre-crash data 11 instants at
  -5.0, -4.5, ... 0.0 s), taking the **latest non-null sample at or before each instant**. A sample older than
  1.0 s at the instant (two sample periods for 1 Hz signals) is not used and the instant is "not recorded";
  Part 563 allows pre-crash timing to be 0.1 s late to 1.0 s early, so an older value would not be that instant's.
- ``brake_switch`` (service brake): "on" when the latest brake pedal position is > 0 or the latest brake-light
  state is ACTIVE or ADAPTIVE (the adaptive brake light flashes during hard braking, so the brake is applied).
- ``native`` (delta-V): every sample the vehicle sent between 0 and 0.25 s, at the times it sent them. Part 563
  asks for 100 Hz; CarVault's ``Vehicle.EDR.DeltaV.*`` are 10 Hz, so ``rate_hz`` gives the measured rate and the
  note says so. Nothing is interpolated.
- ``max_abs`` / ``time_of_max_abs`` / ``time_of_max_resultant``: the sample of largest magnitude between 0 and
  0.3 s (the first one on a tie), its signed value, and its time after time zero in ms (resultant: the
  magnitude of the longitudinal and lateral samples sent at the same instant).
- ``first_true_ms`` (air bag deployment time): ms from time zero to the first sample, up to 250 ms, that reports
  the air bag deployed; an upper bound, since deployment happened after the sample before it.
- ``download``: the ignition cycle count at download, supplied by the caller.
- ``none``: no catalogue signal carries the element; it is "not recorded".

Numbers are converted to the Table III unit, clipped to its range (status "clipped", the measured value in the
note) and rounded half away from zero to its resolution, then written with as many decimals as the resolution
has ("1" -> 0, "2.5" -> 1). On/off elements read "on"/"off".

EDR CSV (``edr_csv``): UTF-8, ``\\n`` line ends, a header row, then one row per reported value, in Part 563
order and by offset within an element. Columns:

    element     Part 563 element name, e.g. "Speed vehicle indicated"
    table       "I" or "II"
    offset_s    seconds from time zero, 3 decimals ("-5.000"); empty for whole-event values
    value       the reported value as text; empty when not recorded
    unit        Table III unit ("km/h", "percent", "ms", "count", ...); empty for on/off elements
    resolution  Table III resolution in that unit; empty for on/off elements
    rate_hz     rate of the listed values: the Part 563 rate for sampled elements, the measured rate of the
                vehicle's samples for delta-V; empty for single values
    status      "ok", "clipped" or "not recorded"
    source      the catalogue VSS path, or "derived: ..." with the rule
    note        why a value is clipped, not recorded or coarser than Part 563 asks; usually empty
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources

import numpy as np
import pyarrow as pa

from carvault.protocol import kernels
from carvault.protocol.columns import has_column
from carvault.signals import catalogue

CSV_COLUMNS: tuple[str, ...] = (
    "element",
    "table",
    "offset_s",
    "value",
    "unit",
    "resolution",
    "rate_hz",
    "status",
    "source",
    "note",
)

OK = "ok"
CLIPPED = "clipped"
NOT_RECORDED = "not recorded"

#: Oldest sample (ms before the instant) a pre-crash value may come from; Part 563 pre-crash timing tolerance.
MAX_SAMPLE_AGE_MS = 1000
#: Brake-light states that mean the service brake is applied.
BRAKE_LIGHT_ON: tuple[str, ...] = ("ACTIVE", "ADAPTIVE")

# Catalogue unit -> Table III unit. Same units need no entry; a missing pair is a catalogue error, raised loudly.
_CONVERSIONS: dict[tuple[str, str], float] = {
    ("m/s", "km/h"): 3.6,
    ("kPa", "bar"): 0.01,
    ("rad", "degrees"): 57.29577951308232,
}

_ON_OFF_WORDS = frozenset({"on/off", "yes/no", "on/off/engaged"})


@dataclass(frozen=True)
class Part563Element:
    """One row of the Part 563 element list, adapted to the catalogue."""

    name: str
    table: str
    window_start: str
    window_end: str
    sample_rate_hz: float | None
    range: str
    accuracy: str
    resolution: str
    unit: str
    method: str
    sources: tuple[str, ...]

    @property
    def is_on_off(self) -> bool:
        """True for elements reported as words (on/off, yes/no) rather than numbers."""
        return self.range in _ON_OFF_WORDS

    @property
    def bounds(self) -> tuple[float, float]:
        """The Table III range as (lo, hi) in the element's unit."""
        lo, hi = self.range.split("..")
        return float(lo), float(hi)

    @property
    def window_ms(self) -> tuple[int, int]:
        """The window in ms from time zero ("event" counts as 0)."""

        def ms(text: str) -> int:
            return 0 if text in ("event", "download") else round(float(text) * 1000)

        return ms(self.window_start), ms(self.window_end)

    @property
    def step(self) -> float:
        """The resolution as a number."""
        return float(self.resolution)

    @property
    def decimals(self) -> int:
        """Decimals needed to write a multiple of the resolution exactly."""
        return max(0, -int(Decimal(self.resolution).normalize().as_tuple().exponent))


@dataclass(frozen=True)
class EdrElement:
    """One reported value of one Part 563 element (a time series has one per offset)."""

    name: str
    table: str
    offset_s: float | None
    value: str
    unit: str
    resolution: str
    source: str
    status: str
    rate_hz: float | None = None
    note: str = ""

    def to_row(self) -> dict[str, str]:
        """The element as a CSV row (every field text, formatted deterministically)."""
        return {
            "element": self.name,
            "table": self.table,
            "offset_s": "" if self.offset_s is None else f"{self.offset_s:.3f}",
            "value": self.value,
            "unit": self.unit,
            "resolution": self.resolution,
            "rate_hz": _fmt_rate(self.rate_hz),
            "status": self.status,
            "source": self.source,
            "note": self.note,
        }


@cache
def part563_elements() -> tuple[Part563Element, ...]:
    """The Part 563 element list shipped with CarVault, in Part 563 order."""
    text = resources.files("carvault").joinpath("data/part563_elements.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        out.append(
            Part563Element(
                name=r["element"],
                table=r["table"],
                window_start=r["window_start_s"],
                window_end=r["window_end_s"],
                sample_rate_hz=float(r["sample_rate_hz"]) if r["sample_rate_hz"] else None,
                range=r["range"],
                accuracy=r["accuracy"],
                resolution=r["resolution"],
                unit=r["unit"],
                method=r["method"],
                sources=tuple(p for p in r["source"].split("|") if p),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# Reading the table


class Samples:
    """Valid samples per column of one table, sorted by time, converted to float64 once per column.

    Shared with the human report so that its summary numbers read the data exactly as the EDR table does.
    """

    def __init__(self, table: pa.Table) -> None:
        if not has_column(table, "t"):
            raise ValueError("the table has no 't' column")
        self._table = table
        t = np.asarray(kernels.cast(table.column("t"), pa.int64()).to_numpy(), dtype=np.int64)
        # Batches may overlap or arrive out of order; a stable sort keeps the later-sent sample last on ties,
        # so "latest at or before" picks it, the same way every time.
        self._order = None if np.all(t[1:] >= t[:-1]) else np.argsort(t, kind="stable")
        self._t = t if self._order is None else t[self._order]
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def has(self, path: str) -> bool:
        """True if the table has a column for ``path``."""
        return has_column(self._table, path)

    def series(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(t in ms, value as float64) of the non-null, finite samples of ``path``; booleans are 1.0/0.0."""
        if path not in self._cache:
            col = self._table.column(path)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                # The only string source is the brake light: map its enum to "brake applied".
                num = kernels.cast(kernels.is_in(col, pa.array(list(BRAKE_LIGHT_ON), pa.string())), pa.float64())
            else:
                num = kernels.cast(col, pa.float64())
            vals = np.asarray(kernels.fill_null(num, 0.0).to_numpy(), dtype=np.float64)
            valid = np.asarray(kernels.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
            if self._order is not None:
                vals, valid = vals[self._order], valid[self._order]
            valid &= np.isfinite(vals)
            self._cache[path] = (self._t[valid], vals[valid])
        return self._cache[path]

    def latest(self, path: str, instants: np.ndarray, max_age_ms: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Latest value at or before each instant, and whether there is one no older than ``max_age_ms``."""
        ts, vs = self.series(path)
        return _latest(
            ts, vs, np.asarray(instants, dtype=np.int64), _max_age_ms(path) if max_age_ms is None else max_age_ms
        )


def _latest(ts: np.ndarray, vs: np.ndarray, instants: np.ndarray, max_age_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Latest sample at or before each instant, and whether it exists and is recent enough."""
    if len(ts) == 0:
        return np.zeros(len(instants)), np.zeros(len(instants), dtype=bool)
    idx = np.searchsorted(ts, instants, side="right") - 1
    found = idx >= 0
    idx = np.where(found, idx, 0)
    ok = found & (instants - ts[idx] <= max_age_ms)
    return vs[idx], ok


def _between(ts: np.ndarray, a: int, b: int) -> slice:
    """Index range of the samples with a <= t <= b."""
    return slice(int(np.searchsorted(ts, a, side="left")), int(np.searchsorted(ts, b, side="right")))


def _max_age_ms(path: str) -> int:
    sig = catalogue().get(path)
    rate = sig.rate_hz if sig is not None and sig.rate_hz > 0 else 1
    return max(MAX_SAMPLE_AGE_MS, 2000 // rate)


def _measured_rate(ts: np.ndarray, a: int, b: int, path: str) -> float | None:
    """The rate the vehicle actually sent ``path`` at around [a, b], from the median sample interval."""
    near = ts[_between(ts, a - 1000, b + 1000)]
    if len(near) >= 2:
        gaps = np.diff(near)
        gaps = gaps[gaps > 0]
        if len(gaps):
            return round(1000.0 / float(np.median(gaps)), 1)
    sig = catalogue().get(path)
    return float(sig.rate_hz) if sig is not None else None


def _factor(path: str, unit: str) -> float:
    sig = catalogue().get(path)
    have = sig.unit if sig is not None else ""
    if not have or not unit or have == unit:
        return 1.0
    try:
        return _CONVERSIONS[(have, unit)]
    except KeyError:
        raise ValueError(f"no conversion from {have!r} ({path}) to the Part 563 unit {unit!r}") from None


# --------------------------------------------------------------------------------------------------------------
# Formatting values


def _fmt_rate(rate: float | None) -> str:
    return "" if rate is None else f"{rate:g}"


def _fmt_num(x: float) -> str:
    return f"{x:.6g}"


def _quantise(x: np.ndarray, step: float) -> np.ndarray:
    """Round half away from zero to a multiple of ``step``."""
    # Rounding the quotient to 9 places first keeps 0.35 / 0.1 = 3.4999999999999996 from rounding down.
    steps = np.floor(np.round(np.abs(x) / step, 9) + 0.5)
    return np.sign(x) * steps * step + 0.0  # + 0.0 turns -0.0 into 0.0


def _values(spec: Part563Element, raw: np.ndarray) -> list[tuple[str, str, str]]:
    """(value, status, note) for raw values already in the element's unit."""
    if spec.is_on_off:
        return [("on" if v > 0.5 else "off", OK, "") for v in raw]
    lo, hi = spec.bounds
    clipped = (raw < lo) | (raw > hi)
    q = _quantise(np.clip(raw, lo, hi), spec.step)
    out = []
    for v, c, r in zip(q, clipped, raw, strict=True):
        text = f"{v:.{spec.decimals}f}"
        if c:
            out.append((text, CLIPPED, f"measured {_fmt_num(r)} {spec.unit}, outside the Part 563 range {spec.range}"))
        else:
            out.append((text, OK, ""))
    return out


def _unit(spec: Part563Element) -> str:
    return "" if spec.is_on_off else spec.unit


def _res(spec: Part563Element) -> str:
    return "" if spec.is_on_off else spec.resolution


def _row(
    spec: Part563Element,
    offset_s: float | None,
    value: str,
    source: str,
    status: str,
    rate_hz: float | None = None,
    note: str = "",
) -> EdrElement:
    return EdrElement(
        name=spec.name,
        table=spec.table,
        offset_s=offset_s,
        value=value,
        unit=_unit(spec),
        resolution=_res(spec),
        source=source,
        status=status,
        rate_hz=rate_hz,
        note=note,
    )


def _not_recorded(spec: Part563Element, source: str, note: str) -> list[EdrElement]:
    return [_row(spec, None, "", source, NOT_RECORDED, note=note)]


def _window_text(spec: Part563Element) -> str:
    a, b = spec.window_ms
    return f"{a / 1000:g} to {b / 1000:g} s"


def _coarse_note(spec: Part563Element, rate: float | None) -> str:
    if rate is None or spec.sample_rate_hz is None or rate >= spec.sample_rate_hz:
        return ""
    return (
        f"the vehicle sent this signal at {_fmt_rate(rate)} Hz; Part 563 asks for "
        f"{_fmt_rate(spec.sample_rate_hz)} Hz, so only the samples that exist are listed"
    )


# --------------------------------------------------------------------------------------------------------------
# One function per method


def _sampled(spec: Part563Element, s: Samples, event_ms: int) -> list[EdrElement]:
    path = spec.sources[0]
    if not s.has(path):
        return _not_recorded(spec, path, "the signal is not in the data")
    a, b = spec.window_ms
    want_hz = spec.sample_rate_hz or 0.0
    step = round(1000 / want_hz) if want_hz else 0
    offsets = np.arange(a, b + 1, step, dtype=np.int64) if step else np.array([a], dtype=np.int64)
    ts, vs = s.series(path)
    max_age = _max_age_ms(path)
    raw, ok = _latest(ts, vs * _factor(path, spec.unit), event_ms + offsets, max_age)
    source_rate = _measured_rate(ts, event_ms + a, event_ms + b, path)
    slow = ""
    if step and source_rate is not None and source_rate < want_hz:
        slow = f"the vehicle sent this signal at {_fmt_rate(source_rate)} Hz; values repeat between its samples"
    out = []
    for off, good, (value, status, note) in zip(offsets, ok, _values(spec, raw), strict=True):
        if not good:
            out.append(
                _row(
                    spec,
                    off / 1000,
                    "",
                    path,
                    NOT_RECORDED,
                    spec.sample_rate_hz,
                    f"no sample in the {max_age / 1000:g} s up to this instant",
                )
            )
        else:
            out.append(
                _row(
                    spec, off / 1000, value, path, status, spec.sample_rate_hz, "; ".join(n for n in (note, slow) if n)
                )
            )
    return out


def _brake_switch(spec: Part563Element, s: Samples, event_ms: int) -> list[EdrElement]:
    pedal, light = spec.sources
    source = f"derived: {pedal} > 0 or {light} in {'/'.join(BRAKE_LIGHT_ON)}"
    present = [p for p in (pedal, light) if s.has(p)]
    if not present:
        return _not_recorded(spec, source, "neither brake pedal position nor brake light is in the data")
    a, b = spec.window_ms
    step = round(1000 / (spec.sample_rate_hz or 2.0))
    offsets = np.arange(a, b + 1, step, dtype=np.int64)
    instants = event_ms + offsets
    on = np.zeros(len(offsets), dtype=bool)
    known = np.zeros(len(offsets), dtype=bool)
    for p in present:
        vals, ok = _latest(*s.series(p), instants, _max_age_ms(p))
        on |= ok & (vals > 0)
        known |= ok
    missing = [p for p in (pedal, light) if p not in present]
    base_note = f"{missing[0]} is not in the data" if missing else ""
    out = []
    for off, k, o in zip(offsets, known, on, strict=True):
        if not k:
            out.append(
                _row(
                    spec,
                    off / 1000,
                    "",
                    source,
                    NOT_RECORDED,
                    spec.sample_rate_hz,
                    f"no brake sample in the {MAX_SAMPLE_AGE_MS / 1000:g} s up to this instant",
                )
            )
        else:
            out.append(_row(spec, off / 1000, "on" if o else "off", source, OK, spec.sample_rate_hz, base_note))
    return out


def _native(spec: Part563Element, s: Samples, event_ms: int) -> list[EdrElement]:
    path = spec.sources[0]
    if not s.has(path):
        return _not_recorded(spec, path, "the signal is not in the data")
    a, b = spec.window_ms
    ts, vs = s.series(path)
    win = _between(ts, event_ms + a, event_ms + b)
    if win.start == win.stop:
        return _not_recorded(spec, path, f"no sample from {_window_text(spec)}")
    rate = _measured_rate(ts, event_ms + a, event_ms + b, path)
    coarse = _coarse_note(spec, rate)
    out = []
    for t, (value, status, note) in zip(ts[win], _values(spec, vs[win] * _factor(path, spec.unit)), strict=True):
        out.append(
            _row(spec, (int(t) - event_ms) / 1000, value, path, status, rate, "; ".join(n for n in (note, coarse) if n))
        )
    return out


def _peak(spec: Part563Element, s: Samples, event_ms: int) -> tuple[int, float, str] | str:
    """(t of the largest-magnitude sample, its value in km/h, a note on its precision), or why there is none."""
    a, b = spec.window_ms
    if spec.method == "time_of_max_resultant":
        (tl, vl), (tt, vt) = (s.series(p) for p in spec.sources)
        wl, wt = _between(tl, event_ms + a, event_ms + b), _between(tt, event_ms + a, event_ms + b)
        # The resultant needs both components from the same instant; samples without a partner are left out.
        ts, il, it = np.intersect1d(tl[wl], tt[wt], assume_unique=False, return_indices=True)
        vs = np.hypot(vl[wl][il] * _factor(spec.sources[0], "km/h"), vt[wt][it] * _factor(spec.sources[1], "km/h"))
        rate = _measured_rate(ts, event_ms + a, event_ms + b, spec.sources[0]) if len(ts) else None
    else:
        path = spec.sources[0]
        full_t, full_v = s.series(path)
        win = _between(full_t, event_ms + a, event_ms + b)
        ts, vs = full_t[win], full_v[win] * _factor(path, "km/h")
        rate = _measured_rate(full_t, event_ms + a, event_ms + b, path)
    if len(ts) == 0:
        return f"no sample from {_window_text(spec)}"
    i = int(np.argmax(np.abs(vs)))  # argmax returns the first maximum: ties resolve to the earliest sample
    note = f"largest magnitude of {len(ts)} sample(s) from {_window_text(spec)}"
    if rate is not None and rate < 100:
        # Part 563 samples delta-V at 100 Hz; coarser data can miss the real peak, and the reader must know.
        note += f" at {_fmt_rate(rate)} Hz; the true maximum may fall between samples"
    return int(ts[i]), float(vs[i]), note


def _max_like(spec: Part563Element, s: Samples, event_ms: int) -> list[EdrElement]:
    if spec.method == "time_of_max_resultant":
        source = f"derived: time of the largest sqrt({spec.sources[0]}^2 + {spec.sources[1]}^2)"
    elif spec.method == "max_abs":
        source = f"derived: largest-magnitude sample of {spec.sources[0]}"
    else:
        source = f"derived: time of the largest-magnitude sample of {spec.sources[0]}"
    missing = [p for p in spec.sources if not s.has(p)]
    if missing:
        return _not_recorded(spec, source, f"{', '.join(missing)} not in the data")
    peak = _peak(spec, s, event_ms)
    if isinstance(peak, str):
        return _not_recorded(spec, source, peak)
    t, v, note = peak
    raw = np.array([v if spec.method == "max_abs" else float(t - event_ms)])
    value, status, clip_note = _values(spec, raw)[0]
    return [_row(spec, None, value, source, status, None, "; ".join(n for n in (clip_note, note) if n))]


def _first_true_ms(spec: Part563Element, s: Samples, event_ms: int) -> list[EdrElement]:
    path = spec.sources[0]
    source = f"derived: time of the first {path} = true after time zero"
    if not s.has(path):
        return _not_recorded(spec, source, "the signal is not in the data")
    ts, vs = s.series(path)
    lo, hi = spec.bounds
    before, ok = _latest(ts, vs, np.array([event_ms - 1], dtype=np.int64), _max_age_ms(path))
    win = _between(ts, event_ms, event_ms + int(hi))
    if ok[0] and before[0] > 0.5:
        # Deployed before time zero: report the range floor and say why, never a negative time.
        value, status, _ = _values(spec, np.array([-1.0]))[0]
        return [_row(spec, None, value, source, CLIPPED, None, "already deployed at the last sample before time zero")]
    if win.start == win.stop:
        return _not_recorded(spec, source, f"no sample from 0 to {hi / 1000:g} s")
    hits = np.flatnonzero(vs[win] > 0.5)
    if len(hits) == 0:
        return [
            _row(
                spec, None, "not deployed", source, OK, None, f"no sample from 0 to {hi / 1000:g} s reports deployment"
            )
        ]
    k = win.start + int(hits[0])
    prev = int(ts[k - 1]) - event_ms if k > 0 else None
    value, status, note = _values(spec, np.array([float(int(ts[k]) - event_ms)]))[0]
    bound = (
        f"deployed after {prev} ms and by {int(ts[k]) - event_ms} ms (the signal's sample times)"
        if prev is not None
        else "the first sample in the data already reports deployment"
    )
    return [_row(spec, None, value, source, status, None, "; ".join(n for n in (note, bound) if n))]


def _download(spec: Part563Element, value: int | None) -> list[EdrElement]:
    source = "supplied at download (ignition cycle count when the package was built)"
    if value is None:
        return _not_recorded(spec, source, "not supplied")
    text, status, note = _values(spec, np.array([float(value)]))[0]
    return [_row(spec, None, text, source, status, None, note)]


_METHODS = {
    "sampled": _sampled,
    "brake_switch": _brake_switch,
    "native": _native,
    "max_abs": _max_like,
    "time_of_max_abs": _max_like,
    "time_of_max_resultant": _max_like,
    "first_true_ms": _first_true_ms,
}


def edr_elements(table: pa.Table, event_ms: int, *, ignition_cycle_download: int | None = None) -> list[EdrElement]:
    """The Part 563 Table I elements, and the Table II ones whose sources are in ``table``, around ``event_ms``."""
    samples = Samples(table)
    event_ms = int(event_ms)
    out: list[EdrElement] = []
    for spec in part563_elements():
        if spec.table == "II" and (spec.method == "none" or not all(samples.has(p) for p in spec.sources)):
            continue
        if spec.method == "none":
            out.extend(_not_recorded(spec, "", "no signal in the CarVault catalogue carries this element"))
        elif spec.method == "download":
            out.extend(_download(spec, ignition_cycle_download))
        else:
            out.extend(_METHODS[spec.method](spec, samples, event_ms))
    return out


def edr_csv(elements: Iterable[EdrElement]) -> bytes:
    """The EDR table as CSV bytes (columns in ``CSV_COLUMNS``, see the module docstring)."""
    sink = io.StringIO()
    w = csv.DictWriter(sink, fieldnames=CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writeheader()
    for e in elements:
        w.writerow(e.to_row())
    return sink.getvalue().encode("utf-8")


def parse_edr_csv(data: bytes) -> list[dict[str, str]]:
    """Rows of an EDR CSV as dicts of text; raises ValueError if the header or a row has the wrong shape."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"EDR CSV is not UTF-8: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != CSV_COLUMNS:
        raise ValueError(f"EDR CSV header is {header!r}, expected {list(CSV_COLUMNS)!r}")
    rows = []
    for n, fields in enumerate(reader, start=2):
        if len(fields) != len(CSV_COLUMNS):
            raise ValueError(f"EDR CSV line {n} has {len(fields)} fields, expected {len(CSV_COLUMNS)}")
        rows.append(dict(zip(CSV_COLUMNS, fields, strict=True)))
    return rows
