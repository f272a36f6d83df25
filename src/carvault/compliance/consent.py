"""Collection policy: which categories a car may send, decided from the owner's consents (pure).

The same code runs in the car (to filter what leaves it) and on the platform (to show the status). Rules
(Several Provisions on Automotive Data Security 2021, GB/T 41871-2022):

- technical and personal categories are collected by default under the service contract; the owner may
  stop any of them;
- sensitive and important categories are off by default; a consent turns one on for a purpose until an
  end date (never open-ended). A consent that is not *lasting* covers only the ignition cycle it was given
  in: at every ignition-on, sensitive categories fall back to off unless the opt-in is lasting;
- cabin audio/video/images and biometrics stay in the car unless consented (status ``in_car_only``);
- after a stop (revocation or end date) nothing more of that category leaves the car.

The region applies the same rules again to every batch it receives (``check_batch``): it never takes the
car's filtering on trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.errors import ConsentNotGiven
from carvault.protocol.columns import has_column, times_ms
from carvault.signals import CATEGORIES, Catalogue, PrivacyClass

COLLECTING = "collecting"
OFF = "off"
IN_CAR_ONLY = "in_car_only"
IN_CAR_CATEGORIES = frozenset({"cabin_media", "driver_monitoring"})
MAX_CONSENT_DAYS = 3 * 365
ROUTINE_KINDS = frozenset({"telemetry", "media"})
# Event windows rest on their own legal basis (docs/protocol.md §7) for every category but biometrics and
# cabin media: for those the owner's consent still decides, in event batches as in routine ones.
EVENT_BASIS_EXCLUDES = IN_CAR_CATEGORIES
IGNITION_CYCLE = "Vehicle.EDR.IgnitionCycle"
NO_IGNITION_MS = -(10**15)  # "no ignition-on known": older than any grant


@dataclass(frozen=True)
class Consent:
    """One owner decision for one category: on for a purpose from ``starts_ms`` to ``ends_ms`` (or a stop)."""

    category: str
    enabled: bool
    purpose: str
    lasting: bool
    starts_ms: int
    ends_ms: int | None
    granted_ms: int

    def to_json(self) -> dict[str, Any]:
        """Wire form."""
        return {
            "category": self.category,
            "enabled": self.enabled,
            "purpose": self.purpose,
            "lasting": self.lasting,
            "starts_ms": self.starts_ms,
            "ends_ms": self.ends_ms,
            "granted_ms": self.granted_ms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Consent:
        """Parse the wire form."""
        return cls(
            category=d["category"],
            enabled=bool(d["enabled"]),
            purpose=d.get("purpose", ""),
            lasting=bool(d.get("lasting", False)),
            starts_ms=int(d["starts_ms"]),
            ends_ms=None if d.get("ends_ms") is None else int(d["ends_ms"]),
            granted_ms=int(d["granted_ms"]),
        )


def default_on(category: str) -> bool:
    """Collected without an explicit opt-in (technical and personal data under the contract)."""
    return (
        CATEGORIES[category].privacy in (PrivacyClass.TECHNICAL, PrivacyClass.PERSONAL)
        and category not in IN_CAR_CATEGORIES
    )


# ``default_on`` of every category, read once per column of every received batch (``check_batch``).
_DEFAULT_ON: dict[str, bool] = {category: default_on(category) for category in CATEGORIES}


def needs_opt_in(category: str) -> bool:
    """Sensitive and important categories need an explicit, dated opt-in."""
    return not default_on(category)


@dataclass(frozen=True)
class Policy:
    """Every decision of one vehicle, newest last per category."""

    vin: str
    consents: tuple[Consent, ...]
    version: int = 0

    def latest(self, category: str, at_ms: int) -> Consent | None:
        """The newest decision for ``category`` taken at or before ``at_ms``."""
        found = None
        for c in self.consents:
            if c.category == category and c.granted_ms <= at_ms and (found is None or c.granted_ms >= found.granted_ms):
                found = c
        return found

    def status(self, category: str, at_ms: int, ignition_on_ms: int | None = None) -> str:
        """Collection status of a category at an instant (``ignition_on_ms``: start of the current cycle)."""
        off = IN_CAR_ONLY if category in IN_CAR_CATEGORIES else OFF
        c = self.latest(category, at_ms)
        if default_on(category):
            # Collected under the contract unless the owner's newest decision is a stop.
            return off if c is not None and not c.enabled else COLLECTING
        if c is None or not c.enabled or at_ms < c.starts_ms or (c.ends_ms is not None and at_ms >= c.ends_ms):
            return off
        if not c.lasting and ignition_on_ms is not None and c.granted_ms < ignition_on_ms:
            return off  # a one-drive opt-in lapses at the next ignition-on
        return COLLECTING

    def to_json(self) -> dict[str, Any]:
        """Wire form sent to the car."""
        return {"vin": self.vin, "version": self.version, "consents": [c.to_json() for c in self.consents]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Policy:
        """Parse the wire form."""
        return cls(
            vin=d["vin"],
            version=int(d.get("version", 0)),
            consents=tuple(Consent.from_json(c) for c in d.get("consents", [])),
        )


def change_points(policy: Policy, category: str) -> list[int]:
    """Instants at which a category's status may change (grants, starts, ends)."""
    pts: set[int] = set()
    for c in policy.consents:
        if c.category == category:
            pts.update(x for x in (c.granted_ms, c.starts_ms, c.ends_ms) if x is not None)
    return sorted(pts)


def allowed_mask(
    policy: Policy, category: str, t_ms: np.ndarray, ignition_on_ms: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the instants at which ``category`` may leave the car (vectorised over segments)."""
    if len(t_ms) == 0:
        return np.zeros(0, dtype=bool)
    # Status is constant between change points and within an ignition cycle: evaluate once per run of such a
    # piece (times come in order, so a piece is one run; out of order it is merely evaluated more than once).
    cuts = np.array(change_points(policy, category), dtype=np.int64)
    piece = np.searchsorted(cuts, t_ms, side="right").astype(np.int64)
    ign = ignition_on_ms if ignition_on_ms is not None else np.zeros(len(t_ms), dtype=np.int64)
    starts = np.ones(len(t_ms), dtype=bool)
    starts[1:] = (piece[1:] != piece[:-1]) | (ign[1:] != ign[:-1])
    first = np.flatnonzero(starts)
    values = np.array(
        [
            policy.status(category, int(t_ms[i]), int(ign[i]) if ignition_on_ms is not None else None) == COLLECTING
            for i in first.tolist()
        ],
        dtype=bool,
    )
    return values[np.cumsum(starts) - 1]


def filter_table(
    table: pa.Table, policy: Policy, catalogue: Catalogue, ignition_on_ms: np.ndarray | None = None
) -> pa.Table:
    """Null every sample of a category at instants it may not leave the car; drop columns left empty."""
    t = times_ms(table)
    cols: list[pa.ChunkedArray] = [table.column("t")]
    fields: list[pa.Field] = [table.schema.field("t")]
    masks: dict[str, np.ndarray] = {}
    for f in table.schema:
        if f.name == "t":
            continue
        sig = catalogue.get(f.name)
        if sig is None:
            continue  # unclassified data never leaves the car
        if sig.category not in masks:
            masks[sig.category] = allowed_mask(policy, sig.category, t, ignition_on_ms)
        m = masks[sig.category]
        if not m.any():
            continue
        col = table.column(f.name)
        if not m.all():
            col = pc.if_else(pa.array(m), col, pa.nulls(len(m), f.type))
        if len(col) - col.null_count == 0:
            continue
        cols.append(col)
        fields.append(f)
    keep = np.ones(len(t), dtype=bool)
    if len(cols) > 1:
        present = np.zeros(len(t), dtype=bool)
        for c in cols[1:]:
            present |= pc.is_valid(c).to_numpy(zero_copy_only=False)
        keep = present
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    return out if keep.all() else out.filter(pa.array(keep))


def statuses(
    policy: Policy, at_ms: int, categories: Iterable[str] = CATEGORIES, ignition_on_ms: int | None = None
) -> dict[str, str]:
    """Status of every category at an instant."""
    return {c: policy.status(c, at_ms, ignition_on_ms) for c in categories}


def _counter_samples(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and values of the batch's valid ``Vehicle.EDR.IgnitionCycle`` samples (both empty if none)."""
    if not has_column(table, IGNITION_CYCLE):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    col = table.column(IGNITION_CYCLE)
    idx = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
    counts = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)[idx]
    return idx, counts


def ignition_summary(table: pa.Table) -> tuple[int, int] | None:
    """``(cycle, seen_ms)``: the highest ignition counter of the batch and the time of its last sample, or None.

    The region keeps this per vehicle (``Vehicle.ignition_cycle``, ``ignition_seen_ms``) so that the next batch
    can tell whether a new ignition cycle began in between (``ignition_starts``'s ``previous``).
    """
    idx, counts = _counter_samples(table)
    if len(idx) == 0:
        return None
    top = int(counts.max())
    t = times_ms(table)
    return top, int(t[idx[counts == top]].max())


def ignition_starts(table: pa.Table, previous: tuple[int | None, int | None] | None = None) -> np.ndarray | None:
    """Per row, a lower bound of the current ignition cycle's start that the batch itself proves, or None.

    The region sees only what the car sent, so it cannot tell where the car's cycles begin from gaps in the
    rows (the car drops rows it may not send). The signed ``Vehicle.EDR.IgnitionCycle`` counter proves a
    cycle boundary: where its value rises, a new cycle began after the last sample of the lower count, so a
    decision taken at or before that sample was taken in an earlier cycle. ``previous`` is the vehicle's
    last accepted ``(cycle, seen_ms)`` (``ignition_summary`` of earlier batches): it counts as a sample just
    before the batch, so a rise between two batches is a boundary too (the new cycle began after
    ``seen_ms``). Rows before the first rise (and batches without the counter) get ``NO_IGNITION_MS``: no
    boundary is known there.
    """
    idx, counts = _counter_samples(table)
    if len(idx) == 0:
        return None
    t = times_ms(table)
    times = t[idx]
    if previous is not None and previous[0] is not None and previous[1] is not None:
        counts = np.concatenate(([int(previous[0])], counts))
        times = np.concatenate(([int(previous[1])], times))
    if len(counts) < 2:
        return None
    # A boundary lies between consecutive samples where the count rises; afterwards a count lower than one
    # already seen (a car that lies or wraps) proves nothing, so compare with the running maximum.
    running = np.maximum.accumulate(counts)
    rises = np.flatnonzero(counts[1:] > running[:-1]) + 1
    if len(rises) == 0:
        return None
    # The cycle that starts at sample ``rises`` began after the previous sample; "+1" makes a decision taken
    # at that instant count as an earlier cycle's (``granted_ms < ignition_on_ms``).
    bound = times[rises - 1] + 1
    at = np.searchsorted(times[rises], t, side="right") - 1
    return np.where(at >= 0, bound[np.maximum(at, 0)], NO_IGNITION_MS).astype(np.int64)


def cycle_unverifiable(table: pa.Table, previous: tuple[int | None, int | None] | None = None) -> bool:
    """The region cannot tell the batch's ignition cycle: no counter value at all, or one lower than stored."""
    _, counts = _counter_samples(table)
    if len(counts) == 0:
        return True
    return previous is not None and previous[0] is not None and int(counts.min()) < int(previous[0])


def _one_drive_rows(policy: Policy, category: str, t: np.ndarray) -> np.ndarray:
    """Rows at which ``category`` is collected only under a non-lasting opt-in (one status call per piece)."""
    if _DEFAULT_ON[category] or len(t) == 0 or all(c.lasting for c in policy.consents if c.category == category):
        return np.zeros(len(t), dtype=bool)
    cuts = np.array(change_points(policy, category), dtype=np.int64)
    piece = np.searchsorted(cuts, t, side="right")
    out = np.zeros(len(t), dtype=bool)
    for p in np.unique(piece).tolist():
        rows = piece == p
        at = int(t[np.argmax(rows)])
        c = policy.latest(category, at)
        out[rows] = c is not None and not c.lasting and policy.status(category, at) == COLLECTING
    return out


def check_batch(
    policy: Policy,
    table: pa.Table,
    catalogue: Catalogue,
    *,
    kind: str = "telemetry",
    previous: tuple[int | None, int | None] | None = None,
) -> None:
    """The region's own consent check of a received batch; raise ``ConsentNotGiven`` naming the first offence.

    A routine batch (``telemetry``, ``media``) is refused whole when it carries a non-null sample of a
    category whose status at that sample's time, under the owner's decisions, was not ``collecting``. An
    event batch rests on its own legal basis except for ``EVENT_BASIS_EXCLUDES`` (biometrics, cabin media),
    which are checked as in a routine batch. Vectorised: one mask per category, the status evaluated once
    per piece of time between the owner's decisions (``allowed_mask``). Unknown columns are left to payload
    validation, which runs first.

    ``previous`` is the vehicle's last accepted ignition counter and the time of its last sample
    (``ignition_summary``): a rise since then is a new cycle. A category allowed only by a non-lasting
    (one-drive) opt-in is refused (status ``unverifiable``) when the region cannot tell the batch's cycle:
    no counter value in the batch, or a counter lower than ``previous``.
    """
    checked = None if kind in ROUTINE_KINDS else EVENT_BASIS_EXCLUDES
    decided = {c.category for c in policy.consents}
    present: dict[str, np.ndarray] = {}
    for name in table.schema.names[1:]:
        sig = catalogue.get(name)
        if sig is None or (checked is not None and sig.category not in checked):
            continue
        if sig.category not in decided and _DEFAULT_ON[sig.category]:
            continue  # collected under the contract and never stopped: allowed at every instant
        col = table.column(name)
        if col.null_count == len(col):
            continue
        valid = (
            np.ones(len(col), dtype=bool) if col.null_count == 0 else pc.is_valid(col).to_numpy(zero_copy_only=False)
        )
        prev = present.get(sig.category)
        present[sig.category] = valid if prev is None else prev | valid
    if not present:
        return
    t = times_ms(table)
    ign = ignition_starts(table, previous)
    unverifiable = cycle_unverifiable(table, previous)
    for category, mask in present.items():
        rows = np.flatnonzero(mask)
        ok = allowed_mask(policy, category, t[rows], None if ign is None else ign[rows])
        if ok.all() and unverifiable:
            one_drive = _one_drive_rows(policy, category, t[rows])
            if one_drive.any():
                span = t[rows[one_drive]]
                raise ConsentNotGiven(
                    f"batch carries {len(span)} instant(s) of category {category!r} from {int(span[0])} to "
                    f"{int(span[-1])} (UTC ms) under a one-drive (non-lasting) opt-in, but the region cannot tell "
                    f"the ignition cycle: a one-drive opt-in needs the signed ignition counter "
                    f"{IGNITION_CYCLE!r} in the batch, never lower than the vehicle's last accepted value",
                    category=category,
                    status="unverifiable",
                    from_ms=int(span[0]),
                    to_ms=int(span[-1]),
                    instants=len(span),
                )
        if ok.all():
            continue
        bad = t[rows[~ok]]
        first = int(bad[0])
        status = policy.status(category, first)
        if status == COLLECTING:  # on at that instant, but for an earlier ignition cycle only
            status = "lapsed"
            why = "the owner's opt-in covered one ignition cycle and the batch shows a later one"
        else:
            why = f"its status was {status!r}"
        raise ConsentNotGiven(
            f"batch carries {len(bad)} instant(s) of category {category!r} from {first} to {int(bad[-1])} "
            f"(UTC ms) when {why}; the region stores nothing the owner has not consented to",
            category=category,
            status=status,
            from_ms=first,
            to_ms=int(bad[-1]),
            instants=len(bad),
        )
