"""The CAN import bench: a synthetic party-bus log is written, imported and signed, and the rates reported."""

from __future__ import annotations

from pathlib import Path

from carvault.bench.can_bench import bench_can_import


def test_bench_can_import_reports_rates(tmp_path: Path) -> None:
    figures = bench_can_import(120_000, work_dir=tmp_path)
    assert figures["frames"] == 120_000 and figures["rows"] > 0
    for k in ("parse_frames_per_s", "import_frames_per_s", "end_to_end_frames_per_s"):
        assert figures[k] > 50_000, k
