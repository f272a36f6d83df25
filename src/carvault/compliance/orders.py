"""Authority orders: a regulator or court orders a window of a vehicle's data released (the 2021 case)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from carvault.access.audit import LEGAL_OBLIGATION, Actor
from carvault.access.packages import PackageBuilder
from carvault.errors import NotFound
from carvault.store.metadata import AuthorityOrder, IncidentPackage, Vehicle

if TYPE_CHECKING:
    from carvault.region import Region


def release_to_owner(
    region: Region, vin: str, start_ms: int, end_ms: int, *, authority: str, reference: str, legal_basis: str
) -> tuple[IncidentPackage, bytes]:
    """Record the order, build the package with the same builder owners use, and give it to the owner."""
    with region.db.session() as s:
        v = s.get(Vehicle, vin)
        if v is None:
            raise NotFound(f"no vehicle {vin} in region {region.name}")
        order = AuthorityOrder(
            authority=authority,
            reference=reference,
            legal_basis=legal_basis,
            vin=vin,
            start_ms=start_ms,
            end_ms=end_ms,
            recipient_owner_id=v.owner_id,
        )
        s.add(order)
    actor = Actor("authority", authority)
    region.audit.record(
        owner_id=v.owner_id,
        vin=vin,
        actor=actor,
        action="order.release",
        legal_basis=f"{LEGAL_OBLIGATION}: {legal_basis}",
        detail={"order_id": order.id, "reference": reference, "start_ms": start_ms, "end_ms": end_ms},
    )
    pkg = PackageBuilder(region).build(
        vin,
        start_ms,
        end_ms,
        event=None,
        requested_by=actor,
        owner_id=v.owner_id,
        legal_basis=f"{LEGAL_OBLIGATION}: {legal_basis}",
        order_id=order.id,
    )
    return pkg, PackageBuilder(region).read(pkg)
