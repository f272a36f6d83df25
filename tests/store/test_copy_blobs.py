"""`carvault copy-blobs` keeps the target equal to the region: erased and rewritten values are copied again, and
what the region no longer holds is reported, then deleted on request (docs/operations.md, moving a region)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carvault.cli import app
from carvault.store.blobs import BlobStore, LocalBlobStore, blob_store_of, copy_blobs
from carvault.store.segments import zero_ranges
from tests.s3server import S3Server, s3_bucket, s3_server  # noqa: F401

SEGMENT = "segments/0001-000001.cvseg"
CHECKPOINT = "log/checkpoint"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """An empty target: a folder, or a fresh bucket on the session's S3 server (its keys in the environment)."""
    if request.param == "local":
        store: BlobStore = LocalBlobStore(tmp_path / "target")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        store = blob_store_of(s3_bucket(server), tmp_path / "unused", endpoint_url=server.endpoint_url)
    yield store
    store.close()


def _region_blobs(root: Path) -> LocalBlobStore:
    store = LocalBlobStore(root)
    store.put(SEGMENT, b"batch one" + b"PERSONAL DATA" + b"batch three")
    store.put(CHECKPOINT, b"example.com/log\n41\nroot-one=\n")
    store.put("packages/p1.zip", b"a package")
    return store


def test_an_erasure_in_place_is_copied_again(tmp_path: Path, target: BlobStore) -> None:
    src = _region_blobs(tmp_path / "region")
    first = copy_blobs(src, target)
    assert (first.copied, first.skipped, first.extra) == (3, 0, ())
    # Erasure zeroes the batch's range in place and the log's checkpoint is rewritten: neither changes the size.
    zero_ranges(tmp_path / "region" / SEGMENT, [(9, 13)])
    src.put(CHECKPOINT, b"example.com/log\n42\nroot-two=\n")
    again = copy_blobs(src, target)
    assert (again.copied, again.skipped) == (2, 1)
    assert target.get(SEGMENT) == b"batch one" + bytes(13) + b"batch three"
    assert b"PERSONAL" not in target.get(SEGMENT)
    assert target.get(CHECKPOINT) == src.get(CHECKPOINT)
    assert copy_blobs(src, target).skipped == 3


def test_what_the_region_no_longer_holds_is_reported_then_deleted(tmp_path: Path, target: BlobStore) -> None:
    src = _region_blobs(tmp_path / "region")
    copy_blobs(src, target)
    src.delete("packages/p1.zip")  # purged after the first copy
    target.put("imports/unrelated.txt", b"outside the copied prefixes")  # never looked at
    kept = copy_blobs(src, target)
    assert kept.extra == ("packages/p1.zip",) and kept.deleted == 0 and target.exists("packages/p1.zip")
    gone = copy_blobs(src, target, delete_extra=True)
    assert gone.deleted == 1 and not target.exists("packages/p1.zip") and target.exists("imports/unrelated.txt")
    assert copy_blobs(src, target).extra == ()


def test_the_command_fails_until_the_target_holds_nothing_erased(tmp_path: Path) -> None:
    data = tmp_path / "region"
    src = _region_blobs(data)
    args = ["copy-blobs", "--to", f"file://{tmp_path / 'target'}"]
    env = {"CARVAULT_DATA_DIR": str(data), "CARVAULT_REGION": "cn"}
    runner = CliRunner()
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0 and "3 blobs copied" in first.output, first.output
    src.delete("packages/p1.zip")
    stale = runner.invoke(app, args, env=env)
    assert stale.exit_code == 1 and "1 blobs in the target are no longer in the region" in stale.output, stale.output
    assert "--delete-extra" in stale.output
    cleaned = runner.invoke(app, [*args, "--delete-extra"], env=env)
    assert cleaned.exit_code == 0 and "1 blobs the region no longer holds deleted" in cleaned.output, cleaned.output
    assert not (tmp_path / "target" / "packages" / "p1.zip").exists()
    assert runner.invoke(app, args, env=env).exit_code == 0
