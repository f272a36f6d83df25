"""Liveness, readiness and Prometheus metrics on a real server (web/routes/health.py, metrics.py, logs.py)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from carvault.logs import JsonFormatter, log_config
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import drive_table, opt_in, scrape


def test_liveness_and_readiness(http: httpx.Client, region: Region) -> None:
    assert http.get("/livez").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["region"] == "cn"
    assert set(body["checks"]) == {"database", "blob_store", "log", "broker"}
    assert all(c["ok"] for c in body["checks"].values())
    assert http.get("/api/v1/health").json()["log_size"] == region.log.size


def test_metrics_count_what_happened(http: httpx.Client, region: Region, agent: VehicleAgent) -> None:
    before = scrape(http)
    assert before[("carvault_log_size", ())] == region.log.size
    opt_in(region, agent.identity.vin)
    agent.record(drive_table(seconds=180), batch_seconds=60)
    receipts = agent.upload_pending()
    assert len(receipts) == 3
    # A refused upload is counted by its stable code and entry point.
    refused = http.post("/api/v1/ingest/batches", content=b"not a batch", headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    code = refused.json()["error"]["code"]
    after = scrape(http)
    assert after[("carvault_batches_accepted_total", ())] == 3
    with region.db.session() as s:
        stored = s.scalar(select(func.sum(BatchRecord.samples)))
    assert after[("carvault_samples_accepted_total", ())] == stored > 0
    assert after[("carvault_group_commit_batches_count", ())] >= 1
    assert after[("carvault_group_commit_batches_sum", ())] == 3
    assert after[("carvault_refusals_total", (("code", code), ("entry", "batch")))] == 1
    assert after[("carvault_log_size", ())] == region.log.size >= 3
    assert after[("carvault_log_integration_lag", ())] == 0
    ok = after[("carvault_http_responses_total", (("route", "/api/v1/ingest/batches"), ("status", "2xx")))]
    assert ok >= 3
    assert ("carvault_live_subscriptions", ()) in after and ("carvault_live_cars", ()) in after
    assert ("python_gc_collections_total", (("generation", "2"),)) in after
    assert after[("carvault_gc_frozen_objects", ())] == 0  # an app a test process serves leaves its heap alone


def test_metrics_token_is_enforced(tmp_path: Path, settings: Settings) -> None:
    with (
        Region(settings.with_(metrics_token="s3cret-token")) as region,
        BackgroundServer(region, port=settings.port) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        r = http.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert scrape(http, headers={"Authorization": "Bearer s3cret-token"})


def test_readiness_names_a_broken_blob_store(tmp_path: Path, settings: Settings) -> None:
    store = tmp_path / "store"
    with (
        Region(settings.with_(blob_store=f"file://{store}")) as region,
        BackgroundServer(region, port=settings.port) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get("/readyz").status_code == 200
        shutil.rmtree(store)
        store.write_text("a file where the store's folder was")  # nothing can be written there now
        r = http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not_ready" and body["error"]["code"] == "not_ready"
        assert not body["checks"]["blob_store"]["ok"] and "blob_store" in body["error"]["message"]
        assert body["checks"]["database"]["ok"]
        assert http.get("/livez").status_code == 200  # alive, only not ready


def test_json_log_lines() -> None:
    formatter = JsonFormatter(region="eu")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("carvault.x", logging.ERROR, __file__, 1, "batch %s refused", ("abc",), None)
        record.exc_info = sys.exc_info()
    record.code = "bad_signature"
    line = json.loads(formatter.format(record))
    assert line["message"] == "batch abc refused" and line["level"] == "error" and line["region"] == "eu"
    assert line["code"] == "bad_signature" and "ValueError: boom" in line["exception"]
    assert line["ts"].endswith("Z")
    assert log_config("json", "eu")["formatters"]["main"]["()"] is JsonFormatter
    with pytest.raises(ValueError, match="log_format"):
        log_config("yaml", "eu")


@pytest.mark.slow
def test_readiness_names_no_secret(tmp_path: Path, settings: Settings) -> None:
    """/readyz answers anyone: a failing part is named, but never with the password of its URL."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "hunter2-broker-password"
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    nats = subprocess.Popen(
        [exe, "-a", "127.0.0.1", "-p", str(port), "--user", "carvault", "--pass", secret],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with (
            Region(settings.with_(live_broker=f"nats://carvault:{secret}@127.0.0.1:{port}")) as region,
            BackgroundServer(region, port=settings.port) as server,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            assert http.get("/readyz").status_code == 200
            nats.terminate()
            nats.wait(10)
            for _ in range(100):
                r = http.get("/readyz")
                if r.status_code == 503:
                    break
                time.sleep(0.1)
            assert r.status_code == 503 and not r.json()["checks"]["broker"]["ok"], r.text
            assert "127.0.0.1" in r.text and secret not in r.text
    finally:
        nats.kill()
        nats.wait(10)
