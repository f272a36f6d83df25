"""`carvault bench --quick` end to end: every figure is measured and the report is written (no timing asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from carvault.bench.pg_cluster import pg_bindir
from carvault.bench.run import ANALYSIS_END, ANALYSIS_START, run_bench

FIGURES = (
    "ingest_samples_per_s",
    "storage_bytes_per_sample",
    "storage_bytes_per_sample_with_metadata",
    "window_p50_ms",
    "window_p95_ms",
    "window_http_parquet_p50_ms",
    "window_http_parquet_p95_ms",
    "peer_wide_copy_samples_per_s",
    "peer_wide_batch_samples_per_s",
    "peer_long_copy_samples_per_s",
    "peer_wide_bytes_per_sample",
    "peer_long_bytes_per_sample",
    "peer_wide_window_p50_ms",
    "peer_wide_window_p95_ms",
    "peer_long_window_p50_ms",
    "peer_long_window_p95_ms",
    "log_append_leaves_per_s",
    "log_inclusion_proof_ms_p50",
    "log_consistency_proof_ms_p50",
    "package_build_s",
    "package_verify_s",
    "package_verify_process_s",
    "can_import_frames_per_s",
)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(pg_bindir() is None, reason="PostgreSQL server binaries are not installed")
def test_quick_bench_writes_every_figure_and_the_report(tmp_path: Path) -> None:
    out, docs = tmp_path / "bench.json", tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    # A hand-written analysis in the existing report must survive the rewrite.
    docs.write_text(f"old\n{ANALYSIS_START}\nhot spots: the committer\n{ANALYSIS_END}\n")

    result = run_bench(out=out, docs=docs, quick=True, console=Console(file=(tmp_path / "console.txt").open("w")))

    saved = json.loads(out.read_text())
    assert saved["figures"] == json.loads(json.dumps(result["figures"]))
    assert set(FIGURES) <= saved["figures"].keys()
    for name, value in saved["figures"].items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, value)
    # the quick variant: longer batches into two server processes
    assert saved["figures"]["ingest_120s_2w_samples_per_s"] > 0
    assert saved["dataset"]["samples"] == saved["details"]["storage"]["samples"] > 0
    assert saved["details"]["ingest"]["batches"] == saved["dataset"]["batches"]
    assert {r["figure"] for r in saved["not_measured"]} == {"Vehicle-year export stream"}
    assert saved["machine"]["nproc"] >= 1
    # the blob-store section: the same batches ingested with evidence on the local folder and on S3 (moto)
    blobs = saved["details"]["blob_store"]
    assert blobs["s3"]["batches"] == blobs["local"]["batches"] > 0
    assert blobs["s3"]["samples_per_s"] > 0 and blobs["s3"]["read_batch_ms_p50"] > 0

    report = docs.read_text()
    assert report.startswith("# Benchmarks")
    assert "| figure | CarVault | peer | ratio CarVault/peer | target | met? |" in report
    assert "not yet measured" in report
    assert "### Blob store: ingest with evidence on the local folder and on S3" in report
    assert "hot spots: the committer" in report and "old\n" not in report
