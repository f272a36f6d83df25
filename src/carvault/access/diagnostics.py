"""The owner's view of their car's health: trouble codes and warning lamps in plain words.

Read through ``Grants.access`` like every other read of a vehicle's data: the owner sees everything; a grant holder
sees the codes and lamps only when its grant covers their signals (the ``diagnostics`` category and the lamps of
the categories it names) and only inside its history window; each third-party read is in the owner's access log.
The codes come from the car's own ``Vehicle.CarVault.Diagnostics.DTCs`` records (``carvault/dtc.py``): the latest
list in the window is the car's state now, and every code seen in the window is listed with its first and last
sighting and its latest status, explained from ``data/dtc_codes.csv`` in English and Simplified Chinese.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from carvault.access.grants import Access
from carvault.dtc import DTC_COUNT_SIGNAL, DTC_SIGNAL, LAMP_BRANCH, STATUSES, meaning, parse_dtcs, system_of
from carvault.errors import CarVaultError, InvalidQuery
from carvault.protocol.columns import has_column
from carvault.signals import Catalogue, Signal

DAY_MS = 86_400_000
DEFAULT_DAYS = 30
MAX_DAYS = 400
SOFTWARE = ("Vehicle.CarVault.Software.Version", "Vehicle.CarVault.Software.UpdateState")
SERVICE = ("Vehicle.Service.DistanceToService", "Vehicle.Service.TimeToService", "Vehicle.Service.IsServiceDue")
_ORDER = {s: i for i, s in enumerate(("active", "pending", "stored", "cleared"))}


@dataclass
class CodeSeen:
    """One trouble code as seen over the window."""

    code: str
    status: str
    ecu: str
    first_seen: int
    last_seen: int
    current: bool = False

    def to_json(self) -> dict[str, Any]:
        """The code with its plain-language entry (or ``known: false``)."""
        m = meaning(self.code)
        return {
            "code": self.code,
            "status": self.status,
            "current": self.current,
            "ecu": self.ecu,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "system": m.system if m else system_of(self.code),
            "known": m is not None,
            "severity": m.severity if m else None,
            "lamp": (m.lamp or None) if m else None,
            "meaning": {"en": m.meaning_en, "zh-CN": m.meaning_zh} if m else None,
            "advice": {"en": m.advice_en, "zh-CN": m.advice_zh} if m else None,
        }


@dataclass
class Report:
    """What the owner sees: the codes, the lamps, service and software, as of the latest reading in the window."""

    vin: str
    start_ms: int
    end_ms: int
    covered: bool
    as_of_ms: int | None = None
    codes: list[CodeSeen] = field(default_factory=list)
    lamps: list[dict[str, Any]] = field(default_factory=list)
    latest: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The API body."""
        return {
            "vin": self.vin,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "covered": self.covered,
            "as_of_ms": self.as_of_ms,
            "active_count": sum(1 for c in self.codes if c.current and c.status == "active"),
            "codes": [c.to_json() for c in self.codes],
            "lamps": self.lamps,
            "service": {p.rsplit(".", 1)[1]: self.latest.get(p) for p in SERVICE},
            "software": {p.rsplit(".", 1)[1]: self.latest.get(p) for p in SOFTWARE},
        }


def diagnostic_signals(catalogue: Catalogue) -> list[str]:
    """The paths the report reads: the code list and count, every lamp, service and software state."""
    lamps = [s.path for s in catalogue if s.path.startswith(LAMP_BRANCH)]
    return [DTC_SIGNAL, DTC_COUNT_SIGNAL, *lamps, *SERVICE, *SOFTWARE]


class Diagnostics:
    """Builds the owner's diagnostics report from the stored telemetry, through a caller's access."""

    def __init__(self, catalogue: Catalogue, telemetry: Any) -> None:
        self.catalogue = catalogue
        self.telemetry = telemetry

    def window(self, access: Access, end_ms: int, days: int | None) -> tuple[int, int]:
        """The window the report covers: ``days`` (default 30) up to ``end_ms``, cut to a grant's history window."""
        days = DEFAULT_DAYS if days is None else days
        if not 1 <= days <= MAX_DAYS:
            raise InvalidQuery(f"days must be between 1 and {MAX_DAYS}", days=days)
        return access.view.clip(end_ms - days * DAY_MS, end_ms)

    def report(self, access: Access, start_ms: int, end_ms: int) -> Report:
        """The report of one vehicle over ``[start_ms, end_ms)`` with what the access's view may serve."""
        allowed = {s.path for s in access.view.allowed()}
        chosen: list[Signal] = [self.catalogue[p] for p in diagnostic_signals(self.catalogue) if p in allowed]
        report = Report(access.vin, start_ms, end_ms, covered=DTC_SIGNAL in allowed)
        if not chosen or end_ms <= start_ms:
            return report
        table = self.telemetry.window(access.vin, start_ms, end_ms, chosen)
        if table.num_rows == 0:
            return report
        t = table.column("t").cast(pa.int64()).to_numpy()
        report.as_of_ms = int(t[-1])
        for s in chosen:
            col = table.column(s.path)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            if not valid.any():
                continue
            last = int(valid.nonzero()[0][-1])
            report.latest[s.path] = col[last].as_py()
            if s.path.startswith(LAMP_BRANCH):
                report.lamps.append(self._lamp(s, col, valid, t, last))
        if has_column(table, DTC_SIGNAL):
            report.codes = self._codes(table.column(DTC_SIGNAL).to_pylist())
        report.lamps.sort(key=lambda lamp: (lamp["state"] == "OFF", lamp["name"]))
        return report

    @staticmethod
    def _lamp(s: Signal, col: pa.ChunkedArray, valid: Any, t: Any, last: int) -> dict[str, Any]:
        state = col[last].as_py()
        since = last
        rows = valid.nonzero()[0]
        for i in reversed(rows.tolist()):  # back to where the lamp last changed to this state
            if col[i].as_py() != state:
                break
            since = i
        return {
            "name": s.path[len(LAMP_BRANCH) :],
            "path": s.path,
            "state": state,
            "since_ms": int(t[since]),
            "description": {"en": s.description, "zh-CN": s.description_zh},
        }

    @staticmethod
    def _codes(values: list[str | None]) -> list[CodeSeen]:
        seen: dict[str, CodeSeen] = {}
        latest: list[str] = []
        previous = None
        for value in values:
            if value is None or value == previous:
                continue
            previous = value
            try:
                records = parse_dtcs(value)
            except CarVaultError:
                continue  # the gateway refuses malformed lists; one stored before that check is skipped
            latest = [r.code for r in records]
            for r in records:
                c = seen.get(r.code)
                if c is None:
                    seen[r.code] = CodeSeen(r.code, r.status, r.ecu, r.first_seen, r.last_seen)
                else:
                    c.status, c.ecu = r.status, r.ecu
                    c.first_seen, c.last_seen = min(c.first_seen, r.first_seen), max(c.last_seen, r.last_seen)
        for code in latest:
            seen[code].current = True
        assert set(_ORDER) == set(STATUSES)
        return sorted(seen.values(), key=lambda c: (not c.current, _ORDER[c.status], -c.last_seen, c.code))
