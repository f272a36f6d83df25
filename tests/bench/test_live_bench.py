"""The live step of ``carvault bench``, run with a handful of cars for a few seconds (figures present and sane)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carvault.bench.live_bench import LiveBenchConfig, live_figures, run_live_only, splice_live

pytestmark = pytest.mark.slow


def _sane(run: dict, cars: int, seconds: float) -> None:
    assert run["cars"] == cars and run["cars_connected"] == cars and run["subscribers_connected"] == cars
    assert run["refused"] == {}
    assert run["frames_sent"] == cars * int(seconds) and run["frames_acked"] == run["frames_sent"]
    assert run["events_received"] == run["frames_sent"]  # every frame reached its subscriber over VISS
    e2e, region, hop = run["end_to_end_ms"], run["added_by_region_ms"], run["last_hop_ms"]
    assert e2e["n"] == region["n"] == run["frames_sent"]
    for q in (e2e, region, hop):
        assert q["min"] <= q["p50"] <= q["p95"] <= q["p99"] <= q["max"]
    # The event's ts is the server's clock floored to the ms: a hop is never negative, the region's share may read
    # up to a millisecond low (the car notes its send a moment after the bytes left).
    assert hop["min"] >= 0 and region["min"] >= -2
    assert e2e["p50"] >= region["p50"] - 1  # the sample time is taken before the send
    assert e2e["max"] < 60_000
    assert all(c > 0 for c in run["server_cpu_seconds"])
    assert 0 < run["server_cpu_ms_per_frame"] < 1000
    assert run["generator_cpu_seconds"] > 0
    assert run["server_rss_mib"]["idle"][0] > 10


def test_live_step_with_a_handful_of_cars(tmp_path: Path) -> None:
    cfg = LiveBenchConfig.quick()
    live = live_figures(cfg, work=tmp_path)
    assert [r["cars"] for r in live["runs"]] == [4]
    _sane(live["runs"][0], 4, cfg.seconds)
    fan = live["fanout"]
    assert fan["replicas"] == 2 and len(fan["server_cpu_seconds"]) == 2
    _sane(fan, 3, cfg.seconds)  # the car on replica A, its subscriber on replica B: through nats-server

    page = splice_live("# Benchmarks\n\nintro\n\n## Targets missed\n\n- none\n", live)
    assert page.index("## Live") < page.index("## Targets missed")
    assert "| one replica, 1 worker(s) | 4 / 4 |" in page and "| fan-out A→B | 3 / 3 |" in page
    again = splice_live(page, live)
    assert again.count("## Live") == 1
    noted = again.replace("_No notes yet: what dominates the live figures goes here._", "the re-checks dominate")
    assert "the re-checks dominate" in splice_live(noted, live)  # hand-written notes survive a re-run


def test_only_live_updates_the_json_and_the_page(tmp_path: Path) -> None:
    out, docs = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    out.write_text(json.dumps({"figures": {"kept": 1}}))
    docs.write_text("# Benchmarks\n\n## Targets missed\n\n- none\n")
    cfg = LiveBenchConfig(runs=((2, 2, 1),), seconds=2.0, fanout_cars=0, car_processes=1, evidence_day=None)
    run_live_only(out, docs, cfg=cfg)
    result = json.loads(out.read_text())
    assert result["figures"] == {"kept": 1} and result["live"]["runs"][0]["frames_sent"] == 4
    assert "## Live" in docs.read_text() and "- none" in docs.read_text()
