"""The log as C2SP tlog-tiles: published to the blob store after real uploads, served under /tlog/, and checked
by a client written from the specifications alone (tests/ledger/tlog_tiles_client.py), on the local and the S3
blob stores."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import InvalidQuery
from carvault.ledger.checkpoint import format_vkey, sign_checkpoint
from carvault.ledger.merkle import EMPTY_ROOT
from carvault.ledger.tiles import (
    CHECKPOINT_KEY,
    TilePublisher,
    latest_checkpoint,
    parse_tile_path,
    publish_checkpoint,
    tile_path,
    tiles_for,
)
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.store.blobs import LocalBlobStore
from carvault.store.metadata import BatchRecord
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, vin_for
from tests.ledger.conftest import ORIGIN, log_key, open_log
from tests.ledger.tlog_tiles_client import (
    ClientError,
    TiledLogClient,
    Verifier,
    check_consistency,
    encode_index,
    open_checkpoint,
    rfc6962_leaf,
    root_from_inclusion,
    tile_url_path,
)
from tests.s3server import s3_bucket, s3_server  # noqa: F401

PATHS = ["Vehicle.Speed", "Vehicle.Chassis.Brake.PedalPosition"]  # on by default: no consent needed


# -- paths and the checkpoint slot -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1234067, 10**9, 2**40 + 7])
def test_tile_paths_follow_the_spec_and_agree_with_the_independent_client(n: int) -> None:
    assert tile_path(0, n) == tile_url_path(0, n, 256)
    assert tile_path(3, n, 17) == tile_url_path(3, n, 17)
    assert parse_tile_path(tile_path(3, n, 17).removeprefix("tile/")) == (3, n, 17)
    assert parse_tile_path(tile_path(0, n).removeprefix("tile/")) == (0, n, 256)
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067" and encode_index(5) == "005"


@pytest.mark.parametrize(
    "bad", ["", "0", "64/000", "00/000", "0/1", "0/0000", "0/x000/001", "0/001/x002", "0/000.p/0", "0/000.p/256",
            "0/000.p/07", "0/000.p", "-1/000", "0/x01/000", "0/../000", "entries/000"]
)  # fmt: skip
def test_malformed_tile_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_path(bad)


def test_the_tiles_of_the_spec_example_tree() -> None:
    """A tree of 70,000: 273 full level-0 tiles, a partial of 112, one full level-1 tile, partials of 17 and 1."""
    tiles = list(tiles_for(70_000))
    assert sum(1 for t in tiles if t[0] == 0 and t[2] == 256) == 273
    assert [t for t in tiles if t[2] != 256 or t[0] > 0] == [(0, 273, 112), (1, 0, 256), (1, 1, 17), (2, 0, 1)]
    assert list(tiles_for(256)) == [(0, 0, 256), (1, 0, 1)]
    assert list(tiles_for(300, since=256)) == [(0, 1, 44), (1, 0, 1)]  # only what is new
    assert list(tiles_for(0)) == []


def test_publish_checkpoint_keeps_the_largest_tree(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "store")
    key = log_key()
    root = hashlib.sha256(b"r").digest()
    notes = {n: sign_checkpoint(ORIGIN, n, root, key, ORIGIN) for n in (3, 5)}
    assert latest_checkpoint(blobs) is None
    assert publish_checkpoint(blobs, notes[5]) is True
    assert publish_checkpoint(blobs, notes[3]) is False  # never back to a smaller tree
    assert latest_checkpoint(blobs) == notes[5]
    cosigned = notes[5] + f"\u2014 witness.example {base64.b64encode(bytes(76)).decode()}\n"
    assert publish_checkpoint(blobs, cosigned) is True  # the same tree: replaced (a cosigned note)
    assert blobs.get(CHECKPOINT_KEY).decode() == cosigned
    with pytest.raises(Exception, match="checkpoint|note|signature|lines"):
        publish_checkpoint(blobs, "not a checkpoint\n")
    assert latest_checkpoint(blobs) == cosigned


def test_publish_checkpoint_with_the_size_the_publisher_read(tmp_path: Path) -> None:
    """The tile publisher passes the published size it read under the log's publishing lock: no second read."""
    blobs = LocalBlobStore(tmp_path / "store")
    key = log_key()
    root = hashlib.sha256(b"r").digest()
    notes = {n: sign_checkpoint(ORIGIN, n, root, key, ORIGIN) for n in (3, 5, 8)}
    assert publish_checkpoint(blobs, notes[5], published=-1) is True  # -1: none published yet
    assert publish_checkpoint(blobs, notes[3], published=5) is False  # still never back to a smaller tree
    assert latest_checkpoint(blobs) == notes[5]
    # The size the caller read under the publishing lock is what counts: the store is not read again. (A re-read
    # would find the larger tree put here behind the lock's back and refuse.)
    blobs.put(CHECKPOINT_KEY, notes[8].encode())
    assert publish_checkpoint(blobs, notes[5], published=3) is True
    assert latest_checkpoint(blobs) == notes[5]


def test_tiles_are_checked_against_the_size_the_publisher_read(tmp_path: Path) -> None:
    log = open_log(tmp_path / "log")
    log.append([b"leaf %d" % i for i in range(300)])
    full = log.subtree_hashes(0, 0, 256, committed=300)
    assert full == log.subtree_hashes(0, 0, 256)  # the same hashes as with the size read from the log
    with pytest.raises(InvalidQuery):  # beyond the size given, though the log holds it
        log.subtree_hashes(0, 256, 44, committed=299)
    with pytest.raises(InvalidQuery):
        log.subtree_hashes(0, 256, 45)
    assert log.checkpoint() == log.checkpoint(300)  # one size read; the same note as with the size given
    log.close()


# -- a publisher over a log, without HTTP ----------------------------------------------------------------------


def test_publisher_coalesces_repairs_and_deletes_superseded_partials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = LocalBlobStore(tmp_path / "store")
    with open_log(tmp_path / "log") as log:
        seen: list[str] = []
        publisher = TilePublisher(log, blobs, on_published=seen.append)
        assert publisher.publish_once() == 0  # an empty tree is published too (its checkpoint needs no tile)
        assert latest_checkpoint(blobs) is not None
        log.append([b"leaf %d" % i for i in range(200)])
        assert publisher.publish_once() == 200
        assert publisher.publish_once() == 200  # nothing new: nothing written, nobody told
        assert [n.split("\n")[1] for n in seen] == ["0", "200"] and seen[-1] == latest_checkpoint(blobs)
        assert blobs.exists("log/tile/0/000.p/200")
        log.append([b"more %d" % i for i in range(100)])
        publisher.publish_once()
        keys = set(blobs.list("log/"))
        assert "log/tile/0/000" in keys and "log/tile/0/001.p/44" in keys and "log/tile/1/000.p/1" in keys
        assert not any(k.startswith("log/tile/0/000.p/") for k in keys)  # superseded by the full tile
        full = blobs.get("log/tile/0/000")
        assert full == b"".join(log.leaf_hash(i) for i in range(256))
        # Lost tiles (a wiped prefix, a crash before a PUT) are re-created from the log, byte for byte, the log's
        # size read once for all of them.
        blobs.delete("log/tile/0/000")
        blobs.delete("log/tile/1/000.p/1")
        reads = _count_size_reads(monkeypatch, log)
        assert publisher.repair() == 2
        assert blobs.get("log/tile/0/000") == full and len(reads) == 1
        assert publisher.repair() == 0


def _count_size_reads(monkeypatch: pytest.MonkeyPatch, log: object) -> list[int]:
    """Every read of ``log.size`` from now on, recorded."""
    reads: list[int] = []
    size = type(log).size

    def counted(self: object) -> int:
        reads.append(size.fget(self))
        return reads[-1]

    monkeypatch.setattr(type(log), "size", property(counted))
    return reads


def test_an_unreadable_published_checkpoint_is_replaced_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blobs = LocalBlobStore(tmp_path / "store")
    with open_log(tmp_path / "log") as log:
        log.append([b"leaf %d" % i for i in range(3)])
        blobs.put(CHECKPOINT_KEY, b"not a checkpoint")
        publisher = TilePublisher(log, blobs)
        with caplog.at_level("WARNING", logger="carvault"):
            assert publisher.publish_once() == 3
        assert "published checkpoint is unreadable" in caplog.text
        assert latest_checkpoint(blobs).split("\n")[1] == "3"


def _upload(region: Region, server: BackgroundServer, tmp_path: Path, vin_no: int, batches: int) -> list[dict]:
    vehicle = provision(region, vin_for(vin_no), tmp_path / "vehicles")
    agent = VehicleAgent(vehicle, tmp_path / "vehicles" / vehicle.vin, server.url)
    agent.record(drive_table(BASE_MS, seconds=10 * batches, paths=PATHS), batch_seconds=10)
    receipts = agent.upload_pending()
    assert len(receipts) == batches
    return receipts


def _client(http: httpx.Client, region: Region) -> TiledLogClient:
    # The verifier key comes out of band (the region's configuration), not from the log being checked.
    return TiledLogClient(http, "/tlog", Verifier.parse(region.log.vkey), region.log.origin)


def _leaf_hashes(region: Region, receipts: list[dict]) -> dict[int, bytes]:
    with region.db.session() as s:
        rows = s.scalars(select(BatchRecord).where(BatchRecord.log_index.in_([r["log_index"] for r in receipts])))
        return {row.log_index: row.leaf_hash for row in rows}


def _check_region(region: Region, server: BackgroundServer, tmp_path: Path, bulk: int) -> None:
    """Uploads, bulk leaves, more uploads; then everything the spec promises, checked from tiles over HTTP."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        first = _upload(region, server, tmp_path, 1, 3)
        assert region.tiles.wait_published(region.log.size, timeout=60)
        client = _client(http, region)
        old = client.checkpoint()
        assert old.size == region.log.size and client.root(old.size) == old.root
        # Enough leaves for full tiles and a level-1 tile, then receipts after them.
        region.log.append([b"bulk %d" % i for i in range(bulk)])
        later = _upload(region, server, tmp_path, 2, 2)
        assert region.tiles.wait_published(region.log.size, timeout=60)
        new = client.checkpoint()
        assert new.size == region.log.size > old.size + bulk
        assert client.root(new.size) == new.root
        # Inclusion of every receipt's leaf, from tiles alone; the server's own proof agrees.
        leaves = _leaf_hashes(region, first + later)
        for receipt in first + later:
            index = receipt["log_index"]
            assert client.leaf(index, new.size) == leaves[index]
            proof = client.inclusion_proof(index, new.size)
            assert root_from_inclusion(leaves[index], index, new.size, proof) == new.root
            served = http.get("/api/v1/log/proof/inclusion", params={"index": index, "size": new.size}).json()
            assert [base64.b64encode(p).decode() for p in proof] == served["proof"]
            assert root_from_inclusion(rfc6962_leaf(b"forged"), index, new.size, proof) != new.root
        # The later tree extends the earlier one.
        proof = client.consistency_proof(old.size, new.size)
        check_consistency(old.size, new.size, old.root, new.root, proof)
        with pytest.raises(ClientError):
            check_consistency(old.size, new.size, hashlib.sha256(b"x").digest(), new.root, proof)
        # Full level-0 and level-1 tiles were fetched, and no entry bundle.
        assert any(p.startswith("tile/1/") for p in client.fetched)
        assert not any("entries" in p for p in client.fetched)


def _region_on(settings: Settings) -> Iterator[tuple[Region, BackgroundServer]]:
    region = Region(settings)
    try:
        with BackgroundServer(region, port=settings.port) as server:
            yield region, server
    finally:
        region.close()


@pytest.mark.slow
def test_a_region_that_took_uploads_serves_verifiable_tiles(settings: Settings, tmp_path: Path) -> None:
    for region, server in _region_on(settings):
        _check_region(region, server, tmp_path, bulk=70_000 - 8)
        keys = set(region.blobs.list("log/tile/"))
        # The tree's size is 70,000 + 0..: the spec example's full tiles are all there.
        assert {f"log/tile/0/{encode_index(n)}" for n in range(273)} <= keys
        assert "log/tile/1/000" in keys
        with httpx.Client(base_url=server.url, timeout=30) as http:
            full = http.get("/tlog/tile/0/000")
            assert full.status_code == 200 and len(full.content) == 8192
            assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert full.headers["content-type"] == "application/octet-stream"
            cp = http.get("/tlog/checkpoint")
            assert cp.headers["content-type"] == "text/plain; charset=utf-8"
            assert "max-age=2" in cp.headers["cache-control"]
            for path, code in [
                ("/tlog/tile/entries/000", "log_entries_not_published"),
                ("/tlog/tile/0/0000", "tile_not_found"),
                ("/tlog/tile/0/x999/999", "tile_not_found"),  # beyond the tree
                ("/tlog/tile/0/000.p/3", "tile_not_found"),  # a partial the published trees never had
            ]:
                r = http.get(path)
                assert r.status_code == 404 and r.json()["error"]["code"] == code, (path, r.text)
                assert r.json()["error"]["message"]


@pytest.mark.slow
def test_the_same_on_the_s3_blob_store(settings: Settings, tmp_path: Path, s3_server) -> None:  # noqa: F811
    s3 = settings.with_(blob_store=s3_bucket(s3_server), s3_endpoint_url=s3_server.endpoint_url)
    for region, server in _region_on(s3):
        assert region.blobs.kind == "s3"
        _check_region(region, server, tmp_path, bulk=600)
        assert region.blobs.exists("log/tile/0/000") and region.blobs.exists("log/tile/0/001")


@pytest.mark.slow
def test_receipts_do_not_wait_for_the_blob_store(settings: Settings, tmp_path: Path) -> None:
    """With the publisher stopped, uploads are still acknowledged; it catches up (and repairs) when it runs."""
    for region, server in _region_on(settings):
        region.tiles.close()
        published = region.tiles.published_store_size()
        receipts = _upload(region, server, tmp_path, 3, 3)
        assert region.tiles.published_store_size() == published  # nothing published on the upload's path
        assert max(r["log_index"] for r in receipts) == region.log.size - 1
        region.blobs.delete_prefix("log/tile/")  # and the store lost its tiles meanwhile
        region.tiles.start()
        assert region.tiles.wait_published(region.log.size, timeout=60)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            client = _client(http, region)
            cp = client.checkpoint()
            assert cp.size == region.log.size and client.root(cp.size) == cp.root


def test_a_restarted_region_rebuilds_missing_tiles(settings: Settings) -> None:
    with Region(settings) as region:
        region.log.append([b"leaf %d" % i for i in range(300)])
        assert region.tiles.wait_published(300, timeout=60)
        full = region.blobs.get("log/tile/0/000")
        region.blobs.delete("log/tile/0/000")
        region.blobs.delete("log/tile/0/001.p/44")
    with Region(settings) as region:  # the publisher repairs on start
        assert region.tiles.wait_published(300, timeout=60)
        assert region.blobs.get("log/tile/0/000") == full
        assert region.blobs.exists("log/tile/0/001.p/44")


def test_the_client_refuses_a_checkpoint_it_cannot_trust(tmp_path: Path) -> None:
    key = log_key()
    note = sign_checkpoint(ORIGIN, 0, EMPTY_ROOT, key, ORIGIN)
    with open_log(tmp_path / "log") as log:
        verifier = Verifier.parse(log.vkey)
    assert open_checkpoint(note, verifier, ORIGIN).size == 0
    with pytest.raises(ClientError):
        open_checkpoint(note, verifier, "another.example/log")
    with pytest.raises(ClientError):
        open_checkpoint(note.replace("\n0\n", "\n1\n", 1), verifier, ORIGIN)
    other = Verifier.parse(format_vkey(ORIGIN, log_key("someone else").public_key()))
    with pytest.raises(ClientError):
        open_checkpoint(note, other, ORIGIN)


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_on_postgresql_and_s3_publish_one_verifiable_log(
    settings: Settings,
    tmp_path: Path,
    postgres: TemporaryPostgres,
    s3_server,  # noqa: F811
) -> None:
    """Two replicas (one data folder for the keys, one PostgreSQL log, one bucket) take uploads in turn."""
    shared = settings.with_(
        database_url=postgres.create_database("tiles_replicas"),
        log_backend="postgres",
        blob_store=s3_bucket(s3_server),
        s3_endpoint_url=s3_server.endpoint_url,
    )
    Region(shared).close()  # keys and schema once, as `carvault serve --workers` does
    one, two = Region(shared), Region(shared.with_(port=free_port()))
    try:
        with BackgroundServer(one, port=shared.port) as s1, BackgroundServer(two, port=two.settings.port) as s2:
            receipts = _upload(one, s1, tmp_path, 1, 2) + _upload(two, s2, tmp_path, 2, 2)
            one.log.append([b"bulk %d" % i for i in range(300)])
            receipts += _upload(two, s2, tmp_path, 3, 1)
            size = two.log.size
            assert one.log.size == size == 305 and sorted(r["log_index"] for r in receipts) == [0, 1, 2, 3, 304]
            assert one.tiles.wait_published(size, timeout=60) and two.tiles.wait_published(size, timeout=60)
            for server, region in ((s1, one), (s2, two)):  # either replica serves the same verifiable log
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    client = _client(http, region)
                    cp = client.checkpoint()
                    assert cp.size == size and client.root(size) == cp.root
                    leaves = _leaf_hashes(region, receipts)
                    for r in receipts:
                        proof = client.inclusion_proof(r["log_index"], size)
                        assert root_from_inclusion(leaves[r["log_index"]], r["log_index"], size, proof) == cp.root
    finally:
        two.close()
        one.close()


def test_tile_paths_answer_programs_in_json(http: httpx.Client) -> None:
    """tlog clients read /tlog/: a wrong method is a JSON 405 naming GET (it was the portal's HTML error page)."""
    for path in ("/tlog/checkpoint", "/tlog/tile/0/000"):
        r = http.request("TRACE", path)
        assert r.status_code == 405 and r.headers["allow"] == "GET", (path, r.headers)
        assert r.json()["error"]["code"] == "method_not_allowed"
    for path in ("/tlog/tile/0/../../etc/passwd", "/tlog/tile/" + "9" * 5000 + "/000", "/tlog/tile/0/x999999/000"):
        r = http.get(path)
        assert r.status_code in (400, 404) and r.json()["error"]["code"] in ("tile_not_found", "not_found"), path
