"""Live frames (docs/protocol.md §8, extension v1): one signed sample instant, streamed by the car at about 1 Hz.

A frame is one byte string, all integers big-endian::

    offset  size  field
    0       4     magic b"CVL1"
    4       17    VIN, ASCII
    21      1     R, length of the region name (1..32)
    22      R     home region, ASCII
    22+R    8     counter, uint64: the car's live-frame counter (1, 2, 3 ... never reused)
    30+R    8     t_ms, int64: sample instant, UTC epoch milliseconds
    38+R    2     N, number of values (1..1024)
    40+R    ...   N entries in strictly increasing byte order of path: L (uint8), path (L bytes ASCII),
                  tag (uint8) and value: 0x01 false, 0x02 true (no bytes), 0x03 int64 (8 bytes),
                  0x04 IEEE 754 binary64 (8 bytes, finite), 0x05 UTF-8 text (uint16 length + bytes)
    end-64  64    Ed25519 signature by the vehicle key over every preceding byte

Each frame has exactly one encoding (``decode_frame`` re-encodes and compares), so its hash, SHA-256 of the
whole frame, names it. A batch header may commit to the frames ``live_first..live_last`` by ``live_root``, the
RFC 9162 Merkle tree hash whose leaves are those frame hashes in counter order (the Merkle code is
``carvault.ledger.merkle``). This module knows no database and no server.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from carvault.errors import BadSignature, MalformedFrame

FRAME_MAGIC = b"CVL1"
LIVE_PATH = "/api/v1/vehicles/live"
LIVE_SUBPROTOCOL = "carvault.live.v1"
SIGNATURE_LEN = 64
MAX_COUNTER = 2**53 - 1
MAX_VALUES = 1024
MAX_TEXT = 4096
MAX_FRAME = 64 * 1024
INT64 = (-(2**63), 2**63 - 1)

TAG_FALSE, TAG_TRUE, TAG_INT, TAG_FLOAT, TAG_TEXT = 1, 2, 3, 4, 5

Scalar = bool | int | float | str


@dataclass(frozen=True)
class LiveFrame:
    """A decoded live frame: what the car signed, the signature and the exact bytes."""

    vin: str
    region: str
    counter: int
    t_ms: int
    values: dict[str, Scalar]
    signature: bytes
    raw: bytes

    @property
    def frame_hash(self) -> bytes:
        """SHA-256 of the whole frame (signature included): the Merkle leaf data of the frame."""
        return hashlib.sha256(self.raw).digest()

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Check the car's signature; ``BadSignature`` if it does not verify."""
        try:
            public_key.verify(self.signature, self.raw[:-SIGNATURE_LEN])
        except InvalidSignature:
            raise BadSignature(
                "live frame signature does not verify against the vehicle's registered key",
                vin=self.vin,
                counter=self.counter,
            ) from None


def _check_identity(vin: str, region: str, counter: int, t_ms: int) -> None:
    if not (len(vin) == 17 and vin.isascii() and vin.isalnum() and vin.upper() == vin):
        raise MalformedFrame("vin must be 17 upper-case letters and digits", field="vin")
    if not (1 <= len(region) <= 32 and region.isascii() and region.isprintable() and " " not in region):
        raise MalformedFrame("region must be a name of 1 to 32 printable ASCII characters", field="region")
    if not 1 <= counter <= MAX_COUNTER:
        raise MalformedFrame(f"counter must lie in 1..{MAX_COUNTER}", field="counter")
    if not 0 <= t_ms <= INT64[1]:
        raise MalformedFrame("t_ms must be a non-negative 64-bit integer", field="t_ms")


def _entry(path: str, value: Scalar) -> bytes:
    """One path/value entry in its only encoding."""
    p = path.encode("ascii", "strict") if path.isascii() else b""
    if not 1 <= len(p) <= 255:
        raise MalformedFrame("a signal path must be 1 to 255 ASCII characters", signal=path[:80])
    head = bytes([len(p)]) + p
    if value is True or value is False:
        return head + bytes([TAG_TRUE if value else TAG_FALSE])
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise MalformedFrame("an integer value must fit 64 bits", signal=path)
        return head + bytes([TAG_INT]) + struct.pack(">q", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedFrame("a float value must be finite", signal=path)
        return head + bytes([TAG_FLOAT]) + struct.pack(">d", value)
    if isinstance(value, str):
        t = value.encode("utf-8")
        if len(t) > MAX_TEXT:
            raise MalformedFrame(f"a text value may hold at most {MAX_TEXT} bytes", signal=path)
        return head + bytes([TAG_TEXT]) + struct.pack(">H", len(t)) + t
    raise MalformedFrame(f"value of {path} must be a boolean, integer, float or text", signal=path)


def frame_body(vin: str, region: str, counter: int, t_ms: int, values: Mapping[str, Scalar]) -> bytes:
    """The bytes a car signs for a frame (everything but the signature)."""
    _check_identity(vin, region, counter, t_ms)
    if not 1 <= len(values) <= MAX_VALUES:
        raise MalformedFrame(f"a frame carries 1 to {MAX_VALUES} values", count=len(values))
    entries = sorted((path.encode("ascii", "replace"), _entry(path, v)) for path, v in values.items())
    r = region.encode("ascii")
    out = bytearray(FRAME_MAGIC + vin.encode("ascii") + bytes([len(r)]) + r)
    out += struct.pack(">QqH", counter, t_ms, len(entries))
    for _, e in entries:
        out += e
    return bytes(out)


def encode_frame(
    vin: str, region: str, counter: int, t_ms: int, values: Mapping[str, Scalar], key: Ed25519PrivateKey
) -> bytes:
    """Build and sign a frame."""
    body = frame_body(vin, region, counter, t_ms, values)
    return body + key.sign(body)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedFrame("live frame is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        (v,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(v)


def _value(r: _Reader, path: str) -> Scalar:
    tag = r.unpack(">B")
    if tag in (TAG_FALSE, TAG_TRUE):
        return tag == TAG_TRUE
    if tag == TAG_INT:
        return r.unpack(">q")
    if tag == TAG_FLOAT:
        (f,) = struct.unpack(">d", r.take(8))
        return float(f)
    if tag == TAG_TEXT:
        try:
            return r.take(r.unpack(">H")).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame("a text value is not UTF-8", signal=path) from None
    raise MalformedFrame(f"unknown value tag {tag}", signal=path)


def decode_frame(data: bytes) -> LiveFrame:
    """Split a frame into its parts; ``MalformedFrame`` unless it is exactly the one encoding of its contents."""
    if not isinstance(data, bytes | bytearray) or not 4 + 17 + 1 + 18 + SIGNATURE_LEN <= len(data) <= MAX_FRAME:
        raise MalformedFrame(f"a live frame is a binary message of at most {MAX_FRAME} bytes, well formed")
    data = bytes(data)
    if data[:4] != FRAME_MAGIC:
        raise MalformedFrame("live frame does not start with the magic bytes 'CVL1'")
    r = _Reader(data[:-SIGNATURE_LEN])
    r.take(4)
    try:
        vin = r.take(17).decode("ascii")
        region = r.take(r.unpack(">B")).decode("ascii")
        counter, t_ms, n = r.unpack(">Q"), r.unpack(">q"), r.unpack(">H")
        values: dict[str, Scalar] = {}
        for _ in range(n):
            path = r.take(r.unpack(">B")).decode("ascii")
            values[path] = _value(r, path)
    except UnicodeDecodeError:
        raise MalformedFrame("vin, region and signal paths are ASCII") from None
    if r.pos != len(r.data):
        raise MalformedFrame("live frame has trailing bytes before its signature")
    if frame_body(vin, region, counter, t_ms, values) != r.data:
        raise MalformedFrame("live frame is not in canonical form (entries sorted, unique, minimal)")
    return LiveFrame(vin, region, counter, t_ms, values, data[-SIGNATURE_LEN:], data)


def frame_hash(frame: bytes) -> bytes:
    """SHA-256 of a whole frame: the Merkle leaf data that ``live_root`` commits to."""
    return hashlib.sha256(frame).digest()
