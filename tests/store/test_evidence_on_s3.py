"""A region whose blob store is S3 (moto's real standalone server): evidence, frames, packages and exports live
there, deletion erases them there, and an outage of the object store refuses uploads cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from carvault.ingest.frames import FrameStore
from carvault.protocol import BATCH_MEDIA_TYPE
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.camera import spool_frames, upload_frames
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in, vin_for
from tests.s3server import S3_TEST_ENV, S3Server, s3_bucket, s3_server, start_s3_server  # noqa: F401

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "images"


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server's keys in the environment, also for tests that start their own server."""
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)


def s3_settings(tmp_path: Path, server: S3Server, blob_store: str, endpoint_url: str | None = None) -> Settings:
    port = free_port()
    return Settings(
        data_dir=tmp_path / "region-cn",
        region="cn",
        port=port,
        region_endpoints={"cn": f"http://127.0.0.1:{port}"},
        blob_store=blob_store,
        s3_endpoint_url=endpoint_url or server.endpoint_url,
    )


@pytest.fixture
def region(tmp_path: Path, s3_server: S3Server) -> Iterator[Region]:  # noqa: F811 - the imported fixture
    r = Region(s3_settings(tmp_path, s3_server, s3_bucket(s3_server)))
    yield r
    r.close()


@pytest.fixture
def server(region: Region) -> Iterator[BackgroundServer]:
    with BackgroundServer(region, port=region.settings.port) as s:
        yield s


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def car(region: Region, server: BackgroundServer, tmp_path: Path, n: int) -> tuple[VehicleIdentity, VehicleAgent]:
    v = provision(region, vin_for(n), tmp_path / "vehicles")
    opt_in(region, v.vin)  # drive tables carry location and biometrics: the gateway checks consent
    return v, VehicleAgent(v, tmp_path / "vehicles" / v.vin, server.url)


def claim(http: httpx.Client, v: VehicleIdentity) -> OwnerClient:
    owner = make_owner(http)
    r = http.post("/api/v1/vehicles/claim", headers=owner.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text
    return owner


def indexed(region: Region) -> int:
    with region.db.session() as s:
        return s.scalar(select(func.count()).select_from(BatchRecord)) or 0


def test_cars_upload_and_every_batch_reads_back_byte_exact(
    region: Region, server: BackgroundServer, http: httpx.Client, tmp_path: Path
) -> None:
    cars = [car(region, server, tmp_path, n) for n in range(1, 5)]
    sent: list[bytes] = []
    for n, (_, agent) in enumerate(cars):
        agent.record(drive_table(seconds=300, seed=n), batch_seconds=60)
        sent += [path.read_bytes() for path in agent.pending()]
    receipts: dict[str, list[dict[str, object]]] = {}

    def upload(v: VehicleIdentity, agent: VehicleAgent) -> None:
        receipts[v.vin] = agent.upload_pending()

    threads = [threading.Thread(target=upload, args=c) for c in cars]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in receipts.values()) == [5, 5, 5, 5]
    # Every acknowledged batch is in object storage, byte for byte, found through the index.
    with region.db.session() as s:
        recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.id)))
    assert len(recs) == 20
    stored = sorted(region.segment_reader.read(r.segment, r.offset, r.length) for r in recs)
    assert stored == sorted(sent)
    for r in recs:
        assert hashlib.sha256(region.segment_reader.read(r.segment, r.offset, r.length)).hexdigest() == r.batch_hash
    # One object per group commit: objects named by the index, nothing in a local segments folder.
    objects = set(region.blobs.list("segments/"))
    assert {f"segments/{r.segment}" for r in recs} == objects
    assert len(objects) <= len(recs)
    assert not (region.settings.data_dir / "segments").exists() or not any(
        (region.settings.data_dir / "segments").iterdir()
    )
    # The owner's window reads back from the objects (ranged GETs) like from files.
    v, _ = cars[0]
    owner = claim(http, v)
    r = http.get(
        f"/api/v1/vehicles/{v.vin}/telemetry",
        headers=owner.headers,
        params={"start": BASE_MS, "end": BASE_MS + 300_000, "signals": "Vehicle.Speed"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 300 * 10  # 10 Hz for 300 s
    # A re-send is answered from the stored bytes with the same receipt.
    first = min((rec for rec in recs if rec.vin == v.vin), key=lambda rec: rec.seq)
    again = http.post(
        "/api/v1/ingest/batches",
        content=region.segment_reader.read(first.segment, first.offset, first.length),
        headers={"Content-Type": BATCH_MEDIA_TYPE},
    )
    assert again.status_code == 200 and again.json()["duplicate"], again.text


def test_frames_package_export_and_deletion_on_object_storage(
    region: Region, server: BackgroundServer, http: httpx.Client, tmp_path: Path
) -> None:
    v, agent = car(region, server, tmp_path, 7)
    owner = claim(http, v)
    agent.record(drive_table(seconds=240), batch_seconds=60)
    assert len(agent.upload_pending()) == 4
    # Frames: the de-identified JPEGs as blobs/<ab>/<sha>.jpg objects.
    region.consents.decide(
        v.vin,
        owner.owner_id,
        "exterior_camera",
        enabled=True,
        purpose="incident evidence",
        ends_ms=int(time.time() * 1000) + 86_400_000,
        lasting=True,
        at_ms=BASE_MS - 60_000,
    )
    agent.fetch_policy()
    _, frames = spool_frames(agent, [(BASE_MS + 5_000, "FRONT", (ASSETS / "ccpd_demo_3.jpg").read_bytes())])
    agent.upload_pending()
    answers = upload_frames(agent)
    sha = hashlib.sha256(frames[0]).hexdigest()
    assert [a["sha256"] for a in answers] == [sha]
    assert region.blobs.get(FrameStore.blob_key(sha)) == frames[0]
    assert not (region.settings.data_dir / "blobs").exists()
    got = http.get(f"/api/v1/vehicles/{v.vin}/frames/{sha}", headers=owner.headers)
    assert got.status_code == 200 and got.content == frames[0]
    # An incident package: stored as packages/<name>.zip, downloaded from there.
    r = http.post(
        f"/api/v1/vehicles/{v.vin}/packages",
        headers=owner.headers,
        json={"start": BASE_MS, "end": BASE_MS + 120_000},
    )
    assert r.status_code == 201, r.text
    package = r.json()
    [key] = list(region.blobs.list("packages/"))
    zipped = http.get(f"/api/v1/vehicles/{v.vin}/packages/{package['id']}/download", headers=owner.headers)
    assert zipped.status_code == 200 and zipped.content == region.blobs.get(key)
    assert hashlib.sha256(zipped.content).hexdigest() == package["sha256"]
    assert "manifest.json" in zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    # An export: built, uploaded as exports/<name>, streamed to the owner; equal to the API's answer.
    window = {"start": BASE_MS, "end": BASE_MS + 200_000, "signals": "Vehicle.Speed,Vehicle.CurrentLocation"}
    r = http.post("/api/v1/exports", headers=owner.headers, json={"vin": v.vin, "format": "csv", **window})
    assert r.status_code in (200, 201, 202), r.text
    job = r.json()
    deadline = time.monotonic() + 60
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = http.get(f"/api/v1/exports/{job['id']}", headers=owner.headers).json()
    assert job["status"] == "done", job
    assert len(list(region.blobs.list("exports/"))) == 1
    file = http.get(f"/api/v1/exports/{job['id']}/download", headers=owner.headers)
    assert file.status_code == 200
    want = http.get(
        f"/api/v1/vehicles/{v.vin}/telemetry", headers=owner.headers, params={**window, "format": "csv"}
    ).content
    assert file.content == want and hashlib.sha256(file.content).hexdigest() == file.headers["X-Content-SHA256"]
    # Deletion erases on object storage: the vehicle's evidence, frames, package and export are gone.
    kw = {"immediately": True} if "immediately" in inspect.signature(region.deletions.request).parameters else {}
    req = region.deletions.request(owner.owner_id, v.vin, "sold the car", **kw)
    assert req.status == "completed"
    with region.db.session() as s:
        assert s.scalar(select(func.count()).select_from(BatchRecord).where(BatchRecord.vin == v.vin)) == 0
    assert list(region.blobs.list("segments/")) == []  # every group held only this car's batches: deleted
    assert list(region.blobs.list("blobs/")) == []
    assert list(region.blobs.list("packages/")) == []
    assert list(region.blobs.list("exports/")) == []
    receipt = json.loads(req.receipt)
    assert receipt["batches_erased"] == 5 and receipt["bytes_overwritten"] > 0 and receipt["frames_erased"] == 1


def test_deleting_one_car_keeps_its_neighbours_in_a_shared_group(
    region: Region, server: BackgroundServer, tmp_path: Path
) -> None:
    """Two cars' batches in one group object: erasing one zeroes its range and keeps the other byte-exact."""
    (_, aa), (_, ab) = car(region, server, tmp_path, 1), car(region, server, tmp_path, 2)
    aa.record(drive_table(seconds=60), batch_seconds=60)
    ab.record(drive_table(seconds=60, seed=3), batch_seconds=60)
    [blob_a], [blob_b] = [p.read_bytes() for p in aa.pending()], [p.read_bytes() for p in ab.pending()]
    [(name, off_a, len_a), (_, off_b, len_b)] = region.segments.append_many([blob_a, blob_b])
    reader = region.segment_reader
    assert reader.erase(name, [(off_a, len_a)]) == len_a
    assert reader.read(name, off_a, len_a) == bytes(len_a)
    assert reader.read(name, off_b, len_b) == blob_b
    assert reader.erase(name, [(off_b, len_b)]) == len_b
    assert not region.blobs.exists(f"segments/{name}")


def test_an_object_store_outage_refuses_uploads_cleanly_and_ingest_resumes(tmp_path: Path) -> None:
    """The S3 server stops: the car gets a clear 503, nothing is indexed or logged, the region keeps serving;
    after a restart the car's next upload succeeds and its bytes read back exactly."""
    s3 = start_s3_server(tmp_path / "own-s3")
    try:
        bucket = s3.create_bucket()
        region = Region(s3_settings(tmp_path, s3, f"s3://{bucket}/region"))
        with region, BackgroundServer(region, port=region.settings.port) as server:
            v, agent = car(region, server, tmp_path, 3)
            agent.record(drive_table(seconds=180), batch_seconds=60)
            assert len(agent.upload_pending(limit=1)) == 1
            before = (indexed(region), region.log.size)
            s3.stop()
            with pytest.raises(UploadRefused) as refused:
                agent.upload_pending()
            assert refused.value.status == 503
            assert refused.value.body["error"]["code"] == "unavailable"
            assert "object storage" in refused.value.body["error"]["message"]
            assert (indexed(region), region.log.size) == before
            assert len(agent.pending()) == 2  # kept in the car's spool for later
            # The region keeps serving while the store is down.
            assert httpx.get(server.url + "/api/v1/health", timeout=10).status_code == 200
            # Restarted (moto keeps objects in memory: the bucket is made again), ingest resumes.
            s3.start()
            s3.create_bucket(bucket)
            receipts = agent.upload_pending()
            assert [r["seq"] for r in receipts] == [2, 3]
            with region.db.session() as s:
                recs = list(s.scalars(select(BatchRecord).where(BatchRecord.seq > 1).order_by(BatchRecord.seq)))
            assert [r.seq for r in recs] == [2, 3]
            for r in recs:
                raw = region.segment_reader.read(r.segment, r.offset, r.length)
                assert hashlib.sha256(raw).hexdigest() == r.batch_hash
            assert region.log.size == before[1] + 2
    finally:
        s3.stop()


class CuttableProxy:
    """A TCP forwarder in front of the S3 server whose link can be cut (listener and every connection closed) and
    restored on the same port: a real network outage while the server keeps its objects."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listen again and forward new connections."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and close every open connection at once."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_a_network_cut_mid_upload_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Cars upload while the link to the object store is cut for 10 s and comes back: some groups are refused
    with 503 (the cars re-send them), and afterwards every batch is stored once, byte for byte, and logged once."""
    s3 = start_s3_server(tmp_path / "own-s3")
    proxy = CuttableProxy(s3.port)
    try:
        bucket = s3.create_bucket()
        region = Region(s3_settings(tmp_path, s3, f"s3://{bucket}/region", endpoint_url=proxy.url))
        with region, BackgroundServer(region, port=region.settings.port) as server:
            cars = [car(region, server, tmp_path, n) for n in range(1, 4)]
            sent: dict[str, list[bytes]] = {}
            for n, (v, agent) in enumerate(cars):
                agent.record(drive_table(seconds=600, seed=n), batch_seconds=30)
                sent[v.vin] = [p.read_bytes() for p in agent.pending()]
            refusals: list[int] = []
            acknowledged: list[dict[str, object]] = []

            def drive(agent: VehicleAgent) -> None:
                deadline = time.monotonic() + 120
                while agent.pending() and time.monotonic() < deadline:
                    try:
                        acknowledged.extend(agent.upload_pending(limit=1))
                        time.sleep(0.05)
                    except UploadRefused as e:
                        refusals.append(e.status)
                        time.sleep(0.3)

            threads = [threading.Thread(target=drive, args=(a,)) for _, a in cars]
            for t in threads:
                t.start()
            while len(acknowledged) < 6:
                time.sleep(0.05)
            proxy.cut()
            time.sleep(10)
            assert httpx.get(server.url + "/api/v1/health", timeout=10).status_code == 200  # still serving
            proxy.restore()
            for t in threads:
                t.join()
            assert refusals and set(refusals) == {503}
            assert len(acknowledged) == sum(len(b) for b in sent.values()) == 60
            with region.db.session() as s:
                recs = list(s.scalars(select(BatchRecord).order_by(BatchRecord.vin, BatchRecord.seq)))
            assert len(recs) == 60 and len({(r.vin, r.seq) for r in recs}) == 60
            for r in recs:
                assert region.segment_reader.read(r.segment, r.offset, r.length) == sent[r.vin][r.seq - 1]
            assert region.log.size == 60
            assert {r.log_index for r in recs} == set(range(60))
    finally:
        proxy.cut()
        s3.stop()


def test_moving_a_local_region_to_s3_keeps_every_batch_and_package(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    """`carvault copy-blobs --to s3://…`, then the same region started on S3: the index still finds every batch
    (file segments read as objects), packages download, new uploads go to objects; a second copy skips all."""
    from typer.testing import CliRunner

    from carvault.cli import app

    local = s3_settings(tmp_path, s3_server, "local")
    with Region(local) as region, BackgroundServer(region, port=local.port) as server:
        v, agent = car(region, server, tmp_path, 5)
        agent.record(drive_table(seconds=240), batch_seconds=60)
        assert len(agent.upload_pending(limit=3)) == 3
        with httpx.Client(base_url=server.url, timeout=60) as http:
            owner = claim(http, v)
            r = http.post(
                f"/api/v1/vehicles/{v.vin}/packages",
                headers=owner.headers,
                json={"start": BASE_MS, "end": BASE_MS + 60_000},
            )
            assert r.status_code == 201, r.text
            package = r.json()
        with region.db.session() as s:
            before = {
                r.seq: region.segment_reader.read(r.segment, r.offset, r.length) for r in s.scalars(select(BatchRecord))
            }
    target = s3_bucket(s3_server)
    args = ["copy-blobs", "--to", target, "--s3-endpoint-url", s3_server.endpoint_url]
    env = {"CARVAULT_DATA_DIR": str(local.data_dir), "CARVAULT_REGION": "cn"}
    done = CliRunner().invoke(app, args, env=env)
    assert done.exit_code == 0, done.output
    assert "0 were there already" in done.output
    again = CliRunner().invoke(app, args, env=env)
    assert again.exit_code == 0 and "0 blobs copied" in again.output, again.output

    moved = s3_settings(tmp_path, s3_server, target)
    with Region(moved) as region, BackgroundServer(region, port=moved.port) as server:
        with region.db.session() as s:
            recs = list(s.scalars(select(BatchRecord)))
        assert {r.seq: region.segment_reader.read(r.segment, r.offset, r.length) for r in recs} == before
        with httpx.Client(base_url=server.url, timeout=60) as http:
            login = http.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            got = http.get(f"/api/v1/vehicles/{v.vin}/packages/{package['id']}/download", headers=headers)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == package["sha256"]
        agent = VehicleAgent(v, tmp_path / "vehicles" / v.vin, server.url)
        assert [r["seq"] for r in agent.upload_pending()] == [4]
        with region.db.session() as s:
            rec = s.scalar(select(BatchRecord).where(BatchRecord.seq == 4))
        assert rec is not None and region.blobs.exists(f"segments/{rec.segment}")
        assert not (local.data_dir / "segments" / rec.segment).exists()  # the new batch went to object storage
