"""A real S3-compatible server for tests: moto's standalone server as its own process on a free loopback port.

Use it from a conftest or test module::

    from tests.s3server import s3_bucket, s3_server  # noqa: F401

    def test_something(s3_server, tmp_path):
        settings = Settings(..., blob_store=s3_bucket(s3_server), s3_endpoint_url=s3_server.endpoint_url)

The server holds its objects in memory, so each test takes a fresh bucket (``s3_bucket``). The region finds its
credentials the way any S3 client does, in the environment: the session fixture sets fixed test keys there
(``S3_TEST_ENV``), and child processes (``carvault serve`` in a test) inherit them.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from carvault.server import free_port

#: Fixed credentials of the test server (moto accepts any; real clients insist on having some).
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "carvault-test",
    "AWS_SECRET_ACCESS_KEY": "carvault-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_MOTO = Path(sys.executable).with_name("moto_server")


@dataclass
class S3Server:
    """One running moto server process."""

    endpoint_url: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process (again, on the same port after ``stop``) and wait until it answers HTTP."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(_MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **S3_TEST_ENV},
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited at start:\n{self.log_path.read_text(errors='replace')}")
            try:
                httpx.get(self.endpoint_url + "/", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url} within 60 s")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s). Its objects are gone: they live in its memory."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def client(self):  # noqa: ANN201 - a boto3 S3 client (botocore types are generated at run time)
        """A boto3 client for this server with the test credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name unless given) and return its name."""
        name = name or f"cv-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name


def start_s3_server(tmp_path: Path) -> S3Server:
    """Start a moto server on a free loopback port (its log in ``tmp_path/moto.log``) and wait until it answers."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", port=port, log_path=tmp_path / "moto.log")
    server.start()
    return server


def s3_bucket(server: S3Server) -> str:
    """A fresh bucket on ``server``, as a ``blob_store`` setting: ``s3://<bucket>/region``."""
    return f"s3://{server.create_bucket()}/region"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server for the session; the test credentials are in this process's environment while it runs."""
    saved = {k: os.environ.get(k) for k in S3_TEST_ENV}
    os.environ.update(S3_TEST_ENV)
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
