"""Time windows given by people: the one rule that checks them, with one stable code for each mistake.

Every place that takes a window (telemetry, timeline, exports, incident packages, authority orders, the drive page)
checks it here, so an end before the start is never answered with "at most 24 hours" (issue 13).
"""

from __future__ import annotations

from carvault.errors import WindowEmpty, WindowReversed, WindowTooLong

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def span_text(ms: int) -> str:
    """A window limit in words: "24 hours", "400 days"."""
    if ms % DAY_MS == 0 and ms >= 2 * DAY_MS:
        return f"{ms // DAY_MS} days"
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS} hours" if ms != HOUR_MS else "1 hour"
    return f"{ms // 1000} seconds"


def check_window(
    start_ms: int, end_ms: int, most_ms: int | None = None, *, what: str = "the window", instead: str = ""
) -> None:
    """Refuse a window whose end comes before its start, equals it, or lies more than ``most_ms`` after it.

    Each mistake has its own error (``window_reversed``, ``window_empty``, ``window_too_long``), naming the
    window's bounds and, when too long, the limit (``most_ms``) so a page can say it in the reader's language;
    ``instead`` says what to use for longer windows.
    """
    if end_ms < start_ms:
        raise WindowReversed(
            f"{what} ends before it starts: give an end after the start", start_ms=start_ms, end_ms=end_ms
        )
    if end_ms == start_ms:
        raise WindowEmpty(f"{what} ends when it starts: give an end after the start", start_ms=start_ms, end_ms=end_ms)
    if most_ms is not None and end_ms - start_ms > most_ms:
        raise WindowTooLong(
            f"{what} may span at most {span_text(most_ms)}{instead}", start_ms=start_ms, end_ms=end_ms, most_ms=most_ms
        )
