"""cosignature/v1 in ledger/checkpoint.py, checked against the C2SP tlog-cosignature rules written out here."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from carvault.ledger.checkpoint import (
    checkpoint_body,
    cosign_checkpoint,
    format_vkey,
    format_witness_vkey,
    parse_vkey,
    sign_checkpoint,
    verify_cosignatures,
    witness_key_id,
)
from carvault.ledger.merkle import VerificationError

ORIGIN = "example.org/log"
ROOT = bytes(range(32))


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_line_layout_key_id_and_message_follow_the_spec() -> None:
    key = Ed25519PrivateKey.generate()
    body = checkpoint_body(ORIGIN, 7, ROOT)
    line = cosign_checkpoint(body, key, "w.example/a", 1_700_000_123)
    assert line.startswith("\u2014 w.example/a ") and line.endswith("\n")
    blob = base64.b64decode(line.split(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert (
        blob[:4]
        == hashlib.sha256(b"w.example/a\n\x04" + raw(key)).digest()[:4]
        == witness_key_id("w.example/a", raw(key))
    )
    assert int.from_bytes(blob[4:12], "big") == 1_700_000_123
    message = b"cosignature/v1\ntime 1700000123\n" + body.encode()
    key.public_key().verify(blob[12:], message)  # raises if the signed bytes differ from the spec's


def test_vkeys_carry_the_signature_type() -> None:
    key = Ed25519PrivateKey.generate()
    witness = parse_vkey(format_witness_vkey("w.example/a", key.public_key()))
    assert witness.signature_type == 0x04 and witness.key_id == witness_key_id("w.example/a", key.public_key())
    log = parse_vkey(format_vkey(ORIGIN, key.public_key()))
    assert log.signature_type == 0x01 and log.key_id != witness.key_id  # same key, other type, other ID


def test_verify_counts_known_witnesses_ignores_others_and_rejects_tampering() -> None:
    log_key, a, b, c = (Ed25519PrivateKey.generate() for _ in range(4))
    note = sign_checkpoint(ORIGIN, 9, ROOT, log_key, ORIGIN)
    body = checkpoint_body(ORIGIN, 9, ROOT)
    lines = cosign_checkpoint(body, a, "w/a", 1) + cosign_checkpoint(body, b, "w/b", 2)
    keys = [parse_vkey(format_witness_vkey(n, k.public_key())) for n, k in (("w/a", a), ("w/b", b), ("w/c", c))]
    found = verify_cosignatures(note + lines, keys)
    assert sorted((f.name, f.timestamp) for f in found) == [("w/a", 1), ("w/b", 2)]
    assert verify_cosignatures(note, keys) == []  # no cosignature: none counted, no error
    # A line by an unknown witness with a known name but another key is ignored.
    stranger = cosign_checkpoint(body, Ed25519PrivateKey.generate(), "w/c", 3)
    assert {f.name for f in verify_cosignatures(note + lines + stranger, keys)} == {"w/a", "w/b"}
    # A known witness's line over another tree does not verify.
    other = cosign_checkpoint(checkpoint_body(ORIGIN, 10, ROOT), a, "w/a", 1)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignatures(note + other, keys)
    # A changed timestamp breaks the signature.
    blob = bytearray(base64.b64decode(lines.split("\n")[0].split(" ")[2]))
    blob[11] ^= 1
    tampered = f"\u2014 w/a {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignatures(note + tampered, keys)
    # A log key is not a witness key.
    with pytest.raises(VerificationError, match="not a witness key"):
        verify_cosignatures(note + lines, [parse_vkey(format_vkey(ORIGIN, log_key.public_key()))])


def test_only_checkpoints_are_cosigned() -> None:
    with pytest.raises(VerificationError):
        cosign_checkpoint("not\na checkpoint\n", Ed25519PrivateKey.generate(), "w/a", 1)
    with pytest.raises(VerificationError):
        cosign_checkpoint(checkpoint_body(ORIGIN, 1, ROOT), Ed25519PrivateKey.generate(), "w/a", -1)
