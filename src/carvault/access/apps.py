"""The registry of third-party apps (data recipients): registration, the operator's decision, client secrets.

An app registers itself (developer sign-up) or is registered by the operator (``carvault apps add``); either
way it starts ``pending`` and receives data only once the operator approves it. Who may be a recipient at all
(gatekeepers, jurisdiction) is decided in compliance/sharing.py, on every request, not only here.

Confidential apps get a client secret (shown once, stored as SHA-256); public apps (mobile, single-page,
devices) have none and must use PKCE.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from carvault.access.accounts import EMAIL_RE, token_hash
from carvault.access.audit import CONTRACT, Actor, AuditAction, AuditLog
from carvault.compliance.residency import region_name
from carvault.compliance.sharing import PURPOSES
from carvault.errors import Conflict, NotFound, ValidationFailed
from carvault.store.metadata import App, Database, now_ms

APP_STATUSES = ("pending", "approved", "suspended", "rejected")
CLIENT_ID_PREFIX = "app_"
CLIENT_SECRET_PREFIX = "cvs_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def check_redirect_uri(uri: str) -> str:
    """An absolute https URI, or http on loopback (RFC 8252 §7.3), without a fragment."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not (parts.scheme == "https" or loopback) or not parts.netloc or parts.fragment:
        raise ValidationFailed(
            f"redirect URI {uri!r} must be https (or http on a loopback address) with no fragment",
            field="redirect_uris",
        )
    return uri


def check_website(uri: str) -> str:
    """An app's published website: empty, or an absolute http(s) address (never a script or data URL)."""
    uri = uri.strip()
    if not uri:
        return ""
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.netloc or any(c.isspace() for c in uri):
        raise ValidationFailed(f"website {uri[:80]!r} must be an http or https address", field="website")
    return uri


def app_purposes(app: App) -> list[str]:
    """The purposes an app declared."""
    return list(json.loads(app.purposes))


def app_redirect_uris(app: App) -> list[str]:
    """The redirect URIs an app registered."""
    return list(json.loads(app.redirect_uris))


def app_facts(app: App) -> dict[str, Any]:
    """What the audit chain records about an app."""
    return {
        "client_id": app.client_id,
        "name": app.name,
        "legal_entity": app.legal_entity,
        "jurisdiction": app.jurisdiction,
        "purposes": app_purposes(app),
        "gatekeeper": bool(app.gatekeeper),
        "public_client": app.client_secret_hash is None,
    }


class Apps:
    """Registration and lookup of apps."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(
        self,
        *,
        name: str,
        legal_entity: str,
        jurisdiction: str,
        contact: str,
        purposes: Sequence[str],
        redirect_uris: Sequence[str] = (),
        gatekeeper: bool = False,
        confidential: bool = True,
        description: str = "",
        website: str = "",
    ) -> tuple[App, str | None]:
        """A new pending app and its client secret (``None`` for a public client); the secret is shown once."""
        name, legal_entity, contact = name.strip(), legal_entity.strip(), contact.strip().lower()
        if not name or len(name) > 200:
            raise ValidationFailed("an app needs a name of at most 200 characters", field="name")
        if not legal_entity or len(legal_entity) > 300:
            raise ValidationFailed("name the legal entity responsible for the app", field="legal_entity")
        if not EMAIL_RE.match(contact):
            raise ValidationFailed("the contact must be an email address", field="contact")
        try:
            where = region_name(jurisdiction)
        except ValidationFailed:
            raise ValidationFailed(
                "jurisdiction is the region name where the app processes data (cn, eu, us ...)", field="jurisdiction"
            ) from None
        purposes = list(dict.fromkeys(p.strip() for p in purposes if p.strip()))
        unknown = [p for p in purposes if p not in PURPOSES]
        if not purposes or unknown:
            raise ValidationFailed(f"purposes are one or more of {', '.join(PURPOSES)}", field="purposes")
        uris = [check_redirect_uri(u.strip()) for u in redirect_uris if u.strip()]
        website = check_website(website)
        secret = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32) if confidential else None
        app = App(
            client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(12),
            name=name,
            legal_entity=legal_entity,
            jurisdiction=where,
            contact=contact,
            purposes=json.dumps(purposes),
            redirect_uris=json.dumps(uris),
            gatekeeper=gatekeeper,
            client_secret_hash=token_hash(secret) if secret else None,
            status="pending",
            description=description.strip()[:2000],
            website=website[:500],
        )
        with self.db.session() as s:
            s.add(app)
        return app, secret

    def get(self, client_id: str) -> App:
        """An app by client id, or ``NotFound``."""
        with self.db.session() as s:
            app = s.get(App, client_id)
        if app is None:
            raise NotFound(f"no app {client_id!r}", client_id=client_id)
        return app

    def find(self, client_id: str) -> App | None:
        """An app by client id, or ``None``."""
        with self.db.session() as s:
            return s.get(App, client_id)

    def list(self, status: str | None = None) -> list[App]:
        """Every app (of one status), oldest first."""
        q = select(App).order_by(App.created_ms, App.client_id)
        if status:
            q = q.where(App.status == status)
        with self.db.session() as s:
            return list(s.scalars(q))

    def decide(self, client_id: str, status: str, by: str) -> App:
        """The operator approves, suspends, rejects (or re-approves a suspended) app; a rejection is final.

        Suspension stops its tokens at once.
        """
        if status not in APP_STATUSES or status == "pending":
            raise ValidationFailed(f"status must be one of {', '.join(APP_STATUSES[1:])}", field="status")
        with self.db.session() as s:
            app = s.get(App, client_id)
            if app is None:
                raise NotFound(f"no app {client_id!r}", client_id=client_id)
            if app.status == "rejected" and status != "rejected":
                # Final: suspending a rejected app first must not open a way back to "approved".
                raise Conflict("a rejected app must register again", client_id=client_id)
            app.status, app.decided_ms, app.decided_by = status, now_ms(), by
        return app

    def decide_recorded(
        self, audit: AuditLog, client_id: str, status: str, by: Actor, reason: str = ""
    ) -> tuple[App, str]:
        """``decide``, recorded in the region's audit chain with who decided and why; (app, previous status)."""
        previous = self.get(client_id).status
        app = self.decide(client_id, status, str(by.id)[:200])
        audit.record(
            owner_id=None,
            actor=by,
            action=AuditAction.APP_DECIDE,
            legal_basis=CONTRACT,
            detail={**app_facts(app), "status": status, "previous": previous, "reason": reason[:1000]},
        )
        return app, previous

    def check_secret(self, app: App, secret: str | None) -> bool:
        """True when a confidential app presents its secret (constant-time); public apps have none to present."""
        if app.client_secret_hash is None:
            return secret in (None, "")
        return bool(secret) and hmac.compare_digest(app.client_secret_hash, token_hash(secret or ""))
