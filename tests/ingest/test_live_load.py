"""The bench's live-load generator, run small against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from carvault.bench.live_load import SOC, SPEED, provision_fleet, quantiles, run_live_load
from carvault.region import Region
from carvault.server import BackgroundServer

pytestmark = pytest.mark.slow


def test_three_cars_stream_for_two_seconds(region: Region, server: BackgroundServer, tmp_path: Path) -> None:
    cars = provision_fleet(region, 3, tmp_path / "vehicles")
    assert [c.vin for c in cars] == ["LRWLIVE0000000001", "LRWLIVE0000000002", "LRWLIVE0000000003"]
    result = run_live_load(server.url, cars, seconds=2, interval_ms=250, subscriber_hub=region.live)
    figures = result.summary()
    assert figures["frames_sent"] == 24 and figures["acked"] == 24, figures
    assert figures["refused"] == {}
    assert figures["ack_ms"]["n"] == 24
    assert len(result.subscriber_ms) == 24  # the hub of the server's region, subscribed from another loop
    for car in cars:
        assert set(region.live.latest(car.vin)) == {SPEED, SOC}


def test_quantiles() -> None:
    q = quantiles([float(x) for x in range(1, 101)])
    assert (q["p50"], q["p95"], q["p99"], q["max"]) == (50.0, 95.0, 99.0, 100.0)
    assert quantiles([]) == {}
