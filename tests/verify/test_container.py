"""The ZIP container is read with bounded memory and time, whatever the archive declares."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from carvault.verify.container import ContainerError, Limits, is_package_name, read_container


def archive(entries: list[tuple[str, bytes]], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP holding exactly ``entries``."""
    sink = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(sink, "w", compression=compress) as z:
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        for name, data in entries:
            z.writestr(name, data)
    return sink.getvalue()


def declare_members(blob: bytes, count: int) -> bytes:
    """The archive with its end-of-central-directory record claiming ``count`` members."""
    at = blob.rfind(b"PK\x05\x06")
    return blob[: at + 8] + struct.pack("<HH", count, count) + blob[at + 12 :]


GOOD = [("manifest.json", b"{}"), ("batches/000000000001.cvb", b"x" * 100)]
NOISE = random.Random(1).randbytes(300_000)

REFUSED = [
    # (case, archive bytes, limits, words in the error)
    ("not a ZIP", b"hello", Limits(), "not a ZIP archive"),
    ("empty file", b"", Limits(), "not a ZIP archive"),
    ("ratio bomb", archive([("data/window.csv", bytes(32 << 20))]), Limits(), "expands more than 100 times"),
    (
        "member over the limit",
        archive([("a", NOISE)], zipfile.ZIP_STORED),
        Limits(max_member_bytes=200_000),
        "member size",
    ),
    ("total over the limit", archive([("a", NOISE), ("b", NOISE)]), Limits(max_total_bytes=500_000), "total size"),
    ("too many members", archive([(f"f{i}", b"") for i in range(11)]), Limits(max_members=10), "at most 10"),
    ("directory lies about the count", declare_members(archive(GOOD), 60_000), Limits(), "declares 60000 members"),
    ("duplicate names", archive([*GOOD, ("manifest.json", b"[]")]), Limits(), "more than once"),
    ("parent directory", archive([("../x", b"")]), Limits(), "not a safe relative path"),
    ("inner parent directory", archive([("batches/../x", b"")]), Limits(), "not a safe relative path"),
    ("absolute path", archive([("/etc/passwd", b"")]), Limits(), "not a safe relative path"),
    ("backslash", archive([("a\\b", b"")]), Limits(), "not a safe relative path"),
    ("NUL in a name", archive([("aQQQb", b"")]).replace(b"aQQQb", b"a\x00QQb"), Limits(), "not a safe relative path"),
    ("name too long", archive([("a" * 129, b"")]), Limits(), "not a safe relative path"),
    ("directory entry", archive([("dir/", b"")]), Limits(), "not a safe relative path"),
    ("bzip2", archive(GOOD, zipfile.ZIP_BZIP2), Limits(), "neither stored nor deflated"),
]


@pytest.mark.parametrize(("case", "blob", "limits", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_archives_are_refused_by_rule(
    tmp_path: Path, case: str, blob: bytes, limits: Limits, words: str
) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(blob)
    with pytest.raises(ContainerError) as e:
        read_container(path, limits)
    assert words in e.value.detail


def test_a_well_formed_archive_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "ok.zip"
    path.write_bytes(archive([*GOOD, ("data/window.csv", NOISE)]))
    got = read_container(path)
    assert got.files == dict([*GOOD, ("data/window.csv", NOISE)]) and got.total_bytes == 2 + 100 + len(NOISE)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("manifest.json", True),
        ("batches/000000000042.cvb", True),
        ("batches/42.cvb", False),
        ("batches/000000000042.cvb.bak", False),
        ("notes.txt", False),
        ("report/report.html", True),
    ],
)
def test_package_names(name: str, ok: bool) -> None:
    assert is_package_name(name) is ok
