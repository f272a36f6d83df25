"""Reading an incident package's ZIP container with bounded memory and time (docs/incident-package.md §2).

Nothing the archive declares is trusted: the end-of-central-directory record is checked before ``zipfile``
parses the directory, member names are checked before anything is read, and every member is read in chunks
through ``ZipFile.open`` while the bytes actually produced are counted against the limits.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: Most members a package may hold (a 24-hour window of one-minute batches is about 1,450).
MAX_MEMBERS = 5000
#: Largest uncompressed member, in bytes.
MAX_MEMBER_BYTES = 256 * 1024 * 1024
#: Largest total of all uncompressed members, in bytes.
MAX_TOTAL_BYTES = 512 * 1024 * 1024
#: Largest uncompressed / compressed ratio of a member larger than RATIO_FLOOR_BYTES.
MAX_RATIO = 100
#: Members up to this size are not held to the ratio limit (tiny files compress oddly, and cost nothing).
RATIO_FLOOR_BYTES = 1024 * 1024
#: Longest member name, in characters.
MAX_NAME_LEN = 128

_CHUNK = 1024 * 1024
_EOCD = b"PK\x05\x06"
_EOCD_LEN = 22
_MAX_COMMENT = 65535
#: Every name the package format defines: fixed files, and one batch per seq.
FIXED_NAMES = frozenset(
    {
        "manifest.json",
        "manifest.sig",
        "certs/vehicle.pem",
        "certs/region-ca.pem",
        "log/checkpoint.txt",
        "log/proofs.json",
        "log/consistency.json",
        "log/witnessed.json",
        "trust.json",
        "coverage.json",
        "data/window.csv",
        "edr/part563.csv",
        "report/report.html",
        "report/report.pdf",
    }
)
BATCH_NAME = re.compile(r"batches/[0-9]{12}\.cvb")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class Limits:
    """The container limits (the defaults above); tests and callers with other needs may pass tighter ones."""

    max_members: int = MAX_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: int = MAX_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES


DEFAULT_LIMITS = Limits()


class ContainerError(Exception):
    """The ZIP container breaks a rule; nothing in it is read further."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Container:
    """The members of a package, read within the limits: name -> bytes."""

    files: dict[str, bytes]
    total_bytes: int


def is_package_name(name: str) -> bool:
    """True for a name the package format defines."""
    return name in FIXED_NAMES or BATCH_NAME.fullmatch(name) is not None


def read_container(path: Path, limits: Limits = DEFAULT_LIMITS) -> Container:
    """Every member of the ZIP at ``path``; raises ContainerError for any broken rule or unreadable archive."""
    try:
        with open(path, "rb") as f:
            _check_directory_record(f, limits)
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
                _check_names(infos, limits)
                return _read_members(z, infos, limits)
    except ContainerError:
        raise
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError) as e:
        raise ContainerError(f"not a readable ZIP archive: {e}") from None
    except (ValueError, struct.error, UnicodeDecodeError, RuntimeError) as e:
        raise ContainerError(f"the ZIP archive is malformed: {e}") from None


def _check_directory_record(f: BinaryIO, limits: Limits) -> None:
    """Refuse a central directory declaring too many members before zipfile builds it in memory."""
    f.seek(0, 2)
    size = f.tell()
    tail_len = min(size, _EOCD_LEN + _MAX_COMMENT)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_LEN:
        raise ContainerError("not a ZIP archive (no end of central directory record)")
    _, disk, cd_disk, on_disk, entries, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[at : at + _EOCD_LEN])
    if disk or cd_disk or on_disk != entries:
        raise ContainerError("multi-volume ZIP archives are not incident packages")
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        raise ContainerError("ZIP64 archives are not incident packages")
    if entries > limits.max_members:
        raise ContainerError(f"the archive declares {entries} members; at most {limits.max_members} are allowed")
    if cd_size > limits.max_members * (46 + MAX_NAME_LEN + 64):
        raise ContainerError(f"the archive's central directory is {cd_size} bytes, too large for a package")


def _check_names(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Member count, and names: safe relative paths, each once."""
    if len(infos) > limits.max_members:
        raise ContainerError(f"the archive holds {len(infos)} members; at most {limits.max_members} are allowed")
    for info in infos:
        name = info.orig_filename
        if len(name) > MAX_NAME_LEN or not _SAFE_NAME.fullmatch(name) or ".." in name.split("/"):
            raise ContainerError(f"member name {name[:80]!r} is not a safe relative path of the package format")
        if info.is_dir():
            raise ContainerError(f"member {name!r} is a directory entry")
        if info.flag_bits & 0x1:
            raise ContainerError(f"member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ContainerError(f"member {name!r} is neither stored nor deflated")
    dupes = sorted(n for n, k in Counter(i.orig_filename for i in infos).items() if k > 1)
    if dupes:
        raise ContainerError(f"member names appear more than once: {dupes[:5]}")


def _read_members(z: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: Limits) -> Container:
    """Read each member in chunks, counting the bytes produced, never the sizes declared."""
    files: dict[str, bytes] = {}
    total = 0
    for info in infos:
        data = _read_member(z, info, limits, total)
        total += len(data)
        files[info.orig_filename] = data
    return Container(files, total)


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits, total_before: int) -> bytes:
    """One member, refused as soon as it passes a size limit or the ratio limit."""
    ratio_cap = max(limits.ratio_floor_bytes, limits.max_ratio * max(info.compress_size, 1))
    chunks: list[bytes] = []
    got = 0
    with z.open(info) as member:
        while chunk := member.read(_CHUNK):
            got += len(chunk)
            if got > limits.max_member_bytes:
                raise ContainerError(
                    f"{info.orig_filename} passes the member size limit of {limits.max_member_bytes} bytes"
                )
            if total_before + got > limits.max_total_bytes:
                raise ContainerError(f"the members pass the total size limit of {limits.max_total_bytes} bytes")
            if got > ratio_cap:
                raise ContainerError(
                    f"{info.orig_filename} expands more than {limits.max_ratio} times its compressed size "
                    f"({info.compress_size} bytes)"
                )
            chunks.append(chunk)
    if got != info.file_size:
        raise ContainerError(f"{info.orig_filename} declares {info.file_size} bytes but holds {got}")
    return b"".join(chunks)
