"""The local cluster's S3 server keeps connections alive, as a real object store does (bench/cluster.py).

moto_server's own Werkzeug server answered every request with ``Connection: close``: each S3 request of a replica in
the fleet bench and the cluster test then paid a new TCP connection (and moto a new thread), a cost the
per-replica comparison of issue 12 charged to the scale backend although no real object store imposes it.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from carvault.bench.cluster import S3_ENV, Service, _wait, s3_server_args
from carvault.server import free_port
from carvault.store.s3 import S3BlobStore


@pytest.fixture
def keep_alive_s3(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    svc = Service("s3", s3_server_args(port), tmp_path / "s3.log", S3_ENV).start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait("s3 server", lambda: httpx.get(url + "/", timeout=2).status_code < 500, svc.proc, svc.log, 60)
        yield url
    finally:
        svc.stop()


def test_two_requests_share_one_connection(keep_alive_s3: str) -> None:
    port = int(keep_alive_s3.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("PUT", "/keepalive-bucket")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        assert (first.getheader("Connection") or "").lower() != "close"
        sock = conn.sock
        conn.request("HEAD", "/keepalive-bucket")
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock  # the same TCP connection served both
    finally:
        conn.close()


def test_the_blob_store_works_against_it(keep_alive_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {**S3_ENV, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    store = S3BlobStore("replica-cost", "r", endpoint_url=keep_alive_s3, region_name="us-east-1")
    try:
        store.client.create_bucket(Bucket="replica-cost")
        body = os.urandom(50_000)
        for i in range(20):
            store.put(f"segments/{i}", body)
        assert store.get_range("segments/7", 1000, 500) == body[1000:1500]
        assert store.update("segments/3", lambda old: old[:10]) is True
        assert store.get("segments/3") == body[:10]
        assert store.size("segments/0") == len(body)
        assert store.delete_prefix("segments/") == 19 * len(body) + 10
    finally:
        store.close()
