"""The portal's message catalogue: English and Simplified Chinese, chosen by the owner or Accept-Language.

Messages live in ``web/messages/<language>.json`` (flat ``key -> text``, ``{name}`` placeholders); a test
checks that both files have the same keys and that every key the templates use exists. The language is
the owner's explicit choice (the ``carvault_lang`` cookie, also kept on the account), else the first
supported language in ``Accept-Language``, else English.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from carvault.timezones import REGION_TIME_ZONES

LANGUAGES: dict[str, str] = {"en": "English", "zh-CN": "简体中文"}
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "carvault_lang"
TZ_COOKIE = "carvault_tz"
REGION_TIMEZONES = REGION_TIME_ZONES  # one table for the portal and the incident report


@cache
def messages(language: str) -> dict[str, str]:
    """The catalogue of one language."""
    text = resources.files("carvault.web").joinpath("messages", f"{language}.json").read_text(encoding="utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def supported(language: str | None) -> str | None:
    """The supported language a tag names (``zh``, ``zh-Hans``, ``zh-CN`` -> ``zh-CN``), or None."""
    if not language:
        return None
    tag = language.strip().lower().replace("_", "-")
    if tag.startswith("zh"):
        # Traditional-script tags are not Simplified Chinese; everything else written zh is.
        return None if any(x in tag for x in ("-hant", "-tw", "-hk", "-mo")) else "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def negotiate(accept_language: str | None) -> str:
    """The best supported language for an Accept-Language header (RFC 9110 §12.5.4 quality values)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = supported(tag)
        if lang and q > 0:
            ranked.append((-q, i, lang))
    return sorted(ranked)[0][2] if ranked else DEFAULT_LANGUAGE


def timezone(name: str | None, region: str) -> tuple[str, tzinfo]:
    """The display time zone: the browser's (cookie), else the region's usual one, else UTC."""
    for candidate in (name, REGION_TIMEZONES.get(region), "UTC"):
        if candidate:
            try:
                return candidate, ZoneInfo(candidate)
            except (ValueError, KeyError, OSError):
                continue
    return "UTC", UTC


@dataclass(frozen=True)
class Translator:
    """Messages and number/time formatting for one language and time zone."""

    language: str
    tz_name: str
    tz: tzinfo

    def __call__(self, key: str, **values: Any) -> str:
        text = messages(self.language).get(key) or messages(DEFAULT_LANGUAGE).get(key) or key
        return text.format(**values) if values else text

    def maybe(self, key: str, default: str) -> str:
        """The message for ``key`` if the catalogue has one, else ``default`` (for open-ended names)."""
        return messages(self.language).get(key) or messages(DEFAULT_LANGUAGE).get(key) or default

    @property
    def tz_label(self) -> str:
        """The display time zone as people read it (``zone_label`` of ``tz_name``)."""
        return self.zone_label(self.tz_name)

    def zone_label(self, name: str) -> str:
        """A time zone as people read it: its name in this language where the catalogue has one (else, in English,
        its IANA id) and its UTC offset now, e.g. ``中国标准时间（UTC+08:00）``."""
        try:
            zone: tzinfo = self.tz if name == self.tz_name else ZoneInfo(name)
        except (ValueError, KeyError, OSError):
            return name
        offset = datetime.now(zone).utcoffset()
        minutes = int(offset.total_seconds() // 60) if offset else 0
        sign = "+" if minutes >= 0 else "-"
        utc = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        label = messages(self.language).get(f"a11y.tz.{name}") or (None if self.zh else name)
        if not label:
            return utc
        return f"{label}（{utc}）" if self.zh else f"{label} ({utc})"

    @property
    def zh(self) -> bool:
        """True for Chinese."""
        return self.language == "zh-CN"

    def dt(self, ms: int | None, fmt: str = "datetime") -> str:
        """A moment in the display time zone: ``datetime``, ``date``, ``time``, ``time_s`` or ``input``."""
        if ms is None:
            return "—"
        d = datetime.fromtimestamp(ms / 1000, self.tz)
        if fmt == "time_ms":
            return d.strftime("%H:%M:%S.") + f"{d.microsecond // 100_000}"
        patterns = {
            "datetime": "%Y-%m-%d %H:%M",
            "date": "%Y-%m-%d",
            "time": "%H:%M",
            "time_s": "%H:%M:%S",
            "datetime_s": "%Y-%m-%d %H:%M:%S",
            "input": "%Y-%m-%dT%H:%M:%S",
            "input_date": "%Y-%m-%d",
        }
        return d.strftime(patterns[fmt])

    def day(self, ms: int) -> str:
        """A day heading: ``Friday, 20 November 2026`` / ``2026年11月20日 星期五``."""
        d = datetime.fromtimestamp(ms / 1000, self.tz)
        weekday = self(f"weekday.{d.weekday()}")
        if self.zh:
            return f"{d.year}年{d.month}月{d.day}日 {weekday}"
        return f"{weekday}, {d.day} {self(f'month.{d.month}')} {d.year}"

    def duration(self, seconds: float | None) -> str:
        """``1 h 05 min`` / ``1小时05分``; seconds under a minute."""
        if seconds is None:
            return "—"
        s = int(round(seconds))
        h, m = divmod(s // 60, 60)
        if h:
            return self("unit.h_min", h=h, m=f"{m:02d}")
        if m:
            return self("unit.min", m=m)
        return self("unit.s", s=s)

    def num(self, value: float | None, digits: int = 1, unit: str = "") -> str:
        """A number with a unit, or a dash when it was not measured."""
        if value is None:
            return "—"
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}".strip()

    def count(self, n: int, noun: str) -> str:
        """A count with its noun, the one way every page shows one: "1 year", "2 years"; in Chinese with the noun's
        measure word, "1 年", "3 个信号" (messages ``edges.n.<noun>.one`` / ``.other``)."""
        return self(f"edges.n.{noun}.{'one' if n == 1 else 'other'}", n=f"{n:,}")

    def period(self, seconds: int) -> str:
        """A stated period: up to 72 hours in hours ("72 hours"), longer in whole days ("5 days"), else minutes."""
        if seconds > 72 * 3600 and seconds % 86400 == 0:
            return self.count(seconds // 86400, "day")
        if seconds % 3600 == 0:
            return self.count(seconds // 3600, "hour")
        return self.count(max(1, seconds // 60), "minute")

    def retention(self, days: int | None) -> str:
        """A retention period: whole years as years, else days."""
        if not days:
            return self("consent.not_kept")
        if days % 365 == 0:
            return self.count(days // 365, "year")
        return self.count(days, "day")

    def km(self, metres: float | None) -> str:
        """A distance in km."""
        return "—" if metres is None else self.num(metres / 1000, 1 if metres < 100_000 else 0, "km")

    def bytes(self, n: int | None) -> str:
        """A file size."""
        if n is None:
            return "—"
        size = float(n)
        for unit in ("B", "KB", "MB", "GB"):
            if size < 1024 or unit == "GB":
                return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
            size /= 1024
        return f"{n} B"


def translator(language: str, tz_cookie: str | None, region: str) -> Translator:
    """A translator for a request."""
    name, tz = timezone(tz_cookie, region)
    return Translator(language if language in LANGUAGES else DEFAULT_LANGUAGE, name, tz)
