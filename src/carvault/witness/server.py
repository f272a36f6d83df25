"""The witness's HTTP API (C2SP tlog-witness): ``POST /add-checkpoint`` answers with a cosignature/v1 line.

Status codes follow the spec: 404 unknown origin, 403 no valid signature by the log's key, 400 malformed
body or old size above the checkpoint's, 409 old size other than the recorded one (body: the recorded size,
``Content-Type: text/x.tlog.size``) or same size with another root, 422 a consistency proof that does not
verify, 413 a body over the size limit. Error bodies are short plain text lines.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from carvault.ledger.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    format_witness_vkey,
    open_note,
    parse_checkpoint,
)
from carvault.ledger.merkle import HASH_SIZE, VerificationError, verify_consistency
from carvault.witness.state import WitnessState, WitnessStateError

__all__ = ["MAX_BODY_BYTES", "MAX_PROOF_LINES", "Refusal", "Witness", "witness_app"]

MAX_BODY_BYTES = 64 * 1024  # 63 proof lines and a checkpoint with 100 signatures fit in well under this
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD_RE = re.compile(r"old (0|[1-9][0-9]{0,19})")
_LOG = logging.getLogger("carvault.witness")


@dataclass
class Refusal(Exception):
    """A submission the witness refuses: the HTTP status and a one-line reason (or the size, for 409)."""

    status: int
    reason: str
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Submission:
    """A parsed add-checkpoint body."""

    old_size: int
    proof: list[bytes]
    note: str
    checkpoint: Checkpoint


def parse_submission(body: bytes) -> Submission:
    """Parse ``old N``, proof lines, an empty line and a checkpoint; 400 on anything else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refusal(400, "body needs an old size line, proof lines, an empty line and a checkpoint")
    lines = head.split("\n")
    match = _OLD_RE.fullmatch(lines[0])
    if not match or int(lines[0][4:]) > 2**64 - 1:
        raise Refusal(400, "first line must be 'old <size>' in decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refusal(400, f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise Refusal(400, "a consistency proof line is not base64") from None
        if len(raw) != HASH_SIZE:
            raise Refusal(400, f"a consistency proof line is not a {HASH_SIZE}-byte hash")
        proof.append(raw)
    try:
        checkpoint = parse_checkpoint(note)
    except VerificationError as exc:
        raise Refusal(400, f"malformed checkpoint: {exc}") from None
    return Submission(int(lines[0][4:]), proof, note, checkpoint)


class Witness:
    """The witness: its key, name and state; ``add_checkpoint`` is the whole protocol."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = WitnessState(directory / "witness.db")
        name = self.state.get_config("name")
        if not name:
            raise WitnessStateError(f"{directory} is not a witness folder: run `carvault witness init` first")
        self.name = name
        self.key = load_witness_key(directory)
        self.vkey = format_witness_vkey(self.name, self.key.public_key())

    def close(self) -> None:
        """Close the state file."""
        self.state.close()

    def add_checkpoint(self, body: bytes) -> str:
        """Check a submission and return the cosignature line, or raise ``Refusal``."""
        sub = parse_submission(body)
        cp = sub.checkpoint
        log = self.state.log(cp.origin)
        if log is None:
            raise Refusal(404, f"unknown log origin {cp.origin}")
        try:
            open_note(sub.note, log.vkey.public_key, log.vkey.name)
        except VerificationError:
            raise Refusal(403, "no signature by the log's known key verifies") from None
        if sub.old_size > cp.size:
            raise Refusal(400, "old size is larger than the checkpoint's size")
        if sub.old_size == 0 and sub.proof:
            raise Refusal(422, "the consistency proof must be empty when the old size is 0")

        def decide(size: int, root: bytes | None) -> bool:
            if sub.old_size != size:
                raise Refusal(409, f"{size}\n", SIZE_CONTENT_TYPE)
            if cp.size == size:
                if size > 0 and root != cp.root:
                    _LOG.warning("log %s: checkpoint of size %d with another root (split view?)", cp.origin, size)
                    raise Refusal(409, f"{size}\n", SIZE_CONTENT_TYPE)
                return True
            if size > 0:
                assert root is not None
                try:
                    verify_consistency(size, cp.size, root, cp.root, sub.proof)
                except VerificationError:
                    _LOG.warning(
                        "log %s: inconsistent checkpoint %d -> %d (kept as evidence)", cp.origin, size, cp.size
                    )
                    raise Refusal(422, "the consistency proof does not verify") from None
            return True

        self.state.advance(cp.origin, decide, cp.size, cp.root, int(time.time() * 1000))
        return cosign_checkpoint(cp.body, self.key, self.name, int(time.time()))


KEY_FILE = "witness-ed25519.pem"


def load_witness_key(directory: Path) -> Ed25519PrivateKey:
    """The witness's Ed25519 key (PKCS#8 PEM, mode 0600), created on first use."""
    from carvault.region import load_or_create_key

    return load_or_create_key(directory / KEY_FILE)


def witness_app(witness: Witness) -> Starlette:
    """The ASGI app: ``POST /add-checkpoint`` and ``GET /`` (name and vkey, for operators)."""

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse("request body too large\n", status_code=413)
        try:
            from starlette.concurrency import run_in_threadpool

            line = await run_in_threadpool(witness.add_checkpoint, bytes(body))
        except Refusal as refusal:
            text = refusal.reason if refusal.reason.endswith("\n") else refusal.reason + "\n"
            return Response(text, status_code=refusal.status, media_type=refusal.content_type)
        return PlainTextResponse(line)

    async def info(request: Request) -> Response:
        logs = "".join(f"log {log.origin} {log.size}\n" for log in witness.state.logs())
        return PlainTextResponse(f"witness {witness.name}\nvkey {witness.vkey}\n{logs}")

    return Starlette(
        routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"]), Route("/", info, methods=["GET"])]
    )
