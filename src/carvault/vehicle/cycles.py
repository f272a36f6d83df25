"""Standard driving cycles (CLTC-P, WLTC 3b, UDDS, HWFET, US06, NEDC) read from the reference data.

The cycles are the published speed traces at 1 Hz, read unchanged from ``drive_cycles/`` in the
reference folder (``shared/reference``; see its SOURCES.md). The folder lives outside the repository,
so it is located through ``CARVAULT_REFERENCE_DIR`` or, by default, the copy shipped in the package.
The simulator stitches its drives from the *micro-trips* of these cycles (stop to stop).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from carvault.errors import Unavailable

REFERENCE_ENV = "CARVAULT_REFERENCE_DIR"
# src/carvault/vehicle/cycles.py -> parents[3] is the repository root.
# The cycles and the taxi fixes ship inside the package (permissive licenses, see data/reference/SOURCES.md),
# so a fresh machine needs nothing else; CARVAULT_REFERENCE_DIR may point at the full shared/reference.
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference"
KMH = 3.6

# name -> (file, format, speed column); "fastsim" files are `cycSecs,cycMps,...` (m/s).
_SOURCES: dict[str, tuple[str, str, str]] = {
    "CLTC-P": ("cltc_p.csv", "fastsim", "cycMps"),
    "WLTC-3b": ("fastsim_wltc_3b.csv", "fastsim", "cycMps"),
    "UDDS": ("fastsim_udds.csv", "fastsim", "cycMps"),
    "HWFET": ("fastsim_hwfet.csv", "fastsim", "cycMps"),
    "US06": ("fastsim_us06.csv", "fastsim", "cycMps"),
    "NEDC": ("carculator_car_cycles.csv", "carculator", "NEDC"),
    "TSDC-42648": ("fastsim_TSDC_tripno_42648_cycle.csv", "tsdc", "mps"),
}
CYCLE_NAMES: tuple[str, ...] = tuple(_SOURCES)
STANDARD_CYCLES: tuple[str, ...] = ("CLTC-P", "WLTC-3b", "UDDS", "HWFET", "US06", "NEDC")


def reference_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The reference-data folder: ``$CARVAULT_REFERENCE_DIR`` or the copy shipped in ``carvault/data/reference``."""
    env = os.environ if environ is None else environ
    raw = env.get(REFERENCE_ENV, "").strip()
    path = Path(raw).expanduser() if raw else DEFAULT_REFERENCE_DIR
    if not (path / "drive_cycles").is_dir():
        how = f"{REFERENCE_ENV}={raw}" if raw else f"the default {path} ({REFERENCE_ENV} is not set)"
        raise Unavailable(
            f"reference data not found: {how} has no drive_cycles/ folder; set {REFERENCE_ENV} to the "
            "shared/reference folder that holds drive_cycles/ and gps_shenzhen_taxi/",
            path=str(path),
            env=REFERENCE_ENV,
        )
    return path


@dataclass(frozen=True)
class DriveCycle:
    """One speed trace: ``t`` in seconds and ``v`` in m/s, both at 1 Hz (read-only arrays)."""

    name: str
    t: np.ndarray
    v: np.ndarray

    @property
    def duration_s(self) -> float:
        """Length of the trace in seconds."""
        return float(self.t[-1] - self.t[0])

    @property
    def distance_m(self) -> float:
        """Distance driven (trapezoidal integral of speed)."""
        return float(np.trapezoid(self.v, self.t))

    @property
    def max_speed_kmh(self) -> float:
        """Highest speed in km/h."""
        return float(self.v.max() * KMH)

    @property
    def mean_speed_kmh(self) -> float:
        """Mean speed over the whole trace (stops included), km/h."""
        return self.distance_m / self.duration_s * KMH


def _read_columns(path: Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    # utf-8-sig: fastsim's WLTC file starts with a byte-order mark that would corrupt the first header.
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    return [h.strip() for h in rows[0]], rows[1:]


def _parse(name: str, path: Path, fmt: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    delimiter = ";" if fmt == "carculator" else ","
    header, rows = _read_columns(path, delimiter)
    if column not in header:
        raise Unavailable(f"drive cycle file {path} has no column {column!r}", path=str(path))
    i = header.index(column)
    cells = [r[i].strip() if i < len(r) else "" for r in rows]
    if fmt == "carculator":
        # Shorter cycles in this table end in empty cells; the speeds are km/h.
        n = next((k for k, c in enumerate(cells) if not c), len(cells))
        v = np.array(cells[:n], dtype=np.float64) / KMH
        t = np.arange(n, dtype=np.float64)
    else:
        tcol = header.index("time_s" if fmt == "tsdc" else "cycSecs")
        v = np.array(cells, dtype=np.float64)
        t = np.array([r[tcol] for r in rows], dtype=np.float64)
    if len(t) < 2 or not np.allclose(np.diff(t), 1.0, atol=1e-3) or not np.all(np.isfinite(v)):
        raise Unavailable(f"drive cycle {name} in {path} is not a finite 1 Hz trace", path=str(path))
    return np.round(t - t[0]), np.clip(v, 0.0, None)


@cache
def _load(name: str, folder: str) -> DriveCycle:
    file, fmt, column = _SOURCES[name]
    path = Path(folder) / "drive_cycles" / file
    if not path.is_file():
        raise Unavailable(f"drive cycle {name} is missing: {path}", path=str(path))
    t, v = _parse(name, path, fmt, column)
    t.flags.writeable = False
    v.flags.writeable = False
    return DriveCycle(name=name, t=t, v=v)


def load_cycle(name: str, reference: Path | None = None) -> DriveCycle:
    """One cycle by name (see ``CYCLE_NAMES``), read once and cached."""
    if name not in _SOURCES:
        raise KeyError(f"unknown drive cycle {name!r}; known: {', '.join(CYCLE_NAMES)}")
    folder = reference if reference is not None else reference_dir()
    return _load(name, str(Path(folder).resolve()))


def load_cycles(reference: Path | None = None) -> dict[str, DriveCycle]:
    """Every known cycle, by name."""
    folder = reference if reference is not None else reference_dir()
    return {n: load_cycle(n, folder) for n in CYCLE_NAMES}


@dataclass(frozen=True)
class Microtrip:
    """A stop-to-stop piece of a cycle: ``v`` (m/s, 1 Hz) starts and ends at standstill."""

    cycle: str
    start_s: int
    v: np.ndarray

    @property
    def duration_s(self) -> int:
        """Seconds from pulling away to standing still."""
        return len(self.v) - 1

    @property
    def distance_m(self) -> float:
        """Distance covered."""
        return float(np.trapezoid(self.v))

    @property
    def max_speed_kmh(self) -> float:
        """Highest speed, km/h."""
        return float(self.v.max() * KMH)


def split_microtrips(cycle: DriveCycle) -> tuple[list[Microtrip], list[int]]:
    """Cut a cycle at its stops: the micro-trips and the lengths (s) of the stops between them."""
    moving = cycle.v > 0.0
    edges = np.diff(np.concatenate(([0], moving.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)  # first standing sample after each run
    trips: list[Microtrip] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        v = np.concatenate(([0.0], cycle.v[a:b], [0.0]))
        v.flags.writeable = False
        trips.append(Microtrip(cycle=cycle.name, start_s=max(a - 1, 0), v=v))
    stops = (starts[1:] - ends[:-1]).tolist()
    return trips, [int(s) for s in stops]


@cache
def _library(folder: str) -> tuple[tuple[Microtrip, ...], tuple[int, ...]]:
    trips: list[Microtrip] = []
    stops: list[int] = []
    seen: set[bytes] = set()
    for name in CYCLE_NAMES:
        mt, st = split_microtrips(load_cycle(name, Path(folder)))
        for m in mt:
            key = m.v.tobytes()
            if key not in seen and m.distance_m >= 5.0:  # NEDC repeats its urban part four times
                seen.add(key)
                trips.append(m)
        stops.extend(s for s in st if s > 0)
    return tuple(trips), tuple(stops)


def microtrip_library(reference: Path | None = None) -> tuple[tuple[Microtrip, ...], tuple[int, ...]]:
    """All distinct micro-trips of all cycles, and the stop lengths (s) seen between them."""
    folder = reference if reference is not None else reference_dir()
    return _library(str(Path(folder).resolve()))
