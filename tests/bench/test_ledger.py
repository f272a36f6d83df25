"""carvault.bench.ledger: the figures come out, and the bulk builder writes what append would."""

from __future__ import annotations

from pathlib import Path

from carvault.bench.ledger import bench_leaf, bench_log, build_large_log, open_bench_log, proof_figures
from carvault.ledger import merkle


def test_bench_log_reports_figures(tmp_path: Path) -> None:
    figures = bench_log(tmp_path / "log", 2500, batch_size=1000, proof_samples=20, threads=4)
    assert figures["appended"] == figures["size"] == 2500
    assert figures["append_leaves_per_s"] > 0
    for name in ("inclusion_proof", "inclusion_verify", "consistency_proof", "consistency_verify"):
        assert 0 < figures[f"{name}_ms_p50"] <= figures[f"{name}_ms_p99"]
    assert figures["single_leaf_appends_per_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # the scratch log is gone


def test_bulk_build_is_byte_identical_to_appending(tmp_path: Path) -> None:
    n = 5 * 16 + 7  # five whole chunks of 16 leaves, then a remainder that goes through append
    figures = build_large_log(tmp_path / "bulk", n, chunk_log2=4, workers=2)
    assert figures["leaves"] == n
    bench_log(tmp_path / "appended", n, batch_size=13, proof_samples=5, threads=0)
    assert (tmp_path / "bulk" / "nodes").read_bytes() == (tmp_path / "appended" / "nodes").read_bytes()
    with open_bench_log(tmp_path / "bulk") as log:
        assert log.check_integrity() == n
        assert log.root() == merkle.root_from_leaf_hashes([merkle.leaf_hash(bench_leaf(i)) for i in range(n)])
        assert proof_figures(log, samples=5)["size"] == n
