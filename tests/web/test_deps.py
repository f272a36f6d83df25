"""Query parameters read by hand (times, resampling): one reading each, and a 400 for anything else, never a 500."""

from __future__ import annotations

import pytest

from carvault.errors import InvalidQuery
from carvault.web.deps import MAX_TIME_MS, parse_interval, parse_time

TIMES = [
    ("0", 0),
    ("1762999980000", 1_762_999_980_000),
    (" 1762999980000 ", 1_762_999_980_000),
    ("2026-11-24T08:00:00Z", 1_795_507_200_000),
    ("2026-11-24T08:00:00", 1_795_507_200_000),  # no zone: UTC
    ("2026-11-24T09:00:00+01:00", 1_795_507_200_000),
    (str(MAX_TIME_MS), MAX_TIME_MS),
]
BAD_TIMES = ["", "-1", "¹", "٣", "1e3", "9" * 5000, str(MAX_TIME_MS + 1), "0001-01-01T00:00:00Z", "tomorrow", "U\x9c"]
INTERVALS = [("10", 10), ("500ms", 500), ("1s", 1000), ("1.5s", 1500), ("5min", 300_000), ("1H", 3_600_000)]
BAD_INTERVALS = ["", "5", "1.5", "¹s", "s", "1 s", "1d", "-1s", "9" * 30 + "h", "1e3ms", "U\x9c"]


@pytest.mark.parametrize(("value", "ms"), TIMES)
def test_time_readings(value: str, ms: int) -> None:
    assert parse_time(value, "start") == ms


@pytest.mark.parametrize("value", BAD_TIMES, ids=repr)
def test_times_that_are_refused(value: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        parse_time(value, "end")
    assert e.value.details["parameter"] == "end"


@pytest.mark.parametrize(("value", "ms"), INTERVALS)
def test_interval_readings(value: str, ms: int) -> None:
    assert parse_interval(value) == ms


@pytest.mark.parametrize("value", BAD_INTERVALS, ids=repr)
def test_intervals_that_are_refused(value: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_interval(value)
