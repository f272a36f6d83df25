"""A value put into new nested folders of the local blob store is durable: every new folder's entry is fsynced.

A payload part (``copies/vin=…/day=…/part-….parquet``) is the only copy of its bytes once compaction reclaimed the
segment's range, so the folders above it must survive a crash as surely as the file. Which folders were fsynced is
observed at the operating system's boundary (``os.fsync`` and the descriptor's path), nothing of ours replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carvault.store.blobs import LocalBlobStore


@pytest.mark.parametrize("how", ["put", "put_file"])
def test_new_nested_folders_are_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    key = "copies/vin=TESTVIN0000000001/day=2026-12-01/part-00ff.parquet"
    if how == "put":
        store.put(key, b"PAR1 payload PAR1")
    else:
        source = tmp_path / "source"
        source.write_bytes(b"PAR1 payload PAR1")
        store.put_file(key, source)
    root = tmp_path / "blobs"
    for folder in (root, root / "copies", root / "copies/vin=TESTVIN0000000001", root / key.rsplit("/", 1)[0]):
        assert str(folder) in synced, (folder, synced)  # each new entry, and the file's own, durable
    assert store.get(key) == b"PAR1 payload PAR1"
