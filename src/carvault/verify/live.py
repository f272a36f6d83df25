"""Prove a live value offline (docs/protocol.md §8.5): the frame the car signed is in a batch the region logged.

Given the live frame, the vehicle's public key, the later telemetry batch whose header commits to the frame's
counter (``live_first``, ``live_last``, ``live_root``), the frame's inclusion path in that batch's live tree,
and the batch's log evidence (leaf salt or v1, receive time, log index, log inclusion path, a checkpoint signed by
the region's log key), ``verify_live_frame`` checks, in order:

1. the frame is a canonical live frame signed by the vehicle key;
2. the batch is signed by the same key, for the same VIN, and its live range holds the frame's counter;
3. RFC 9162 inclusion of SHA-256(frame) at ``counter - live_first`` in the tree of ``live_root``;
4. the checkpoint is signed by the log key (and names the log's origin, if given);
5. RFC 9162 inclusion of the batch's log leaf (v2: keyed by the salt; v1: in clear) at ``log_index``.

Any failure raises ``carvault.ledger.merkle.VerificationError`` naming the step, with expected and actual values.
Only the wire format and the log's proof code are used: no database, server or web code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carvault.errors import CarVaultError
from carvault.ledger.checkpoint import verify_checkpoint
from carvault.ledger.merkle import VerificationError, leaf_hash, verify_inclusion
from carvault.protocol import decode_envelope, leaf_data_v1, leaf_data_v2
from carvault.protocol.live import LiveFrame, decode_frame, frame_hash


@dataclass(frozen=True)
class BatchLogProof:
    """Where a batch sits in the region's transparency log, and the signed checkpoint that proves it."""

    received_ms: int
    log_index: int
    path: list[bytes]
    checkpoint: str
    log_key: Ed25519PublicKey
    log_key_name: str
    leaf_salt: bytes | None = None  # leaf v2; None for a v1 leaf (fields in clear)
    origin: str | None = None


@dataclass(frozen=True)
class LiveFrameProof:
    """A live frame and the path from it to a logged batch."""

    frame: bytes
    batch: bytes
    path: list[bytes] = field(default_factory=list)  # the frame's inclusion path in the batch's live tree


def verify_live_frame(proof: LiveFrameProof, vehicle_key: Ed25519PublicKey, log: BatchLogProof) -> LiveFrame:
    """Check every step above; return the proven frame (its values are exactly what the car signed)."""
    try:
        frame = decode_frame(proof.frame)
        frame.verify(vehicle_key)
    except CarVaultError as e:
        raise VerificationError(f"live frame: {e.message}") from None
    try:
        env = decode_envelope(proof.batch)
        env.verify(vehicle_key)
    except CarVaultError as e:
        raise VerificationError(f"batch: {e.message}") from None
    h = env.header
    if h.vin != frame.vin:
        raise VerificationError("the batch is another vehicle's", expected=frame.vin, actual=h.vin)
    if h.live_first is None or h.live_last is None or h.live_root is None:
        raise VerificationError("the batch commits to no live frames")
    if not h.live_first <= frame.counter <= h.live_last:
        raise VerificationError(
            "the batch's live range does not hold the frame's counter",
            expected=f"{h.live_first}..{h.live_last}",
            actual=frame.counter,
        )
    verify_inclusion(
        leaf_hash(frame_hash(proof.frame)),
        frame.counter - h.live_first,
        h.live_size,
        list(proof.path),
        bytes.fromhex(h.live_root),
    )
    checkpoint = verify_checkpoint(log.checkpoint, log.log_key, log.log_key_name, origin=log.origin)
    if log.leaf_salt is not None:
        leaf = leaf_data_v2(
            salt=log.leaf_salt,
            region=h.region,
            vin=h.vin,
            seq=h.seq,
            batch_hash=env.batch_hash,
            received_ms=log.received_ms,
            attested_by=h.attested_by,
        )
    else:
        leaf = leaf_data_v1(
            region=h.region, vin=h.vin, seq=h.seq, batch_hash=env.batch_hash, received_ms=log.received_ms
        )
    verify_inclusion(leaf_hash(leaf), log.log_index, checkpoint.size, list(log.path), checkpoint.root)
    return frame
