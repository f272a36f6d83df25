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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carvault.signals import CATEGORIES, Catalogue, PrivacyClass

COLLECTING = "collecting"
OFF = "off"
IN_CAR_ONLY = "in_car_only"
IN_CAR_CATEGORIES = frozenset({"cabin_media", "driver_monitoring"})
MAX_CONSENT_DAYS = 3 * 365


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
    # Status is constant between change points and within an ignition cycle: evaluate once per such piece.
    cuts = np.array(change_points(policy, category), dtype=np.int64)
    piece = np.searchsorted(cuts, t_ms, side="right").astype(np.int64)
    ign = ignition_on_ms if ignition_on_ms is not None else np.zeros(len(t_ms), dtype=np.int64)
    _, first, inverse = np.unique(np.stack([piece, ign]), axis=1, return_index=True, return_inverse=True)
    values = np.array(
        [
            policy.status(category, int(t_ms[i]), int(ign[i]) if ignition_on_ms is not None else None) == COLLECTING
            for i in first.tolist()
        ],
        dtype=bool,
    )
    return values[inverse.reshape(-1)]


def filter_table(
    table: pa.Table, policy: Policy, catalogue: Catalogue, ignition_on_ms: np.ndarray | None = None
) -> pa.Table:
    """Null every sample of a category at instants it may not leave the car; drop columns left empty."""
    t = table.column("t").cast(pa.int64()).to_numpy()
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
