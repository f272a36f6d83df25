"""Every HTTP response carries the security headers (a plain ASGI middleware since issue 10), without overriding."""

from __future__ import annotations

import httpx

from carvault.protocol import BATCH_MEDIA_TYPE
from carvault.web.app import SECURITY_HEADERS


def _has_defaults(r: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        if name not in ("Content-Security-Policy", "Referrer-Policy"):  # pages send their own
            assert r.headers[name] == value, name
    assert r.headers.get_list("x-frame-options") == ["DENY"]  # added once, never twice


def test_api_answers_carry_the_headers_and_no_store(http: httpx.Client) -> None:
    ok = http.get("/api/v1/health")
    refused = http.post("/api/v1/ingest/batches", content=b"CVB1", headers={"Content-Type": BATCH_MEDIA_TYPE})
    missing = http.get("/api/v1/no-such-route")
    assert (ok.status_code, refused.status_code, missing.status_code) == (200, 400, 404)
    for r in (ok, refused, missing):
        _has_defaults(r)
        assert r.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert r.headers["cache-control"] == "no-store"
    assert refused.json()["error"]["code"] == "malformed_batch"


def test_pages_keep_their_own_headers(http: httpx.Client) -> None:
    page = http.get("/login")
    assert page.status_code == 200
    _has_defaults(page)
    # The page's own policy and referrer rule stand; the middleware only fills in what is missing.
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers.get_list("content-security-policy") == [page.headers["content-security-policy"]]
    assert page.headers["referrer-policy"] == "same-origin"
