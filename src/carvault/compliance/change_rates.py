"""Change rates: how often the catalogue's on-change signals are actually sent, measured with the simulator.

A signal sampled ``on_change`` (``signals.Sampling``) is sent at most at its catalogue rate, but only when its value
(as sent, at its resolution) changes, and once when the car wakes. Its catalogue rate is therefore a maximum; what
a car typically sends is far less. The data sheet (``compliance.data_sheet``) states both, the typical figure from
this measurement:

- the simulator (``vehicle.simulator.simulate_day``, every catalogue signal) runs ``VEHICLES`` vehicles
  (``fleet_vins(len, SEED)``) over the days of ``DAYS`` (a Tuesday to a Saturday), with seed ``SEED``;
- for each on-change signal, ``sends`` counts the values it would send (non-null values of its column: changes and
  wakes), and ``on_seconds`` the whole seconds the cars were on (rows at 1 Hz: driving, charging, before and after
  a drive);
- the typical rate is ``sends / on_seconds`` (Hz, never above the catalogue rate).

The result is kept in ``carvault/data/change_rates.csv`` (``python -m carvault.compliance.change_rates`` writes it
to standard output); a test runs the measurement again and requires the same file, so the figures cannot drift from
the simulator and the catalogue.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc

from carvault.signals import Catalogue, Signal, catalogue

DATA_FILE = "data/change_rates.csv"
SEED = 2026
VEHICLES = 3
DAYS = (dt.date(2026, 3, 3), dt.date(2026, 3, 7))  # first and last simulated day, inclusive
COLUMNS = ("path", "sends", "on_seconds")


@dataclass(frozen=True)
class ChangeRate:
    """One on-change signal's measured sends over the cars' time on."""

    path: str
    sends: int
    on_seconds: int

    def rate_hz(self, signal: Signal) -> float:
        """The typical rate: sends per second on, at most the catalogue rate."""
        return min(float(signal.rate_hz), self.sends / self.on_seconds) if self.on_seconds else 0.0


def _days() -> list[dt.date]:
    first, last = DAYS
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def measure(cat: Catalogue | None = None) -> list[ChangeRate]:
    """Run the measurement described in the module docstring (a few seconds per simulated day)."""
    from carvault.vehicle.simulator import fleet_vins, simulate_day

    cat = cat or catalogue()
    paths = [s.path for s in cat if s.on_change]
    sends = dict.fromkeys(paths, 0)
    on_seconds = 0
    for vin in fleet_vins(VEHICLES, SEED):
        for day in _days():
            table = simulate_day(vin, SEED, day).table
            t = table.column("t").cast(pa.int64())
            on_seconds += pc.sum(pc.equal(pc.remainder(t, 1000), 0)).as_py() or 0
            for p in paths:
                column = table.column(p)
                sends[p] += len(column) - column.null_count
    return [ChangeRate(p, sends[p], on_seconds) for p in paths]


def header() -> str:
    """The comment lines that say how the file was made."""
    first, last = DAYS
    return (
        "# Sends of each on-change signal, measured with the simulator (carvault.compliance.change_rates):\n"
        f"# {VEHICLES} vehicles (fleet_vins({VEHICLES}, {SEED})), days {first}..{last}, seed {SEED}; "
        "sends = non-null values (changes and wakes), on_seconds = whole seconds the cars were on.\n"
        "# Regenerate: python -m carvault.compliance.change_rates > src/carvault/data/change_rates.csv\n"
    )


def render(rates: list[ChangeRate]) -> str:
    """The data file's text."""
    lines = [header(), ",".join(COLUMNS) + "\n"]
    lines += [f"{r.path},{r.sends},{r.on_seconds}\n" for r in rates]
    return "".join(lines)


@cache
def measured() -> dict[str, ChangeRate]:
    """The kept measurement, by signal path (read once)."""
    text = resources.files("carvault").joinpath(DATA_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {r["path"]: ChangeRate(r["path"], int(r["sends"]), int(r["on_seconds"])) for r in rows}


def typical_rate_hz(signal: Signal) -> float:
    """What a car typically sends of ``signal`` per second on: its catalogue rate if periodic, else measured.

    An on-change signal missing from the measurement (added to the catalogue since) counts at its maximum, so the
    estimate errs on the high side until the file is regenerated (a test requires it to be current).
    """
    if not signal.on_change:
        return float(signal.rate_hz)
    rate = measured().get(signal.path)
    return rate.rate_hz(signal) if rate is not None else float(signal.rate_hz)


if __name__ == "__main__":  # pragma: no cover - the generator, checked by the test that compares its output
    sys.stdout.write(render(measure()))
