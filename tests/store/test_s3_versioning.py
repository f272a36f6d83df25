"""A bucket that keeps old object versions would keep erased data: the region refuses versioning Enabled at
start and at readiness, and logs a warning for Suspended (moto's real standalone server)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from carvault.errors import Unavailable
from carvault.store.blobs import blob_store_of
from carvault.store.s3 import S3BlobStore, open_s3_store
from tests.s3server import S3_TEST_ENV, S3Server, s3_server  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)


def _bucket(server: S3Server, versioning: str | None) -> str:
    name = server.create_bucket()
    if versioning is not None:
        server.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
    return name


def test_a_bucket_with_versioning_enabled_is_refused_at_start(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    bucket = _bucket(s3_server, "Enabled")
    with pytest.raises(ValueError) as e:
        blob_store_of(f"s3://{bucket}/region", tmp_path, endpoint_url=s3_server.endpoint_url)
    message = str(e.value)
    assert "versioning Enabled" in message and bucket in message and "blob_store" in message
    assert "never enabled" in message  # the fix


def test_versioning_enabled_later_fails_readiness(s3_server: S3Server) -> None:  # noqa: F811
    bucket = _bucket(s3_server, None)
    store = open_s3_store(f"s3://{bucket}/region", endpoint_url=s3_server.endpoint_url)
    try:
        store.check()  # no versioning: ready
        s3_server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        with pytest.raises(Unavailable, match="versioning Enabled"):
            store.check()
    finally:
        store.close()


def test_versioning_suspended_is_a_warning_once(
    s3_server: S3Server,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = _bucket(s3_server, "Enabled")
    s3_server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    with caplog.at_level(logging.WARNING, logger="carvault.store.s3"):
        store = open_s3_store(f"s3://{bucket}/region", endpoint_url=s3_server.endpoint_url)
        try:
            store.check()
            store.put("a/b", b"x")
            assert store.get("a/b") == b"x"
        finally:
            store.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "carvault.store.s3"]
    assert len(warnings) == 1, warnings
    assert "versioning Suspended" in warnings[0] and "noncurrent" in warnings[0]


def test_a_bucket_without_versioning_logs_nothing(
    s3_server: S3Server,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = _bucket(s3_server, None)
    with caplog.at_level(logging.WARNING, logger="carvault.store.s3"):
        store = S3BlobStore(bucket, "region", endpoint_url=s3_server.endpoint_url)
        try:
            store.check()
        finally:
            store.close()
    assert not [r for r in caplog.records if r.name == "carvault.store.s3"]


@pytest.mark.parametrize(("code", "status"), [("NotImplemented", 501), ("MethodNotAllowed", 405)])
def test_a_store_without_bucket_versioning_is_a_warning_not_a_refusal(
    s3_server: S3Server,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    code: str,
    status: int,
) -> None:
    """S3-compatible stores without the versioning API answer it with an error: the region starts, and says so."""
    from botocore.stub import Stubber

    store = S3BlobStore(_bucket(s3_server, None), "region", endpoint_url=s3_server.endpoint_url)
    try:
        with Stubber(store.client) as stub, caplog.at_level(logging.WARNING, logger="carvault.store.s3"):
            stub.add_client_error("get_bucket_versioning", service_error_code=code, http_status_code=status)
            store.check_versioning()
    finally:
        store.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "carvault.store.s3"]
    assert len(warnings) == 1 and code in warnings[0], warnings
