"""A C2SP tlog-tiles client written from the specifications alone (c2sp.org/tlog-tiles, tlog-checkpoint,
signed-note, RFC 6962 §2.1), to check CarVault's tiled log from the outside.

It deliberately imports nothing from ``carvault``: its own RFC 6962 hashing, tile arithmetic, path encoding,
signed-note parsing and proof algorithms, so an error shared by the server and its tests cannot hide. It fetches
over HTTP with ``httpx`` and verifies Ed25519 signatures with ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TILE_H = 8
FULL = 256
HASH_LEN = 32
EM_DASH_SPACE = "\u2014 "


class ClientError(Exception):
    """Anything the log served that does not verify or does not follow the specifications."""


def rfc6962_leaf(data: bytes) -> bytes:
    """The hash of a leaf: SHA-256 over 0x00 and the entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def rfc6962_node(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node: SHA-256 over 0x01, left, right."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def encode_index(n: int) -> str:
    """Tile index as zero-padded 3-digit path elements, all but the last starting with 'x'."""
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    chunks = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + c for c in chunks[:-1]] + [chunks[-1]])


def tile_url_path(level: int | str, n: int, width: int) -> str:
    """``tile/<L>/<N>[.p/<W>]``; level "entries" gives an entry bundle path."""
    suffix = "" if width == FULL else f".p/{width}"
    return f"tile/{level}/{encode_index(n)}{suffix}"


@dataclass(frozen=True)
class Verifier:
    """A signed-note verifier key: name, key hash and Ed25519 public key."""

    name: str
    key_hash: bytes
    key: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        name, hash_hex, material = vkey.split("+", 2)
        raw = base64.b64decode(material, validate=True)
        if raw[:1] != b"\x01" or len(raw) != 33:
            raise ClientError("not an Ed25519 verifier key")
        expected = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
        if expected.hex() != hash_hex:
            raise ClientError("verifier key hash does not match")
        return cls(name, expected, Ed25519PublicKey.from_public_bytes(raw[1:]))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified."""

    origin: str
    size: int
    root: bytes
    note: str
    cosigners: tuple[str, ...] = ()


def open_checkpoint(note: str, verifier: Verifier, origin: str) -> SignedCheckpoint:
    """Verify a checkpoint note's signature by ``verifier`` and parse its body (tlog-checkpoint)."""
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise ClientError("not a signed note")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    good = False
    others = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(EM_DASH_SPACE):
            raise ClientError(f"bad signature line {line!r}")
        name, blob_b64 = line[len(EM_DASH_SPACE) :].split(" ")
        blob = base64.b64decode(blob_b64, validate=True)
        if name == verifier.name and blob[:4] == verifier.key_hash:
            try:
                verifier.key.verify(blob[4:], text.encode())
            except InvalidSignature:
                raise ClientError("the log's signature does not verify") from None
            good = True
        else:
            others.append(name)
    if not good:
        raise ClientError("no signature by the log's key")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or lines[0] != origin:
        raise ClientError(f"checkpoint is not for {origin!r}")
    if not lines[1].isdigit() or (lines[1] != "0" and lines[1].startswith("0")):
        raise ClientError("bad tree size line")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != HASH_LEN:
        raise ClientError("bad root hash line")
    return SignedCheckpoint(origin, int(lines[1]), root, note, tuple(others))


@dataclass
class TiledLogClient:
    """Reads a tiled log under ``base_url`` (the log's prefix) and computes proofs from its tiles."""

    http: httpx.Client
    prefix: str
    verifier: Verifier
    origin: str
    fetched: list[str] = field(default_factory=list)
    _tiles: dict[tuple[int, int, int], list[bytes]] = field(default_factory=dict)

    def checkpoint(self) -> SignedCheckpoint:
        """The log's current checkpoint, signature verified."""
        r = self.http.get(f"{self.prefix}/checkpoint")
        if r.status_code != 200:
            raise ClientError(f"checkpoint: HTTP {r.status_code}")
        if not r.headers["content-type"].startswith("text/plain"):
            raise ClientError("checkpoint is not text/plain")
        return open_checkpoint(r.text, self.verifier, self.origin)

    def get(self, path: str) -> httpx.Response:
        """One resource of the log (records what was fetched)."""
        self.fetched.append(path)
        return self.http.get(f"{self.prefix}/{path}")

    def tile(self, level: int, n: int, tree_size: int) -> list[bytes]:
        """The hashes of tile (level, n) as a tree of ``tree_size`` leaves has it (full or partial)."""
        at_level = tree_size // FULL**level  # complete hashes at this tile level
        width = min(FULL, at_level - n * FULL)
        if width <= 0:
            raise ClientError(f"tile {level}/{n} does not exist in a tree of {tree_size}")
        key = (level, n, width)
        if key not in self._tiles:
            r = self.get(tile_url_path(level, n, width))
            if r.status_code != 200 and width < FULL:
                r = self.get(tile_url_path(level, n, FULL))  # the spec's fallback: the full tile may exist by now
                width = FULL if r.status_code == 200 else width
            if r.status_code != 200:
                raise ClientError(f"tile {level}/{n} width {width}: HTTP {r.status_code}")
            if r.headers["content-type"] != "application/octet-stream" or len(r.content) != width * HASH_LEN:
                raise ClientError(f"tile {level}/{n} is malformed")
            hashes = [r.content[i : i + HASH_LEN] for i in range(0, len(r.content), HASH_LEN)]
            self._tiles[key] = hashes[: min(FULL, at_level - n * FULL)]
        return self._tiles[key]

    def subtree(self, height: int, index: int, tree_size: int) -> bytes:
        """MTH of the complete subtree of ``2**height`` leaves starting at leaf ``index * 2**height``."""
        level, below = divmod(height, TILE_H)  # which tile level holds its pieces, and how far above them it is
        first = index << below  # index of its first piece among that level's hashes
        hashes = [self.tile(level, (first + i) // FULL, tree_size)[(first + i) % FULL] for i in range(1 << below)]
        while len(hashes) > 1:
            hashes = [rfc6962_node(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def mth(self, start: int, end: int, tree_size: int) -> bytes:
        """MTH(D[start:end]) per RFC 6962 §2.1, from tiles of a tree of ``tree_size`` leaves."""
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n & (n - 1) == 0 and start % n == 0:
            return self.subtree(n.bit_length() - 1, start // n, tree_size)
        k = _split(n)
        return rfc6962_node(self.mth(start, start + k, tree_size), self.mth(start + k, end, tree_size))

    def root(self, tree_size: int) -> bytes:
        return self.mth(0, tree_size, tree_size)

    def leaf(self, index: int, tree_size: int) -> bytes:
        return self.tile(0, index // FULL, tree_size)[index % FULL]

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """PATH(m, D[n]) of RFC 6962 §2.1.1, computed from tiles."""

        def path(m: int, start: int, end: int) -> list[bytes]:
            n = end - start
            if n == 1:
                return []
            k = _split(n)
            if m < k:
                return [*path(m, start, start + k), self.mth(start + k, end, tree_size)]
            return [*path(m - k, start + k, end), self.mth(start, start + k, tree_size)]

        return path(index, 0, tree_size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """PROOF(m, D[n]) of RFC 6962 §2.1.2, computed from tiles of the newer tree."""

        def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
            n = end - start
            if m == n:
                return [] if complete else [self.mth(start, end, new)]
            k = _split(n)
            if m <= k:
                return [*subproof(m, start, start + k, complete), self.mth(start + k, end, new)]
            return [*subproof(m - k, start + k, end, False), self.mth(start, start + k, new)]

        if old == 0 or old == new:
            return []
        return subproof(old, 0, new, True)


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2)."""
    if index >= size:
        raise ClientError("index beyond the tree")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ClientError("proof too long")
        if fn & 1 or fn == sn:
            r = rfc6962_node(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = rfc6962_node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ClientError("proof too short")
    return r


def check_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> None:
    """Raise ClientError unless ``proof`` shows the tree (old, old_root) is a prefix of (new, new_root)."""
    if old == new:
        if proof or old_root != new_root:
            raise ClientError("same size, different roots")
        return
    if old == 0:
        return
    if old & (old - 1) == 0:
        proof = [old_root, *proof]
    if not proof:
        raise ClientError("empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ClientError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = rfc6962_node(c, fr), rfc6962_node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = rfc6962_node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ClientError("consistency proof does not verify")
