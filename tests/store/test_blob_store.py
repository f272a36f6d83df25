"""One suite for every blob-store backend: the local folder and S3 (moto's real standalone server on loopback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from carvault.errors import Unavailable
from carvault.server import free_port
from carvault.settings import Settings
from carvault.store.blobs import BlobNotFound, BlobStore, LocalBlobStore, blob_store_of
from carvault.store.s3 import S3BlobStore
from carvault.store.segments import SegmentReader, SegmentWriter
from tests.s3server import S3_TEST_ENV, S3Server, s3_bucket, s3_server  # noqa: F401


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server's keys in the environment, also for tests that start their own server."""
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        s: BlobStore = blob_store_of("local", tmp_path / "data")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        s = blob_store_of(s3_bucket(server), tmp_path / "data", endpoint_url=server.endpoint_url)
    assert s.kind == request.param
    yield s
    s.close()


def test_put_get_replace(store: BlobStore) -> None:
    store.put("segments/a.cvseg", b"first")
    assert store.get("segments/a.cvseg") == b"first"
    store.put("segments/a.cvseg", bytearray(b"second value"))  # replaced whole
    assert store.get("segments/a.cvseg") == b"second value"
    assert store.size("segments/a.cvseg") == 12
    assert store.exists("segments/a.cvseg")
    store.put("empty", b"")
    assert store.get("empty") == b"" and store.size("empty") == 0


def test_ranges(store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    store.put("x/y/z.bin", memoryview(data))
    assert store.get_range("x/y/z.bin", 0, 10) == data[:10]
    assert store.get_range("x/y/z.bin", 1000, 2000) == data[1000:3000]
    assert store.get_range("x/y/z.bin", len(data) - 1, 1) == data[-1:]
    with pytest.raises(Unavailable):
        store.get_range("x/y/z.bin", len(data) - 5, 10)  # shorter than asked: never a silent short read
    assert b"".join(store.stream("x/y/z.bin", chunk=1000)) == data


def test_missing_keys(store: BlobStore) -> None:
    assert not store.exists("nothing/here")
    for call in (
        lambda: store.get("nothing/here"),
        lambda: store.get_range("nothing/here", 0, 1),
        lambda: store.size("nothing/here"),
        lambda: store.stream("nothing/here"),
    ):
        with pytest.raises(BlobNotFound):
            call()
    assert store.delete("nothing/here") == 0
    assert store.delete_prefix("nothing/") == 0


def test_listing_with_prefixes(store: BlobStore) -> None:
    keys = ["segments/w-1.cvseg", "segments/w-2.cvseg", "blobs/ab/ab12.jpg", "blobs/cd/cd34.jpg", "packages/p.zip"]
    keys += ["copies/vin=V1/day=2026-12-03/part-0.parquet", "segmentsX"]
    for k in keys:
        store.put(k, k.encode())
    assert sorted(store.list()) == sorted(keys)
    assert sorted(store.list("segments/")) == ["segments/w-1.cvseg", "segments/w-2.cvseg"]
    assert sorted(store.list("segments")) == ["segments/w-1.cvseg", "segments/w-2.cvseg", "segmentsX"]
    assert sorted(store.list("blobs/ab/")) == ["blobs/ab/ab12.jpg"]
    assert list(store.list("copies/vin=V1/")) == ["copies/vin=V1/day=2026-12-03/part-0.parquet"]
    assert list(store.list("nothing/")) == []


def test_delete_and_delete_prefix(store: BlobStore) -> None:
    for i in range(5):
        store.put(f"exports/{i}.csv", b"x" * (i + 1))
    store.put("exportsX", b"keep")
    assert store.delete("exports/0.csv") == 1
    assert not store.exists("exports/0.csv")
    assert store.delete_prefix("exports/") == 2 + 3 + 4 + 5
    assert list(store.list("exports/")) == []
    assert store.get("exportsX") == b"keep"


def test_many_keys_page_and_batch(store: BlobStore) -> None:
    """More keys than one listing page or one DeleteObjects request holds (1000) on S3."""
    if store.kind == "local":
        pytest.skip("paging is an object-storage matter; the local walk has no pages")
    for i in range(1100):
        store.put(f"log/tile/0/{i:04d}", b"t")
    assert len(list(store.list("log/tile/"))) == 1100
    assert store.delete_prefix("log/") == 1100
    assert list(store.list("log/")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", ".hidden", "a/b/", "sp ace", "a\\b"])
def test_bad_keys(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="bad blob key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="bad blob key"):
        store.get(key)


def test_put_file(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"0123456789" * 100_000)
    store.put_file("exports/big.bin", src)
    assert store.get("exports/big.bin") == src.read_bytes()


def test_concurrent_writers(store: BlobStore) -> None:
    """Threads writing the same keys over and over: every read sees one whole value, never a mix or a part."""
    values = [bytes([i]) * 50_000 for i in range(1, 9)]
    stop = threading.Event()
    bad: list[bytes] = []

    def write(v: bytes) -> None:
        for n in range(15):
            store.put(f"race/{n % 3}", v)

    def read() -> None:
        while not stop.is_set():
            for n in range(3):
                try:
                    got = store.get(f"race/{n}")
                except BlobNotFound:
                    continue
                if got not in values:
                    bad.append(got[:8])

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(v,)) for v in values]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert bad == []
    assert sorted(store.list("race/")) == ["race/0", "race/1", "race/2"]
    assert all(store.get(f"race/{n}") in values for n in range(3))
    if store.kind == "local":
        assert not [p for p in Path(store.local_path("race/0")).parent.iterdir() if p.name.startswith(".")]


def test_segments_on_the_store(store: BlobStore) -> None:
    """Evidence: groups appended, read back by location, erased by range (the store's own backend semantics)."""
    writer, reader = SegmentWriter(store, 1 << 20, writer_id="w1"), SegmentReader(store)
    first = writer.append_many([b"A" * 10, b"B" * 20])
    second = writer.append_many([b"C" * 5])
    assert [reader.read(*loc) for loc in first + second] == [b"A" * 10, b"B" * 20, b"C" * 5]
    if store.kind == "local":
        assert first[0][0] == second[0][0]  # one file, appended
        assert second[0][1] == 30
    else:
        assert first[0][0] != second[0][0] and second[0][1] == 0  # one object per group
    assert sorted(store.list("segments/")) == sorted({f"segments/{loc[0]}" for loc in first + second})
    seg, off, length = first[0]
    assert reader.erase(seg, [(off, length)]) == 10
    assert reader.read(seg, off, length) == bytes(10)
    assert reader.read(*first[1]) == b"B" * 20  # the neighbour is untouched, at the same offset
    reader.erase(second[0][0], [(0, 5)])
    if store.kind == "s3":
        assert not store.exists(f"segments/{second[0][0]}")  # nothing left but zeros: the object is deleted
        assert reader.erase(second[0][0], [(0, 5)]) == 0
    writer.close()
    reader.close()


def test_local_setting_forms(tmp_path: Path) -> None:
    assert isinstance(blob_store_of("", tmp_path / "d"), LocalBlobStore)
    other = blob_store_of(f"file://{tmp_path / 'elsewhere'}", tmp_path / "d")
    assert other.local_path("segments/x") == tmp_path / "elsewhere" / "segments" / "x"
    with pytest.raises(ValueError, match="blob_store must be"):
        blob_store_of("ftp://x", tmp_path / "d")


@pytest.mark.slow
def test_misconfiguration_fails_clearly_at_region_start(
    s3_server: S3Server,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket that does not exist, a server that does not answer, no credentials: one readable error each."""
    from carvault.region import Region

    def start(**kw: str) -> str:
        settings = Settings(data_dir=tmp_path / f"r{free_port()}", region="cn", **kw)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as e:
            Region(settings).close()
        return str(e.value)

    msg = start(blob_store="s3://no-such-bucket/region", s3_endpoint_url=s3_server.endpoint_url)
    assert "no-such-bucket" in msg and "does not exist" in msg and "blob_store" in msg
    msg = start(blob_store=s3_bucket(s3_server), s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert "does not answer" in msg and "s3_endpoint_url" in msg
    msg = start(blob_store="s3://", s3_endpoint_url=s3_server.endpoint_url)
    assert "bucket" in msg
    for k in S3_TEST_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    msg = start(blob_store=s3_bucket(s3_server), s3_endpoint_url=s3_server.endpoint_url)
    assert "no credentials" in msg and "AWS_ACCESS_KEY_ID" in msg


@pytest.mark.slow
def test_s3_store_outage_is_unavailable(tmp_path: Path) -> None:
    """A server that goes away: every call is Unavailable (after botocore's retries), never a raw boto error."""
    from tests.s3server import start_s3_server

    server = start_s3_server(tmp_path / "own")
    try:
        bucket = server.create_bucket()
        store = S3BlobStore(bucket, "r", endpoint_url=server.endpoint_url, region_name="us-east-1")
        store.put("a", b"1")
        server.stop()
        for call in (lambda: store.put("b", b"2"), lambda: store.get("a"), lambda: list(store.list())):
            with pytest.raises(Unavailable, match="object storage"):
                call()
        with pytest.raises(Unavailable):
            store.check()
        store.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_serve_with_a_missing_bucket_says_so_in_one_line(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from carvault.cli import app

    env = {
        "CARVAULT_DATA_DIR": str(tmp_path / "region"),
        "CARVAULT_REGION": "cn",
        "CARVAULT_BLOB_STORE": "s3://no-such-bucket/region",
        "CARVAULT_S3_ENDPOINT_URL": s3_server.endpoint_url,
    }
    done = CliRunner().invoke(app, ["serve", "--port", str(free_port())], env=env)
    assert done.exit_code == 2, done.output
    said = " ".join(done.output.split())  # the console wraps long lines
    assert said.startswith("bad setting: ") and "bucket 'no-such-bucket' does not exist" in said
    assert "Traceback" not in said
