"""C2SP signed notes and tlog-checkpoints in carvault.ledger.checkpoint."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from carvault.ledger.checkpoint import (
    Checkpoint,
    checkpoint_body,
    format_vkey,
    key_id,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from carvault.ledger.merkle import VerificationError
from tests.ledger.conftest import ORIGIN, log_key

ROOT = hashlib.sha256(b"some root").digest()
KEY = log_key()
OTHER = log_key("another key")


def go_key(vectors: dict[str, Any]) -> Ed25519PrivateKey:
    # The Go signer key is PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed).
    material = base64.b64decode(vectors["signed_note"]["signer_key"].split("+", 4)[4])
    assert material[0] == 1
    return Ed25519PrivateKey.from_private_bytes(material[1:])


def test_signed_note_matches_the_go_reference_byte_for_byte(vectors: dict[str, Any]) -> None:
    note = vectors["signed_note"]
    key = go_key(vectors)
    assert format_vkey(note["key_name"], key.public_key()) == note["verifier_key"]
    assert sign_note(note["text"], key, note["key_name"]) == note["note"]
    vkey = parse_vkey(note["verifier_key"])
    assert vkey.name == note["key_name"] and vkey.key_id.hex() == "c74f20a3"
    assert open_note(note["note"], vkey.public_key, vkey.name) == note["text"]
    assert open_note(note["note"].encode(), vkey.public_key, vkey.name) == note["text"]
    with pytest.raises(VerificationError):
        open_note(note["note"].replace("cryptography", "cryptographY"), vkey.public_key, vkey.name)


def test_the_spec_example_checkpoint_parses(vectors: dict[str, Any]) -> None:
    checkpoint = parse_checkpoint(vectors["checkpoint_example"]["note"])
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert [s.key_name for s in checkpoint.signatures] == ["example.com/behind-the-sofa"]
    assert checkpoint.body == vectors["checkpoint_example"]["note"].split("\n\n")[0] + "\n"


def test_key_id_is_the_signed_note_ed25519_recipe() -> None:
    raw = KEY.public_key().public_bytes_raw()
    assert key_id(ORIGIN, KEY.public_key()) == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    vkey = format_vkey(ORIGIN, KEY.public_key())
    name, hex_id, material = vkey.split("+", 2)
    assert (name, hex_id, base64.b64decode(material)) == (ORIGIN, key_id(ORIGIN, raw).hex(), b"\x01" + raw)
    assert parse_vkey(vkey).public_key.public_bytes_raw() == raw


def test_round_trip() -> None:
    note = sign_checkpoint(ORIGIN, 42, ROOT, KEY, ORIGIN)
    body, signature_block = note.split("\n\n")
    assert body == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}"
    assert signature_block.startswith(f"\u2014 {ORIGIN} ")
    assert len(base64.b64decode(signature_block.split(" ")[2])) == 4 + 64
    parsed = parse_checkpoint(note)
    verified = verify_checkpoint(note, KEY.public_key(), ORIGIN, origin=ORIGIN)
    assert verified == parsed
    assert (verified.origin, verified.size, verified.root) == (ORIGIN, 42, ROOT)
    assert verified.signatures[0].key_id == key_id(ORIGIN, KEY.public_key())
    assert verify_checkpoint(note, KEY.public_key().public_bytes_raw(), ORIGIN).size == 42
    assert sign_checkpoint(ORIGIN, 0, ROOT, KEY, ORIGIN).split("\n")[1] == "0"


def test_wrong_key_name_or_origin_fails() -> None:
    note = sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN)
    with pytest.raises(VerificationError, match="no signature by the trusted key"):
        verify_checkpoint(note, OTHER.public_key(), ORIGIN)
    with pytest.raises(VerificationError, match="no signature by the trusted key"):
        verify_checkpoint(note, KEY.public_key(), "other.example/log")
    with pytest.raises(VerificationError, match="another log") as info:
        verify_checkpoint(note, KEY.public_key(), ORIGIN, origin="eu.carvault.example/log")
    assert (info.value.expected, info.value.actual) == ("eu.carvault.example/log", ORIGIN)


def test_forged_and_altered_checkpoints_fail() -> None:
    note = sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN)
    body, block = note.split("\n\n")
    forged_body = checkpoint_body(ORIGIN, 8, ROOT)
    # Same name, same key ID, signature made by someone else's key: must not verify.
    blob = key_id(ORIGIN, KEY.public_key()) + OTHER.sign(forged_body.encode())
    forged = forged_body + f"\n\u2014 {ORIGIN} {base64.b64encode(blob).decode()}\n"
    altered_size = note.replace(f"{ORIGIN}\n7\n", f"{ORIGIN}\n8\n")
    altered_root = note.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT[::-1]).decode())
    altered_origin = note.replace(f"{ORIGIN}\n7", f"x{ORIGIN}\n7")
    # A note from the right key over different text, stitched onto this body.
    other_sig = sign_checkpoint(ORIGIN, 8, ROOT, KEY, ORIGIN).split("\n\n")[1]
    spliced = body + "\n\n" + other_sig
    for bad in (forged, altered_size, altered_root, altered_origin, spliced):
        with pytest.raises(VerificationError):
            verify_checkpoint(bad, KEY.public_key(), ORIGIN)


def test_unknown_signatures_are_ignored_but_a_bad_known_one_rejects() -> None:
    note = sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN)
    witness = sign_note(checkpoint_body(ORIGIN, 7, ROOT), OTHER, "witness.example/w1").split("\n\n")[1]
    cosigned = note + witness
    assert verify_checkpoint(cosigned, KEY.public_key(), ORIGIN).size == 7
    assert len(parse_checkpoint(cosigned).signatures) == 2
    assert verify_checkpoint(cosigned, OTHER.public_key(), "witness.example/w1").size == 7
    bad = key_id(ORIGIN, KEY.public_key()) + bytes(64)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_checkpoint(
            note + f"\u2014 {ORIGIN} {base64.b64encode(bad).decode()}\n",
            KEY.public_key(),
            ORIGIN,
        )


def _signed(body: str) -> str:
    return sign_note(body, KEY, ORIGIN)


@pytest.mark.parametrize(
    "note",
    [
        "",
        "no signature block\n",
        _signed(f"{ORIGIN}\n7\n").replace("\n\n", "\n"),
        _signed(f"{ORIGIN}\n7\n"),  # two lines only
        _signed(f"{ORIGIN}\n007\n{base64.b64encode(ROOT).decode()}\n"),  # leading zeros
        _signed(f"{ORIGIN}\n-7\n{base64.b64encode(ROOT).decode()}\n"),
        _signed(f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n"),
        _signed(f"{ORIGIN}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n"),  # short root
        _signed(f"{ORIGIN}\n7\n{base64.b64encode(ROOT).decode().rstrip('=')}\n"),  # unpadded
        _signed(f"\n7\n{base64.b64encode(ROOT).decode()}\n"),  # empty origin
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN).replace("\u2014", "-"),
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN).rstrip("\n"),
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN).replace("\n7\n", "\n7\t\n"),
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN) + "\u2014 x AAAA\n",  # signature too short
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN) + "\u2014 x+y AAAAAAAA\n",  # '+' in a key name
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN) + "\u2014 x AAAAAAAA extra\n",
        sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN) + "\u2014 x AAAAAAAA\n" * 100,  # over the cap
        b"\xff\xfe not utf-8\n\n\xe2\x80\x94 x AAAAAAAA\n",
    ],
)
def test_malformed_checkpoints_are_verification_errors(note: str | bytes) -> None:
    with pytest.raises(VerificationError):
        verify_checkpoint(note, KEY.public_key(), ORIGIN)


def test_sixteen_cosignatures_are_accepted() -> None:
    note = sign_checkpoint(ORIGIN, 7, ROOT, KEY, ORIGIN)
    for n in range(16):
        note += sign_note(checkpoint_body(ORIGIN, 7, ROOT), OTHER, f"witness{n}.example").split("\n\n")[1]
    assert verify_checkpoint(note, KEY.public_key(), ORIGIN).size == 7


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not lowercase
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not type 0x01
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # truncated
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(VerificationError):
        parse_vkey(vkey)


def test_invalid_signing_input_is_refused() -> None:
    with pytest.raises(VerificationError):
        sign_checkpoint("", 1, ROOT, KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint("a\nb", 1, ROOT, KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint(ORIGIN, -1, ROOT, KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint(ORIGIN, 1, ROOT[:5], KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint(ORIGIN, 1, ROOT, KEY, "two words")
    with pytest.raises(VerificationError):
        sign_note("no final newline", KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint("lone \ud800 surrogate", 1, ROOT, KEY, ORIGIN)
    with pytest.raises(VerificationError):
        sign_checkpoint(ORIGIN, 1, ROOT, KEY, "\ud800")


SIGNED = sign_checkpoint(ORIGIN, 123456, ROOT, KEY, ORIGIN)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SIGNED) - 1), st.characters(codec="utf-8"))
def test_any_single_character_change_fails(position: int, replacement: str) -> None:
    altered = SIGNED[:position] + replacement + SIGNED[position + 1 :]
    if altered == SIGNED:
        return
    with pytest.raises(VerificationError):
        verify_checkpoint(altered, KEY.public_key(), ORIGIN)


@settings(max_examples=50, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Zs", "Zl", "Zp"]), max_size=30),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(min_size=32, max_size=32),
)
def test_round_trip_property(origin: str, size: int, root: bytes) -> None:
    origin = "o" + origin.replace("+", "-")
    if any(c.isspace() for c in origin):
        return
    note = sign_checkpoint(origin, size, root, KEY, origin)
    assert verify_checkpoint(note, KEY.public_key(), origin, origin) == Checkpoint(
        origin, size, root, parse_note(note)[1]
    )
