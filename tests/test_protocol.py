"""The batch envelope: round trip, signature, and a decoder that never fails with anything but MalformedBatch."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.errors import BadSignature, MalformedBatch
from carvault.protocol import GENESIS_PREV, BatchHeader, decode_envelope, encode_envelope, make_batch, sha256_hex
from tests.factories import drive_table, vin_for

KEY = Ed25519PrivateKey.generate()
TABLE = drive_table(seconds=5, paths=["Vehicle.Speed", "Vehicle.ADAS.ABS.IsEngaged"])
BLOB = make_batch(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, table=TABLE, key=KEY)


def test_round_trip_keeps_header_payload_and_table() -> None:
    env = decode_envelope(BLOB)
    assert env.header.vin == vin_for(1) and env.header.seq == 1 and env.header.rows == TABLE.num_rows
    assert env.raw == BLOB and env.batch_hash == sha256_hex(BLOB)
    assert env.table().equals(TABLE)
    env.verify(KEY.public_key())


def test_signature_is_deterministic_so_resends_are_identical() -> None:
    again = make_batch(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, table=TABLE, key=KEY)
    assert again == BLOB


@pytest.mark.parametrize("position", [0, 10, len(BLOB) // 2, len(BLOB) - 70, len(BLOB) - 1])
def test_any_flipped_byte_is_caught(position: int) -> None:
    bad = bytearray(BLOB)
    bad[position] ^= 0x01
    with pytest.raises((MalformedBatch, BadSignature)):
        env = decode_envelope(bytes(bad))
        env.verify(KEY.public_key())


def test_other_key_fails() -> None:
    with pytest.raises(BadSignature):
        decode_envelope(BLOB).verify(Ed25519PrivateKey.generate().public_key())


def test_header_fields_are_type_checked() -> None:
    h = BatchHeader(vin=vin_for(1), region="cn", seq=1, prev=GENESIS_PREV, t0=0, t1=1, rows=1)
    body = h.to_json_bytes().replace(b'"seq":1', b'"seq":"1"')
    blob = b"CVB1" + struct.pack(">I", len(body)) + body + struct.pack(">Q", 0) + KEY.sign(b"x")
    with pytest.raises(MalformedBatch, match="seq"):
        decode_envelope(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_rejects_random_bytes_cleanly(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except MalformedBatch:
        return
    with pytest.raises((MalformedBatch, BadSignature)):
        env.verify(KEY.public_key())
        env.table()


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(BLOB) - 1))
def test_every_truncation_is_malformed(cut: int) -> None:
    with pytest.raises(MalformedBatch):
        decode_envelope(BLOB[:cut])


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0, max_value=len(BLOB) - 1), byte=st.integers(0, 255))
def test_mutations_never_verify(pos: int, byte: int) -> None:
    bad = bytearray(BLOB)
    if bad[pos] == byte:
        return
    bad[pos] = byte
    with pytest.raises((MalformedBatch, BadSignature)):
        decode_envelope(bytes(bad)).verify(KEY.public_key())


def test_payload_written_by_vehicle_reads_back_with_exact_types() -> None:
    env = decode_envelope(
        encode_envelope(
            BatchHeader(vin=vin_for(2), region="cn", seq=3, prev="a" * 64, t0=1, t1=2, rows=TABLE.num_rows),
            b"not parquet",
            KEY,
        )
    )
    with pytest.raises(MalformedBatch, match="Parquet"):
        env.table()
