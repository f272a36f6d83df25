"""Checks vehicle-signed requests (format in ``carvault.protocol.requests``): the car proves its identity.

Headers: ``CarVault-Vin``, ``CarVault-Time`` (epoch ms, within ±5 minutes of the server clock) and
``CarVault-Signature`` = base64 Ed25519 over the UTF-8 lines (joined by newlines, no final newline)
``carvault-vehicle-request-v1``, METHOD, PATH, VIN, TIME.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature

from carvault.errors import BadSignature, Unauthenticated
from carvault.ingest.gateway import Gateway
from carvault.protocol.requests import MAX_SKEW_MS, request_message
from carvault.store.metadata import now_ms


def authenticate_vehicle(gateway: Gateway, method: str, path: str, headers: Mapping[str, str]) -> str:
    """The VIN of the vehicle that signed this request, or an ``Unauthenticated`` error."""
    vin = headers.get("carvault-vin", "")
    raw_time = headers.get("carvault-time", "")
    raw_sig = headers.get("carvault-signature", "")
    if not vin or not (raw_time.isascii() and raw_time.isdigit() and len(raw_time) <= 19) or not raw_sig:
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
