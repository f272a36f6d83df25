"""A throwaway local PostgreSQL server (Debian's package), for tests and for the benchmark's peer.

PostgreSQL refuses to run as root, so when we are root the cluster is owned by and run as the
``postgres`` system user (via ``runuser``). It listens on a Unix socket in its own folder and on a
loopback TCP port, and is removed on ``stop()``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from carvault.errors import Unavailable


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class TemporaryPostgres:
    """initdb + pg_ctl start in a temporary folder; ``url`` is a SQLAlchemy psycopg URL."""

    def __init__(self, port: int | None = None, fsync: bool = True) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise Unavailable(
                "PostgreSQL server binaries are not installed (apt-get install postgresql; "
                "`make test` does this via scripts/install-system-deps.sh)"
            )
        from carvault.server import free_port

        self.bindir = bindir
        self.port = port or free_port()
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="carvault-pg-"))
        self.datadir = self.root / "data"
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise Unavailable(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> TemporaryPostgres:
        """Create and start the cluster."""
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._run(str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port))
                return self
            except Unavailable:
                time.sleep(0.2)
        raise Unavailable("PostgreSQL did not become ready")

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """libpq connection string."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def create_database(self, name: str) -> str:
        """Create a database; return its SQLAlchemy URL."""
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(Unavailable):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
