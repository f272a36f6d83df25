"""The gateway's receipt for a durable batch and the transparency-log leaf it commits to (docs/transparency-log.md)."""

from __future__ import annotations

from typing import Any


def leaf_data(*, region: str, vin: str, seq: int, batch_hash: str, received_ms: int) -> bytes:
    """The transparency-log leaf for an accepted batch (docs/transparency-log.md)."""
    return f"carvault-leaf-v1\n{region}\n{vin}\n{seq}\n{batch_hash}\n{received_ms}\n".encode()


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
