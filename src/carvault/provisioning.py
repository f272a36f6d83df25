"""Provisioning: the factory step that gives a car its key and registers it with its home region."""

from __future__ import annotations

from pathlib import Path

from carvault.ledger.leaves import log_key_of
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity


def provision(region: Region, vin: str, vehicles_dir: Path, model: str = "CarVault EV") -> VehicleIdentity:
    """Make the car's key (on the car's side), certify it by the region CA, and register it with the region.

    Residency first (``carvault.compliance.residency``): a VIN the region directory gives to another region is
    refused (``WrongRegion``) before any key is made; the directory line is written before the registration, so
    a vehicle registered here is always one the other regions can send home.
    """
    home = region.residency.check_registration(vin, region.name)
    region.residency.directory.record(vin, home)
    identity = VehicleIdentity.create(vin, home, model)
    certificate = region.ca.issue(vin, identity.public_key_bytes)
    identity.certificate_pem = certificate
    identity.save(vehicles_dir / vin)
    region.vehicles.register(
        vin, identity.public_key_bytes, identity.pairing_code, model=model, region=home, certificate_pem=certificate
    )
    identity.log_key = log_key_of(region.db, vin)  # opens the car's log leaves (docs/transparency-log.md)
    identity.save(vehicles_dir / vin)
    return identity
