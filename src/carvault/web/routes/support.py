"""The owner's side of support tickets: see what support asks to read, and approve or decline it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from carvault.compliance.cases import case_json
from carvault.errors import Conflict
from carvault.store.metadata import Case
from carvault.web.deps import CurrentOwner, RegionDep, RowId
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/support-tickets", tags=["support"])


def ticket_json(c: Case) -> dict[str, Any]:
    """A support ticket as its owner sees it (who asked, what for, until when, and its state)."""
    body = case_json(c)
    return {
        k: body[k]
        for k in (
            "id",
            "state",
            "vins",
            "subject",
            "reference",
            "opened_by",
            "opened_ms",
            "ends_ms",
            "from_ms",  # the window of data asked for (None: from the first record / up to now)
            "to_ms",
            "closed_ms",
            "owner_approved_ms",
            "owner_declined_ms",
        )
    }


@router.get("", summary="Support tickets about my vehicles (those waiting for my decision first)")
def list_tickets(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    tickets = [c for c in region.cases.of_owner(owner.owner_id) if c.kind == "support_ticket"]
    tickets.sort(key=lambda c: (ticket_json(c)["state"] != "awaiting_owner", -c.id))
    return [ticket_json(c) for c in tickets]


@router.post(
    "/{case_id}/approve",
    summary="Let support read my vehicle's data under this ticket, until it ends or is closed",
    responses=raises(Conflict),
)
def approve(case_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return ticket_json(region.cases.decide(owner.owner_id, case_id, approve=True))


@router.post("/{case_id}/decline", summary="Refuse support access under this ticket", responses=raises(Conflict))
def decline(case_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return ticket_json(region.cases.decide(owner.owner_id, case_id, approve=False))


@router.post(
    "/{case_id}/withdraw",
    summary="Withdraw my approval of this ticket: support reads nothing more under it",
    responses=raises(Conflict),
)
def withdraw(case_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return ticket_json(region.cases.withdraw(owner.owner_id, case_id))
