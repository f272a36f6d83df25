"""The receipt-to-cosigned-checkpoint bench runs end to end with real witness processes and meets its goal."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvault.bench.witness_bench import witness_figures

pytestmark = pytest.mark.slow


def test_receipt_to_cosigned_checkpoint(tmp_path: Path) -> None:
    figures = witness_figures(tmp_path, witnesses=2, appends=15, gap_s=0.05)
    assert figures["never_cosigned"] == 0
    assert 0 < figures["p50_s"] <= figures["p95_s"] <= figures["max_s"]
    assert figures["p95_s"] <= figures["goal_p95_s"], figures
