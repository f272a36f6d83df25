"""Grants: an owner's scoped, expiring, revocable permission for a recipient to read a vehicle's data.

A grant is made by the owner (on the consent screen for an app, in the portal for a personal token or a
portability transfer) and is what every grant token acts within. ``view`` is the one door through which every
API route reaches a vehicle's data: it checks the caller against the vehicle (owner, or a live grant covering
it) and hands back a ``ScopedView`` (compliance/sharing.py) that serves exactly the granted signals × window ×
precision. Revocation, expiry, an app's suspension and a change of owner take effect on the next request,
because every request re-reads the grant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from carvault.access.accounts import Accounts, Principal
from carvault.access.apps import Apps, app_purposes
from carvault.access.audit import OWNER_REQUEST, PORTAL_PAGE, Actor, AuditAction, AuditLog
from carvault.compliance.sharing import (
    OutOfScope,
    Scope,
    ScopedView,
    check_end,
    check_purpose,
    check_recipient,
    check_window,
    shareable_signals,
)
from carvault.compliance.transfers import Transfers, transfer_note
from carvault.errors import NotFound, Unauthenticated, ValidationFailed
from carvault.signals import Catalogue
from carvault.store.metadata import App, Credential, Database, Grant, TransferRecord, Vehicle, now_ms

GRANT_KINDS = ("app", "pat", "portability")


def legal_basis_of(grant: Grant, app: App | None) -> str:
    """The legal basis recorded for a read under a grant (the owner's separate consent naming the recipient)."""
    who = app.name if app else "the owner's own token"
    return f"owner's consent to share (grant {grant.id}, {who}, purpose: {grant.purpose})"


@dataclass(frozen=True)
class Access:
    """A caller's access to one vehicle: the vehicle, the view of it, and how reads are recorded."""

    vehicle: Vehicle
    view: ScopedView
    actor: Actor
    legal_basis: str
    grant: Grant | None = None
    transfer: TransferRecord | None = None  # the record covering a read by a principal abroad (transfers.py)
    case_id: int | None = None  # an operator's read under a case (compliance/cases.py)

    @property
    def vin(self) -> str:
        """The vehicle's VIN."""
        return self.vehicle.vin


class Grants:
    """Creating, listing, revoking and enforcing grants."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        apps: Apps,
        accounts: Accounts,
        audit: AuditLog,
        region: str,
        *,
        transfers: Transfers | None = None,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.apps = apps
        self.accounts = accounts
        self.audit = audit
        self.region = region
        self.transfers = transfers  # None: every recipient abroad is refused (no records to consult)

    # ----------------------------------------------------------------- making
    def create(
        self,
        owner_id: int,
        *,
        kind: str,
        vins: Sequence[str],
        signals: Sequence[str],
        purpose: str,
        client_id: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        live: bool = False,
        precise_location: bool = False,
        expires_ms: int | None = None,
        label: str = "",
    ) -> Grant:
        """A new grant, checked against every sharing rule; recorded in the owner's audit log."""
        if kind not in GRANT_KINDS:
            raise ValueError(kind)
        app = None
        if kind == "app":
            if client_id is None:
                raise ValidationFailed("an app grant names its app", field="client_id")
            app = self.apps.get(client_id)
            check_recipient(app, self.region, self.transfers)
            check_purpose(purpose, app_purposes(app))
        else:
            check_purpose(purpose)
        chosen = shareable_signals(self.catalogue, signals)
        if app is not None and self.transfers is not None and not self.transfers.is_domestic(app.jurisdiction):
            # An app abroad may be granted only what its transfer record covers (checked, not counted: no data yet).
            self.transfers.check(
                "app",
                app.client_id,
                app.jurisdiction,
                owner_id=owner_id,
                categories={s.category for s in chosen},
                count=False,
            )
        expires_ms = check_end(expires_ms)
        check_window(from_ms, to_ms)
        wanted = list(dict.fromkeys(v.strip().upper() for v in vins if v.strip()))
        if not wanted:
            raise ValidationFailed("a grant names at least one vehicle", field="vins")
        with self.db.session() as s:
            owned = set(s.scalars(select(Vehicle.vin).where(Vehicle.vin.in_(wanted), Vehicle.owner_id == owner_id)))
        missing = [v for v in wanted if v not in owned]
        if missing:
            raise NotFound(f"you have no vehicle {missing[0]}", vin=missing[0])
        paths = list(dict.fromkeys(p.strip() for p in signals if p.strip()))
        grant = Grant(
            owner_id=owner_id,
            kind=kind,
            client_id=client_id,
            vins=json.dumps(wanted),
            signals=json.dumps(paths),
            from_ms=from_ms,
            to_ms=to_ms,
            live=live,
            precise_location=precise_location,
            purpose=purpose,
            expires_ms=expires_ms,
            label=label.strip()[:200],
        )
        with self.db.session() as s:
            s.add(grant)
        self.audit.record(
            owner_id=owner_id,
            actor=Actor("owner", str(owner_id)),
            action=AuditAction.GRANT_CREATE,
            legal_basis=OWNER_REQUEST,
            detail={
                "grant_id": grant.id,
                "kind": kind,
                "app": app.name if app else None,
                "client_id": client_id,
                "legal_entity": app.legal_entity if app else None,
                "vins": wanted,
                "signals": paths,
                "signal_count": len(chosen),
                "from_ms": from_ms,
                "to_ms": to_ms,
                "live": live,
                "precise_location": precise_location,
                "purpose": purpose,
                "expires_ms": expires_ms,
            },
        )
        return grant

    def personal_token(
        self,
        owner_id: int,
        *,
        label: str,
        vins: Sequence[str],
        signals: Sequence[str],
        from_ms: int | None = None,
        to_ms: int | None = None,
        live: bool = False,
        precise_location: bool = False,
        expires_ms: int | None = None,
    ) -> tuple[str, Grant]:
        """A scoped personal access token for the owner's own scripts: its grant and its secret (shown once)."""
        grant = self.create(
            owner_id,
            kind="pat",
            vins=vins,
            signals=signals,
            purpose="personal",
            from_ms=from_ms,
            to_ms=to_ms,
            live=live,
            precise_location=precise_location,
            expires_ms=expires_ms,
            label=label,
        )
        secret, _ = self.accounts.issue(
            owner_id,
            "token",
            label=label,
            ttl_ms=grant.expires_ms - now_ms(),
            grant_id=grant.id,
            expires_ms=grant.expires_ms,
        )  # expires_ms caps it: the token never outlives its grant, not even by the milliseconds issuing took
        return secret, grant

    # ---------------------------------------------------------------- reading
    def get(self, owner_id: int, grant_id: int) -> Grant:
        """One of the owner's grants, or ``NotFound``."""
        with self.db.session() as s:
            g = s.get(Grant, grant_id)
        if g is None or g.owner_id != owner_id:
            raise NotFound("no such grant", grant_id=grant_id)
        return g

    def of_owner(self, owner_id: int, *, include_ended: bool = False) -> list[tuple[Grant, App | None]]:
        """The owner's grants (live ones unless ``include_ended``) with their apps, newest first."""
        q = (
            select(Grant, App)
            .outerjoin(App, App.client_id == Grant.client_id)
            .where(Grant.owner_id == owner_id)
            .order_by(Grant.id.desc())
        )
        if not include_ended:
            q = q.where(Grant.revoked_ms.is_(None), Grant.expires_ms > now_ms())
        with self.db.session() as s:
            return [(g, a) for g, a in s.execute(q).all()]

    def of_app(self, client_id: str) -> list[Grant]:
        """Every grant an app holds or held (the operator's view: counts and use, no data), newest first."""
        with self.db.session() as s:
            return list(s.scalars(select(Grant).where(Grant.client_id == client_id).order_by(Grant.id.desc())))

    def live(self, grant_id: int) -> Grant:
        """The grant a token acts for, if it is still in force; ``Unauthenticated`` once revoked or expired."""
        with self.db.session() as s:
            g = s.get(Grant, grant_id)
        if g is None or g.revoked_ms is not None:
            raise Unauthenticated("the grant behind this token was revoked")
        if g.expires_ms <= now_ms():
            raise Unauthenticated("the grant behind this token has ended")
        return g

    # -------------------------------------------------------------- enforcing
    def access(
        self, caller: Principal, vin: str, *, count_transfer: bool = True, transfer_action: str = "query"
    ) -> Access:
        """The caller's access to a vehicle: its owner's, or a live grant's that names it.

        The owner learns only of their own vehicles (``NotFound`` otherwise). A grant holder asking for a vehicle
        the grant does not name gets ``OutOfScope`` whether or not that vehicle exists; a grant whose owner no
        longer owns the vehicle covers nothing. An app abroad passes the transfer gate (compliance/transfers.py):
        each access is counted and logged, except a re-check of an open live subscription (``count_transfer``
        False), which only confirms that a record still covers it; ``transfer_action`` names what the app does
        (query, download or export: the Guideline's three).
        """
        vin = vin.strip().upper()
        if caller.grant_id is None:
            with self.db.session() as s:
                v = s.get(Vehicle, vin)
            if v is None or v.owner_id != caller.owner_id:
                raise NotFound(f"you have no vehicle {vin}", vin=vin)
            return Access(
                v, ScopedView(self.catalogue, v.vin, None), Actor("owner", str(caller.owner_id)), OWNER_REQUEST
            )
        grant, app = self._in_force(caller)
        if grant.kind == "portability":  # its one use is fetching its bundle (access/portability.py)
            raise OutOfScope("a portability token only fetches its bundle; it reads nothing else", vin=vin)
        scope = Scope.of_grant(grant)
        with self.db.session() as s:
            v = s.get(Vehicle, vin)
        if vin not in scope.vins or v is None or v.owner_id != grant.owner_id:
            raise OutOfScope(f"this grant does not cover vehicle {vin}", vin=vin)
        actor = Actor("app", app.client_id) if app else Actor("token", str(caller.credential_id))
        view = ScopedView(self.catalogue, v.vin, scope)
        transfer = None
        if app is not None and self.transfers is not None and not self.transfers.is_domestic(app.jurisdiction):
            # A foreign app's read is an export: counted and logged under the record that covers it, or refused.
            transfer = self.transfers.check(
                "app",
                app.client_id,
                app.jurisdiction,
                owner_id=grant.owner_id,
                categories={s.category for s in view.allowed()},
                vin=v.vin,
                action=transfer_action,
                count=count_transfer,
            )
        return Access(v, view, actor, legal_basis_of(grant, app), grant, transfer=transfer)

    def vehicles(self, caller: Principal) -> list[Vehicle]:
        """The vehicles a caller may see: the owner's, or those a live grant names and its owner still owns."""
        with self.db.session() as s:
            if caller.grant_id is None:
                return list(s.scalars(select(Vehicle).where(Vehicle.owner_id == caller.owner_id).order_by(Vehicle.vin)))
        grant, _ = self._in_force(caller)
        if grant.kind == "portability":
            return []
        vins = json.loads(grant.vins)
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Vehicle)
                    .where(Vehicle.vin.in_(vins), Vehicle.owner_id == grant.owner_id)
                    .order_by(Vehicle.vin)
                )
            )

    def _in_force(self, caller: Principal) -> tuple[Grant, App | None]:
        """The caller's grant and app, re-read now: revoked, ended, suspended or foreign recipients stop here."""
        assert caller.grant_id is not None
        grant, app = self.in_force(caller.grant_id)
        if grant.owner_id != caller.owner_id:  # a token acts only for a grant of the account it was issued to
            raise Unauthenticated("this token does not belong to the grant it names")
        return grant, app

    def in_force(self, grant_id: int) -> tuple[Grant, App | None]:
        """A grant and its app, re-read now (work done later for a grant holder, e.g. an export, asks again)."""
        grant = self.live(grant_id)
        app = None
        if grant.client_id is not None:
            app = self.apps.get(grant.client_id)
            check_recipient(app, self.region, self.transfers)
        return grant, app

    def record_read(self, access: Access, action: AuditAction | str, detail: dict[str, Any], rows: int = 0) -> None:
        """Record a read in the owner's audit log (named by app, purpose and legal basis) and count the grant's use.

        The owner's own reads for a portal page carry the page's kind and view id (the access log groups them)."""
        shown = PORTAL_PAGE.get() if access.view.is_owner else None
        counters = None
        if access.grant is not None:  # committed with the record: one transaction and one fsync per read, not two
            counters = (
                update(Grant)
                .where(Grant.id == access.grant.id)
                .values(last_access_ms=now_ms(), reads=Grant.reads + 1, rows_served=Grant.rows_served + rows)
            )
        self.audit.record(
            owner_id=access.vehicle.owner_id,
            vin=access.vin,
            actor=access.actor,
            action=action,
            legal_basis=access.legal_basis,
            detail={
                **detail,
                **({"grant_id": access.grant.id, "purpose": access.grant.purpose} if access.grant else {}),
                **({"transfer": transfer_note(access.transfer)} if access.transfer is not None else {}),
                **({"case_id": access.case_id} if access.case_id is not None else {}),
                **({"page": shown[0], "view": shown[1]} if shown else {}),
            },
            also=counters,
        )

    def begin_record_read(
        self, access: Access, action: AuditAction | str, detail: dict[str, Any], rows: int = 0
    ) -> Future[None]:
        """``record_read`` started on an audit writer thread (``AuditLog.begin``) while the caller encodes its answer;
        the caller waits on the future before it responds, so the record is durable before the data leaves."""
        return AuditLog.begin(lambda: self.record_read(access, action, detail, rows))

    # --------------------------------------------------------------- revoking
    def revoke(self, owner_id: int, grant_id: int, *, by: Actor | None = None) -> Grant:
        """End a grant and every token acting for it, effective on the next request."""
        now = now_ms()
        with self.db.session() as s:
            g = s.get(Grant, grant_id)
            if g is None or g.owner_id != owner_id:
                raise NotFound("no such grant", grant_id=grant_id)
            first = g.revoked_ms is None
            if first:
                g.revoked_ms = now
            s.execute(
                update(Credential)
                .where(Credential.grant_id == grant_id, Credential.revoked_ms.is_(None))
                .values(revoked_ms=now)
            )
        if first:
            self.audit.record(
                owner_id=owner_id,
                actor=by or Actor("owner", str(owner_id)),
                action=AuditAction.GRANT_REVOKE,
                legal_basis=OWNER_REQUEST,
                detail={"grant_id": grant_id, "client_id": g.client_id, "kind": g.kind},
            )
        return g


def grant_json(g: Grant, app: App | None = None) -> dict[str, Any]:
    """A grant as its owner (and introspection) sees it."""
    now = now_ms()
    return {
        "id": g.id,
        "kind": g.kind,
        "app": (
            {
                "client_id": app.client_id,
                "name": app.name,
                "legal_entity": app.legal_entity,
                "jurisdiction": app.jurisdiction,
                "contact": app.contact,
                "status": app.status,  # the operator's decision: only an approved app reads anything
            }
            if app
            else None
        ),
        "label": g.label,
        "vins": json.loads(g.vins),
        "signals": json.loads(g.signals),
        "from_ms": g.from_ms,
        "to_ms": g.to_ms,
        "live": bool(g.live),
        "precise_location": bool(g.precise_location),
        "purpose": g.purpose,
        "created_ms": g.created_ms,
        "expires_ms": g.expires_ms,
        "revoked_ms": g.revoked_ms,
        "active": g.revoked_ms is None and g.expires_ms > now,
        "last_access_ms": g.last_access_ms,
        "reads": g.reads,
        "rows_served": g.rows_served,
    }
