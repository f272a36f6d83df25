"""The blob store: where a region keeps bytes that are not metadata (evidence, copies, frames, packages, log tiles).

One interface, two backends chosen by the ``blob_store`` setting:

- ``local`` (the embedded default): the data folder itself (so ``segments/…`` is ``<data_dir>/segments/…``, as it
  always was), or another folder with ``file:///path``;
- ``s3://bucket/prefix``: S3-compatible object storage (``s3_endpoint_url`` for non-AWS servers).

Keys are ``/``-separated relative names made of ``[A-Za-z0-9._=-]`` parts (Hive-style ``vin=…/day=…`` parts are
allowed); a key never starts with ``/`` nor contains ``..``. ``put`` is atomic: a reader sees the whole new value
or the old one, never a part. With ``durable=True`` (the default) the bytes are on stable storage when ``put``
returns (local: file and folder fsynced; S3: the PUT was acknowledged).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from carvault.durable import fsync_dir
from carvault.errors import CarVaultError, Unavailable

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


class BlobNotFound(CarVaultError):
    """No blob under the key asked for."""

    code = "blob_not_found"
    status = 404


def check_key(key: str) -> str:
    """``key`` if it is a well-formed blob key, else ValueError (keys come from our code, never from clients)."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"bad blob key {key!r}")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Where a region keeps its bytes; see the module docstring for the contract every backend keeps."""

    kind: str  # "local" or "s3"

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        """Store ``data`` under ``key`` atomically (replacing any old value)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store a (large) file's content under ``key`` atomically and durably, without reading it into memory."""
        ...

    def get(self, key: str) -> bytes:
        """The whole value; BlobNotFound when there is none."""
        ...

    def stream(self, key: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """The value in chunks (downloads of large files); BlobNotFound when there is none."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; BlobNotFound when missing, Unavailable when shorter than asked."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a value is stored under ``key``."""
        ...

    def size(self, key: str) -> int:
        """The value's length in bytes; BlobNotFound when missing."""
        ...

    def delete(self, key: str) -> int:
        """Remove one value; return the bytes freed (0 when there was none)."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with ``prefix`` (a folder-like prefix ends with ``/``), in no particular order."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every value whose key starts with ``prefix``; return the bytes freed."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The value's file on this machine (memory maps, engines reading files), or None on object storage."""
        ...

    def check(self) -> None:
        """Raise Unavailable unless the store answers (readiness)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def _make_folder(folder: Path, *, durable: bool) -> None:
    """Create ``folder`` and its missing parents; durable: each new folder's entry fsynced in its parent.

    A key's folder may be several levels deep and new (``copies/vin=…/day=…/``): a value renamed into it is only
    as durable as every folder above it, and a payload part is the only copy of its bytes once compaction has
    reclaimed them from the segment.
    """
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    if durable:
        for made in reversed(missing):
            fsync_dir(made.parent)


class LocalBlobStore:
    """Blobs as files under one folder: the reference backend."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        """Write to a temporary name, fsync when durable, rename over the key, fsync the folder."""
        target = self._path(key)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            except FileNotFoundError:
                _make_folder(target.parent, durable=durable)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if durable:
                fsync_dir(target.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot store {key}: {e.strerror}") from None

    def put_file(self, key: str, path: Path) -> None:
        """Copy the file beside the key's file, fsync, rename over it (a move when it is on the same disk)."""
        target = self._path(key)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            _make_folder(target.parent, durable=True)
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise Unavailable(f"cannot store {key}: {e.strerror}") from None

    def stream(self, key: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """The file in chunks."""
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the last chunk
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key}") from None
        return _chunks(f, chunk)

    def get(self, key: str) -> bytes:
        """The whole file."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key}") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One ``pread`` of the file."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key}") from None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise Unavailable(f"blob {key} is shorter than asked ({offset}+{length})")
        return data

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The file's size."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key}") from None

    def delete(self, key: str) -> int:
        """Unlink the file."""
        path = self._path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def list(self, prefix: str = "") -> Iterator[str]:
        """Walk the folder under the prefix's directory part, skipping temporary files."""
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key

    def delete_prefix(self, prefix: str) -> int:
        """Remove every matching file (folders left empty are removed too)."""
        freed = sum(self.delete(k) for k in list(self.list(prefix)))
        if prefix.endswith("/"):
            folder = self.root / prefix.rstrip("/")
            for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        return freed

    def local_path(self, key: str) -> Path | None:
        """The file itself."""
        return self._path(key)

    def check(self) -> None:
        """The folder takes a small file (written, synced and removed: full or read-only disks fail here)."""
        probe = self.root / f".ready-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise Unavailable(f"blob folder {self.root} cannot be written: {e.strerror}") from None

    def close(self) -> None:
        """Nothing to release."""


def _chunks(f: BinaryIO, chunk: int) -> Iterator[bytes]:
    """Read an open file to its end in chunks, then close it."""
    with f:
        while data := f.read(chunk):
            yield data


#: What moving a region to another blob store copies (portability/, imports/ and keys/ stay in the data folder;
#: the file log's own tree under log/ is not a blob: only its published tiles and checkpoint are).
MOVABLE_PREFIXES = ("segments/", "blobs/", "packages/", "exports/", "copies/", "log/checkpoint", "log/tile/")


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_blobs`` did."""

    copied: int  # values written to the target (new, or different there)
    skipped: int  # values the target already held byte for byte
    bytes_copied: int
    extra: tuple[str, ...]  # keys under the prefixes the target holds and the source no longer does
    deleted: int  # of those, how many were deleted (``delete_extra``)


def copy_blobs(
    src: BlobStore,
    dst: BlobStore,
    prefixes: Sequence[str] = MOVABLE_PREFIXES,
    *,
    delete_extra: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy every value under ``prefixes`` from ``src`` to ``dst`` under the same key, so that an interrupted copy
    is resumed by running it again. Files go as files (S3 multipart for large ones), never read whole into memory.

    A key the target already holds is skipped only when it holds the same bytes (SHA-256 of both, streamed), not
    merely the same size: erasure zeroes a batch's range of its segment in place, and the log's checkpoint is
    rewritten at the same length, so a size check would keep erased data, or an old checkpoint, in the copy.
    Keys the target holds under the prefixes that the source no longer has (erased or purged since an earlier
    copy) are reported, and deleted with ``delete_extra``. ``progress(done, total)`` is told as each key is taken up.
    """
    copied = skipped = total = 0
    extra: list[str] = []
    listed = [(prefix, list(src.list(prefix))) for prefix in prefixes]
    count, done = sum(len(keys) for _, keys in listed), 0
    for prefix, keys in listed:
        present = set(keys)
        for key in keys:
            done += 1
            if progress is not None:
                progress(done, count)
            size = src.size(key)
            if dst.exists(key) and dst.size(key) == size and _digest(dst, key) == _digest(src, key):
                skipped += 1
                continue
            path = src.local_path(key)
            if path is not None:
                dst.put_file(key, path)
            else:
                dst.put(key, src.get(key))
            copied, total = copied + 1, total + size
        extra += [key for key in dst.list(prefix) if key not in present]
    if delete_extra:
        for key in extra:
            dst.delete(key)
    return CopyReport(copied, skipped, total, tuple(extra), len(extra) if delete_extra else 0)


def _digest(store: BlobStore, key: str) -> bytes:
    """SHA-256 of a value, read in chunks."""
    h = hashlib.sha256()
    for chunk in store.stream(key):
        h.update(chunk)
    return h.digest()


def blob_store_of(setting: str, data_dir: Path, *, endpoint_url: str = "", region_name: str = "") -> BlobStore:
    """The backend named by the ``blob_store`` setting; ValueError (clear, at start) when it is misconfigured."""
    if setting in ("", "local"):
        return LocalBlobStore(data_dir)
    if setting.startswith("file://"):
        return LocalBlobStore(Path(setting.removeprefix("file://")))
    if setting.startswith("s3://"):
        from carvault.store.s3 import open_s3_store  # boto3 is loaded only by regions that use it

        return open_s3_store(setting, endpoint_url=endpoint_url, region_name=region_name)
    raise ValueError(f"blob_store must be 'local', 'file:///path' or 's3://bucket/prefix', got {setting!r}")
