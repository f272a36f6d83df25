"""Vehicles on the region side: registration at provisioning, pairing with an owner, ownership checks.

An owner only ever learns of vehicles they own: every lookup by VIN for an owner answers
``NotFound`` alike for a vehicle that does not exist and one that belongs to someone else.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carvault.access.accounts import FailureLimiter, hash_password, verify_password
from carvault.compliance.residency import RegionDirectory, Residency
from carvault.errors import AlreadyExists, NotFound, ValidationFailed
from carvault.store.metadata import Database, Vehicle, now_ms

NAME_MAX = 40


def display_name(v: Vehicle) -> str:
    """What a car is called wherever it appears: the name its owner gave it, else its model, else its VIN."""
    return v.name or v.model or v.vin


def clean_name(name: str | None) -> str | None:
    """An owner's name for a car, tidied (spaces collapsed); None clears it. ``ValidationFailed`` with its own
    message for each mistake: too long, or with control or formatting characters (line breaks, direction marks)."""
    if name is None:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ValidationFailed("a car's name cannot hold line breaks, tabs or invisible characters", field="name")
    text = " ".join(name.split())
    if len(text) > NAME_MAX:
        raise ValidationFailed(f"a car's name is at most {NAME_MAX} characters", field="name", most=NAME_MAX)
    return text or None


class Vehicles:
    """Region-side vehicle registry."""

    def __init__(self, db: Database, region: str, residency: Residency | None = None) -> None:
        self.db = db
        self.region = region
        self.residency = residency or Residency.of_database(db, region, {}, RegionDirectory(None))
        self.limiter = FailureLimiter(db)

    def register(
        self,
        vin: str,
        public_key: bytes,
        pairing_code: str,
        model: str = "",
        region: str | None = None,
        certificate_pem: str | None = None,
    ) -> Vehicle:
        """Register a provisioned vehicle's public key and pairing code with this region.

        ``WrongRegion`` if ``region`` (any case) is not this one, or the region directory gives the VIN another home.
        """
        home = self.residency.check_registration(vin, region or self.region)
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        v = Vehicle(
            vin=vin,
            region=home,
            model=model,
            public_key=public_key,
            certificate_pem=certificate_pem,
            pairing_code_hash=hash_password(pairing_code.upper()),
        )
        try:
            with self.db.session() as s:
                s.add(v)
        except IntegrityError:
            raise AlreadyExists(f"vehicle {vin} is already registered", vin=vin) from None
        return v

    def claim(self, owner_id: int, vin: str, pairing_code: str) -> Vehicle:
        """Pair a vehicle with the owner who can read the code shown in the car."""
        keys = [f"claim:{owner_id}"]
        self.limiter.check(keys, "too many wrong pairing codes")
        vin = vin.strip().upper()
        with self.db.session() as s:
            v = s.get(Vehicle, vin)
            ok = v is not None and verify_password(v.pairing_code_hash, pairing_code.strip().upper())
            if v is None or not ok:
                self.limiter.fail(keys)
                raise NotFound("no vehicle with that VIN shows this pairing code", vin=vin)
            if v.owner_id is not None and v.owner_id != owner_id:
                raise AlreadyExists(
                    "this vehicle is already paired with another account; the current owner must release it first",
                    vin=vin,
                )
            if v.owner_id != owner_id:
                v.name = None  # a name is its owner's: a car paired anew starts with none
            v.owner_id = owner_id
            v.claimed_ms = now_ms()
        return v

    def rename(self, owner_id: int, vin: str, name: str | None) -> Vehicle:
        """Name one of the owner's cars (None or blank: back to its model); two of one owner's cars never share a
        name (``AlreadyExists``), so each stays recognisable in lists and the access log."""
        text = clean_name(name)
        with self.db.session() as s:
            v = s.get(Vehicle, vin.upper())
            if v is None or v.owner_id != owner_id:
                raise NotFound(f"you have no vehicle {vin}", vin=vin)
            if text is not None:
                others = s.scalars(select(Vehicle.name).where(Vehicle.owner_id == owner_id, Vehicle.vin != v.vin))
                if any(o and o.casefold() == text.casefold() for o in others):
                    raise AlreadyExists("another of your cars already has this name", field="name", name=text)
            v.name = text
        return v

    def owned(self, owner_id: int) -> list[Vehicle]:
        """The owner's vehicles."""
        with self.db.session() as s:
            return list(s.scalars(select(Vehicle).where(Vehicle.owner_id == owner_id).order_by(Vehicle.vin)))

    def owned_one(self, owner_id: int, vin: str) -> Vehicle:
        """One of the owner's vehicles, or ``NotFound`` (also when it is someone else's)."""
        with self.db.session() as s:
            v = s.get(Vehicle, vin.upper())
        if v is None or v.owner_id != owner_id:
            raise NotFound(f"you have no vehicle {vin}", vin=vin)
        return v

    def get(self, vin: str) -> Vehicle | None:
        """Any vehicle of this region (operator use)."""
        with self.db.session() as s:
            return s.get(Vehicle, vin)
