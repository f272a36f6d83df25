"""Each region's local time zone: the one table the owner portal and the incident report read.

Every time CarVault writes for people is given in UTC first; where a region has a usual civil time, the same
instant is also given in it, named with its IANA zone and its UTC offset at that instant (summer time
included), so no reader has to guess which local time is meant. The choices:

- ``cn``: ``Asia/Shanghai``, China's one time zone (UTC+8, no summer time).
- ``eu``: ``Europe/Brussels``, the seat of the EU institutions: Central European Time, the offsets of most
  member states (Portugal and Ireland are an hour behind, Finland, Greece and the Baltics an hour ahead;
  UTC stays the reference).
- ``us``: ``America/New_York``, US Eastern time, where the federal regulator (NHTSA, Washington DC) sits; a
  car in another state still reads its own clock from the UTC line.

A region not listed here (a new deployment) shows UTC only until it is added.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

REGION_TIME_ZONES: dict[str, str] = {"cn": "Asia/Shanghai", "eu": "Europe/Brussels", "us": "America/New_York"}
#: Plain-language names of the zones, for readers who are not engineers.
ZONE_NAMES: dict[str, str] = {
    "Asia/Shanghai": "China time",
    "Europe/Brussels": "Central European time",
    "America/New_York": "US Eastern time",
}


def region_zone(region: str) -> tuple[str, tzinfo] | None:
    """The IANA name and zone of a region's local time, or None when the region has none listed."""
    name = REGION_TIME_ZONES.get(region.strip().lower())
    return (name, ZoneInfo(name)) if name else None


def offset_text(offset: timedelta) -> str:
    """A UTC offset as 'UTC+8', 'UTC-4', 'UTC+5:30'."""
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    h, m = divmod(abs(minutes), 60)
    return f"UTC{sign}{h}" + (f":{m:02d}" if m else "")


def local_text(ms: int, region: str) -> str | None:
    """An instant in the region's local time: 'YYYY-MM-DD HH:MM:SS.mmm China time (Asia/Shanghai, UTC+8)'."""
    found = region_zone(region)
    if found is None:
        return None
    name, zone = found
    dt = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))).astimezone(zone)
    offset = dt.utcoffset() or timedelta(0)
    label = ZONE_NAMES.get(name, name)
    return f"{dt:%Y-%m-%d %H:%M:%S}.{int(ms) % 1000:03d} {label} ({name}, {offset_text(offset)})"
