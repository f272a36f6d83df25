"""An event batch covers only its triggers' window: its legal basis cannot carry routine data past consent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from carvault.errors import CarVaultError, MalformedBatch, TimestampOutOfSpan
from carvault.ingest.validation import event_meta
from carvault.protocol import GENESIS_PREV, BatchHeader
from tests.factories import BASE_MS, drive_table, vin_for

T = BASE_MS + 60_000  # the trigger


def _check(t0: int, t1: int, paths: list[str] | None = None, **meta: Any) -> dict[str, Any] | None:
    description = {"kind": "hard_braking", "trigger_ms": T, "legal_basis": "safety event record", **meta}
    table = drive_table(seconds=1, paths=paths or ["Vehicle.Speed"]).replace_schema_metadata(
        {b"carvault.event": json.dumps(description).encode()}
    )
    header = BatchHeader(
        vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, t0=t0, t1=t1, rows=table.num_rows, kind="event"
    )
    return event_meta(header, table)


CASES: list[tuple[str, dict[str, Any], type[CarVaultError] | None]] = [
    ("30 s before to 10 s after", {"t0": T - 30_000, "t1": T + 10_000}, None),
    ("starts 31 s before", {"t0": T - 31_000, "t1": T + 10_000}, TimestampOutOfSpan),
    ("ends 11 s after", {"t0": T - 30_000, "t1": T + 11_000}, TimestampOutOfSpan),
    ("an hour of data", {"t0": T - 3_600_000, "t1": T}, TimestampOutOfSpan),
    (
        "chained triggers extend it",
        {
            "t0": T - 30_000,
            "t1": T + 28_000,
            "triggers": [{"kind": "abs", "t_ms": T + 9_000}, {"kind": "abs", "t_ms": T + 18_000}],
        },
        None,
    ),
    (
        "triggers 11 s apart",
        {"t0": T - 30_000, "t1": T + 21_000, "triggers": [{"kind": "abs", "t_ms": T + 11_000}]},
        MalformedBatch,
    ),
    (
        "a chain past 5 minutes",
        {"t0": T - 30_000, "t1": T + 400_000, "triggers": [{"kind": "abs", "t_ms": T + 9_000 * i} for i in range(45)]},
        TimestampOutOfSpan,
    ),
    ("trigger of no known kind", {"t0": T - 1000, "t1": T, "triggers": [{"kind": "boom", "t_ms": T}]}, MalformedBatch),
    ("triggers not a list", {"t0": T - 1000, "t1": T, "triggers": {"kind": "abs"}}, MalformedBatch),
    ("manual from a car", {"t0": T - 1000, "t1": T, "kind": "manual"}, MalformedBatch),
    (
        "camera columns",
        {"t0": T - 1000, "t1": T, "paths": ["Vehicle.Speed", "Vehicle.CarVault.Camera.FrameHash"]},
        MalformedBatch,
    ),
]


@pytest.mark.parametrize(("case", "args", "error"), CASES, ids=[c[0] for c in CASES])
def test_event_window_rule(case: str, args: dict[str, Any], error: type[CarVaultError] | None) -> None:
    if error is None:
        assert _check(**args) is not None
    else:
        with pytest.raises(error):
            _check(**args)
