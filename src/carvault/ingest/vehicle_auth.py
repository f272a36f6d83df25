"""Vehicle-signed requests (policy fetch): the car proves its identity with its Ed25519 key.

Headers: ``CarVault-Vin``, ``CarVault-Time`` (epoch ms, within ±5 minutes of the server clock) and
``CarVault-Signature`` = base64 Ed25519 over the UTF-8 lines (joined by newlines, no final newline)
``carvault-vehicle-request-v1``, METHOD, PATH, VIN, TIME.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.errors import BadSignature, Unauthenticated
from carvault.ingest.gateway import Gateway
from carvault.store.metadata import now_ms

MAX_SKEW_MS = 5 * 60_000


def request_message(method: str, path: str, vin: str, time_ms: int) -> bytes:
    """The bytes a vehicle signs for a request."""
    return f"carvault-vehicle-request-v1\n{method.upper()}\n{path}\n{vin}\n{time_ms}".encode()


def sign_request(
    key: Ed25519PrivateKey, method: str, path: str, vin: str, time_ms: int | None = None
) -> dict[str, str]:
    """Headers for a vehicle-signed request."""
    t = time_ms if time_ms is not None else now_ms()
    sig = base64.b64encode(key.sign(request_message(method, path, vin, t))).decode()
    return {"CarVault-Vin": vin, "CarVault-Time": str(t), "CarVault-Signature": sig}


def authenticate_vehicle(gateway: Gateway, method: str, path: str, headers: Mapping[str, str]) -> str:
    """The VIN of the vehicle that signed this request, or an ``Unauthenticated`` error."""
    vin = headers.get("carvault-vin", "")
    raw_time = headers.get("carvault-time", "")
    raw_sig = headers.get("carvault-signature", "")
    if not vin or not raw_time.isdigit() or not raw_sig:
        raise Unauthenticated("vehicle requests need CarVault-Vin, CarVault-Time and CarVault-Signature headers")
    t = int(raw_time)
    if abs(t - now_ms()) > MAX_SKEW_MS:
        raise Unauthenticated("CarVault-Time is more than 5 minutes from the server clock")
    key = gateway.vehicle_key(vin)
    try:
        key.verify(base64.b64decode(raw_sig, validate=True), request_message(method, path, vin, t))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadSignature("the request signature does not verify with the vehicle's key", vin=vin) from None
    return vin
