"""One region on several machines, on this machine: the parts an operator runs, each a real process.

``LocalCluster`` starts PostgreSQL (metadata and the log's sequencing), an S3-compatible server (moto's standalone
server; evidence, copies, frames, packages, log tiles), a NATS server (live data across replicas), the region's
witnesses (``carvault witness serve``), N ``carvault serve`` replicas, and HAProxy in front of them checking each
replica's ``/readyz``. It is the deployment docs/operations.md draws, shrunk onto loopback ports: the fleet-scale
test kills replicas in it, and ``carvault bench`` measures ingest through its balancer.

The replicas share nothing but those services and the region's keys: the keys are made once and copied into each
replica's own data folder, as an operator hands them to each machine (a secret store, a mounted volume).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import Unavailable
from carvault.server import free_port

#: Credentials of the local S3 server (it accepts any; clients insist on having some).
S3_ENV = {"AWS_ACCESS_KEY_ID": "carvault-local", "AWS_SECRET_ACCESS_KEY": "carvault-local-secret"}


def _wait(what: str, ready: Any, proc: subprocess.Popen[bytes] | None, log: Path | None, timeout_s: float) -> None:
    """Poll ``ready()`` until it is true; fail with the process's log if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise Unavailable(f"{what} exited with {proc.returncode} at start:\n{tail}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    raise Unavailable(f"{what} did not become ready within {timeout_s:.0f} s")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """One long-running process with its log file."""

    name: str
    args: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        """Start the process, its output to ``log``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """``kill -9``: no goodbye, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None


def haproxy_config(port: int, replicas: Mapping[str, int], check_ms: int = 500) -> str:
    """HAProxy in front of the replicas: round robin, each checked on /readyz, out of rotation after two misses."""
    servers = "\n".join(f"  server {name} 127.0.0.1:{p} check" for name, p in replicas.items())
    return f"""global
  maxconn 4096

defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 10s
  retries 2
  option redispatch
  option http-server-close

frontend region
  bind 127.0.0.1:{port}
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter {check_ms}ms fall 2 rise 2
{servers}
"""


def haproxy_binary() -> str:
    """Debian's haproxy (scripts/install-system-deps.sh installs it)."""
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(exe).exists():
        raise Unavailable("haproxy is not installed (scripts/install-system-deps.sh installs it)")
    return exe


def nats_binary() -> str:
    """Debian's nats-server."""
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        raise Unavailable("nats-server is not installed (scripts/install-system-deps.sh installs it)")
    return exe


def moto_binary() -> str:
    """moto's standalone S3-compatible server (installed with the dev extras)."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        raise Unavailable("moto_server is not installed (pip install 'moto[server]')")
    return str(exe)


def s3_server_args(port: int, *, keep_alive: bool = True) -> list[str]:
    """The command of the local S3-compatible server: moto's S3 application on ``127.0.0.1:port``.

    ``moto_server`` itself runs on Werkzeug's development server, which answers every request with
    ``Connection: close``: each S3 request of a replica then paid a new TCP connection on both sides, and moto a new
    thread per request — costs a real object store (which keeps HTTP/1.1 connections alive, and which the
    replica's one pooled boto3 client reuses) does not impose. With ``keep_alive`` (the default) the same
    application is served by uvicorn (HTTP/1.1 keep-alive, a thread pool); ``keep_alive=False`` gives the old
    server, for comparisons (``fleet_bench --replica-only``).
    """
    if not keep_alive:
        return [moto_binary(), "-H", "127.0.0.1", "-p", str(port)]
    moto_binary()  # the same dependency check
    return [sys.executable, "-m", "carvault.bench.cluster", "s3", "--port", str(port)]


def serve_s3(port: int, host: str = "127.0.0.1") -> None:
    """Serve moto's S3 application with keep-alive connections until stopped (``s3_server_args``)."""
    import uvicorn
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    uvicorn.run(app, host=host, port=port, interface="wsgi", log_level="warning", timeout_keep_alive=60)


class LocalCluster:
    """A region of ``replicas`` processes behind HAProxy, on PostgreSQL, S3, NATS and its witnesses."""

    def __init__(
        self,
        root: Path,
        replicas: int = 2,
        *,
        region: str = "cn",
        settings: Mapping[str, str] | None = None,
        witnesses: int = 0,
        quorum: int = 0,
    ) -> None:
        self.root = root
        self.region = region
        self.n = replicas
        self.extra = dict(settings or {})
        self.services: dict[str, Service] = {}
        self.pg: TemporaryPostgres | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.replica_ports = {f"r{i + 1}": free_port() for i in range(replicas)}
        self.s3_port = free_port()
        self.nats_port = free_port()
        self.bucket = f"carvault-{region}"
        self.env: dict[str, str] = {}
        self.witness_ports = {f"w{i + 1}": free_port() for i in range(witnesses)}
        self.witness_vkeys: dict[str, str] = {}
        self.quorum = quorum

    # ------------------------------------------------------------------ parts
    def _start_infrastructure(self) -> None:
        self.pg = TemporaryPostgres().start()
        database_url = self.pg.create_database(f"carvault_{self.region}")
        s3 = Service("s3", s3_server_args(self.s3_port), self.root / "s3.log", S3_ENV)
        self.services["s3"] = s3.start()
        nats = Service("nats", [nats_binary(), "-a", "127.0.0.1", "-p", str(self.nats_port)], self.root / "nats.log")
        self.services["nats"] = nats.start()
        s3_url = f"http://127.0.0.1:{self.s3_port}"
        _wait("moto_server", lambda: httpx.get(s3_url + "/", timeout=2).status_code < 500, s3.proc, s3.log, 60)
        _wait("nats-server", lambda: _port_open(self.nats_port), nats.proc, nats.log, 30)
        import boto3

        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **_boto_keys()).create_bucket(
            Bucket=self.bucket
        )
        self.env = {
            **S3_ENV,
            "AWS_DEFAULT_REGION": "us-east-1",
            "CARVAULT_REGION": self.region,
            "CARVAULT_DATABASE_URL": database_url,
            "CARVAULT_BLOB_STORE": f"s3://{self.bucket}/{self.region}",
            "CARVAULT_S3_ENDPOINT_URL": s3_url,
            "CARVAULT_LIVE_BROKER": f"nats://127.0.0.1:{self.nats_port}",
            "CARVAULT_REGION_ENDPOINTS": f"{self.region}={self.url}",
            "CARVAULT_RETENTION_INTERVAL_S": "0",
            **{f"CARVAULT_{k.upper()}": v for k, v in self.extra.items()},
        }

    def settings_env(self, data_dir: Path) -> dict[str, str]:
        """The environment of a process of this region using ``data_dir`` for its own files."""
        return {**self.env, "CARVAULT_DATA_DIR": str(data_dir)}

    def _make_keys(self) -> tuple[Path, str]:
        """Create the region's keys and schema once (one process), to hand to every replica; (keys, log vkey)."""
        first = self.root / "keys-origin"
        env = self.settings_env(first)
        code = (
            "from carvault.region import Region; from carvault.settings import Settings; "
            "r = Region(Settings.from_env()); print(r.log.vkey); r.close()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env}, check=True, timeout=120, capture_output=True
        )
        return first / "keys", done.stdout.decode().strip().splitlines()[-1]

    def _start_witnesses(self, log_vkey: str) -> None:
        """``carvault witness init``, ``add-log`` and ``serve`` for each witness, as their operators would."""
        cli = [sys.executable, "-m", "carvault.cli", "witness"]
        for name, port in self.witness_ports.items():
            folder = self.root / f"witness-{name}"
            made = subprocess.run(
                [*cli, "init", "--name", f"{name}.witness.example", "--dir", str(folder)],
                check=True,
                timeout=120,
                capture_output=True,
            )
            self.witness_vkeys[name] = made.stdout.decode().strip().splitlines()[-1]
            subprocess.run([*cli, "add-log", log_vkey, "--dir", str(folder)], check=True, timeout=120)
            svc = Service(name, [*cli, "serve", "--dir", str(folder), "--port", str(port)], self.root / f"{name}.log")
            self.services[name] = svc.start()
        for name, port in self.witness_ports.items():
            url = f"http://127.0.0.1:{port}/"
            svc = self.services[name]
            _wait(name, lambda url=url: httpx.get(url, timeout=2).status_code == 200, svc.proc, svc.log, 60)
        if self.witness_ports:
            self.env["CARVAULT_WITNESSES"] = ";".join(
                f"{name}={self.witness_vkeys[name]}@http://127.0.0.1:{port}"
                for name, port in self.witness_ports.items()
            )
            self.env["CARVAULT_WITNESS_QUORUM"] = str(self.quorum)

    def replica(self, name: str) -> Service:
        """The replica process called ``name`` (r1, r2 …)."""
        return self.services[name]

    def replica_url(self, name: str) -> str:
        """A replica's own address (bypassing the balancer)."""
        return f"http://127.0.0.1:{self.replica_ports[name]}"

    def start_replica(self, name: str) -> Service:
        """Start (or restart) one replica and wait until it is ready."""
        data_dir = self.root / name
        env = {**self.settings_env(data_dir), "CARVAULT_PORT": str(self.replica_ports[name])}
        svc = Service(name, [sys.executable, "-m", "carvault.cli", "serve"], self.root / f"{name}.log", env)
        self.services[name] = svc.start()
        url = self.replica_url(name)
        _wait(name, lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, svc.proc, svc.log, 90)
        return svc

    def start(self) -> LocalCluster:
        """Bring every part up, replicas last, the balancer in front."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_infrastructure()
            keys, log_vkey = self._make_keys()
            self._start_witnesses(log_vkey)
            for name in self.replica_ports:
                shutil.copytree(keys, self.root / name / "keys", dirs_exist_ok=True)
                self.start_replica(name)
            cfg = self.root / "haproxy.cfg"
            cfg.write_text(haproxy_config(self.port, self.replica_ports))
            lb = Service("haproxy", [haproxy_binary(), "-f", str(cfg), "-db"], self.root / "haproxy.log")
            self.services["haproxy"] = lb.start()
            _wait("haproxy", lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, lb.proc, lb.log, 30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything, balancer first, database last."""
        for name in ["haproxy", *self.replica_ports, *self.witness_ports, "nats", "s3"]:
            svc = self.services.get(name)
            if svc is not None:
                svc.stop()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"]}


if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(description="The local S3-compatible server of LocalCluster (moto, keep-alive).")
    _p.add_argument("service", choices=["s3"])
    _p.add_argument("--port", type=int, required=True)
    _p.add_argument("--host", default="127.0.0.1")
    _a = _p.parse_args()
    serve_s3(_a.port, _a.host)
