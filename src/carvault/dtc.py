"""Diagnostic trouble codes: the record the car sends, its checks, and what common codes mean in plain words.

A car reports its trouble codes in one string signal, ``Vehicle.CarVault.Diagnostics.DTCs`` (overlay: VSS 6.0's
``Vehicle.Diagnostics.DTCList`` is a string array that CarVault's scalar wire columns cannot carry, and it holds
bare codes only). The value is a JSON array, sent when it changes, of records::

    {"code": "P0A80", "status": "active", "ecu": "BMS", "first_seen": 1767225600000, "last_seen": 1767225660000}

``code`` follows SAE J2012 / ISO 15031-6 (a system letter P, C, B or U and four hex digits); ``status`` is one
of ``STATUSES``: *pending* (seen once, not yet confirmed), *active* (confirmed and present: its lamp is lit),
*stored* (confirmed earlier, no longer present) or *cleared* (erased by a workshop or by the car after enough
clean drive cycles); times are UTC milliseconds. The car and the gateway read it with the same ``parse_dtcs``,
so a malformed list is refused at the gateway with a typed error.

``meaning()`` looks a code up in ``data/dtc_codes.csv``: a short table, written for CarVault, of codes common on
electric cars with their system, severity, warning lamp and plain-language meaning and advice in English and
Simplified Chinese. Manufacturer-specific codes can mean other things on other makes; an unknown code is shown
as itself with its system from the first letter.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from carvault.errors import ValueOutOfRange

DTC_SIGNAL = "Vehicle.CarVault.Diagnostics.DTCs"
DTC_COUNT_SIGNAL = "Vehicle.Diagnostics.DTCCount"
LAMP_BRANCH = "Vehicle.CarVault.WarningLamp."
STATUSES = ("pending", "active", "stored", "cleared")
LAMP_STATES = ("OFF", "ON", "FLASHING")
SEVERITIES = ("low", "medium", "high")
CODE_RE = re.compile(r"^[PCBU][0-3][0-9A-F]{3}$")
MAX_RECORDS = 64  # a car keeps a few dozen codes at most; more is malformed
MAX_ECU_LEN = 32
SYSTEM_OF_LETTER = {"P": "powertrain", "C": "chassis", "B": "body", "U": "network"}
_KEYS = {"code", "status", "ecu", "first_seen", "last_seen"}


@dataclass(frozen=True)
class DtcRecord:
    """One trouble code as the car reports it."""

    code: str
    status: str
    ecu: str
    first_seen: int
    last_seen: int

    def to_json(self) -> dict[str, Any]:
        """The wire form (one element of the signal's JSON array)."""
        return {
            "code": self.code,
            "status": self.status,
            "ecu": self.ecu,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


@dataclass(frozen=True)
class DtcMeaning:
    """A code's plain-language entry in the table."""

    code: str
    system: str
    severity: str
    lamp: str
    meaning_en: str
    meaning_zh: str
    advice_en: str
    advice_zh: str

    def meaning(self, locale: str) -> str:
        """What the code means, in ``locale`` (zh-CN or English)."""
        return self.meaning_zh if locale.lower().startswith("zh") else self.meaning_en

    def advice(self, locale: str) -> str:
        """What the owner should do, in ``locale``."""
        return self.advice_zh if locale.lower().startswith("zh") else self.advice_en


def _bad(message: str) -> ValueOutOfRange:
    return ValueOutOfRange(f"signal {DTC_SIGNAL}: {message}", signal=DTC_SIGNAL)


def _record(item: object, i: int) -> DtcRecord:
    if not isinstance(item, dict) or set(item) != _KEYS:
        raise _bad(f"record {i} must be an object with exactly {sorted(_KEYS)}")
    code, status, ecu = item["code"], item["status"], item["ecu"]
    first, last = item["first_seen"], item["last_seen"]
    if not isinstance(code, str) or not CODE_RE.match(code):
        raise _bad(f"record {i}: code {code!r} is not an SAE J2012 code like P0A80")
    if status not in STATUSES:
        raise _bad(f"record {i}: status {status!r} is not one of {list(STATUSES)}")
    if not isinstance(ecu, str) or not 0 < len(ecu) <= MAX_ECU_LEN or not ecu.isprintable():
        raise _bad(f"record {i}: ecu must be a short printable name")
    for name, v in (("first_seen", first), ("last_seen", last)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53:
            raise _bad(f"record {i}: {name} must be UTC milliseconds")
    if last < first:
        raise _bad(f"record {i}: last_seen is before first_seen")
    return DtcRecord(code, status, ecu, first, last)


def parse_dtcs(text: str) -> list[DtcRecord]:
    """The records of one value of the DTC signal; raises ``ValueOutOfRange`` (a typed 400) when malformed."""
    try:
        items = json.loads(text)
    except ValueError:
        raise _bad("value is not JSON") from None
    if not isinstance(items, list) or len(items) > MAX_RECORDS:
        raise _bad(f"value must be a JSON array of at most {MAX_RECORDS} records")
    records = [_record(item, i) for i, item in enumerate(items)]
    if len({r.code for r in records}) != len(records):
        raise _bad("a code appears twice")
    return records


def encode_dtcs(records: list[DtcRecord]) -> str:
    """The signal value for ``records`` (compact JSON, codes in order)."""
    return json.dumps([r.to_json() for r in sorted(records, key=lambda r: r.code)], separators=(",", ":"))


@cache
def meanings() -> dict[str, DtcMeaning]:
    """The plain-language table shipped with CarVault (``carvault/data/dtc_codes.csv``)."""
    text = resources.files("carvault").joinpath("data/dtc_codes.csv").read_text(encoding="utf-8")
    out: dict[str, DtcMeaning] = {}
    for r in csv.DictReader(text.splitlines()):
        m = DtcMeaning(**{k: r[k] for k in DtcMeaning.__dataclass_fields__})
        if not CODE_RE.match(m.code) or m.severity not in SEVERITIES:
            raise ValueError(f"dtc_codes.csv: bad row for {m.code}")
        out[m.code] = m
    return out


def meaning(code: str) -> DtcMeaning | None:
    """The table's entry for ``code``, or None for a code the table does not explain."""
    return meanings().get(code)


def system_of(code: str) -> str:
    """The vehicle system a code's first letter names (powertrain, chassis, body, network)."""
    return SYSTEM_OF_LETTER.get(code[:1], "unknown")
