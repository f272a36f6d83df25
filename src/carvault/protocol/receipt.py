"""The gateway's receipt for a durable batch and the transparency-log leaf it commits to (docs/transparency-log.md).

Leaf v1 (logs written before 2026-12) names the region, VIN, seq, batch hash and receive time in clear. Leaf v2
reveals nothing about a car: it is a keyed commitment to the same fields, openable only with the vehicle's
*log key* (32 random bytes per vehicle, held by the region, handed to the car at provisioning and to the owner)
or with the per-batch *salt* derived from it (what an incident package carries, batch by batch)::

    salt  = HMAC-SHA256(log_key, "carvault-leaf-salt-v2\n" || decimal(seq))
    leaf  = "carvault-leaf-v2\n" || hex(HMAC-SHA256(salt, region "\n" vin "\n" seq "\n" batch_hash "\n"
                                                     received_ms "\n" [attestation])) || "\n"

``attestation`` is empty for a batch the car signed, and ``"attested-by " region "\n"`` for a batch the region built
and signed from records the car did not sign (docs/protocol.md §9): the leaf itself tells the two apart.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

LEAF_V1_PREFIX = b"carvault-leaf-v1\n"
LEAF_V2_PREFIX = b"carvault-leaf-v2\n"
LOG_KEY_LEN = 32
_SALT_CONTEXT = b"carvault-leaf-salt-v2\n"


def leaf_data_v1(*, region: str, vin: str, seq: int, batch_hash: str, received_ms: int) -> bytes:
    """Leaf v1 (fields in clear): still verifiable for logs that hold it."""
    return f"carvault-leaf-v1\n{region}\n{vin}\n{seq}\n{batch_hash}\n{received_ms}\n".encode()


def leaf_salt(log_key: bytes, seq: int) -> bytes:
    """The per-batch salt that opens one v2 leaf (derived from the vehicle's log key)."""
    if len(log_key) != LOG_KEY_LEN:
        raise ValueError(f"a vehicle log key is {LOG_KEY_LEN} bytes, got {len(log_key)}")
    return hmac.new(log_key, _SALT_CONTEXT + str(seq).encode(), hashlib.sha256).digest()


def leaf_data_v2(
    *,
    salt: bytes,
    region: str,
    vin: str,
    seq: int,
    batch_hash: str,
    received_ms: int,
    attested_by: str | None = None,
) -> bytes:
    """Leaf v2: a keyed commitment to the batch; 82 bytes that say nothing without the salt.

    ``attested_by``: the region that attests a batch it built (§9); its leaf commits to that mark too.
    """
    fields = f"{region}\n{vin}\n{seq}\n{batch_hash}\n{received_ms}\n".encode()
    if attested_by is not None:
        fields += f"attested-by {attested_by}\n".encode()
    return LEAF_V2_PREFIX + hmac.new(salt, fields, hashlib.sha256).hexdigest().encode() + b"\n"


def receipt_json(
    *, region: str, vin: str, seq: int, batch_hash: str, log_index: int, received_ms: int, duplicate: bool = False
) -> dict[str, Any]:
    """The gateway's answer for a durable batch."""
    return {
        "region": region,
        "vin": vin,
        "seq": seq,
        "batch_hash": batch_hash,
        "log_index": log_index,
        "received_ms": received_ms,
        "duplicate": duplicate,
    }
