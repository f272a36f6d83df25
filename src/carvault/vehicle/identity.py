"""A vehicle's identity as the car holds it: VIN, home region, Ed25519 key, pairing code and log key.

Provisioning creates the signing key *in the car* (here: in the vehicle's own folder); only the public key
and a hash of the pairing code reach the region. The region hands the car its *log key* (32 random bytes
that open the car's leaves in the transparency log, docs/transparency-log.md), kept next to the signing key.

Files in the car's folder: ``vehicle-key.pem`` (PKCS#8 PEM, mode 0600), ``identity.json`` (vin, region,
model, pairing_code), ``vehicle-cert.pem`` (the region CA's certificate) and ``log-key.txt`` (the log key
in base64 on one line, mode 0600).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

LOG_KEY_FILE = "log-key.txt"
PAIRING_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"  # no I/O/Q/0/1: read off a car screen without doubt


def new_pairing_code(length: int = 8) -> str:
    """A random code the car shows its owner for pairing."""
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(length))


@dataclass
class VehicleIdentity:
    """What the car knows about itself."""

    vin: str
    region: str
    model: str
    key: Ed25519PrivateKey
    pairing_code: str
    certificate_pem: str | None = None
    log_key: bytes | None = None

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def create(cls, vin: str, region: str, model: str = "CarVault EV") -> VehicleIdentity:
        """A fresh identity with a new key and pairing code."""
        return cls(
            vin=vin, region=region, model=model, key=Ed25519PrivateKey.generate(), pairing_code=new_pairing_code()
        )

    def save(self, folder: Path) -> None:
        """Keep the identity in the car's folder (key file mode 0600)."""
        folder.mkdir(parents=True, exist_ok=True)
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_secret(folder / "vehicle-key.pem", pem)
        (folder / "identity.json").write_text(
            json.dumps(
                {"vin": self.vin, "region": self.region, "model": self.model, "pairing_code": self.pairing_code},
                indent=2,
            )
        )
        if self.certificate_pem:
            (folder / "vehicle-cert.pem").write_text(self.certificate_pem)
        if self.log_key is not None:
            _write_secret(folder / LOG_KEY_FILE, base64.b64encode(self.log_key) + b"\n")

    @classmethod
    def load(cls, folder: Path) -> VehicleIdentity:
        """Read an identity saved by ``save``."""
        meta = json.loads((folder / "identity.json").read_text())
        key = serialization.load_pem_private_key((folder / "vehicle-key.pem").read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{folder} holds no Ed25519 vehicle key")
        cert = folder / "vehicle-cert.pem"
        log_key = folder / LOG_KEY_FILE
        return cls(
            vin=meta["vin"],
            region=meta["region"],
            model=meta["model"],
            key=key,
            pairing_code=meta["pairing_code"],
            certificate_pem=cert.read_text() if cert.exists() else None,
            log_key=base64.b64decode(log_key.read_text().strip(), validate=True) if log_key.exists() else None,
        )


def _write_secret(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
