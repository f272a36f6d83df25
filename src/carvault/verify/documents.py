"""The JSON documents of an incident package, parsed strictly (docs/incident-package.md §2-§3).

Every document must be UTF-8 JSON with one reading: no duplicate member names, no NaN or Infinity, and each
member of the type the format gives it (an integer is never a boolean or a float). Anything else raises
``DocumentError`` naming the file and the member, which the verifier reports as a failed check.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from carvault.protocol.json import JSONRejected, strict_loads

PACKAGE_FORMAT = "carvault-incident-package"
PACKAGE_VERSION = 1
LEAF_VERSIONS = (1, 2)
SALT_LEN = 32
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # a day's proofs.json is well under 1 MiB; parsing costs ~70 B per value
MAX_PROOF_HASHES = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DocumentError(Exception):
    """A package document is not JSON of the documented shape."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def load_json(data: bytes, what: str) -> Any:
    """Parse ``data`` as strict JSON (``carvault.protocol.json``, one reading for every parser); ``what``: the file."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"{what} is {len(data):,} bytes; a package document is at most {MAX_DOCUMENT_BYTES:,}")
    try:
        return strict_loads(data, allow_floats=True)
    except JSONRejected as e:
        raise DocumentError(f"{what}: {e}") from None


def obj(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a JSON object."""
    if not isinstance(value, dict):
        raise DocumentError(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def member(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``doc[key]``, which must exist and be of ``kind`` (int never accepts bool)."""
    if key not in doc:
        raise DocumentError(f"{what} has no {key!r}")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
        raise DocumentError(f"{what}: {key!r} must be {names}, not {_kind(value)}")
    return value


def nonneg(doc: dict[str, Any], key: str, what: str) -> int:
    """A non-negative integer member."""
    value: int = member(doc, key, int, what)
    if not 0 <= value < 2**63:
        raise DocumentError(f"{what}: {key!r} must be between 0 and 2^63-1, not {value}")
    return value


def b64(text: str, what: str, length: int | None = None) -> bytes:
    """Strict base64; ``length`` bytes if given."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DocumentError(f"{what} is not base64") from None
    if length is not None and len(raw) != length:
        raise DocumentError(f"{what} must be {length} bytes, not {len(raw)}")
    return raw


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", type(None): "null"}


@dataclass(frozen=True)
class Manifest:
    """manifest.json: what the package says it holds."""

    region: str
    vin: str
    start_ms: int
    end_ms: int
    event_kind: str | None
    event_ms: int | None
    created_ms: int
    log_origin: str
    tree_size: int
    files: dict[str, str]


def parse_manifest(data: bytes) -> Manifest:
    """manifest.json, every member checked."""
    what = "manifest.json"
    doc = obj(load_json(data, what), what)
    version = doc.get("version")
    if doc.get("format") != PACKAGE_FORMAT or type(version) is not int or version != PACKAGE_VERSION:
        raise DocumentError(f"{what} is not a {PACKAGE_FORMAT} version {PACKAGE_VERSION}")
    window = obj(member(doc, "window", dict, what), f"{what} window")
    event = member(doc, "event", (dict, type(None)), what)
    files = obj(member(doc, "files", dict, what), f"{what} files")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise DocumentError(f"{what}: files[{name!r}] must be a lower-case SHA-256 hex string")
    return Manifest(
        region=member(doc, "region", str, what),
        vin=member(doc, "vin", str, what),
        start_ms=nonneg(window, "start_ms", f"{what} window"),
        end_ms=nonneg(window, "end_ms", f"{what} window"),
        event_kind=member(event, "kind", str, f"{what} event") if event is not None else None,
        event_ms=nonneg(event, "t_ms", f"{what} event") if event is not None else None,
        created_ms=nonneg(doc, "created_ms", what),
        log_origin=member(doc, "log_origin", str, what),
        tree_size=nonneg(doc, "tree_size", what),
        files=files,
    )


@dataclass(frozen=True)
class TrustDocument:
    """The trust anchors: the log's verifier key and the region's vehicle CA."""

    log_vkey: str
    ca_pem: str
    region: str | None
    log_origin: str | None
    ca_sha256: str | None


def parse_trust(value: Any, what: str) -> TrustDocument:
    """A trust document (trust.json, or the file given with --trust), already parsed from JSON."""
    doc = obj(value, what)
    optional = {k: member(doc, k, str, what) if k in doc else None for k in ("region", "log_origin", "ca_sha256")}
    return TrustDocument(
        log_vkey=member(doc, "log_vkey", str, what), ca_pem=member(doc, "ca_pem", str, what), **optional
    )


@dataclass(frozen=True)
class InclusionEntry:
    """One entry of log/proofs.json: where one batch sits in the log."""

    seq: int
    batch_hash: str
    received_ms: int
    leaf_index: int
    proof: tuple[bytes, ...]
    leaf_version: int
    leaf_salt: bytes | None


def parse_proofs(data: bytes) -> tuple[int, dict[int, InclusionEntry]]:
    """log/proofs.json: (tree_size, entries by seq)."""
    what = "log/proofs.json"
    doc = obj(load_json(data, what), what)
    tree_size = nonneg(doc, "tree_size", what)
    entries: dict[int, InclusionEntry] = {}
    for i, raw in enumerate(member(doc, "proofs", list, what)):
        entry = _inclusion_entry(raw, f"{what} proofs[{i}]")
        if entry.seq in entries:
            raise DocumentError(f"{what}: two proofs for seq {entry.seq}")
        entries[entry.seq] = entry
    return tree_size, entries


def _inclusion_entry(raw: Any, what: str) -> InclusionEntry:
    e = obj(raw, what)
    batch_hash = member(e, "batch_hash", str, what)
    if not _HEX64.fullmatch(batch_hash):
        raise DocumentError(f"{what}: batch_hash must be a lower-case SHA-256 hex string")
    version = member(e, "leaf_version", int, what) if "leaf_version" in e else 1
    if version not in LEAF_VERSIONS:
        raise DocumentError(f"{what}: leaf_version {version} is not one of {list(LEAF_VERSIONS)}")
    salt = b64(member(e, "leaf_salt", str, what), f"{what} leaf_salt", SALT_LEN) if version == 2 else None
    return InclusionEntry(
        seq=nonneg(e, "seq", what),
        batch_hash=batch_hash,
        received_ms=nonneg(e, "received_ms", what),
        leaf_index=nonneg(e, "leaf_index", what),
        proof=_hashes(member(e, "proof", list, what), what),
        leaf_version=version,
        leaf_salt=salt,
    )


def _hashes(items: list[Any], what: str) -> tuple[bytes, ...]:
    if len(items) > MAX_PROOF_HASHES:
        raise DocumentError(f"{what}: a proof of {len(items)} hashes is longer than any log allows")
    out = []
    for k, h in enumerate(items):
        if not isinstance(h, str):
            raise DocumentError(f"{what}: proof[{k}] must be a string, not {_kind(h)}")
        out.append(b64(h, f"{what} proof[{k}]", 32))
    return tuple(out)


@dataclass(frozen=True)
class ConsistencyEntry:
    """One entry of log/consistency.json: a proof from a saved tree size to the package's."""

    old_size: int
    new_size: int
    proof: tuple[bytes, ...]


def parse_consistency(data: bytes) -> list[ConsistencyEntry]:
    """log/consistency.json."""
    what = "log/consistency.json"
    doc = obj(load_json(data, what), what)
    out = []
    for i, raw in enumerate(member(doc, "proofs", list, what)):
        w = f"{what} proofs[{i}]"
        e = obj(raw, w)
        out.append(
            ConsistencyEntry(
                nonneg(e, "old_size", w), nonneg(e, "new_size", w), _hashes(member(e, "proof", list, w), w)
            )
        )
    return out


@dataclass(frozen=True)
class Witnessed:
    """log/witnessed.json: a later checkpoint the witnesses cosigned, and the consistency proof from the package's
    tree (``old_size``) to it. Added after the package was built, so outside the manifest: it proves itself."""

    checkpoint: str
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]


def parse_witnessed(data: bytes) -> Witnessed:
    """log/witnessed.json."""
    what = "log/witnessed.json"
    doc = obj(load_json(data, what), what)
    note = member(doc, "checkpoint", str, what)
    if len(note) > 64 * 1024:
        raise DocumentError(f"{what}: 'checkpoint' is longer than a checkpoint note can be")
    return Witnessed(
        note,
        nonneg(doc, "old_size", what),
        nonneg(doc, "new_size", what),
        _hashes(member(doc, "proof", list, what), what),
    )


@dataclass(frozen=True)
class Coverage:
    """coverage.json: the batches and gaps the builder reported."""

    batches: int
    chain: str
    gaps: int


def parse_coverage(data: bytes) -> Coverage:
    """coverage.json."""
    what = "coverage.json"
    doc = obj(load_json(data, what), what)
    gaps = member(doc, "gaps", list, what)
    for i, g in enumerate(gaps):
        gap = obj(g, f"{what} gaps[{i}]")
        member(gap, "kind", str, f"{what} gaps[{i}]")
        nonneg(gap, "from_ms", f"{what} gaps[{i}]")
        nonneg(gap, "to_ms", f"{what} gaps[{i}]")
    return Coverage(nonneg(doc, "batches", what), member(doc, "chain", str, what), len(gaps))
