"""A full disk: storage failures become ``Unavailable`` (503), refused uploads leak nothing, the region heals."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from carvault.errors import Unavailable
from carvault.server import free_port
from carvault.store.metadata import (
    POSTGRES_STORAGE_CLASSES,
    SQLITE_STORAGE_CODES,
    STORAGE_ERRNOS,
    AuditEvent,
    Database,
    storage_failure,
)
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import make_owner
from tests.factories import BASE_MS, drive_table, vin_for

psycopg_errors = pytest.importorskip("psycopg.errors")
SIGNALS = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]


def _sqlite_error(code: int) -> sqlite3.Error:
    e = sqlite3.OperationalError(f"sqlite error {code}")
    e.sqlite_errorcode = code  # type: ignore[attr-defined]
    return e


def _postgres_storage_errors() -> list[type[Exception]]:
    """Every psycopg error class of the SQLSTATE classes that mean the store itself is failing."""
    found = []
    for cls in vars(psycopg_errors).values():
        state = getattr(cls, "sqlstate", None)
        if isinstance(cls, type) and isinstance(state, str) and state[:2] in POSTGRES_STORAGE_CLASSES:
            found.append(cls)
    return found


STORAGE_FAILURES: list[BaseException] = [
    *(OSError(n, os.strerror(n)) for n in sorted(STORAGE_ERRNOS)),
    *(_sqlite_error(c) for c in sorted(SQLITE_STORAGE_CODES)),
    _sqlite_error(sqlite3.SQLITE_IOERR | (4 << 8)),  # an extended code: SQLITE_IOERR_FSYNC
    *(cls("the store failed") for cls in _postgres_storage_errors()),
]
NOT_STORAGE: list[BaseException] = [
    OSError(errno.ENOENT, "no such file"),
    sqlite3.IntegrityError("UNIQUE constraint failed"),
    _sqlite_error(sqlite3.SQLITE_CONSTRAINT),
    psycopg_errors.UniqueViolation("duplicate key"),
    psycopg_errors.SyntaxError("bad SQL"),
    ValueError("not a storage error"),
]


def test_every_postgres_disk_and_io_class_is_listed() -> None:
    names = {c.__name__ for c in _postgres_storage_errors()}
    assert {"DiskFull", "IoError", "OutOfMemory", "TooManyConnections", "AdminShutdown"} <= names


@pytest.mark.parametrize("error", STORAGE_FAILURES, ids=repr)
def test_storage_failure_is_unavailable(error: BaseException) -> None:
    assert isinstance(storage_failure(error), Unavailable)


@pytest.mark.parametrize("error", NOT_STORAGE, ids=repr)
def test_other_errors_are_left_alone(error: BaseException) -> None:
    assert storage_failure(error) is None


def test_a_full_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'full.db'}")
    db.create_schema()
    with pytest.raises(Unavailable, match="full"), db.session() as s:
        pages = s.execute(text("PRAGMA page_count")).scalar_one()
        s.execute(text(f"PRAGMA max_page_count = {pages}"))  # the file may not grow: really full
        for i in range(2000):
            s.add(
                AuditEvent(
                    chain="c",
                    actor="a",
                    action="x",
                    detail="{}" * 200,
                    legal_basis="b",
                    at_ms=i,
                    prev_hash=str(i),
                    hash=str(i),
                )
            )
    db.dispose()


def test_an_unopenable_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'missing' / 'folder' / 'x.db'}")
    with pytest.raises(Unavailable), db.session() as s:
        s.execute(text("SELECT 1"))
    db.dispose()


# ----------------------------------------------------------------------------- a real full disk
SERVE = """
import sys
from pathlib import Path
import uvicorn
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import uvicorn_config
from carvault.settings import Settings

data, vehicles, port, vin = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
url = f"http://127.0.0.1:{port}"
region = Region(Settings(data_dir=data / "region", region="cn", port=port, region_endpoints={"cn": url}))
provision(region, vin, vehicles)
uvicorn.Server(uvicorn_config(region, "127.0.0.1", port)).run()
"""


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{where}'"], capture_output=True
    )
    return probe.returncode == 0


@pytest.fixture
def full_disk_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, str]]:
    """A real server process whose data folder is a 24 MB tmpfs of its own (a private mount namespace)."""
    data, vehicles = tmp_path / "volume", tmp_path / "vehicles"
    data.mkdir()
    if not _can_mount_tmpfs(data):
        pytest.skip("no private tmpfs mounts here (unshare -rm)")
    port = free_port()
    script = 'mount -t tmpfs -o size=24m tmpfs "$0" && exec "$@"'
    cmd = ["unshare", "-rm", "sh", "-c", script, str(data), sys.executable, "-c", SERVE]
    proc = subprocess.Popen([*cmd, str(data), str(vehicles), str(port), vin_for(7)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.1)
    # The tmpfs is visible only inside the server's mount namespace: reach it through /proc/<pid>/root.
    yield proc, Path(f"/proc/{proc.pid}/root") / str(data).lstrip("/"), vehicles, url
    proc.terminate()
    proc.wait(timeout=20)


def _fill(volume: Path) -> None:
    with open(volume / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _open_files(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    return [os.readlink(p) for p in fds.iterdir() if p.exists()]


@pytest.mark.slow
def test_full_disk_refuses_uploads_and_unauditable_reads_then_heals(
    full_disk_server: tuple[subprocess.Popen[bytes], Path, Path, str],
) -> None:
    proc, volume, vehicles, url = full_disk_server
    vin = vin_for(7)
    with httpx.Client(base_url=url, timeout=60) as http:
        owner = make_owner(http)
        ident = VehicleIdentity.load(vehicles / vin)
        pairing = {"vin": vin, "pairing_code": ident.pairing_code}
        assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=pairing).status_code == 201
        agent = VehicleAgent(ident, vehicles / vin, url)
        agent.record(drive_table(seconds=120, paths=SIGNALS), batch_seconds=60)
        assert len(agent.upload_pending()) == 2
        window: dict[str, str | int] = {"start": BASE_MS, "end": BASE_MS + 120_000, "signals": "Vehicle.Speed"}
        read = f"/api/v1/vehicles/{vin}/telemetry"
        assert http.get(read, headers=owner.headers, params=window).status_code == 200

        _fill(volume)
        agent.record(drive_table(start_ms=BASE_MS + 120_000, seconds=60, paths=SIGNALS, seed=1), batch_seconds=60)
        blob = agent.pending()[0].read_bytes()

        def refused_upload() -> None:
            with pytest.raises(UploadRefused) as refused:
                agent.upload_one(blob)
            assert refused.value.status == 503 and refused.value.code == Unavailable.code

        refused_upload()  # settle: whatever the first refusal opens stays open
        before = _open_files(proc.pid)
        for _ in range(30):
            refused_upload()
        after = _open_files(proc.pid)
        assert len(after) <= len(before) + 3, sorted(set(after) - set(before))
        # One segment file in use (a window read may hold its own read descriptor on it), none opened since.
        assert len({f for f in after if f.endswith(".cvseg")}) <= 1
        assert sum(f.endswith(".cvseg") for f in after) <= sum(f.endswith(".cvseg") for f in before)
        assert [p.name for p in volume.rglob("*.cvseg") if p.stat().st_size == 0] == []

        # A read that cannot be audited is a clear 503 on a connection that stays usable; unaudited ones still work.
        for _ in range(3):
            r = http.get(read, headers=owner.headers, params=window)
            assert r.status_code == 503 and r.json()["error"]["code"] == Unavailable.code, r.text
        assert http.get("/api/v1/vehicles", headers=owner.headers).status_code == 200
        assert http.get("/api/v1/health").status_code == 200
        http.cookies.set("carvault_session", owner.headers["Authorization"].split()[1])
        page = http.get(f"/vehicles/{vin}/drive", params={"start": BASE_MS, "end": BASE_MS + 120_000})
        http.cookies.clear()
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")

        (volume / "filler").unlink()  # the operator frees space: the region carries on by itself
        assert len(agent.upload_pending()) == 1
        assert http.get(read, headers=owner.headers, params=window).status_code == 200
    assert proc.poll() is None
