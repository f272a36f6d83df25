"""Developer self-service: an app signs itself up (pending until the operator approves it), and anyone may read
an app's public metadata (what an owner sees of a recipient before granting it anything)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from carvault.access.accounts import FailureLimiter
from carvault.access.apps import app_purposes
from carvault.access.audit import CONTRACT, Actor, AuditAction
from carvault.compliance.sharing import PURPOSES
from carvault.errors import NotFound, TooManyRequests, ValidationFailed
from carvault.region import Region
from carvault.store.metadata import App
from carvault.web.deps import RegionDep, client_address
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1/apps", tags=["sharing"])

# Sign-ups per client address within the shared limiter's window (15 minutes): enough for a developer who
# mistyped, too few to flood the operator's queue.
SIGNUPS_PER_ADDRESS = 5
ClientId = Annotated[str, Path(min_length=1, max_length=64, description="the app's client id")]


class AppRegistration(BaseModel):
    """What a developer tells the operator and owners about an app."""

    name: str = Field(min_length=1, max_length=200, description="shown to owners on the consent screen")
    legal_entity: str = Field(min_length=1, max_length=300, description="who is responsible for the data")
    jurisdiction: str = Field(min_length=1, max_length=16, description="region where the app processes data")
    contact: str = Field(min_length=3, max_length=320, description="email address for owners and the operator")
    purposes: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=len(PURPOSES), description=f"one or more of {', '.join(PURPOSES)}"
    )
    redirect_uris: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(default=[], max_length=10)
    confidential: bool = Field(True, description="true: a client secret is issued; false: public client, PKCE only")
    gatekeeper: bool = Field(False, description="a designated gatekeeper (refused as a recipient, Data Act 5(3))")
    description: str = Field("", max_length=2000)
    website: str = Field("", max_length=500)


def public_app_json(app: App) -> dict[str, Any]:
    """What anyone may know of an app: who it is, where it processes data, why it asks, and its standing."""
    return {
        "client_id": app.client_id,
        "name": app.name,
        "legal_entity": app.legal_entity,
        "jurisdiction": app.jurisdiction,
        "purposes": app_purposes(app),
        "status": app.status,
        "description": app.description,
        "website": app.website,
        "public_client": app.client_secret_hash is None,
        "created_ms": app.created_ms,
    }


def signup_limiter(region: Region) -> FailureLimiter:
    """The per-address counter of sign-ups (kept in the shared DB, so every worker process sees it)."""
    return FailureLimiter(region.db, max_failures=SIGNUPS_PER_ADDRESS)


@router.post(
    "",
    status_code=201,
    summary="Sign up an app (pending until the operator approves it); the client secret is shown once",
    responses=raises(ValidationFailed, TooManyRequests),
)
def register_app(form: AppRegistration, request: Request, region: RegionDep) -> dict[str, Any]:
    limiter = signup_limiter(region)
    keys = [f"app-signup:{client_address(request)}"]
    limiter.check(keys, "too many app sign-ups from this address")
    app, secret = region.apps.register(
        name=form.name,
        legal_entity=form.legal_entity,
        jurisdiction=form.jurisdiction,
        contact=form.contact,
        purposes=form.purposes,
        redirect_uris=form.redirect_uris,
        gatekeeper=form.gatekeeper,
        confidential=form.confidential,
        description=form.description,
        website=form.website,
    )
    limiter.fail(keys)  # counts sign-ups that created an app; refused forms cost nothing
    region.audit.record(
        owner_id=None,
        actor=Actor("developer", app.client_id),  # the contact (up to 320 characters) goes in the detail
        action=AuditAction.APP_REGISTER,
        legal_basis=CONTRACT,
        detail={
            "client_id": app.client_id,
            "name": app.name,
            "contact": app.contact,
            "via": "self-service",
            **_facts(app),
        },
    )
    return {**public_app_json(app), "client_secret": secret}


@router.get(
    "/{client_id}",
    summary="An app's public metadata: name, legal entity, jurisdiction, purposes, status",
    responses=raises(NotFound),
)
def get_app(client_id: ClientId, region: RegionDep) -> dict[str, Any]:
    app = region.apps.find(client_id)
    if app is None:
        raise NotFound("no such app", client_id=client_id)
    return public_app_json(app)


def _facts(app: App) -> dict[str, Any]:
    return {
        "legal_entity": app.legal_entity,
        "jurisdiction": app.jurisdiction,
        "purposes": app_purposes(app),
        "gatekeeper": bool(app.gatekeeper),
        "public_client": app.client_secret_hash is None,
    }
