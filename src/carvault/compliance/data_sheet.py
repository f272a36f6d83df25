"""The Data Act Art. 3(2) data sheet: what a connected vehicle generates and how its user gets at it.

Regulation (EU) 2023/2854 Art. 3(2) requires, before a connected product is bought, clear information on the
type, format and estimated volume of the product data it can generate; whether it generates data continuously
and in real time; whether it stores data on the device or on a remote server, and for how long; and how the user
may access, retrieve and erase it. Everything here is computed from the signal catalogue (``signals.py``:
``catalogue()`` and ``CATEGORIES``), the collection defaults (``compliance.consent``), the sharing rules
(``compliance.sharing``) and the export formats (``access.jobs``): no figure is written by hand except one
measured constant, ``STORED_BYTES_PER_SAMPLE``, and one measured table, the typical send rates of the signals sent
only on change (``compliance.change_rates``, made with the simulator). Volumes are stated twice: the maximum (every
signal at its catalogue rate) and the typical (on-change signals at their measured rate).

The catalogue applies to every vehicle model the region serves (the models differ in which signals their car
fills in, not in what the region accepts), so the sheet is one document naming the models it covers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from carvault.access.exports import FORMATS as READ_FORMATS
from carvault.access.jobs import FORMATS as EXPORT_FORMATS
from carvault.compliance.change_rates import DAYS, SEED, VEHICLES, typical_rate_hz
from carvault.compliance.consent import IN_CAR_CATEGORIES, default_on
from carvault.compliance.deletion import WORKING_DAYS
from carvault.compliance.operator_profile import OperatorProfiles
from carvault.compliance.sharing import MAX_GRANT_DAYS, NEVER_SHAREABLE
from carvault.signals import CATEGORIES, Catalogue, Signal
from carvault.store.metadata import Database, Vehicle

SCHEMA = "carvault-data-sheet/1"
#: Stored bytes per sample, measured by ``carvault bench`` (docs/benchmarks.md "Storage, bytes/sample (segments),
#: 60 s batches"): compressed Parquet inside the signed envelopes, timestamps included. The larger of the two
#: measured figures (0.77 B with 300 s batches), so the estimate errs on the high side.
STORED_BYTES_PER_SAMPLE = 1.34
STORED_BYTES_SOURCE = "docs/benchmarks.md: Storage, bytes/sample (segments), 60 s batches"
SECONDS_PER_HOUR = 3600
HOURS_PER_DAY = 24

# How the user reaches the data: (id, what, method, path, description). Every path is a route of the API; the
# data sheet's test fails when one of them no longer exists.
ACCESS_ROUTES: tuple[tuple[str, str, str, str, str], ...] = (
    ("telemetry", "access", "GET", "/api/v1/vehicles/{vin}/telemetry", "any time window of any signals"),
    ("timeline", "access", "GET", "/api/v1/vehicles/{vin}/timeline", "drives and charging sessions"),
    ("events", "access", "GET", "/api/v1/vehicles/{vin}/events", "events the car recorded (crash, hard braking)"),
    ("batches", "access", "GET", "/api/v1/vehicles/{vin}/batches", "the signed batches with their log positions"),
    ("audit", "access", "GET", "/api/v1/audit", "who read, exported or shared the data, when and why"),
    ("exports", "retrieve", "POST", "/api/v1/exports", "an export of any window or of the whole history"),
    ("packages", "retrieve", "POST", "/api/v1/vehicles/{vin}/packages", "an incident package with proofs"),
    ("portability", "retrieve", "POST", "/api/v1/vehicles/{vin}/portability", "a bundle for another company"),
    ("grants", "share", "GET", "/api/v1/grants", "the grants given to apps, each revocable"),
    ("rights", "rights", "POST", "/api/v1/rights-requests", "a rights request (copy, correction, complaint ...)"),
    ("deletion", "erase", "POST", "/api/v1/deletion-requests", "deletion of every off-vehicle copy, with a receipt"),
    ("consent_stop", "erase", "DELETE", "/api/v1/vehicles/{vin}/consents/{category}", "stop collecting a category"),
)
LIVE_ROUTE = "/api/v1/viss/{vin}"


def collection(category: str) -> str:
    """How a category is collected: ``default`` (under the contract; the owner may stop it), ``opt_in`` (only
    with the owner's dated consent) or ``in_car`` (stays in the car unless the owner consents)."""
    if category in IN_CAR_CATEGORIES:
        return "in_car"
    return "default" if default_on(category) else "opt_in"


def signal_json(s: Signal) -> dict[str, Any]:
    """One signal as the sheet lists it."""
    return {
        "path": s.path,
        "datatype": s.datatype,
        "unit": s.unit or None,
        "rate_hz": s.rate_hz,
        "description": s.description or None,
        "description_zh": s.description_zh or None,
        "sampling": s.sampling.value,
        "typical_rate_hz": round(typical_rate_hz(s), 6),
    }


def figures(per_second: float) -> dict[str, Any]:
    """Samples and stored bytes per hour of driving and per day of continuous collection at ``per_second``."""
    samples_hour = per_second * SECONDS_PER_HOUR
    return {
        "samples_per_second": per_second,
        "samples_per_hour_of_driving": round(samples_hour),
        "bytes_per_hour_of_driving": round(samples_hour * STORED_BYTES_PER_SAMPLE),
        "samples_per_day_continuous": round(samples_hour * HOURS_PER_DAY),
        "bytes_per_day_continuous": round(samples_hour * HOURS_PER_DAY * STORED_BYTES_PER_SAMPLE),
    }


def volume(signals: Iterable[Signal]) -> dict[str, Any]:
    """The maximum (every signal at its catalogue rate; the flat figures) and, under ``typical``, the same with
    each on-change signal at its measured rate (``compliance.change_rates``)."""
    sigs = list(signals)
    return {
        **figures(sum(s.rate_hz for s in sigs)),
        "typical": figures(round(sum(typical_rate_hz(s) for s in sigs), 6)),
    }


def category_json(name: str, signals: list[Signal]) -> dict[str, Any]:
    """One category of the sheet: class, purpose, collection default, retention, its signals and volume."""
    c = CATEGORIES[name]
    return {
        "name": c.name,
        "title": c.title,
        "privacy": c.privacy.value,
        "purpose": c.purpose,
        "collection": collection(name),
        "shareable": name not in NEVER_SHAREABLE,
        "retention_days": c.retention_days,
        "signals": [signal_json(s) for s in signals],
        "volume": volume(signals),
    }


def build(catalogue: Catalogue, *, region: str, models: Iterable[str], operator: dict[str, Any]) -> dict[str, Any]:
    """The data sheet of a region's vehicles (JSON), computed from the catalogue and the rules."""
    by_category: dict[str, list[Signal]] = {name: [] for name in CATEGORIES}
    for s in catalogue:
        by_category[s.category].append(s)
    categories = [category_json(name, sigs) for name, sigs in by_category.items()]
    default_signals = [s for name, sigs in by_category.items() if collection(name) == "default" for s in sigs]
    return {
        "schema": SCHEMA,
        "region": region,
        "data_holder": operator,
        "models": sorted({m for m in models if m}) or None,
        "models_note": "the catalogue applies to every vehicle model registered in this region",
        "categories": categories,
        "volume": {
            "default_collection": volume(default_signals),
            "everything_consented": volume(catalogue),
            "bytes_per_sample": STORED_BYTES_PER_SAMPLE,
            "bytes_per_sample_source": STORED_BYTES_SOURCE,
            "method": "maximum (the figures of each volume): samples = sum of each signal's catalogue rate (Hz) x "
            "seconds; typical (each volume's 'typical'): the same with each signal sent only on change at its "
            "measured rate; bytes = samples x the measured stored bytes per sample; exterior camera frames (JPEG "
            "files) are stored beside the batches and not counted",
            "typical_method": f"on-change signals' send rates measured with the simulator: {VEHICLES} simulated "
            f"vehicles over the days {DAYS[0]} to {DAYS[1]} (seed {SEED}), values sent (changes and wakes) per "
            "second the cars were on; periodic signals at their catalogue rate (docs/data-sheet.md)",
            "signals_on_change": sum(1 for s in catalogue if s.on_change),
        },
        "format": {
            "upload": "Apache Parquet (or Arrow IPC) inside an envelope signed by the vehicle (Ed25519), logged in "
            "a transparency log (RFC 9162)",
            "stored": "the exact signed bytes as received (evidence), plus query copies in Parquet",
            "reads": sorted(READ_FORMATS),
            "exports": list(EXPORT_FORMATS),
            "portability": "ZIP bundle of the original signed batches with inclusion proofs (docs/portability.md)",
            "signal_names": "COVESA VSS 6.0 paths, with the overlay Vehicle.EDR and Vehicle.CarVault",
        },
        "continuous": {
            "generated": "continuously while the vehicle is on, at each signal's rate; events (crash, hard "
            "braking) as separate event batches",
            "upload": "signed batches, typically every 60 to 300 seconds; buffered in the car while offline",
            "real_time": True,
            "real_time_route": LIVE_ROUTE,
            "real_time_protocol": "COVESA VISS v3 over WebSocket: latest value and subscriptions",
        },
        "storage": {
            "on_vehicle": "a buffer of batches not yet uploaded, and an event-recorder ring buffer",
            "remote": f"the operator's servers in region {region}, never moved abroad without a transfer record",
            "region": region,
            "retention": {c["name"]: c["retention_days"] for c in categories},
        },
        "access": [
            {"id": key, "kind": kind, "method": method, "path": path, "description": text}
            for key, kind, method, path, text in ACCESS_ROUTES
        ],
        "sharing": {
            "how": "OAuth 2.0 grants the owner gives to apps, scoped by signal, vehicle, window and end date",
            "max_grant_days": MAX_GRANT_DAYS,
            "never_shareable": sorted(NEVER_SHAREABLE),
        },
        "erasure": {
            "how": "a deletion request (one vehicle or all data) in the portal or the API",
            "deadline_working_days": WORKING_DAYS,
            "kept": "consent and audit records and the transparency-log leaves (hashes), as the receipt states",
            "holds": "data under a legal hold is kept frozen (not served) and deleted when the hold ends",
        },
        "cost": "access, retrieval and erasure are free of charge",
    }


class DataSheet:
    """The region's data sheet, built on request from the catalogue, the models registered and the operator."""

    def __init__(self, db: Database, catalogue: Catalogue, region: str, profile: OperatorProfiles) -> None:
        self.db = db
        self.catalogue = catalogue
        self.region = region
        self.profile = profile

    def models(self) -> list[str]:
        """The vehicle models registered in this region (their names as provisioned)."""
        with self.db.session() as s:
            return [m for m in s.scalars(select(Vehicle.model).distinct()) if m]

    def json(self) -> dict[str, Any]:
        """The sheet, as served at GET /api/v1/data-sheet."""
        return build(self.catalogue, region=self.region, models=self.models(), operator=self.profile.public())
