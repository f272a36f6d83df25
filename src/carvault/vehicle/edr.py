"""The in-car event data recorder: a ring buffer, the triggers of GB 39732 / UN R160, and frozen windows.

Triggers (detected vectorised over each chunk, with the ring buffer as context):
- ``crash``: longitudinal velocity change of at least 8 km/h within 150 ms (from ``Vehicle.Speed`` or
  ``Vehicle.EDR.DeltaV.Longitudinal``); *locked* (never overwritten) at 25 km/h or more;
- ``restraint``: an airbag deploys (locked);
- ``hard_braking``: longitudinal deceleration of 0.45 g or more, from ``Vehicle.Acceleration.Longitudinal``; on
  rows where the car reports no acceleration (many CAN mappings carry none) from ``Vehicle.Speed`` instead: the
  mean speed over the latest 0.5 s minus the mean over the 0.5 s before, divided by the time between the two
  halves' mean sample instants (robust to noise and uneven sample spacing); a window with fewer than two speed
  samples in a half, or a gap of more than 300 ms between speed samples, gives no value;
- ``abs``, ``aeb``: the system engages.
Triggers closer than the post-event time merge into one record whose kind is the most severe. The
window from ``pre_s`` before the first trigger to ``post_s`` after the last is frozen at full rate, with
every category but biometrics and cabin media, because event recording rests on its own legal basis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.protocol.columns import has_column
from carvault.signals import Catalogue

SEVERITY = ("crash", "restraint", "aeb", "abs", "hard_braking")
LEGAL_BASIS = {
    "crash": "GB 39732-2020 / UN R160 event data recording (legal obligation)",
    "restraint": "GB 39732-2020 / UN R160 event data recording (legal obligation)",
    "aeb": "safety event record for incident reconstruction (service contract, GB/T 41871-2022)",
    "abs": "safety event record for incident reconstruction (service contract, GB/T 41871-2022)",
    "hard_braking": "safety event record for incident reconstruction (service contract, GB/T 41871-2022)",
}
EXCLUDED_CATEGORIES = frozenset({"driver_monitoring", "cabin_media", "exterior_camera"})
DELTA_V_TRIGGER_KMH = 8.0
DELTA_V_LOCK_KMH = 25.0
DELTA_V_WINDOW_MS = 150
G = 9.80665
HARD_BRAKING_MS2 = -0.45 * G
SPEED_SLOPE_WINDOW_MS = 1000  # two halves of 500 ms
SPEED_SLOPE_MIN_SAMPLES = 2  # per half
SPEED_SLOPE_MAX_GAP_MS = 300
DEBOUNCE_MS = 10_000
CONTEXT_MS = 2 * SPEED_SLOPE_WINDOW_MS  # rows before each chunk that detection sees again


@dataclass(frozen=True)
class Trigger:
    """One trigger instant."""

    kind: str
    t_ms: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    """A frozen event window, ready to sign as an event batch."""

    kind: str
    trigger_ms: int
    triggers: tuple[Trigger, ...]
    locked: bool
    table: pa.Table

    def meta(self, pre_s: float, post_s: float) -> dict[str, Any]:
        """The ``carvault.event`` description signed with the batch."""
        return {
            "kind": self.kind,
            "trigger_ms": self.trigger_ms,
            "legal_basis": LEGAL_BASIS[self.kind],
            "locked": self.locked,
            "pre_s": pre_s,
            "post_s": post_s,
            "triggers": [{"kind": t.kind, "t_ms": t.t_ms, **t.detail} for t in self.triggers],
        }

    def batch_table(self, pre_s: float, post_s: float) -> pa.Table:
        """The window with its event description in the Parquet metadata."""
        return self.table.replace_schema_metadata({b"carvault.event": json.dumps(self.meta(pre_s, post_s)).encode()})


def _rising(values: np.ndarray) -> np.ndarray:
    prev = np.concatenate(([False], values[:-1]))
    return values & ~prev


def _bool_col(table: pa.Table, name: str) -> np.ndarray | None:
    if not has_column(table, name):
        return None
    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def _float_col(table: pa.Table, name: str) -> np.ndarray | None:
    if not has_column(table, name):
        return None
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def speed_acceleration(t_ms: np.ndarray, speed_kmh: np.ndarray) -> np.ndarray:
    """Longitudinal acceleration (m/s^2) from speed: half-window means over the last second; NaN without data."""
    n_rows = len(t_ms)
    ok = ~np.isnan(speed_kmh)
    ts = (t_ms - t_ms[0]) / 1000.0
    count = np.concatenate(([0], np.cumsum(ok)))
    sum_v = np.concatenate(([0.0], np.cumsum(np.where(ok, speed_kmh, 0.0))))
    sum_t = np.concatenate(([0.0], np.cumsum(np.where(ok, ts, 0.0))))
    lo = np.searchsorted(t_ms, t_ms - SPEED_SLOPE_WINDOW_MS, side="right")
    mid = np.searchsorted(t_ms, t_ms - SPEED_SLOPE_WINDOW_MS // 2, side="right")
    hi = np.arange(1, n_rows + 1)
    n1, n2 = count[mid] - count[lo], count[hi] - count[mid]
    with np.errstate(invalid="ignore", divide="ignore"):
        dv = (sum_v[hi] - sum_v[mid]) / n2 - (sum_v[mid] - sum_v[lo]) / n1
        dt = (sum_t[hi] - sum_t[mid]) / n2 - (sum_t[mid] - sum_t[lo]) / n1
        acc = dv / 3.6 / dt
    # Coverage: valid samples reach both ends of the window, with no gap between them above the limit.
    tv = t_ms[ok]
    a, b = count[lo], count[hi]
    has = (n1 >= SPEED_SLOPE_MIN_SAMPLES) & (n2 >= SPEED_SLOPE_MIN_SAMPLES)
    first = tv[np.minimum(a, len(tv) - 1)] if len(tv) else t_ms
    last = tv[np.maximum(b - 1, 0)] if len(tv) else t_ms
    big = np.concatenate(([0], np.cumsum(np.diff(tv) > SPEED_SLOPE_MAX_GAP_MS)))
    gaps = big[np.maximum(b - 1, 0)] - big[np.minimum(a, len(big) - 1)] if len(tv) else np.zeros(n_rows)
    covered = (
        has
        & (first - (t_ms - SPEED_SLOPE_WINDOW_MS) <= SPEED_SLOPE_MAX_GAP_MS)
        & (t_ms - last <= SPEED_SLOPE_MAX_GAP_MS)
        & (gaps == 0)
    )
    return np.where(covered & (dt > 0), acc, np.nan)


def _crash_triggers(table: pa.Table, t: np.ndarray) -> list[Trigger]:
    """Crash triggers from speed (delta-V within 150 ms) and from the recorder's own delta-V."""
    found: list[Trigger] = []
    speed = _float_col(table, "Vehicle.Speed")
    if speed is not None:
        j = np.searchsorted(t, t - DELTA_V_WINDOW_MS, side="left")
        dv = speed - speed[j]
        valid = ~np.isnan(dv) & (t - t[j] <= DELTA_V_WINDOW_MS + 50)
        hit = valid & (np.abs(dv) >= DELTA_V_TRIGGER_KMH)
        for i in np.flatnonzero(_rising(hit)).tolist():
            found.append(
                Trigger(
                    "crash",
                    int(t[i]),
                    {"delta_v_kmh": round(float(dv[i]), 1), "locked": bool(abs(dv[i]) >= DELTA_V_LOCK_KMH)},
                )
            )
    edr_dv = _float_col(table, "Vehicle.EDR.DeltaV.Longitudinal")
    if edr_dv is not None:
        hit = np.nan_to_num(np.abs(edr_dv)) >= DELTA_V_TRIGGER_KMH
        for i in np.flatnonzero(_rising(hit)).tolist():
            found.append(
                Trigger(
                    "crash",
                    int(t[i]),
                    {"delta_v_kmh": float(edr_dv[i]), "locked": bool(abs(edr_dv[i]) >= DELTA_V_LOCK_KMH)},
                )
            )
    return found


def _hard_braking_triggers(table: pa.Table, t: np.ndarray) -> list[Trigger]:
    """Hard braking from the accelerometer, or from the speed trace on rows without one."""
    acc = _float_col(table, "Vehicle.Acceleration.Longitudinal")
    if acc is None:
        acc = np.full(len(t), np.nan)
    speed = _float_col(table, "Vehicle.Speed")
    from_speed = np.isnan(acc) & (speed is not None)
    if from_speed.any() and speed is not None:
        acc = np.where(from_speed, speed_acceleration(t, speed), acc)
    hard = np.nan_to_num(acc) <= HARD_BRAKING_MS2
    return [
        Trigger(
            "hard_braking",
            int(t[i]),
            {
                "deceleration_g": round(float(-acc[i] / G), 2),
                "signal": "Vehicle.Speed" if from_speed[i] else "Vehicle.Acceleration.Longitudinal",
            },
        )
        for i in np.flatnonzero(_rising(hard)).tolist()
    ]


def detect(table: pa.Table) -> list[Trigger]:
    """Every trigger instant in a table (10 Hz rows), debounced per kind."""
    if table.num_rows == 0:
        return []
    t = table.column("t").cast(pa.int64()).to_numpy()
    found = _crash_triggers(table, t)
    for name, kind in (
        ("Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed", "restraint"),
        ("Vehicle.Cabin.Seat.Row1.PassengerSide.Airbag.IsDeployed", "restraint"),
        ("Vehicle.ADAS.ABS.IsEngaged", "abs"),
        ("Vehicle.EDR.AEB.IsEngaged", "aeb"),
    ):
        col = _bool_col(table, name)
        if col is not None:
            found.extend(Trigger(kind, int(t[i]), {"signal": name}) for i in np.flatnonzero(_rising(col)).tolist())
    found.extend(_hard_braking_triggers(table, t))
    found.sort(key=lambda x: (x.t_ms, SEVERITY.index(x.kind)))
    last: dict[str, int] = {}
    out = []
    for trig in found:
        if trig.t_ms - last.get(trig.kind, -(10**15)) >= DEBOUNCE_MS:
            out.append(trig)
            last[trig.kind] = trig.t_ms
    return out


class EventRecorder:
    """Ring buffer of the last ``pre_s + post_s`` seconds; freezes a window around each group of triggers."""

    def __init__(self, catalogue: Catalogue, pre_s: float = 30.0, post_s: float = 10.0) -> None:
        self.catalogue = catalogue
        self.pre_ms = int(pre_s * 1000)
        self.post_ms = int(post_s * 1000)
        self.pre_s, self.post_s = pre_s, post_s
        self._buffer: pa.Table | None = None
        self._pending: list[Trigger] = []
        self._last_seen_ms = -(10**15)

    def _columns(self, table: pa.Table) -> list[str]:
        keep = ["t"]
        for name in table.column_names[1:]:
            sig = self.catalogue.get(name)
            if sig is not None and sig.category not in EXCLUDED_CATEGORIES:
                keep.append(name)
        return keep

    def feed(self, chunk: pa.Table) -> list[EventRecord]:
        """Add rows (in time order); return the event records whose post-event time has now passed."""
        if chunk.num_rows == 0:
            return []
        chunk = chunk.select(self._columns(chunk))
        first = int(chunk.column("t")[0].cast(pa.int64()).as_py())
        if first <= self._last_seen_ms:
            # The clock stepped back (or data was replayed): restart the buffer rather than mix time lines.
            self._buffer = None
            self._last_seen_ms = first - 1
        buf = chunk if self._buffer is None else pa.concat_tables([self._buffer, chunk], promote_options="default")
        t = buf.column("t").cast(pa.int64()).to_numpy()
        context_start = int(np.searchsorted(t, int(chunk.column("t")[0].cast(pa.int64()).as_py()) - CONTEXT_MS))
        new = [x for x in detect(buf.slice(context_start)) if x.t_ms > self._last_seen_ms]
        self._last_seen_ms = int(t[-1])
        self._pending.extend(new)
        records = self._freeze(buf, t, final=False)
        # Keep what a future window can still need: pre-event time before the oldest pending trigger.
        oldest = min([p.t_ms for p in self._pending], default=int(t[-1])) - self.pre_ms
        keep_from = int(np.searchsorted(t, min(oldest, int(t[-1]) - self.pre_ms)))
        self._buffer = buf.slice(keep_from)
        return records

    def flush(self) -> list[EventRecord]:
        """Freeze whatever is pending (ignition off, shutdown)."""
        if self._buffer is None:
            return []
        t = self._buffer.column("t").cast(pa.int64()).to_numpy()
        return self._freeze(self._buffer, t, final=True)

    def _freeze(self, buf: pa.Table, t: np.ndarray, final: bool) -> list[EventRecord]:
        records = []
        while self._pending:
            group = [self._pending[0]]
            for trig in self._pending[1:]:
                if trig.t_ms - group[-1].t_ms <= self.post_ms:
                    group.append(trig)
            end = group[-1].t_ms + self.post_ms
            if t[-1] < end and not final:
                break
            start = group[0].t_ms - self.pre_ms
            a, b = int(np.searchsorted(t, start)), int(np.searchsorted(t, end, side="right"))
            kind = min((g.kind for g in group), key=SEVERITY.index)
            main = next(g for g in group if g.kind == kind)
            locked = kind == "restraint" or any(g.detail.get("locked") for g in group)
            records.append(EventRecord(kind, main.t_ms, tuple(group), locked, buf.slice(a, b - a)))
            self._pending = self._pending[len(group) :]
        return records
