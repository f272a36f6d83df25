"""Batch uploads skip the router (web/routes/ingest.py ``BatchFastPath``, issue 10) and are answered exactly as the
declared route answers: receipts, refusals with their stable codes and counters, security headers; every other
request, including other methods on the same path, goes on to the app."""

from __future__ import annotations

from typing import Any

import httpx

from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, make_batch
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.routes.ingest import BATCHES_PATH, BatchFastPath
from tests.factories import BASE_MS, drive_table, run_coroutine
from tests.web.test_health import scrape


def _refusals(http: httpx.Client, code: str) -> float:
    return sum(
        v
        for (name, labels), v in scrape(http).items()
        if name == "carvault_refusals_total" and ("code", code) in labels
    )


def test_receipts_and_refusals_over_http(http: httpx.Client, vehicle: VehicleIdentity) -> None:
    table = drive_table(start_ms=BASE_MS, seconds=10, paths=["Vehicle.Speed"])
    blob = make_batch(vin=vehicle.vin, region=vehicle.region, seq=1, prev=GENESIS_PREV, table=table, key=vehicle.key)
    ok = http.post(BATCHES_PATH, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE})
    assert ok.status_code == 200 and ok.json()["seq"] == 1 and ok.json()["duplicate"] is False
    assert ok.headers["x-content-type-options"] == "nosniff" and ok.headers["cache-control"] == "no-store"
    assert http.post(BATCHES_PATH, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE}).json()["duplicate"]

    before = _refusals(http, "malformed_batch")
    bad = http.post(BATCHES_PATH, content=b"CVB1 not a batch", headers={"Content-Type": BATCH_MEDIA_TYPE})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_batch"
    assert bad.headers["x-content-type-options"] == "nosniff"
    assert _refusals(http, "malformed_batch") == before + 1  # counted like the app's handlers count refusals

    coded = http.post(
        BATCHES_PATH, content=blob, headers={"Content-Type": BATCH_MEDIA_TYPE, "Content-Encoding": "gzip"}
    )
    assert coded.status_code == 415 and coded.json()["error"]["code"] == "unsupported_media_type"
    wrong_type = http.post(BATCHES_PATH, content=blob, headers={"Content-Type": "application/octet-stream"})
    assert wrong_type.status_code == 415
    assert http.get(BATCHES_PATH).status_code == 405  # the router's answer: other methods are not taken here


def test_only_batch_posts_are_taken() -> None:
    reached: list[tuple[str, str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append((scope["method"], scope["path"]))

    fast = BatchFastPath(app)

    async def call(method: str, path: str) -> None:
        await fast({"type": "http", "method": method, "path": path}, None, None)

    for method, path in (("GET", BATCHES_PATH), ("PUT", BATCHES_PATH), ("POST", BATCHES_PATH + "/x"), ("POST", "/")):
        run_coroutine(call(method, path))
    assert reached == [("GET", BATCHES_PATH), ("PUT", BATCHES_PATH), ("POST", BATCHES_PATH + "/x"), ("POST", "/")]
