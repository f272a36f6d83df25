"""The FlatBuffers envelope of a Fleet Telemetry WebSocket message (envelope.fbs beside this module).

Every binary WebSocket message a car sends is one ``Envelope`` table whose union holds a ``Stream`` table; the
protobuf record is the stream's ``payload``. The server answers each message with an envelope of its own: a
``StreamAck`` (union tag 5) naming the message's txid and topic once the record is accepted, or a ``Stream``
(tag 4) whose payload is the reason text when it is refused, as Tesla's server does.

The reader is our own and checks every offset against the buffer (the flatbuffers runtime's reader does not, and
these bytes come from the network); the writer uses the runtime's ``Builder``. Any defect raises ``EnvelopeError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import flatbuffers

MESSAGE_STREAM = 4
MESSAGE_STREAM_ACK = 5
MAX_MESSAGE_BYTES = 1_000_000  # Tesla's server refuses larger records; so do we, before decoding

# Slots of each table (envelope.fbs).
_ENV_TXID, _ENV_TOPIC, _ENV_TYPE, _ENV_MESSAGE, _ENV_MESSAGE_ID = range(5)
_ST_CREATED_AT, _ST_SENDER_ID, _ST_PAYLOAD, _ST_DEVICE_TYPE, _ST_DEVICE_ID, _ST_DELIVERED_AT = range(6)


class EnvelopeError(ValueError):
    """The bytes are not a well-formed Fleet Telemetry envelope (or not the kind expected)."""


@dataclass(frozen=True)
class StreamMessage:
    """A decoded car message: the envelope's fields and the stream table's."""

    txid: bytes
    topic: bytes
    message_id: bytes
    created_at: int
    sender_id: bytes
    device_type: bytes
    device_id: bytes
    delivered_at_ms: int
    payload: bytes


@dataclass(frozen=True)
class Answer:
    """A decoded server answer: an ack (``ok``) or an error whose text is ``reason``."""

    ok: bool
    txid: bytes
    topic: bytes
    reason: str = ""


class _Reader:
    """Bounds-checked access to the tables of one FlatBuffers buffer."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise EnvelopeError(f"offset {pos} lies outside the {len(self.buf)}-byte message")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def root(self) -> int:
        """Position of the root table."""
        return self._unpack("<I", 0)

    def field(self, table: int, slot: int) -> int:
        """Position of a field of ``table``, or 0 when the field is absent."""
        vtable = table - self._unpack("<i", table)
        vsize = self._unpack("<H", vtable)
        if vsize < 4 or vsize % 2:
            raise EnvelopeError("a table's vtable is malformed")
        entry = 4 + 2 * slot
        if entry + 2 > vsize:
            return 0
        off = self._unpack("<H", vtable + entry)
        return table + off if off else 0

    def bytes_at(self, table: int, slot: int) -> bytes:
        """A ``[ubyte]`` field (empty when absent)."""
        pos = self.field(table, slot)
        if not pos:
            return b""
        vec = pos + self._unpack("<I", pos)
        n = self._unpack("<I", vec)
        if vec + 4 + n > len(self.buf):
            raise EnvelopeError("a byte vector runs past the end of the message")
        return self.buf[vec + 4 : vec + 4 + n]

    def table_at(self, table: int, slot: int) -> int:
        """A table-valued field (a union value), or 0 when absent."""
        pos = self.field(table, slot)
        return pos + self._unpack("<I", pos) if pos else 0

    def scalar(self, table: int, slot: int, fmt: str) -> int:
        """A scalar field (0 when absent, FlatBuffers' default)."""
        pos = self.field(table, slot)
        return self._unpack(fmt, pos) if pos else 0


def _envelope(data: bytes) -> tuple[_Reader, int, int]:
    """The reader, the envelope table and its union tag."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeError("a Fleet Telemetry message is binary")
    data = bytes(data)
    if len(data) < 8:
        raise EnvelopeError(f"{len(data)} bytes is too short for an envelope")
    if len(data) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(f"the message is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    r = _Reader(data)
    env = r.root()
    return r, env, r.scalar(env, _ENV_TYPE, "<B")


def decode_stream(data: bytes) -> StreamMessage:
    """Read a car's message; ``EnvelopeError`` unless it is a well-formed envelope holding a ``Stream``."""
    r, env, kind = _envelope(data)
    if kind != MESSAGE_STREAM:
        raise EnvelopeError(f"the envelope holds message type {kind}, not a stream record ({MESSAGE_STREAM})")
    stream = r.table_at(env, _ENV_MESSAGE)
    if not stream:
        raise EnvelopeError("the envelope has no message")
    return StreamMessage(
        txid=r.bytes_at(env, _ENV_TXID),
        topic=r.bytes_at(env, _ENV_TOPIC),
        message_id=r.bytes_at(env, _ENV_MESSAGE_ID),
        created_at=r.scalar(stream, _ST_CREATED_AT, "<I"),
        sender_id=r.bytes_at(stream, _ST_SENDER_ID),
        device_type=r.bytes_at(stream, _ST_DEVICE_TYPE),
        device_id=r.bytes_at(stream, _ST_DEVICE_ID),
        delivered_at_ms=r.scalar(stream, _ST_DELIVERED_AT, "<Q"),
        payload=r.bytes_at(stream, _ST_PAYLOAD),
    )


def decode_answer(data: bytes) -> Answer:
    """Read a server's answer (what a car, or the test client, receives)."""
    r, env, kind = _envelope(data)
    txid, topic = r.bytes_at(env, _ENV_TXID), r.bytes_at(env, _ENV_TOPIC)
    if kind == MESSAGE_STREAM_ACK:
        return Answer(True, txid, topic)
    if kind == MESSAGE_STREAM:
        stream = r.table_at(env, _ENV_MESSAGE)
        reason = r.bytes_at(stream, _ST_PAYLOAD).decode("utf-8", "replace") if stream else ""
        return Answer(False, txid, topic, reason)
    raise EnvelopeError(f"the answer holds message type {kind}")


def _finish(b: flatbuffers.Builder, txid: bytes, topic: bytes, message_id: bytes, kind: int, message: int) -> bytes:
    tx, tp, mid = b.CreateByteVector(txid), b.CreateByteVector(topic), b.CreateByteVector(message_id)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(_ENV_TXID, tx, 0)
    b.PrependUOffsetTRelativeSlot(_ENV_TOPIC, tp, 0)
    b.PrependUint8Slot(_ENV_TYPE, kind, 0)
    b.PrependUOffsetTRelativeSlot(_ENV_MESSAGE, message, 0)
    b.PrependUOffsetTRelativeSlot(_ENV_MESSAGE_ID, mid, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def encode_stream(
    *,
    txid: bytes,
    topic: bytes,
    payload: bytes,
    device_id: bytes = b"",
    device_type: bytes = b"vehicle_device",
    sender_id: bytes | None = None,
    created_at: int = 0,
    message_id: bytes = b"",
    delivered_at_ms: int = 0,
) -> bytes:
    """A stream message (a car's record, or with the reason as payload the server's error answer)."""
    b = flatbuffers.Builder(len(payload) + 256)
    sid = b.CreateByteVector(sender_id if sender_id is not None else device_type + b"." + device_id)
    pl = b.CreateByteVector(payload)
    dt, di = b.CreateByteVector(device_type), b.CreateByteVector(device_id)
    b.StartObject(6)
    b.PrependUint32Slot(_ST_CREATED_AT, created_at, 0)
    b.PrependUOffsetTRelativeSlot(_ST_SENDER_ID, sid, 0)
    b.PrependUOffsetTRelativeSlot(_ST_PAYLOAD, pl, 0)
    b.PrependUOffsetTRelativeSlot(_ST_DEVICE_TYPE, dt, 0)
    b.PrependUOffsetTRelativeSlot(_ST_DEVICE_ID, di, 0)
    b.PrependUint64Slot(_ST_DELIVERED_AT, delivered_at_ms, 0)
    stream = b.EndObject()
    return _finish(b, txid, topic, message_id, MESSAGE_STREAM, stream)


def encode_ack(txid: bytes, topic: bytes, message_id: bytes = b"") -> bytes:
    """The server's acknowledgement of one record: an envelope holding an empty ``StreamAck``."""
    b = flatbuffers.Builder(64)
    b.StartObject(0)
    ack = b.EndObject()
    return _finish(b, txid, topic, message_id, MESSAGE_STREAM_ACK, ack)


def encode_error(txid: bytes, reason: str) -> bytes:
    """The server's refusal of one record: a stream whose payload is the reason (no topic, as Tesla's server)."""
    return encode_stream(txid=txid, topic=b"", payload=reason.encode(), device_type=b"", sender_id=b"")
