"""COVESA VISS v3 for live data: the messages, filters and error objects, and one connection's session.

Owners and grant holders read a vehicle's live values with the Vehicle Information Service Specification,
version 3 (COVESA), over its WebSocket transport (``web/routes/viss.py``, docs/live.md). This module is
transport-independent: ``parse_request`` turns a JSON text into a checked ``Request``; ``Selection`` resolves a
VSS path (leaf or branch) and an optional ``paths`` filter against the catalogue; ``Change`` and ``Range`` decide
when an event fires; ``error_object`` maps every CarVault refusal onto the spec's ``{number, reason,
description}`` (plus our stable ``code``); ``VissSession`` holds one connection's subscriptions, authorises
every request and re-checks every subscription against grants, consent and legal holds twice a second.

What VISS v3 asks that we follow: ``action`` + ``requestId`` on every request, ``path`` from the tree root
(``.`` or ``/`` delimited, no wildcards), a ``paths`` filter with relative paths and ``*`` for one segment, the
``timebased``, ``change`` and ``range`` filter variants (one of them per subscription, optionally with
``paths``), values as strings, ISO 8601 UTC timestamps with a trailing ``Z``, and an error event that ends the
subscription. Where we choose: a path outside a grant is ``403 forbidden_request`` (the token is valid but does
not reach that far; ``401 invalid_token`` is kept for tokens that are missing, unknown, expired or revoked, so
a client knows whether a new token would help); ``get`` of several signals answers those that have a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import operator
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
from sqlalchemy import func, update
from sqlalchemy import select as query
from sqlalchemy.exc import SQLAlchemyError

from carvault.access.accounts import CREDENTIAL_COLUMNS, Accounts, Principal, token_hash
from carvault.access.audit import AuditAction
from carvault.access.grants import Access, Grants
from carvault.compliance.consent import COLLECTING, Policy
from carvault.compliance.sharing import ScopedView
from carvault.errors import (
    BadRequest,
    CarVaultError,
    ConsentNotGiven,
    NotFound,
    OutOfScope,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    ValueOutOfRange,
    WrongSignalType,
)
from carvault.ingest.live import LiveHub, LiveSubscription, LiveUpdate, LiveValue
from carvault.location import LAT, LON
from carvault.signals import Catalogue, Signal
from carvault.store.metadata import (
    App,
    ConsentRecord,
    Credential,
    Database,
    Grant,
    LegalHold,
    Owner,
    Vehicle,
    now_ms,
)

if TYPE_CHECKING:
    from carvault.region import Region

_log = logging.getLogger(__name__)
SUBPROTOCOL = "VISSv3"  # the WebSocket sub-protocol name VISS v3 gives
ACTIONS = ("get", "subscribe", "unsubscribe")
MAX_MESSAGE_CHARS = 16_384
MAX_REQUEST_ID = 64
MAX_PATHS = 100
MIN_PERIOD_MS = 100
MAX_PERIOD_MS = 3_600_000
MAX_SUBSCRIPTIONS = 64  # per connection
MAX_RECORDED = 1024  # signal sets remembered per connection for the access log
RECHECK_S = 0.5  # grants, consent and holds are re-read this often for every open subscription
BULK_CHUNK = 500  # keys per IN (...) of a re-check read (SQLite and PostgreSQL bind-parameter limits)
LAST_USED_EVERY_MS = 60_000  # a streaming token's last use is written at most this often (as Accounts.resolve does)
UNSUPPORTED_VARIANTS = ("curvelog", "history", "metadata")
_SEGMENT = re.compile(r"[A-Za-z0-9_]{1,64}")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,12})?(?:[eE][+-]?[0-9]{1,3})?")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
NUMERIC = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float", "double"})

# VISS v3 status codes (Transport §4.1): HTTP-like number and a fixed reason per CarVault status.
_REASONS = {
    400: ("400", "bad_request"),
    401: ("401", "invalid_token"),
    403: ("403", "forbidden_request"),
    404: ("404", "unavailable_data"),
    429: ("429", "too_many_requests"),
    503: ("503", "service_unavailable"),
}


# ---------------------------------------------------------------------------------------------- messages
def iso(ms: int) -> str:
    """An instant as VISS writes it: ISO 8601 in UTC with milliseconds and a trailing ``Z``."""
    return _second(ms // 1000) + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of an epoch second: every event of a second shares it (a strftime per event was a
    tenth of an event's cost, issue 10)."""
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def value_text(value: bool | int | float | str, resolution: float | None = None) -> str:
    """A value as VISS writes simple types: a string (numbers in JSON form, booleans ``true``/``false``).

    A float is rounded to its signal's resolution (the catalogue's), so a 32-bit sample reads as the car meant it.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if resolution is not None and resolution > 0:
            value = round(value, max(0, math.ceil(-math.log10(resolution) - 1e-9)))
        return repr(value) if math.isfinite(value) else json.dumps(value)  # json.dumps writes repr for finite
    return str(value)


def error_object(e: CarVaultError) -> dict[str, str]:
    """The VISS error information for a refusal: ``number``, ``reason``, ``description`` and our ``code``."""
    if e.status in _REASONS:
        number, reason = _REASONS[e.status]
    elif 400 <= e.status < 500:
        number, reason = _REASONS[400]
    else:
        number, reason = _REASONS[503]
    if isinstance(e, WrongSignalType | ValueOutOfRange):
        reason = "invalid_data"  # a VSS property (datatype, limits) is violated, not the message schema
    return {"number": number, "reason": reason, "description": e.message, "code": e.code}


def error_message(action: str | None, request_id: str | None, e: CarVaultError, *, at_ms: int | None = None) -> dict:
    """A ``getErrorResponse``/``subscribeErrorResponse``/``unsubscribeErrorResponse`` (or one for no action)."""
    doc: dict[str, Any] = {"action": action or "unknown"}
    if request_id is not None:
        doc["requestId"] = request_id
    doc["error"] = error_object(e)
    doc["ts"] = iso(now_ms() if at_ms is None else at_ms)
    return doc


def data_member(
    values: Sequence[LiveValue], catalogue: Catalogue | None = None
) -> dict[str, Any] | list[dict[str, Any]]:
    """The ``data`` member: one ``{path, dp: {value, ts}}`` for one signal, an array of them for several."""
    items = []
    for v in values:
        if v.value is None:
            continue
        signal = catalogue.get(v.path) if catalogue is not None else None
        text = value_text(v.value, signal.resolution if signal else None)
        items.append({"path": v.path, "dp": {"value": text, "ts": iso(v.t_ms)}})
    return items[0] if len(items) == 1 else items


# ---------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class TimeBased:
    """Events at a fixed period carrying the latest values (``{"period": "<ms>"}``)."""

    period_ms: int


@dataclass(frozen=True)
class Change:
    """Events when the trigger signal's change since the last event compares true (``{"logic-op", "diff"}``).

    The change is ``current - previous`` (booleans count as 1 and 0, so ``gt 0`` is false→true); text signals
    only support ``ne 0`` (any change).
    """

    op: str
    diff: float

    def fires(self, previous: bool | int | float | str | None, current: bool | int | float | str) -> bool:
        """True when an event is due."""
        if previous is None:
            return False
        if isinstance(current, str) or isinstance(previous, str):
            return current != previous
        return OPS[self.op](float(current) - float(previous), self.diff)


@dataclass(frozen=True)
class Range:
    """Events while the trigger signal lies in a range: one or two ``{"logic-op", "boundary"}`` (AND/OR)."""

    bounds: tuple[tuple[str, float], ...]
    combine: str = "AND"

    def fires(self, current: bool | int | float | str) -> bool:
        """True when the value satisfies the boundaries."""
        if isinstance(current, str | bool):
            return False
        results = [OPS[op](float(current), b) for op, b in self.bounds]
        return all(results) if self.combine == "AND" else any(results)


Trigger = TimeBased | Change | Range


@dataclass(frozen=True)
class Request:
    """One checked VISS request."""

    action: str
    request_id: str
    path: str | None = None
    paths: tuple[str, ...] = ()
    trigger: Trigger | None = None
    authorization: str | None = None
    subscription_id: str | None = None


def decode(text: str | bytes) -> dict[str, Any]:
    """The JSON object of a message; ``BadRequest`` for anything else."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"a request is at most {MAX_MESSAGE_CHARS} characters")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request is malformed: not JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request is malformed: not a JSON object")
    return doc


def head(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    """The action and requestId of a request as far as they can be read (to address an error response)."""
    action = doc.get("action") if doc.get("action") in ACTIONS else None
    rid = doc.get("requestId")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID else None
    return action, rid


def _text(doc: dict[str, Any], name: str, what: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"Missing or invalid {what}", member=name)
    return value.strip()


def parse_request(doc: dict[str, Any]) -> Request:
    """A request object checked against VISS v3's schema and our limits; ``BadRequest`` names what is wrong."""
    action = doc.get("action")
    if action == "set":
        raise ValueOutOfRange("Update of a sensor is not supported: CarVault serves what the car recorded")
    if action not in ACTIONS:
        raise BadRequest("Missing or invalid action: use get, subscribe or unsubscribe", member="action")
    rid = _text(doc, "requestId", "requestId")
    if len(rid) > MAX_REQUEST_ID:
        raise BadRequest(f"requestId is at most {MAX_REQUEST_ID} characters", member="requestId")
    auth = doc.get("authorization")
    if auth is not None and (not isinstance(auth, str) or not auth.strip() or len(auth) > 512):
        raise BadRequest("Missing or invalid authorization: a token string", member="authorization")
    auth = auth.strip() if auth else None
    if "dc" in doc or "data compression" in doc:
        raise NotFound("Unsupported feature: data compression; values come as plain JSON", member="dc")
    if action == "unsubscribe":
        return Request(action, rid, authorization=auth, subscription_id=_text(doc, "subscriptionId", "subscriptionId"))
    path = parse_path(_text(doc, "path", "path"))
    paths, trigger = parse_filter(doc.get("filter"), action)
    return Request(action, rid, path=path, paths=paths, trigger=trigger, authorization=auth)


def parse_path(text: str) -> str:
    """A VSS path from the tree root, ``.`` or ``/`` delimited (not mixed), without wildcards."""
    if len(text) > 512:
        raise BadRequest("Missing or invalid path: too long", member="path")
    if "*" in text:
        raise BadRequest("Missing or invalid path: wildcards belong in a paths filter", member="path")
    if "." in text and "/" in text:
        raise BadRequest("Missing or invalid path: use one delimiter, '.' or '/'", member="path")
    parts = text.replace("/", ".").split(".")
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        raise BadRequest("Missing or invalid path: VSS node names separated by '.'", member="path")
    if parts[0] != "Vehicle":
        raise NotFound(f"Data is unknown: VSS paths start at Vehicle, not {parts[0]!r}", path=text)
    return ".".join(parts)


def _relative(text: Any) -> str:
    if not isinstance(text, str) or not text.strip() or len(text) > 512:
        raise BadRequest("Missing or invalid filter: paths are relative VSS paths", member="filter")
    parts = text.strip().replace("/", ".").split(".")
    if not all(p == "*" or _SEGMENT.fullmatch(p) for p in parts):
        raise BadRequest(f"Missing or invalid filter: {text!r} is not a relative VSS path", member="filter")
    return ".".join(parts)


def _number(value: Any, what: str) -> float:
    """A number given as VISS writes it (a string; a JSON number is accepted too)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest(f"Missing or invalid filter: {what} must be a number", member="filter")
    text = str(value).strip()
    if not _NUMBER.fullmatch(text):
        raise BadRequest(f"Missing or invalid filter: {what} must be a number, not {text!r}", member="filter")
    number = float(text)
    if not math.isfinite(number):
        raise BadRequest(f"Missing or invalid filter: {what} must be finite", member="filter")
    return number


def _op(doc: dict[str, Any]) -> str:
    op = doc.get("logic-op")
    if op not in OPS:
        raise BadRequest(f"Missing or invalid filter: logic-op is one of {', '.join(OPS)}", member="filter")
    return str(op)


def parse_filter(value: Any, action: str) -> tuple[tuple[str, ...], Trigger | None]:
    """The ``filter`` member: at most one ``paths`` object plus, for subscribe, exactly one trigger variant."""
    if value is None:
        items: list[Any] = []
    elif isinstance(value, dict):
        items = [value]
    elif isinstance(value, list) and 1 <= len(value) <= 2:
        items = value
    else:
        raise BadRequest("Missing or invalid filter: one filter object, or an array of two", member="filter")
    paths: tuple[str, ...] = ()
    trigger: Trigger | None = None
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or "variant" not in item or "parameter" not in item:
            raise BadRequest("Missing or invalid filter: each has a variant and a parameter", member="filter")
        variant = item["variant"]
        if variant in seen:
            raise BadRequest(f"Incorrect filter: {variant} given twice", member="filter")
        seen.add(str(variant))
        if variant == "paths":
            paths = _paths(item["parameter"])
        elif variant in ("timebased", "change", "range"):
            if action != "subscribe":
                raise BadRequest(f"Incorrect filter: {variant} is only for subscribe", member="filter")
            if trigger is not None:
                raise BadRequest("Incorrect filter: one trigger variant per subscription", member="filter")
            trigger = _trigger(str(variant), item["parameter"])
        elif variant in UNSUPPORTED_VARIANTS:
            raise NotFound(f"Unsupported feature: the {variant} filter (see /api/v1 for history)", variant=variant)
        else:
            raise BadRequest(f"Missing or invalid filter: unknown variant {variant!r}", member="filter")
    if action == "subscribe" and trigger is None:
        raise BadRequest("Missing or invalid filter: subscribe needs a timebased, change or range filter")
    return paths, trigger


def _paths(parameter: Any) -> tuple[str, ...]:
    raw = [parameter] if isinstance(parameter, str) else parameter
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PATHS:
        raise BadRequest(f"Missing or invalid filter: 1 to {MAX_PATHS} relative paths", member="filter")
    return tuple(dict.fromkeys(_relative(p) for p in raw))


def _trigger(variant: str, parameter: Any) -> Trigger:
    if variant == "timebased":
        if not isinstance(parameter, dict) or "period" not in parameter:
            raise BadRequest('Missing or invalid filter: timebased needs {"period": "<ms>"}', member="filter")
        period = _number(parameter["period"], "period")
        if period != int(period) or not MIN_PERIOD_MS <= period <= MAX_PERIOD_MS:
            raise BadRequest(
                f"Missing or invalid filter: period is whole milliseconds from {MIN_PERIOD_MS} to {MAX_PERIOD_MS}",
                member="filter",
            )
        return TimeBased(int(period))
    if variant == "change":
        if not isinstance(parameter, dict) or "diff" not in parameter:
            raise BadRequest('Missing or invalid filter: change needs {"logic-op", "diff"}', member="filter")
        return Change(_op(parameter), _number(parameter["diff"], "diff"))
    bounds = [parameter] if isinstance(parameter, dict) else parameter
    if not isinstance(bounds, list) or not 1 <= len(bounds) <= 2 or not all(isinstance(b, dict) for b in bounds):
        raise BadRequest("Missing or invalid filter: range is one boundary object or an array of two", member="filter")
    combine = bounds[0].get("combination-op", "AND")
    if combine not in ("AND", "OR") or any("combination-op" in b for b in bounds[1:]):
        raise BadRequest("Missing or invalid filter: combination-op is AND or OR, on the first boundary only")
    if "boundary" not in bounds[0] or (len(bounds) == 2 and "boundary" not in bounds[1]):
        raise BadRequest("Missing or invalid filter: every range object has a boundary", member="filter")
    return Range(tuple((_op(b), _number(b["boundary"], "boundary")) for b in bounds), str(combine))


# --------------------------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selection:
    """The catalogue signals a request names, in catalogue order, and the one a change/range filter watches.

    ``explicit`` are leaves named exactly (no branch or wildcard): they are refused when their category's
    collection is stopped, whereas signals reached through a branch or wildcard are left out.
    """

    leaves: tuple[str, ...]
    explicit: frozenset[str]
    trigger: str | None


def _matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    return len(path) >= len(pattern) and all(p in ("*", q) for p, q in zip(pattern, path, strict=False))


def select(catalogue: Catalogue, path: str, paths: Sequence[str], trigger: Trigger | None) -> Selection:
    """Resolve a request's path and ``paths`` filter; ``NotFound`` (``404 unavailable_data``) for unknown nodes."""
    patterns = [f"{path}.{p}" for p in paths] if paths else [path]
    all_signals = list(catalogue)
    chosen: set[str] = set()
    explicit: set[str] = set()
    for pattern in patterns:
        segs = pattern.split(".")
        hits = [s.path for s in all_signals if _matches(segs, s.path.split("."))]
        if not hits:
            raise NotFound(f"Data is unknown: no VSS node {pattern} in this vehicle's catalogue", path=pattern)
        chosen.update(hits)
        if "*" not in pattern and hits == [pattern]:
            explicit.add(pattern)
    leaves = tuple(s.path for s in all_signals if s.path in chosen)
    watched = None
    if isinstance(trigger, Change | Range):
        watched = patterns[0]
        if watched not in explicit:
            raise BadRequest(
                "Incorrect filter: change and range filters watch one signal, the path (or the first of the paths "
                "filter), which must be a leaf without wildcards",
                member="filter",
            )
        check_trigger(catalogue[watched], trigger)
    return Selection(leaves, frozenset(explicit), watched)


def check_trigger(signal: Signal, trigger: Change | Range) -> None:
    """Range filters need a numeric signal; change filters a numeric or boolean one (text: ``ne 0`` only)."""
    if isinstance(trigger, Range):
        if signal.datatype not in NUMERIC:
            raise WrongSignalType(f"Incorrect data type: a range filter needs a number; {signal.path} is not")
        return
    if signal.datatype == "boolean" and (trigger.diff != 0 or trigger.op not in ("gt", "lt", "ne")):
        raise WrongSignalType(f"Incorrect data type: {signal.path} is boolean; use gt, lt or ne with diff 0")
    if signal.datatype not in NUMERIC and signal.datatype != "boolean" and (trigger.op, trigger.diff) != ("ne", 0):
        raise WrongSignalType(f"Incorrect data type: {signal.path} is text; only ne with diff 0 applies")


def _float(value: bool | int | float | str | None) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def served(values: dict[str, LiveValue], view: ScopedView) -> dict[str, LiveValue]:
    """Values at the precision the caller may see: location coarsened to H3 cell centres unless precise is granted.

    The same coarsening as every other read (``ScopedView.location``); a latitude without its longitude (or the
    reverse) cannot be coarsened and is left out.
    """
    if view.scope is None or view.scope.precise_location or (LAT not in values and LON not in values):
        return values
    located = [p for p in values if p.startswith("Vehicle.CurrentLocation.")]
    columns = {p: pa.array([_float(values[p].value)], pa.float64()) for p in located}
    for p in (LAT, LON):
        columns.setdefault(p, pa.array([None], pa.float64()))
    coarse = view.location(pa.table(columns)).to_pylist()[0]
    out = dict(values)
    for p in located:
        if coarse.get(p) is None or coarse.get(LAT) is None:
            del out[p]  # no cell without both coordinates; altitude is dropped by coarsening
        else:
            out[p] = LiveValue(p, values[p].t_ms, coarse[p], values[p].received_ms)
    return out


# ----------------------------------------------------------------------------------------------- session
class Checks:
    """The reads behind re-checks (token and grant, hold, consent), shared for a fraction of the re-check period.

    One per process: every connection re-checking the same token or vehicle within ``ttl_s`` shares one read, so
    the database sees a few reads per vehicle per period however many subscribers watch it. A revocation still
    ends a stream within ``ttl_s + RECHECK_S`` (under a second). Requests are always authorised with fresh reads.
    """

    def __init__(self, ttl_s: float = RECHECK_S * 0.8, limit: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._memo: dict[Any, tuple[float, Any, CarVaultError | None]] = {}

    def once(self, key: Any, read: Callable[[], Any]) -> Any:
        """``read()``'s result (or its refusal, raised again) if read less than ``ttl_s`` ago, else read now."""
        now = time.monotonic()
        hit = self._memo.get(key)
        if hit is None or hit[0] <= now:
            if len(self._memo) >= self.limit:
                self._memo = {k: v for k, v in self._memo.items() if v[0] > now}
            try:
                hit = (now + self.ttl_s, read(), None)
            except CarVaultError as e:
                hit = (now + self.ttl_s, None, e)
            self._memo[key] = hit
        _, value, error = hit
        if error is not None:
            raise error
        return value


@dataclass
class Allowance:
    """What a request is allowed: the caller's access, the signals it may stream now, and the token used."""

    access: Access
    leaves: tuple[str, ...]
    token: str
    policy: Policy | None = None  # the consent policy the leaves were decided on


@dataclass
class Subscription:
    """One open subscription of a connection."""

    id: str
    request: Request
    selection: Selection
    allowance: Allowance
    task: asyncio.Task[None] | None = None
    stream: LiveSubscription | None = None  # the hub's feed, for change and range filters
    previous: bool | int | float | str | None = None
    events: int = field(default=0)
    basis: Basis | None = None  # what the last full authorisation rested on (``Rechecker``)


# A message to send: a JSON object, or an event already written as JSON text (UTF-8).
Send = Callable[[dict[str, Any] | bytes], Awaitable[None]]


class EventTexts:
    """The ``data`` member of events as JSON text, written once for every subscriber sent the same values.

    Subscribers of one vehicle receiving the same frame's values (same paths, times, values and precision) share
    the text; the key is what the text is made of, so a subscriber served coarser values gets its own.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._texts: dict[Any, bytes] = {}
        self.written = 0  # texts made (for tests and profiles)

    def data(self, chosen: Sequence[LiveValue], catalogue: Catalogue) -> bytes:
        """``data_member(chosen)`` as compact JSON."""
        key = (id(catalogue), tuple((v.path, v.t_ms, type(v.value), v.value) for v in chosen))
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) >= self.limit:
                self._texts = {}
            text = self._texts[key] = orjson.dumps(data_member(chosen, catalogue))
            self.written += 1
        return text


EVENT_TEXTS = EventTexts()  # one per process: sessions on the event loop share it


class VissSession:
    """One VISS connection to one vehicle: requests in, responses and events out, subscriptions kept honest.

    ``connection_token`` is what the WebSocket upgrade carried (bearer header or the portal's session cookie); a
    request's own ``authorization`` member takes precedence. Every request is authorised afresh; every open
    subscription is re-checked every ``RECHECK_S`` seconds by the process's ``Rechecker`` and ended with an error
    event when its grant, token, consent or a legal hold no longer allows it.
    """

    def __init__(
        self,
        vin: str,
        *,
        catalogue: Catalogue,
        accounts: Accounts,
        grants: Grants,
        live: LiveHub,
        policy_of: Callable[[str], Policy],
        check_served: Callable[[str], None],
        send: Send,
        connection_token: str | None = None,
        rechecker: Rechecker | None = None,
    ) -> None:
        self.vin = vin.strip().upper()
        self.catalogue = catalogue
        self.accounts = accounts
        self.grants = grants
        self.live = live
        self.policy_of = policy_of
        self.check_served = check_served
        self._send = send
        self.connection_token = connection_token
        # One per process in the server (web/routes/viss.py): every open subscription re-checked in one pass.
        self.rechecker = rechecker or Rechecker(grants.db)
        self.subscriptions: dict[str, Subscription] = {}
        self._next_id = 1
        self._send_lock = asyncio.Lock()
        self._recorded: set[tuple[str, tuple[str, ...]]] = set()

    @classmethod
    def of_region(
        cls, region: Region, vin: str, send: Send, *, connection_token: str | None, rechecker: Rechecker | None
    ) -> VissSession:
        """A session wired to a region's own services (the server's route and tests build it the same way)."""
        return cls(
            vin,
            catalogue=region.catalogue,
            accounts=region.accounts,
            grants=region.grants,
            live=region.live,
            policy_of=region.consents.policy,
            check_served=region.deletions.check_served,
            send=send,
            connection_token=connection_token,
            rechecker=rechecker,
        )

    # ----------------------------------------------------------------- authorisation
    def authorise(self, token: str | None, selection: Selection, checks: Checks | None = None) -> Allowance:
        """The caller behind ``token`` may stream ``selection`` of this vehicle now (blocking: DB reads).

        ``checks`` shares the reads (token and grant, hold, consent) between re-checks; without it, all are fresh.
        """
        if not token:
            raise Unauthenticated("Access token is missing: send it as authorization or at the WebSocket upgrade")
        memo = checks or Checks()
        # The token is read once per period for every vehicle it watches (an owner's or a fleet app's many cars).
        principal = memo.once(("principal", token), lambda: self.accounts.resolve(token))
        # A re-check confirms a transfer abroad is still covered; only the first authorisation counts and logs it.
        access = memo.once(("access", token, self.vin), lambda: self._access(principal, recheck=checks is not None))
        access.view.signals(list(selection.leaves))  # OutOfScope for anything beyond the grant
        memo.once(
            ("hold", access.vin), lambda: self.check_served(access.vin)
        )  # a hold after a deletion request freezes data
        policy = memo.once(("policy", access.vin), lambda: self.policy_of(access.vin))
        return Allowance(access, self.consented(selection, policy), token, policy)

    def consented(self, selection: Selection, policy: Policy) -> tuple[str, ...]:
        """The leaves of ``selection`` whose category the owner lets the car collect now.

        A stopped category named exactly is refused (``ConsentNotGiven``); reached through a branch, it is left out.
        """
        at = now_ms()
        stopped = {s: self.catalogue[s].category for s in selection.leaves}
        stopped = {s: c for s, c in stopped.items() if policy.status(c, at) != COLLECTING}
        named = sorted({c for s, c in stopped.items() if s in selection.explicit})
        if named:
            raise ConsentNotGiven(f"collection of {', '.join(named)} data is stopped", categories=named)
        leaves = tuple(s for s in selection.leaves if s not in stopped)
        if not leaves:
            raise ConsentNotGiven("collection of every signal named is stopped")
        return leaves

    def _access(self, principal: Principal, *, recheck: bool = False) -> Access:
        """The token holder's access to this vehicle, with live access for a grant holder."""
        access = self.grants.access(principal, self.vin, count_transfer=not recheck)
        if access.view.scope is not None and not access.view.scope.live:
            raise OutOfScope("this grant does not include live access (scope 'live')", vin=self.vin)
        return access

    async def _record(self, allowed: Allowance, action: AuditAction, detail: dict[str, Any], rows: int = 0) -> None:
        """Record a live read in the owner's access log: once per connection, token and set of signals."""
        key = (allowed.token, allowed.leaves)
        if key in self._recorded:
            return
        if len(self._recorded) < MAX_RECORDED:  # beyond it, every read is recorded (memory stays bounded)
            self._recorded.add(key)
        detail = {"via": "viss", "signals": len(allowed.leaves), **detail}
        await asyncio.to_thread(self.grants.record_read, allowed.access, action, detail, rows)

    # -------------------------------------------------------------------- messages in
    async def handle(self, text: str | bytes) -> None:
        """Answer one message; every failure becomes the spec's error response, and the connection goes on."""
        action: str | None = None
        rid: str | None = None
        try:
            doc = decode(text)
            action, rid = head(doc)
            request = parse_request(doc)
            if request.action == "get":
                await self.send(await self._get(request))
            elif request.action == "subscribe":
                await self._subscribe(request)
            else:
                await self.send(await self._unsubscribe(request))
        except CarVaultError as e:
            await self.send(error_message(action, rid, e))
        except SQLAlchemyError:
            await self.send(error_message(action, rid, Unavailable("The server is temporarily unable to answer")))

    async def _get(self, request: Request) -> dict[str, Any]:
        assert request.path is not None
        selection = select(self.catalogue, request.path, request.paths, None)
        allowed = await asyncio.to_thread(self.authorise, request.authorization or self.connection_token, selection)
        latest = self.live.latest(self.vin)
        values = served(
            {p: latest[p] for p in allowed.leaves if p in latest and latest[p].value is not None}, allowed.access.view
        )
        if not values:
            raise NotFound("Data temporarily unaccessible: the car has sent no live value for this yet", vin=self.vin)
        await self._record(allowed, AuditAction.LIVE_READ, {"path": request.path}, len(values))
        return {
            "action": "get",
            "requestId": request.request_id,
            "data": data_member([values[p] for p in allowed.leaves if p in values], self.catalogue),
            "ts": iso(now_ms()),
        }

    async def _subscribe(self, request: Request) -> None:
        assert request.path is not None
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise TooManyRequests(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        selection = select(self.catalogue, request.path, request.paths, request.trigger)
        allowed = await asyncio.to_thread(self.authorise, request.authorization or self.connection_token, selection)
        sub = Subscription(str(self._next_id), request, selection, allowed)
        self._next_id += 1
        if selection.trigger is not None:
            baseline = served(self.live.latest(self.vin), allowed.access.view).get(selection.trigger)
            sub.previous = baseline.value if baseline else None
        await self._record(allowed, AuditAction.LIVE_SUBSCRIBE, {"path": request.path})
        if not isinstance(request.trigger, TimeBased):
            sub.stream = self.live.subscribe(self.vin)  # before the answer: no frame after it is missed
        self.subscriptions[sub.id] = sub
        await self.send(
            {"action": "subscribe", "requestId": request.request_id, "subscriptionId": sub.id, "ts": iso(now_ms())}
        )
        sub.task = asyncio.create_task(self._run(sub), name=f"viss-{self.vin}-{sub.id}")
        self.rechecker.watch(self)

    async def _unsubscribe(self, request: Request) -> dict[str, Any]:
        sub = self.subscriptions.pop(request.subscription_id or "", None)
        if sub is None:
            raise NotFound("Unknown subscription Id", subscriptionId=request.subscription_id)
        await self._stop(sub)
        return {"action": "unsubscribe", "requestId": request.request_id, "ts": iso(now_ms())}

    # ------------------------------------------------------------------- events out
    async def send(self, message: dict[str, Any] | bytes) -> None:
        """Send one message (responses and events never interleave)."""
        async with self._send_lock:
            await self._send(message)

    async def _run(self, sub: Subscription) -> None:
        """Issue the subscription's events until it is stopped; a broker failure ends it with the error event."""
        try:
            if isinstance(sub.request.trigger, TimeBased):
                while True:
                    await asyncio.sleep(sub.request.trigger.period_ms / 1000)
                    await self._emit(sub, self.live.latest(self.vin))
            elif sub.stream is not None:
                async for update in sub.stream:
                    await self._on_update(sub, update)
        except CarVaultError as e:  # e.g. Unavailable: the live broker cannot be reached
            await self.end(sub, e)

    async def _on_update(self, sub: Subscription, update: LiveUpdate) -> None:
        watched = sub.selection.trigger
        if watched is None or watched not in update.values or watched not in sub.allowance.leaves:
            return
        latest = {**self.live.latest(self.vin), **update.values}
        value = served(latest, sub.allowance.access.view).get(watched)
        if value is None or value.value is None:
            return
        trigger = sub.request.trigger
        fire = trigger.fires(sub.previous, value.value) if isinstance(trigger, Change) else trigger.fires(value.value)  # type: ignore[union-attr]
        if isinstance(trigger, Change) and (fire or sub.previous is None):
            sub.previous = value.value  # the change is measured from the last event (or the first value seen)
        if fire:
            await self._emit(sub, latest, first=watched)

    async def _emit(self, sub: Subscription, latest: dict[str, LiveValue], first: str | None = None) -> None:
        values = served({p: latest[p] for p in sub.allowance.leaves if p in latest}, sub.allowance.access.view)
        order = ([first] if first else []) + [p for p in sub.allowance.leaves if p != first]
        chosen = [values[p] for p in order if p in values and values[p].value is not None]
        if not chosen:
            return
        sub.events += 1
        data = EVENT_TEXTS.data(chosen, self.catalogue)
        await self.send(
            b'{"action":"subscription","subscriptionId":'
            + orjson.dumps(sub.id)
            + b',"data":'
            + data
            + b',"ts":"'
            + iso(now_ms()).encode()
            + b'"}'
        )

    # ---------------------------------------------------------------- keeping honest
    def verdict(self, sub: Subscription, snapshot: Snapshot, checks: Checks) -> CarVaultError | None:
        """Why ``sub`` may no longer stream (None: it may), from the pass's bulk read (blocking: may read more).

        When nothing the last full authorisation rested on changed (the token's, grant's, app's and vehicle's rows,
        the vehicle's consent decisions; no legal hold; before the token or grant ends), only the consent policy is
        evaluated again for the current time. Anything else, and a recipient abroad whose every read is checked
        against its transfer record, takes the full authorisation with fresh reads.
        """
        basis = snapshot.basis(sub.allowance.token, self.vin)
        same = basis is not None and sub.basis is not None and basis.rows == sub.basis.rows
        quick = (
            same
            and basis is not None
            and now_ms() < basis.until_ms
            and self.vin not in snapshot.held
            and sub.allowance.access.transfer is None
            and sub.allowance.policy is not None
        )
        try:
            if quick:
                assert sub.allowance.policy is not None
                leaves = self.consented(sub.selection, sub.allowance.policy)
                if leaves == sub.allowance.leaves:
                    return None  # the usual pass: nothing changed, nothing to build
                fresh = replace(sub.allowance, leaves=leaves)
            else:
                self.rechecker.full += 1
                fresh = self.authorise(sub.allowance.token, sub.selection, checks)
                sub.basis = basis
        except CarVaultError as e:
            return e
        if not set(sub.allowance.leaves) <= set(fresh.leaves):
            return ConsentNotGiven("collection of some signals of this subscription stopped")
        sub.allowance = fresh  # a category turned back on joins a branch subscription
        return None

    async def end(self, sub: Subscription, e: CarVaultError) -> None:
        """End a subscription with an error event (VISS: the server terminates it after the event)."""
        if self.subscriptions.pop(sub.id, None) is None:
            return
        await self._stop(sub)
        await self.send(
            {"action": "subscription", "subscriptionId": sub.id, "error": error_object(e), "ts": iso(now_ms())}
        )

    async def _stop(self, sub: Subscription) -> None:
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
            # The task may already have died of a failed send (the client left); its end is all we wait for.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sub.task
        if sub.stream is not None:
            await sub.stream.close()

    async def close(self) -> None:
        """The connection ended: stop every subscription and the checker."""
        self.rechecker.forget(self)
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        for sub in subs:
            await self._stop(sub)


# ---------------------------------------------------------------------------------------------- re-checks
def _chunks(keys: Sequence[Any]) -> list[Sequence[Any]]:
    return [keys[i : i + BULK_CHUNK] for i in range(0, len(keys), BULK_CHUNK)]


@dataclass(frozen=True)
class Basis:
    """What an authorisation rests on: the rows read for it (compared whole), and when time alone ends it."""

    rows: tuple[Any, ...]
    until_ms: int


class Snapshot:
    """One bulk read of everything the open subscriptions of a process rest on: one query per table.

    Credentials (with their owner), grants, apps, vehicles (owner only: the chain head moves with every batch),
    vehicles under a legal hold, and per vehicle the count and newest id of its consent decisions (append-only
    rows, so a new decision changes them). Counters that reads update (a grant's reads, a token's last use) are
    left out, so reading does not look like a change.
    """

    def __init__(self, db: Database, tokens: set[str], vins: set[str]) -> None:
        self.hashes = {t: token_hash(t) for t in tokens}
        self.credentials: dict[str, tuple[Any, ...]] = {}
        self.last_used: dict[int, int | None] = {}  # credential id -> last use, to keep it current
        self.grants: dict[int, tuple[Any, ...]] = {}
        self.apps: dict[str, tuple[Any, ...]] = {}
        self.vehicles: dict[str, tuple[Any, ...]] = {}
        self.consents: dict[str, tuple[int, int]] = {}
        self.held: set[str] = set()
        wanted_vins = sorted(vins)
        with db.engine.connect() as conn:
            for part in _chunks(sorted(set(self.hashes.values()))):
                rows = conn.execute(
                    query(Credential.token_hash, *CREDENTIAL_COLUMNS)
                    .join(Owner, Owner.id == Credential.owner_id)
                    .where(Credential.token_hash.in_(part))
                )
                for r in rows:
                    self.credentials[r[0]] = tuple(r[1:8])
                    self.last_used[r[1]] = r[8]
            grant_ids = sorted({c[3] for c in self.credentials.values() if c[3] is not None})
            for part in _chunks(grant_ids):
                rows = conn.execute(
                    query(
                        Grant.id,
                        Grant.owner_id,
                        Grant.kind,
                        Grant.client_id,
                        Grant.vins,
                        Grant.signals,
                        Grant.from_ms,
                        Grant.to_ms,
                        Grant.live,
                        Grant.precise_location,
                        Grant.purpose,
                        Grant.expires_ms,
                        Grant.revoked_ms,
                    ).where(Grant.id.in_(part))
                )
                self.grants.update({r[0]: tuple(r) for r in rows})
            client_ids = sorted({g[3] for g in self.grants.values() if g[3] is not None})
            for part in _chunks(client_ids):
                rows = conn.execute(
                    query(
                        App.client_id, App.name, App.legal_entity, App.jurisdiction, App.gatekeeper, App.status
                    ).where(App.client_id.in_(part))
                )
                self.apps.update({r[0]: tuple(r) for r in rows})
            for part in _chunks(wanted_vins):
                rows = conn.execute(query(Vehicle.vin, Vehicle.owner_id).where(Vehicle.vin.in_(part)))
                self.vehicles.update({r[0]: tuple(r) for r in rows})
                rows = conn.execute(
                    query(LegalHold.vin).where(LegalHold.vin.in_(part), LegalHold.released_ms.is_(None)).distinct()
                )
                self.held.update(r[0] for r in rows)
                rows = conn.execute(
                    query(ConsentRecord.vin, func.count(ConsentRecord.id), func.max(ConsentRecord.id))
                    .where(ConsentRecord.vin.in_(part))
                    .group_by(ConsentRecord.vin)
                )
                self.consents.update({r[0]: (int(r[1]), int(r[2])) for r in rows})

    def basis(self, token: str, vin: str) -> Basis | None:
        """The rows an authorisation of ``token`` for ``vin`` rests on; None for a token no longer on record."""
        digest = self.hashes.get(token)
        cred = self.credentials.get(digest) if digest is not None else None
        if cred is None:
            return None
        grant = self.grants.get(cred[3]) if cred[3] is not None else None
        app = self.apps.get(grant[3]) if grant is not None and grant[3] is not None else None
        until = cred[6] if grant is None else min(cred[6], grant[11])
        return Basis((cred, cred[3] is not None, grant, app, self.vehicles.get(vin), self.consents.get(vin)), until)

    def touch(self, db: Database, tokens: set[str]) -> None:
        """Record that the tokens still streaming were used (at most once a minute each, as a request would)."""
        now = now_ms()
        stale = []
        for t in tokens:
            cred = self.credentials.get(self.hashes.get(t, ""))
            if cred is not None and ((used := self.last_used.get(cred[0])) is None or now - used > LAST_USED_EVERY_MS):
                stale.append(cred[0])
        if not stale:
            return
        with db.engine.begin() as conn:
            for part in _chunks(sorted(set(stale))):
                conn.execute(update(Credential).where(Credential.id.in_(part)).values(last_used_ms=now))


class Rechecker:
    """Re-checks every open subscription of a process in one pass every ``RECHECK_S`` (cost per pass, not per
    subscriber): one bulk read (``Snapshot``), then per subscription either a cheap confirmation or, where
    anything it rests on changed, the full authorisation. Those no longer allowed end with the spec's error event
    within a second of the change.
    """

    def __init__(self, db: Database, period_s: float = RECHECK_S) -> None:
        self.db = db
        self.period_s = period_s
        self._sessions: set[VissSession] = set()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # passes run, subscriptions seen and full authorisations taken (for tests and the bench)
        self.seen = 0
        self.full = 0  # counted by VissSession.verdict

    def watch(self, session: VissSession) -> None:
        """Re-check ``session``'s subscriptions from now on (starts the pass loop in the running event loop)."""
        self._sessions.add(session)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="viss-recheck")

    def forget(self, session: VissSession) -> None:
        """``session`` closed: no more re-checks for it."""
        self._sessions.discard(session)

    async def _run(self) -> None:
        try:
            while self._sessions:
                await asyncio.sleep(self.period_s)
                pairs = [(s, sub) for s in list(self._sessions) for sub in list(s.subscriptions.values())]
                if pairs:
                    await self.run_pass(pairs)
        finally:
            self._task = None

    async def run_pass(self, pairs: list[tuple[VissSession, Subscription]]) -> None:
        """One pass over ``pairs``: read, decide, end the subscriptions no longer allowed."""
        try:
            verdicts = await asyncio.to_thread(self.verdicts, pairs)
        except Exception:  # noqa: BLE001 - fail closed: a pass that cannot decide must not leave streams unchecked
            _log.exception("re-check pass over %d VISS subscriptions failed: ending them", len(pairs))
            problem = Unavailable("The server is temporarily unable to check this subscription")
            verdicts = [(session, sub, problem) for session, sub in pairs]
        for session, sub, problem in verdicts:
            if problem is not None:
                # A connection that went away meanwhile must not stop the other subscriptions' re-checks.
                with contextlib.suppress(Exception):
                    await session.end(sub, problem)

    def verdicts(
        self, pairs: list[tuple[VissSession, Subscription]]
    ) -> list[tuple[VissSession, Subscription, CarVaultError | None]]:
        """Every subscription's verdict from one bulk read (blocking: run in a thread)."""
        tokens = {sub.allowance.token for _, sub in pairs}
        snapshot = Snapshot(self.db, tokens, {session.vin for session, _ in pairs})
        checks = Checks(ttl_s=self.period_s)  # full authorisations of one pass share their reads
        out: list[tuple[VissSession, Subscription, CarVaultError | None]] = []
        for session, sub in pairs:
            try:
                verdict = session.verdict(sub, snapshot, checks)
            except SQLAlchemyError:  # the metadata DB is unreachable: end rather than stream unchecked
                verdict = Unavailable("The server is temporarily unable to check this subscription")
            except Exception:  # noqa: BLE001 - a subscription that cannot be checked ends; the others go on
                _log.exception("re-check of VISS subscription %s of %s failed", sub.id, session.vin)
                verdict = Unavailable("The server is temporarily unable to check this subscription")
            out.append((session, sub, verdict))
        try:
            snapshot.touch(self.db, {sub.allowance.token for _, sub, v in out if v is None})
        except Exception:  # noqa: BLE001 - bookkeeping only: a failed write of last uses must not end allowed streams
            _log.warning("re-check pass could not record the last use of streaming tokens", exc_info=True)
        self.passes += 1
        self.seen += len(pairs)
        return out
