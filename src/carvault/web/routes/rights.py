"""The owner's side of the rights desk and of incident notices.

Filing a request of a kind an existing service carries out runs that service first (deletion: compliance/deletion.py;
portability: access/portability.py; access to a vehicle's history: an export job), then files the request linked to
what it produced, so a failure stores nothing. The data-protection officer then closes the request with a written
outcome (web/routes/admin_rights.py).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from carvault.access.portability import Portability, Recipient
from carvault.compliance.incidents import LANGUAGE_CODES, notice_json
from carvault.compliance.rights import MAX_TEXT, Kind, Status, request_json
from carvault.errors import (
    Conflict,
    CrossBorderTransfer,
    DataFrozen,
    GatekeeperRefused,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from carvault.web.deps import CurrentOwner, RegionDep, RowId
from carvault.web.errors import raises
from carvault.web.routes.exports import get_jobs
from carvault.web.routes.portability import RecipientIn

router = APIRouter(prefix="/api/v1", tags=["rights"])
# Requests one account may have open at once: each may start an export of a vehicle's whole history or a deletion
# and takes the officer's time, so an account (or a stolen token) cannot flood the desk and the export workers.
MAX_OPEN_REQUESTS = 20
OPEN = (Status.RECEIVED, Status.IN_PROGRESS)
KindName = Literal[
    "access", "correction", "deletion", "portability", "restriction", "explanation", "complaint", "next_of_kin"
]
assert set(KindName.__args__) == {k.value for k in Kind}  # type: ignore[attr-defined]  # one list (compliance/rights.py)


class RightsForm(BaseModel):
    """A rights request. ``vin``: the vehicle it is about (required for portability; for access, a copy of that
    vehicle's whole history is prepared at once). Next of kin: ``evidence`` and the deceased's ``subject_email``."""

    kind: KindName
    vin: str | None = Field(None, min_length=17, max_length=17)
    details: str = Field("", max_length=MAX_TEXT, description="what you ask, in your words")
    evidence: str = Field("", max_length=MAX_TEXT, description="next of kin: relationship and proof of death")
    subject_email: str | None = Field(None, max_length=320, description="next of kin: the deceased's account e-mail")
    recipient: RecipientIn | None = Field(None, description="portability: the company that receives the copy")
    include_sensitive: bool = Field(False, description="portability: include camera, biometric and cabin batches")
    format: Literal["csv", "parquet", "json"] = Field("json", description="access: the copy's file format")


@router.post(
    "/rights-requests",
    status_code=201,
    summary="File a rights request (access, correction, deletion, portability, restriction, explanation, "
    "complaint, next of kin)",
    responses=raises(NotFound, ValidationFailed, DataFrozen, CrossBorderTransfer, GatekeeperRefused, TooManyRequests),
)
def file_request(form: RightsForm, owner: CurrentOwner, region: RegionDep, request: Request) -> dict[str, Any]:
    rights = region.rights
    if sum(r.status in OPEN for r in rights.of_requester(owner.owner_id)) >= MAX_OPEN_REQUESTS:
        raise TooManyRequests(
            f"you have {MAX_OPEN_REQUESTS} requests open; wait for an answer or withdraw one before filing another",
            limit=MAX_OPEN_REQUESTS,
        )
    f = rights.check(
        owner.owner_id,
        form.kind,
        vin=form.vin,
        details=form.details,
        evidence=form.evidence,
        subject_email=form.subject_email,
    )
    if (form.recipient is not None) != (f.kind is Kind.PORTABILITY):
        raise ValidationFailed("a portability request, and only one, names its recipient", field="recipient")
    once: dict[str, str] = {}
    links: dict[str, Any] = {}
    if f.kind is Kind.DELETION:
        reason = f"rights request: {f.details}" if f.details else "rights request"
        links["deletion_request_id"] = region.deletions.request(owner.owner_id, f.vin, reason[:1000]).id
    elif f.kind is Kind.PORTABILITY and form.recipient is not None and f.vin is not None:
        r = form.recipient
        row, token, import_code = Portability(region).request(
            owner.owner_id,
            f.vin,
            Recipient(r.name, r.legal_entity, r.jurisdiction, r.gatekeeper),
            include_sensitive=form.include_sensitive,
        )
        links["portability_bundle_id"] = row.id
        once = {"token": token, "import_code": import_code, "fetch_url": f"/api/v1/portability/{row.id}"}
    elif f.kind is Kind.ACCESS and f.vin is not None:
        try:
            job = get_jobs(request).create(owner.owner_id, f.vin, start_ms=None, end_ms=None, fmt=form.format)
            links["export_job_id"] = job.id
        except NotFound:
            pass  # nothing uploaded yet: the request still stands, answered by the DPO
    req = rights.file(f, **links)
    return {**request_json(req), **({"portability": once} if once else {})}


@router.get("/rights-requests", summary="My rights requests, newest first")
def list_requests(owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    return [request_json(r) for r in region.rights.of_requester(owner.owner_id)]


@router.get("/rights-requests/{request_id}", summary="One of my rights requests", responses=raises(NotFound))
def show_request(request_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.mine(owner.owner_id, request_id))


@router.post(
    "/rights-requests/{request_id}/withdraw",
    summary="Withdraw one of my open rights requests",
    responses=raises(NotFound, Conflict),
)
def withdraw_request(request_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return request_json(region.rights.withdraw(owner.owner_id, request_id))


Language = Literal["en", "zh-CN"]
assert set(Language.__args__) == set(LANGUAGE_CODES)  # type: ignore[attr-defined]


@router.get("/notices", summary="Security-incident notices sent to me (PIPL Art. 57), newest first")
def list_notices(
    owner: CurrentOwner,
    region: RegionDep,
    unread: bool = False,
    lang: Language | None = Query(None, description="one language; every language when left out"),
) -> list[dict[str, Any]]:
    return [notice_json(n, lang) for n in region.incidents.notices(owner.owner_id, unread=unread)]


@router.get("/notices/{notice_id}", summary="One of my notices", responses=raises(NotFound))
def show_notice(
    notice_id: RowId, owner: CurrentOwner, region: RegionDep, lang: Language | None = None
) -> dict[str, Any]:
    return notice_json(region.incidents.notice(owner.owner_id, notice_id), lang)


@router.post("/notices/{notice_id}/read", summary="Mark one of my notices read", responses=raises(NotFound))
def read_notice(notice_id: RowId, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    return notice_json(region.incidents.mark_read(owner.owner_id, notice_id))
