"""A vehicle's identity as the car holds it: VIN, home region, Ed25519 key and pairing code.

Provisioning creates the key *in the car* (here: in the vehicle's own folder); only the public key and
a hash of the pairing code reach the region.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
        fd = os.open(folder / "vehicle-key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        (folder / "identity.json").write_text(
            json.dumps(
                {"vin": self.vin, "region": self.region, "model": self.model, "pairing_code": self.pairing_code},
                indent=2,
            )
        )
        if self.certificate_pem:
            (folder / "vehicle-cert.pem").write_text(self.certificate_pem)

    @classmethod
    def load(cls, folder: Path) -> VehicleIdentity:
        """Read an identity saved by ``save``."""
        meta = json.loads((folder / "identity.json").read_text())
        key = serialization.load_pem_private_key((folder / "vehicle-key.pem").read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{folder} holds no Ed25519 vehicle key")
        cert = folder / "vehicle-cert.pem"
        return cls(
            vin=meta["vin"],
            region=meta["region"],
            model=meta["model"],
            key=key,
            pairing_code=meta["pairing_code"],
            certificate_pem=cert.read_text() if cert.exists() else None,
        )
