"""Sharing rules: what a grant may say, who may receive data, and exactly what a grant lets its holder read.

One home for every sharing rule (docs/sharing.md). The region applies them itself on every request; it never
trusts an app's or a token's claim about its own scope.

- **Never shareable**: camera frames, biometrics (driver monitoring) and cabin data (climate, occupancy, audio,
  video). A grant naming any of their signals is refused (``not_shareable``); frames are never served to a grant.
- **Recipients**: an app must be approved; a designated gatekeeper (EU Data Act Art. 5(3)) is refused
  (``gatekeeper_refused``); an app outside the data's region is a cross-border transfer (PIPL Art. 38–40, the
  Automotive Data Export Security Guideline: a foreign party's query *is* an export) and is refused
  (``cross_border_transfer``) unless a current transfer record names it (compliance/transfers.py, which also
  counts and logs each read).
- **Scope**: VSS branches or paths × vehicles × history window (from–to, or from a start on) × live yes/no ×
  location precision (coarse unless ``location:precise`` is granted) × purpose (from ``PURPOSES``) × an end date,
  at most ``MAX_GRANT_DAYS`` away (never permanent).
- **Reads**: a request is served only if it lies wholly inside the scope; anything else is ``403`` with a code
  saying which part is outside (``out_of_scope``), or ``owner_only`` for routes only the owner may use.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from carvault.errors import (
    AppNotApproved,
    CarVaultError,
    CrossBorderTransfer,
    GatekeeperRefused,
    NotShareable,
    OutOfScope,
    OwnerOnly,
    ValidationFailed,
)
from carvault.location import coarsen
from carvault.protocol.envelope import LATEST_MS
from carvault.signals import Catalogue, Signal
from carvault.store.metadata import App, Grant, now_ms

DAY_MS = 86_400_000
MAX_GRANT_DAYS = 366
DEFAULT_GRANT_DAYS = 90
# Categories never shareable through grants (issue 9): camera frames, biometrics, cabin data.
NEVER_SHAREABLE = frozenset({"exterior_camera", "cabin_media", "driver_monitoring", "cabin"})

# Purposes a recipient may declare (fixed list; English and Chinese text in web/messages).
PURPOSES: dict[str, str] = {
    "insurance": "Usage-based insurance or claims",
    "repair": "Repair and maintenance",
    "appraisal": "Vehicle appraisal and resale",
    "fleet": "Fleet management",
    "charging": "Smart charging control",
    "research": "Research",
    "home_automation": "Home automation",
    "personal": "The owner's own scripts and tools",
    "portability": "Transfer of a copy to another processor (portability)",
}

# OAuth scope tokens (docs/sharing.md): ``vss:<branch or path>`` (one or more), ``history``, ``live``,
# ``location:precise``.
SCOPE_VSS = "vss:"
SCOPE_HISTORY = "history"
SCOPE_LIVE = "live"
SCOPE_PRECISE = "location:precise"


@dataclass(frozen=True)
class Scope:
    """What a grant allows, independent of how it is stored."""

    vins: tuple[str, ...]
    signals: tuple[str, ...]  # VSS branches or paths
    from_ms: int | None
    to_ms: int | None
    live: bool
    precise_location: bool
    purpose: str
    expires_ms: int
    history: bool = True

    @classmethod
    def of_grant(cls, g: Grant) -> Scope:
        """The scope a stored grant says."""
        return cls(
            vins=tuple(json.loads(g.vins)),
            signals=tuple(json.loads(g.signals)),
            from_ms=g.from_ms,
            to_ms=g.to_ms,
            live=bool(g.live),
            precise_location=bool(g.precise_location),
            purpose=g.purpose,
            expires_ms=g.expires_ms,
        )

    def oauth_scope(self) -> str:
        """The scope as OAuth scope tokens (what introspection and token responses report)."""
        words = [SCOPE_VSS + p for p in self.signals] + [SCOPE_HISTORY]
        if self.live:
            words.append(SCOPE_LIVE)
        if self.precise_location:
            words.append(SCOPE_PRECISE)
        return " ".join(words)


@dataclass(frozen=True)
class ScopeRequest:
    """An app's request parsed from OAuth scope tokens: the owner chooses vehicles, window and end date."""

    signals: tuple[str, ...]
    live: bool
    precise_location: bool
    history: bool = True
    unknown: tuple[str, ...] = field(default=())


def parse_scope(scope: str | None) -> ScopeRequest:
    """Scope tokens → a request. Unknown tokens are kept to be refused by ``check_requested``."""
    signals: list[str] = []
    live = precise = history = False
    unknown: list[str] = []
    for word in (scope or "").split():
        if word.startswith(SCOPE_VSS) and len(word) > len(SCOPE_VSS):
            signals.append(word[len(SCOPE_VSS) :])
        elif word == SCOPE_LIVE:
            live = True
        elif word == SCOPE_PRECISE:
            precise = True
        elif word == SCOPE_HISTORY:
            history = True
        else:
            unknown.append(word)
    return ScopeRequest(tuple(dict.fromkeys(signals)), live, precise, history, tuple(unknown))


def shareable_signals(catalogue: Catalogue, paths: Iterable[str]) -> list[Signal]:
    """The catalogue signals a list of VSS branches/paths names; refuses unknown paths and never-shareable data.

    ``ValidationFailed`` (field ``signals``) for an empty list or an unknown path; ``NotShareable`` when any
    named signal is camera, biometric or cabin data; a branch that *contains* such signals is refused too, so an
    owner always sees exactly what a grant covers.
    """
    paths = [p.strip() for p in paths if p.strip()]
    if not paths:
        raise ValidationFailed("a grant names at least one VSS branch or path", field="signals")
    try:
        chosen = catalogue.select(paths)
    except CarVaultError as e:
        raise ValidationFailed(e.message, field="signals") from None
    barred = sorted({s.category for s in chosen if s.category in NEVER_SHAREABLE})
    if barred:
        raise NotShareable(
            f"{', '.join(barred)} data is never shared through grants; choose narrower branches", categories=barred
        )
    return chosen


class TransferGate(Protocol):
    """What these rules ask of the transfer gate (compliance/transfers.py): which record covers a foreign recipient."""

    def covering(
        self, principal_kind: str, principal_id: str, jurisdiction: str, categories: Collection[str] | None = None
    ) -> object | None:
        """The current approved transfer record naming this recipient (and categories), or None."""


def check_recipient(app: App, region: str, transfers: TransferGate | None = None) -> None:
    """An app may receive this region's data: approved, not a gatekeeper, and in this region's jurisdiction or
    covered by a transfer record (each read abroad is then counted by ``Transfers.check``)."""
    if app.status != "approved":
        raise AppNotApproved(f"app {app.name!r} is {app.status}, not approved by the operator", client_id=app.client_id)
    check_processor(
        app.name,
        app.legal_entity,
        app.jurisdiction,
        gatekeeper=app.gatekeeper,
        region=region,
        transfers=transfers,
        recipient=("app", app.client_id),
        client_id=app.client_id,
    )


def check_processor(
    name: str,
    legal_entity: str,
    jurisdiction: str,
    *,
    gatekeeper: bool,
    region: str,
    transfers: TransferGate | None = None,
    recipient: tuple[str, str] | None = None,
    **details: Any,
) -> None:
    """Any recipient (an app, or a processor named for a portability transfer): no gatekeeper, and in this region
    unless a transfer record names ``recipient`` (kind, id) in its jurisdiction."""
    if gatekeeper:
        raise GatekeeperRefused(
            f"{name} ({legal_entity}) is a designated gatekeeper and cannot receive data (EU Data Act Art. 5(3))",
            **details,
        )
    if jurisdiction != region and not (
        transfers is not None and recipient is not None and transfers.covering(*recipient, jurisdiction)
    ):
        raise CrossBorderTransfer(
            f"{name} processes data in {jurisdiction!r}, outside this region ({region!r}): a cross-border "
            "transfer, refused until a transfer record covers it",
            **details,
            recipient_jurisdiction=jurisdiction,
            region=region,
        )


def check_purpose(purpose: str, allowed: Sequence[str] | None = None) -> str:
    """A purpose from the fixed list (and from the app's declared purposes, when given)."""
    if purpose not in PURPOSES:
        raise ValidationFailed(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")
    if allowed is not None and purpose not in allowed:
        raise ValidationFailed(
            f"this app declared only {', '.join(allowed) or 'no purposes'}; {purpose!r} is not among them",
            field="purpose",
        )
    return purpose


def check_end(expires_ms: int | None, now: int | None = None) -> int:
    """A grant's end date: in the future and at most ``MAX_GRANT_DAYS`` away; default ``DEFAULT_GRANT_DAYS``."""
    now = now_ms() if now is None else now
    if expires_ms is None:
        return now + DEFAULT_GRANT_DAYS * DAY_MS
    if expires_ms <= now:
        raise ValidationFailed("a grant's end date must be in the future", field="expires")
    if expires_ms > now + MAX_GRANT_DAYS * DAY_MS:
        raise ValidationFailed(
            f"a grant ends at most {MAX_GRANT_DAYS} days from now (never permanent)", field="expires"
        )
    return expires_ms


def check_window(from_ms: int | None, to_ms: int | None) -> None:
    """A history window's ends lie between 1970 and 9999 and are in order."""
    for ms in (from_ms, to_ms):
        if ms is not None and not 0 <= ms <= LATEST_MS:
            raise ValidationFailed("the history window's ends must lie between 1970 and 9999", field="window")
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise ValidationFailed("the history window's end must be after its start", field="window")


def narrowed(scope: ScopeRequest, chosen: Sequence[str]) -> tuple[str, ...]:
    """The owner may only narrow what an app asked for: every chosen path lies within a requested one."""
    requested = scope.signals
    for path in chosen:
        if not any(path == r or path.startswith(r + ".") for r in requested):
            raise ValidationFailed(f"{path} is not within what the app asked for", field="signals")
    return tuple(chosen)


class ScopedView:
    """What one caller may read of one vehicle: all of it for its owner, the grant's scope for a grant holder.

    Routes ask it for signals, a window and the location precision; it raises ``OutOfScope`` for anything
    beyond the grant, and never widens a request.
    """

    def __init__(self, catalogue: Catalogue, vin: str, scope: Scope | None) -> None:
        self.catalogue = catalogue
        self.vin = vin
        self.scope = scope
        self._allowed: list[Signal] | None = None

    @property
    def is_owner(self) -> bool:
        """True for the owner's own access (no grant)."""
        return self.scope is None

    def allowed(self) -> list[Signal]:
        """Every signal this view may serve."""
        if self._allowed is None:
            if self.scope is None:
                self._allowed = list(self.catalogue)
            else:
                chosen = self.catalogue.select(list(self.scope.signals))
                self._allowed = [s for s in chosen if s.category not in NEVER_SHAREABLE]
        return self._allowed

    def signals(self, requested: Sequence[str] | None) -> list[Signal]:
        """The signals to serve: the request (default: all allowed); ``OutOfScope`` for any outside the grant.

        Blank selectors (``signals=,``) name nothing, so they mean the default rather than an empty answer.
        """
        requested = [p.strip() for p in requested or () if p.strip()]
        if self.scope is None:
            return self.catalogue.select(list(requested) if requested else None)
        allowed = {s.path for s in self.allowed()}
        if not requested:
            return self.allowed()
        chosen = self.catalogue.select(list(requested))
        outside = [s.path for s in chosen if s.path not in allowed]
        if outside:
            raise OutOfScope(
                f"this grant does not cover {', '.join(outside[:5])}{' …' if len(outside) > 5 else ''}",
                outside=outside[:50],
            )
        return chosen

    def require(self, paths: Sequence[str], what: str) -> None:
        """A derived view (timeline, route, events) needs these signals; ``OutOfScope`` if the grant lacks one."""
        if self.scope is None:
            return
        allowed = {s.path for s in self.allowed()}
        missing = [p for p in paths if p in self.catalogue and p not in allowed]
        if missing:
            raise OutOfScope(f"{what} needs {', '.join(missing)}, which this grant does not cover", outside=missing)

    def window(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """The asked window, if the grant's history window holds it; else ``OutOfScope``."""
        if self.scope is None:
            return start_ms, end_ms
        lo, hi = self.scope.from_ms, self.scope.to_ms
        if (lo is not None and start_ms < lo) or (hi is not None and end_ms > hi):
            raise OutOfScope(
                "the window reaches outside this grant's history window",
                grant_from_ms=lo,
                grant_to_ms=hi,
                start_ms=start_ms,
                end_ms=end_ms,
            )
        return start_ms, end_ms

    def clip(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """A default window (the route chose it, not the caller) cut to the grant's history window."""
        if self.scope is None:
            return start_ms, end_ms
        lo = max(start_ms, self.scope.from_ms) if self.scope.from_ms is not None else start_ms
        hi = min(end_ms, self.scope.to_ms) if self.scope.to_ms is not None else end_ms
        return lo, max(lo, hi)

    def location(self, table: pa.Table) -> pa.Table:
        """Location at the granted precision: coarse (H3 cells) unless precise location is granted."""
        if self.scope is None or self.scope.precise_location:
            return table
        return coarsen(table)

    def owner_only(self, what: str) -> None:
        """Refuse grant holders on routes only the owner may use."""
        if self.scope is not None:
            raise OwnerOnly(f"{what} is for the vehicle's owner only; a grant does not cover it")
