"""Checkpoints: signed tree heads in the C2SP ``tlog-checkpoint`` signed-note format, with Ed25519.

A checkpoint (https://c2sp.org/tlog-checkpoint) is a signed note (https://c2sp.org/signed-note)
whose text is three lines — origin, decimal tree size, base64 root hash — each ending in a newline::

    cn.carvault.example/log
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

    — cn.carvault.example/log Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGz...

After the text comes a blank line, then signature lines ``— <key name> <base64(key ID || sig)>``
(em dash U+2014, space). For Ed25519 (signature type 0x01) the 4-byte key ID is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`` and the signature is RFC 8032
Ed25519 over the note text including its final newline. A verifier key ("vkey") is shared as
``<name>+<hex key ID>+<base64(0x01 || public key)>`` (Go ``golang.org/x/mod/sumdb/note`` encoding).

Witness cosignatures (C2SP ``tlog-cosignature``, ``cosignature/v1``, signature type 0x04) are signature
lines of the same note: the key ID is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``, the signature bytes
are ``key ID || 8-byte big-endian timestamp || Ed25519 signature`` over the message
``"cosignature/v1\ntime <timestamp>\n" || checkpoint text``; a witness vkey carries ``0x04 || public key``.

Only the standard library and ``cryptography``: the offline verifier imports this module. Every
failure raises ``carvault.ledger.merkle.VerificationError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from carvault.ledger.merkle import HASH_SIZE, VerificationError

__all__ = [
    "Checkpoint",
    "Cosignature",
    "cosign_checkpoint",
    "cosignature_message",
    "format_witness_vkey",
    "verify_cosignatures",
    "witness_key_id",
    "NoteSignature",
    "VerifierKey",
    "checkpoint_body",
    "format_vkey",
    "key_id",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

SIGNATURE_TYPE_ED25519 = 0x01
SIGNATURE_TYPE_COSIGNATURE = 0x04  # C2SP tlog-cosignature: cosignature/v1 over Ed25519
COSIGNATURE_HEADER = "cosignature/v1\n"
SIGNATURE_LINE_PREFIX = "\u2014 "  # em dash, space (signed-note §Format)
MAX_SIGNATURES = 100  # signed-note: verifiers SHOULD cap, and MUST accept at least 16
MAX_TREE_SIZE = 2**64 - 1
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note, not yet verified."""

    key_name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint: the log's origin, tree size, root hash, extension lines and signatures."""

    origin: str
    size: int
    root: bytes
    signatures: tuple[NoteSignature, ...] = ()
    extensions: tuple[str, ...] = ()

    @property
    def body(self) -> str:
        """The note text the signatures cover."""
        return checkpoint_body(self.origin, self.size, self.root, self.extensions)


@dataclass(frozen=True)
class VerifierKey:
    """A parsed vkey: key name, 4-byte key ID, the Ed25519 public key and its signature type (0x01 or 0x04)."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey
    signature_type: int = SIGNATURE_TYPE_ED25519


@dataclass(frozen=True)
class Cosignature:
    """A verified witness cosignature: the witness's key name and the time (Unix seconds) it cosigned at."""

    name: str
    timestamp: int


def _raw_public(public_key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if isinstance(public_key, bytes | bytearray) and len(public_key) == 32:
        return bytes(public_key)
    raise VerificationError(
        "not an Ed25519 public key",
        expected="32 bytes",
        actual=type(public_key).__name__,
    )


def _load_public(public_key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    raw = _raw_public(public_key)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise VerificationError("invalid Ed25519 public key", expected="valid key", actual=raw) from exc


def _check_key_name(name: str) -> str:
    # signed-note: non-empty, no Unicode spaces, no '+'; controls are banned from notes altogether.
    if not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name):
        raise VerificationError("invalid key name", expected="non-empty, no spaces or '+'", actual=name)
    _check_note_chars(name)
    return name


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise VerificationError(
            f"{what} is not valid base64",
            expected="RFC 4648 base64",
            actual=text,
        ) from exc
    # Only the canonical encoding is accepted, so one value has exactly one textual form.
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerificationError(
            f"{what} is not canonical base64",
            expected=base64.b64encode(raw).decode(),
            actual=text,
        )
    return raw


def key_id(key_name: str, public_key: Ed25519PublicKey | bytes, signature_type: int = SIGNATURE_TYPE_ED25519) -> bytes:
    """SHA-256(key name || 0x0A || type || public key)[:4] — the key ID of signed-note (type 0x01 by default)."""
    raw = _raw_public(public_key)
    return hashlib.sha256(key_name.encode() + b"\n" + bytes([signature_type]) + raw).digest()[:4]


def witness_key_id(key_name: str, public_key: Ed25519PublicKey | bytes) -> bytes:
    """The cosignature/v1 key ID: SHA-256(key name || 0x0A || 0x04 || public key)[:4]."""
    return key_id(key_name, public_key, SIGNATURE_TYPE_COSIGNATURE)


def format_witness_vkey(name: str, public_key: Ed25519PublicKey | bytes) -> str:
    """A witness's verifier key ``<name>+<hex key ID>+<base64(0x04 || public key)>``."""
    _check_key_name(name)
    raw = _raw_public(public_key)
    material = base64.b64encode(bytes([SIGNATURE_TYPE_COSIGNATURE]) + raw).decode("ascii")
    return f"{name}+{witness_key_id(name, raw).hex()}+{material}"


def format_vkey(name: str, public_key: Ed25519PublicKey | bytes) -> str:
    """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    _check_key_name(name)
    raw = _raw_public(public_key)
    material = base64.b64encode(bytes([SIGNATURE_TYPE_ED25519]) + raw).decode("ascii")
    return f"{name}+{key_id(name, raw).hex()}+{material}"


def parse_vkey(vkey: str) -> VerifierKey:
    """Parse and check a verifier key string (the key ID must match the name and key)."""
    if not isinstance(vkey, str):
        raise VerificationError("vkey must be a string", expected="str", actual=type(vkey).__name__)
    # maxsplit 2: the base64 key material may itself contain '+'.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise VerificationError("malformed vkey", expected="name+keyid+key", actual=vkey)
    name, hex_id, material = parts
    _check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise VerificationError("malformed vkey key ID", expected="8 lowercase hex digits", actual=hex_id)
    raw = _b64decode(material, "vkey key material")
    if len(raw) != 33 or raw[0] not in (SIGNATURE_TYPE_ED25519, SIGNATURE_TYPE_COSIGNATURE):
        raise VerificationError(
            "vkey is not an Ed25519 or cosignature/v1 key",
            expected="0x01 or 0x04 || 32 bytes",
            actual=raw[:1].hex(),
        )
    want = key_id(name, raw[1:], raw[0])
    if want.hex() != hex_id:
        raise VerificationError("vkey key ID does not match its key", expected=want.hex(), actual=hex_id)
    try:
        public = Ed25519PublicKey.from_public_bytes(raw[1:])
    except ValueError as exc:
        raise VerificationError(
            "vkey holds an invalid Ed25519 key",
            expected="valid key",
            actual=raw.hex(),
        ) from exc
    return VerifierKey(name=name, key_id=want, public_key=public, signature_type=raw[0])


def _check_note_chars(text: str) -> None:
    # signed-note: valid UTF-8 (a lone surrogate in a str is not) and no ASCII controls but newline.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise VerificationError("note text is not valid UTF-8", expected="UTF-8", actual=text) from exc
    match = _CONTROL_RE.search(text)
    if match:
        raise VerificationError("note contains a control character", expected="none", actual=match.group())


def sign_note(text: str, private_key: Ed25519PrivateKey, key_name: str) -> str:
    """Sign ``text`` (which must end in a newline) as a one-signature signed note."""
    _check_key_name(key_name)
    if not text.endswith("\n"):
        raise VerificationError("note text must end with a newline", expected="\\n", actual=text[-1:])
    _check_note_chars(text)
    signature = private_key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_id(key_name, private_key.public_key()) + signature).decode("ascii")
    return f"{text}\n{SIGNATURE_LINE_PREFIX}{key_name} {blob}\n"


def parse_note(note: str | bytes) -> tuple[str, tuple[NoteSignature, ...]]:
    """Split a signed note into its text and its (unverified) signature lines."""
    if isinstance(note, bytes | bytearray):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationError("note is not valid UTF-8", expected="UTF-8", actual=str(exc)) from exc
    if not isinstance(note, str):
        raise VerificationError("note must be text", expected="str", actual=type(note).__name__)
    _check_note_chars(note)
    # The text is separated from the signatures by the *last* blank line (signed-note §Format).
    split = note.rfind("\n\n")
    if split < 0:
        raise VerificationError(
            "note has no signature block",
            expected="text, blank line, signatures",
            actual=None,
        )
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise VerificationError("signature block must end with a newline", expected="\\n", actual=block[-1:])
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError("too many signatures", expected=f"<= {MAX_SIGNATURES}", actual=len(lines))
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_LINE_PREFIX):
            raise VerificationError("malformed signature line", expected="'\u2014 name sig'", actual=line)
        fields = line[len(SIGNATURE_LINE_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise VerificationError("malformed signature line", expected="'\u2014 name sig'", actual=line)
        name, blob = fields
        _check_key_name(name)
        raw = _b64decode(blob, "signature")
        if len(raw) < 5:
            raise VerificationError("signature too short", expected="key ID + signature", actual=len(raw))
        signatures.append(NoteSignature(key_name=name, key_id=raw[:4], signature=raw[4:]))
    return text, tuple(signatures)


def open_note(note: str | bytes, public_key: Ed25519PublicKey | bytes, key_name: str) -> str:
    """Verify a signed note against one trusted Ed25519 key and return its text."""
    text, signatures = parse_note(note)
    _check_key_name(key_name)
    public = _load_public(public_key)
    want_id = key_id(key_name, public)
    # Lines from unknown keys are ignored; any line from the known key must verify (signed-note §Signatures).
    known = [s for s in signatures if s.key_name == key_name and s.key_id == want_id]
    if not known:
        names = [f"{s.key_name}/{s.key_id.hex()}" for s in signatures]
        raise VerificationError(
            "no signature by the trusted key",
            expected=f"{key_name}/{want_id.hex()}",
            actual=names,
        )
    message = text.encode("utf-8")
    for sig in known:
        try:
            public.verify(sig.signature, message)
        except InvalidSignature as exc:
            raise VerificationError(
                "signature does not verify",
                expected=key_name,
                actual=sig.signature,
            ) from exc
    return text


def checkpoint_body(origin: str, size: int, root: bytes, extensions: tuple[str, ...] = ()) -> str:
    """The checkpoint note text: origin, size and base64 root lines (then extension lines), each + newline."""
    if not isinstance(origin, str) or not origin or "\n" in origin:
        raise VerificationError("invalid origin", expected="non-empty single line", actual=origin)
    _check_note_chars(origin)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_TREE_SIZE:
        raise VerificationError("invalid tree size", expected="0 <= size < 2**64", actual=size)
    if not isinstance(root, bytes | bytearray) or len(root) != HASH_SIZE:
        raise VerificationError("invalid root hash", expected=f"{HASH_SIZE} bytes", actual=root)
    for line in extensions:
        if not line or "\n" in line:
            raise VerificationError("invalid extension line", expected="non-empty single line", actual=line)
        _check_note_chars(line)
    lines = [origin, str(size), base64.b64encode(bytes(root)).decode("ascii"), *extensions]
    return "".join(line + "\n" for line in lines)


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    private_key: Ed25519PrivateKey,
    key_name: str,
) -> str:
    """A signed checkpoint note for the tree (size, root) of the log ``origin``."""
    return sign_note(checkpoint_body(origin, size, root), private_key, key_name)


def _parse_body(text: str, signatures: tuple[NoteSignature, ...]) -> Checkpoint:
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise VerificationError(
            "checkpoint needs origin, size and root lines", expected=">= 3 lines", actual=len(lines)
        )
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise VerificationError("checkpoint origin is empty", expected="non-empty", actual=origin)
    if not _SIZE_RE.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise VerificationError("malformed tree size", expected="decimal, no leading zeros", actual=size_text)
    root = _b64decode(root_text, "root hash")
    if len(root) != HASH_SIZE:
        raise VerificationError("root hash has the wrong length", expected=HASH_SIZE, actual=len(root))
    if any(not line for line in extensions):
        raise VerificationError("empty extension line", expected="non-empty", actual="")
    return Checkpoint(origin, int(size_text), root, signatures, tuple(extensions))


def parse_checkpoint(text: str | bytes) -> Checkpoint:
    """Parse a signed checkpoint without verifying its signatures (use ``verify_checkpoint`` to trust it)."""
    body, signatures = parse_note(text)
    return _parse_body(body, signatures)


def verify_checkpoint(
    text: str | bytes, public_key: Ed25519PublicKey | bytes, key_name: str, origin: str | None = None
) -> Checkpoint:
    """Verify a checkpoint's signature by the log key (and its origin, if given) and return it."""
    body = open_note(text, public_key, key_name)
    _, signatures = parse_note(text)
    checkpoint = _parse_body(body, signatures)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError("checkpoint is for another log", expected=origin, actual=checkpoint.origin)
    return checkpoint


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header line, ``time <timestamp>`` line, then the checkpoint text."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TREE_SIZE:
        raise VerificationError("invalid cosignature timestamp", expected="0 <= t < 2**64", actual=timestamp)
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{body}".encode()


def cosign_checkpoint(body: str, private_key: Ed25519PrivateKey, key_name: str, timestamp: int) -> str:
    """One cosignature/v1 signature line (``— name base64``, with its newline) over the checkpoint text."""
    _check_key_name(key_name)
    _parse_body(body, ())  # only checkpoints are cosigned
    signature = private_key.sign(cosignature_message(body, timestamp))
    raw = witness_key_id(key_name, private_key.public_key()) + timestamp.to_bytes(8, "big") + signature
    return f"{SIGNATURE_LINE_PREFIX}{key_name} {base64.b64encode(raw).decode('ascii')}\n"


def verify_cosignatures(note: str | bytes, witnesses: list[VerifierKey]) -> list[Cosignature]:
    """The valid cosignatures on ``note`` by the given witness keys (one per witness; unknown lines ignored).

    A line that names a known witness key but does not verify raises ``VerificationError``: a tampered
    cosignature is an error, not a missing one.
    """
    body, signatures = parse_note(note)
    _parse_body(body, signatures)
    found: dict[str, Cosignature] = {}
    for key in witnesses:
        if key.signature_type != SIGNATURE_TYPE_COSIGNATURE:
            raise VerificationError("not a witness key", expected="cosignature/v1 vkey (0x04)", actual=key.name)
        for sig in signatures:
            if sig.key_name != key.name or sig.key_id != key.key_id:
                continue
            if len(sig.signature) != 8 + 64:
                raise VerificationError("malformed cosignature", expected="timestamp + 64 bytes", actual=key.name)
            timestamp = int.from_bytes(sig.signature[:8], "big")
            try:
                key.public_key.verify(sig.signature[8:], cosignature_message(body, timestamp))
            except InvalidSignature as exc:
                raise VerificationError("cosignature does not verify", expected=key.name, actual=timestamp) from exc
            found[key.name] = Cosignature(key.name, timestamp)
    return list(found.values())
