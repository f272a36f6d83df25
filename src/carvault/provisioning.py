"""Provisioning: the factory step that gives a car its key and registers it with its home region."""

from __future__ import annotations

from pathlib import Path

from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity


def provision(region: Region, vin: str, vehicles_dir: Path, model: str = "CarVault EV") -> VehicleIdentity:
    """Create the car's identity (key made on the car's side) and register its public key with the region."""
    identity = VehicleIdentity.create(vin, region.name, model)
    identity.save(vehicles_dir / vin)
    region.vehicles.register(vin, identity.public_key_bytes, identity.pairing_code, model=model)
    return identity
