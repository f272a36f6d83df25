"""Authority orders: a regulator or court orders a window of a vehicle's data released (the 2021 case)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from carvault.access.audit import LEGAL_OBLIGATION, Actor
from carvault.access.packages import MAX_WINDOW_MS, PackageBuilder
from carvault.compliance.residency import region_name
from carvault.compliance.transfers import transfer_note
from carvault.errors import NotFound, ValidationFailed
from carvault.store.metadata import AuthorityOrder, Database, IncidentPackage, Vehicle
from carvault.windows import check_window

if TYPE_CHECKING:
    from carvault.region import Region


def orders(db: Database, *, limit: int = 200) -> list[tuple[AuthorityOrder, IncidentPackage | None]]:
    """The region's authority orders, newest first, each with the package released under it (if built)."""
    with db.session() as s:
        rows = s.execute(
            select(AuthorityOrder, IncidentPackage)
            .outerjoin(IncidentPackage, IncidentPackage.order_id == AuthorityOrder.id)
            .order_by(AuthorityOrder.id.desc())
            .limit(limit)
        ).all()
    return [(o, p) for o, p in rows]


def check_order(start_ms: int, end_ms: int, *, authority: str, reference: str, legal_basis: str) -> None:
    """Refuse an order that could not be carried out, before anything is recorded (the package's own limits)."""
    for name, value, most in (("authority", authority, 200), ("reference", reference, 200)):
        if not value.strip() or len(value) > most:
            raise ValidationFailed(f"{name} is required (at most {most} characters)", field=name)
    if not legal_basis.strip() or len(legal_basis) > 400:
        raise ValidationFailed("legal_basis is required (at most 400 characters)", field="legal_basis")
    check_window(start_ms, end_ms, MAX_WINDOW_MS, what="an order's window")


def release_to_owner(
    region: Region,
    vin: str,
    start_ms: int,
    end_ms: int,
    *,
    authority: str,
    reference: str,
    legal_basis: str,
    by: Actor | None = None,
    jurisdiction: str | None = None,
) -> tuple[IncidentPackage, bytes]:
    """Record the order, build the package with the same builder owners use, and give it to the owner.

    ``by`` is the staff member who records the order for the authority (the audit entry names them; the package
    names the authority as its requester). ``jurisdiction`` is where the authority sits (None: this region): an
    order from a foreign authority is a transfer abroad (Data Security Law Art. 36), refused unless a transfer
    record names that authority and covers every category a package may hold.
    """
    check_order(start_ms, end_ms, authority=authority, reference=reference, legal_basis=legal_basis)
    jurisdiction = region_name(jurisdiction) if jurisdiction is not None else None
    with region.db.session() as s:
        v = s.get(Vehicle, vin)
    if v is None:
        raise NotFound(f"no vehicle {vin} in region {region.name}")
    transfer = region.transfers.check(
        "authority",
        authority,
        jurisdiction,
        owner_id=v.owner_id,
        categories={s.category for s in region.catalogue},
        vin=vin,
        action="download",
    )
    with region.db.session() as s:
        order = AuthorityOrder(
            authority=authority,
            reference=reference,
            legal_basis=legal_basis,
            vin=vin,
            start_ms=start_ms,
            end_ms=end_ms,
            recipient_owner_id=v.owner_id,
            jurisdiction=None if region.transfers.is_domestic(jurisdiction) else jurisdiction,
        )
        s.add(order)
    actor = Actor("authority", authority)
    region.audit.record(
        owner_id=v.owner_id,
        vin=vin,
        actor=by or actor,
        action="order.release",
        legal_basis=f"{LEGAL_OBLIGATION}: {legal_basis}",
        detail={
            "order_id": order.id,
            "authority": authority,
            "reference": reference,
            "start_ms": start_ms,
            "end_ms": end_ms,
            **({"transfer": transfer_note(transfer)} if transfer is not None else {}),
        },
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
