"""Vehicle-signed requests (policy fetch and other car-to-region calls that are not batch uploads).

Headers: ``CarVault-Vin``, ``CarVault-Time`` (epoch ms, within ±5 minutes of the server clock) and
``CarVault-Signature`` = base64 Ed25519 over the UTF-8 lines (joined by newlines, no final newline)
``carvault-vehicle-request-v1``, METHOD, PATH, VIN, TIME.
"""

from __future__ import annotations

import base64
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_SKEW_MS = 5 * 60_000


def request_message(method: str, path: str, vin: str, time_ms: int) -> bytes:
    """The bytes a vehicle signs for a request."""
    return f"carvault-vehicle-request-v1\n{method.upper()}\n{path}\n{vin}\n{time_ms}".encode()


def sign_request(
    key: Ed25519PrivateKey, method: str, path: str, vin: str, time_ms: int | None = None
) -> dict[str, str]:
    """Headers for a vehicle-signed request."""
    t = time_ms if time_ms is not None else time.time_ns() // 1_000_000
    sig = base64.b64encode(key.sign(request_message(method, path, vin, t))).decode()
    return {"CarVault-Vin": vin, "CarVault-Time": str(t), "CarVault-Signature": sig}
