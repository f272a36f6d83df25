"""VISS event text written the cheap way is byte for byte what the general formatting writes (issue 10)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.access.viss import iso, value_text


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**45))
def test_iso_is_the_strftime_form_of_every_instant(ms: int) -> None:
    expected = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    assert iso(ms) == expected
    assert iso(ms) == iso(ms)  # a cached second gives the same text


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([None, 0.1, 0.01, 1.0, 0.5]))
def test_float_values_read_as_json_writes_them(value: float, resolution: float | None) -> None:
    rounded = value
    if resolution is not None and value == value and abs(value) != float("inf"):
        import math

        rounded = round(value, max(0, math.ceil(-math.log10(resolution) - 1e-9)))
    assert value_text(value, resolution) == json.dumps(rounded)
