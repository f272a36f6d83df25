"""The annual report on automotive data processing (Several Provisions on Automotive Data Security, 2021, Art. 13–14).

Computed for one calendar year only from the region's own records: the catalogue, the batch index, owners and
vehicles, consents, grants and apps, transfer records and events, incidents, rights and deletion requests,
authority orders and legal holds, retention runs. The only hand-entered part is the operator profile
(``compliance.operator_profile``). Every figure names the records it was computed from (``source``);
docs/annual-report.md lists them in one table.

The year is the region's civil calendar year (``carvault.timezones``: 1 January 00:00 China time for ``cn``; UTC for
a region without a listed zone). A record counts in the year when its own time lies in ``[from_ms, to_ms)``: a
batch by ``received_ms`` (when the region processed it), a grant when it was in force at some point of the year.

The report is signed by the region's log key (Ed25519, as deletion receipts are) over its canonical JSON with the
context ``carvault-annual-report-v1``. Finalising a year stores the signed JSON; from then on that stored copy is
what is served, whatever later records say.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carvault.access.audit import LEGAL_OBLIGATION, Actor, AuditAction, AuditLog
from carvault.compliance.data_sheet import collection
from carvault.compliance.operator_profile import OperatorProfiles
from carvault.errors import InvalidQuery, ReportFinalised
from carvault.ledger.checkpoint import parse_vkey
from carvault.signals import CATEGORIES, Catalogue
from carvault.store.metadata import (
    AnnualReportFiling,
    App,
    AuthorityOrder,
    BatchRecord,
    ConsentRecord,
    Database,
    DeletionRequest,
    Grant,
    Incident,
    LegalHold,
    Owner,
    PortabilityBundle,
    ProcessingRecord,
    RetentionRun,
    RightsRequest,
    TransferEvent,
    TransferRecord,
    Vehicle,
    now_ms,
)
from carvault.timezones import region_zone

SCHEMA = "carvault-annual-report/1"
SIGNATURE_CONTEXT = b"carvault-annual-report-v1\n"
FIRST_YEAR = 2000
DUE_MONTH, DUE_DAY = 12, 15  # Art. 13: the report is due by 15 December of the year it covers
REMIND_MONTH = 11  # the reminder shows from 1 November on
NOT_RECORDED = "not recorded by this region"
PROCESSOR_SOURCE = (
    "processing_records of kind processor (entrusted processors) engaged during the year (recorded before its end, "
    "not retired before its start)"
)
#: Grant kinds that provide data to a third party (a personal access token is the owner's own tool).
PROVISION_KINDS = ("app", "portability")


def figure(value: Any, source: str) -> dict[str, Any]:
    """One figure of the report with the records it was computed from."""
    return {"value": value, "source": source}


def canonical(body: dict[str, Any]) -> bytes:
    """The signed bytes of a report body: sorted keys, no spaces, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` in whole units (largest remainder; ties to the earlier index)."""
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("weights must add up to more than zero")
    shares = [total * w // whole for w in weights]
    rests = [total * w % whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-rests[i], i))[: total - sum(shares)]:
        shares[i] += 1
    return shares


def year_bounds(region: str, year: int) -> tuple[int, int, str]:
    """``[from_ms, to_ms)`` of a calendar year in the region's civil time, and the zone's name."""
    found = region_zone(region)
    name, zone = found if found else ("UTC", ZoneInfo("UTC"))
    start = dt.datetime(year, 1, 1, tzinfo=zone)
    end = dt.datetime(year + 1, 1, 1, tzinfo=zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000), name


def local_date(region: str, ms: int) -> dt.date:
    """The region's civil date at an instant."""
    found = region_zone(region)
    zone = found[1] if found else ZoneInfo("UTC")
    return dt.datetime.fromtimestamp(ms / 1000, zone).date()


def verify_signature(report: dict[str, Any], vkey: str) -> bool:
    """Whether ``report`` carries a valid signature by the key ``vkey`` (the region's log verifier key)."""
    sig = report.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        return False
    body = {k: v for k, v in report.items() if k != "signature"}
    try:
        parse_vkey(vkey).public_key.verify(base64.b64decode(sig["value"]), SIGNATURE_CONTEXT + canonical(body))
    except (InvalidSignature, ValueError):
        return False
    return True


class _Year:
    """The period being reported and the SQL conditions for it."""

    def __init__(self, region: str, year: int) -> None:
        self.year = year
        self.start, self.end, self.zone = year_bounds(region, year)

    def within(self, column: Any) -> Any:
        """``column`` lies in the year."""
        return and_(column >= self.start, column < self.end)


class AnnualReports:
    """Builds, signs, finalises and serves a region's annual reports."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        region: str,
        profile: OperatorProfiles,
        audit: AuditLog,
        signer: Ed25519PrivateKey,
        vkey: str,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.region = region
        self.profile = profile
        self.audit = audit
        self.signer = signer
        self.vkey = vkey

    # ------------------------------------------------------------------ serving
    def check_year(self, year: int, now: int | None = None) -> int:
        """A year that can be reported: from 2000 to the current one (a year not begun has no records)."""
        current = local_date(self.region, now_ms() if now is None else now).year
        if not isinstance(year, int) or not FIRST_YEAR <= year <= current:
            raise InvalidQuery(f"year must be between {FIRST_YEAR} and {current}", parameter="year")
        return year

    def report(self, year: int) -> dict[str, Any]:
        """The year's report: the filed copy once finalised, else computed now and signed."""
        self.check_year(year)
        filed = self.filing(year)
        if filed is not None:
            return json.loads(filed.body)
        return self.sign(self.compute(year))

    def filing(self, year: int) -> AnnualReportFiling | None:
        """The finalised report of a year, if any."""
        with self.db.session() as s:
            return s.scalar(
                select(AnnualReportFiling).where(
                    AnnualReportFiling.region == self.region, AnnualReportFiling.year == year
                )
            )

    def filings(self) -> list[dict[str, Any]]:
        """Every finalised year: when, by whom, and the SHA-256 of the filed JSON."""
        with self.db.session() as s:
            rows = s.scalars(
                select(AnnualReportFiling)
                .where(AnnualReportFiling.region == self.region)
                .order_by(AnnualReportFiling.year.desc())
            )
            return [
                {"year": r.year, "finalised_ms": r.finalised_ms, "finalised_by": r.finalised_by, "sha256": r.sha256}
                for r in rows
            ]

    def finalise(self, year: int, actor: Actor) -> dict[str, Any]:
        """Compute, sign and store the year's report; a year is finalised once (``ReportFinalised`` after)."""
        self.check_year(year)
        if self.filing(year) is not None:
            raise ReportFinalised(f"the annual report for {year} was already finalised", year=year)
        body = self.compute(year)
        body["finalised"] = {"at_ms": body["generated_ms"], "by": str(actor)}
        report = self.sign(body)
        text = json.dumps(report, ensure_ascii=False)  # in report order (the PDF follows it); signed sorted
        digest = hashlib.sha256(text.encode()).hexdigest()
        try:
            with self.db.session() as s:
                s.add(
                    AnnualReportFiling(
                        region=self.region,
                        year=year,
                        body=text,
                        sha256=digest,
                        finalised_ms=body["generated_ms"],
                        finalised_by=str(actor),
                    )
                )
        except IntegrityError:  # another replica finalised the same year a moment earlier
            raise ReportFinalised(f"the annual report for {year} was already finalised", year=year) from None
        self.audit.record(
            owner_id=None,
            actor=actor,
            action=AuditAction.REPORT_FINALISE,
            legal_basis=LEGAL_OBLIGATION,
            detail={"year": year, "sha256": digest},
        )
        return report

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with the region's signature over its canonical JSON."""
        value = self.signer.sign(SIGNATURE_CONTEXT + canonical(body))
        return {
            **body,
            "signature": {
                "alg": "Ed25519",
                "context": SIGNATURE_CONTEXT.decode().strip(),
                "value": base64.b64encode(value).decode(),
                "signed_by": self.vkey,
            },
        }

    def due(self, now: int | None = None) -> dict[str, Any]:
        """The filing reminder: from 1 November, "report for YEAR due by 15 Dec, N days left" until it is filed."""
        now = now_ms() if now is None else now
        today = local_date(self.region, now)
        deadline = dt.date(today.year, DUE_MONTH, DUE_DAY)
        days_left = (deadline - today).days
        filed = self.filing(today.year) is not None
        if filed:
            state = "filed"
        elif today < dt.date(today.year, REMIND_MONTH, 1):
            state = "not_yet"
        else:
            state = "due" if days_left >= 0 else "overdue"
        return {
            "year": today.year,
            "due_date": deadline.isoformat(),
            "days_left": days_left,
            "state": state,
            "remind": state in ("due", "overdue"),
            "message": {
                "en": due_text_en(today.year, days_left, state),
                "zh-CN": due_text_zh(today.year, days_left, state),
            },
        }

    # ------------------------------------------------------------------ computing
    def compute(self, year: int, now: int | None = None) -> dict[str, Any]:
        """The unsigned report of a year from the records as they are now."""
        y = _Year(self.region, year)
        generated = now_ms() if now is None else now
        with self.db.session() as s:
            scale, collected = self._scale(s, y)
            sections = {
                "operator": self._operator(),
                "data_types": self._data_types(collected),
                "scale": scale,
                "purposes": self._purposes(s, y, collected),
                "storage": self._storage(s, y),
                "provision": self._provision(s, y),
                "transfers": self._transfers(s, y),
                "incidents": self._incidents(s, y),
                "rights_requests": self._rights(s, y),
                "deletion_requests": self._deletions(s, y),
                "authority": self._authority(s, y),
            }
        return {
            "schema": SCHEMA,
            "region": self.region,
            "year": year,
            "period": {
                "from_ms": y.start,
                "to_ms": y.end,
                "time_zone": y.zone,
                "complete": generated >= y.end,
            },
            "generated_ms": generated,
            "finalised": None,
            "sections": sections,
        }

    def _operator(self) -> dict[str, Any]:
        p = self.profile.get()
        src = "operator_profile (entered by a region admin)"
        if p is None:
            return {"status": NOT_RECORDED, "source": src}
        return {
            "operator_name": figure(p.operator_name, src),
            "region": figure(self.region, "settings: region"),
            "security_lead": figure({"name": p.security_lead, "contact": p.security_lead_contact}, src),
            "rights_contact": figure({"name": p.rights_contact, "contact": p.rights_contact_contact}, src),
            "updated_ms": p.updated_ms,
        }

    def _data_types(self, collected: dict[str, int]) -> dict[str, Any]:
        rows = []
        for c in CATEGORIES.values():
            sigs = [s for s in self.catalogue if s.category == c.name]
            rows.append(
                {
                    "category": c.name,
                    "title": c.title,
                    "privacy": c.privacy.value,
                    "signals": len(sigs),
                    "collection": collection(c.name),
                    "collected_in_year": collected.get(c.name, 0) > 0,
                }
            )
        return {
            "categories": rows,
            "source": "signals.CATEGORIES and the signal catalogue; collected_in_year: batches received in the year",
        }

    def _scale(self, s: Session, y: _Year) -> tuple[dict[str, Any], dict[str, int]]:
        in_year = y.within(BatchRecord.received_ms)
        batch_src = "batches (received_ms in the year)"
        totals = s.execute(
            select(
                func.count(BatchRecord.id),
                func.coalesce(func.sum(BatchRecord.samples), 0),
                func.coalesce(func.sum(BatchRecord.length), 0),
            ).where(in_year)
        ).one()
        data_vins = select(BatchRecord.vin).where(in_year).distinct().subquery()
        persons = s.scalar(
            select(func.count(func.distinct(Vehicle.owner_id))).where(
                Vehicle.vin.in_(select(data_vins.c.vin)), Vehicle.owner_id.is_not(None)
            )
        )
        unowned = s.scalar(
            select(func.count())
            .select_from(Vehicle)
            .where(Vehicle.vin.in_(select(data_vins.c.vin)), Vehicle.owner_id.is_(None))
        )
        groups = s.execute(
            select(
                BatchRecord.vin,
                BatchRecord.columns,
                func.count(),
                func.sum(BatchRecord.samples),
                func.sum(BatchRecord.length),
            )
            .where(in_year)
            .group_by(BatchRecord.vin, BatchRecord.columns)
        ).all()
        by_category = self._by_category((str(v), str(c), int(n), int(k), int(b)) for v, c, n, k, b in groups)
        scale = {
            "vehicles_registered": figure(
                s.scalar(select(func.count()).select_from(Vehicle).where(Vehicle.provisioned_ms < y.end)),
                "vehicles (provisioned_ms before the end of the year)",
            ),
            "vehicles_with_data": figure(
                s.scalar(select(func.count()).select_from(data_vins)), batch_src + ", distinct vin"
            ),
            "owners": figure(
                s.scalar(select(func.count()).select_from(Owner).where(Owner.created_ms < y.end)),
                "owners (accounts created before the end of the year)",
            ),
            "owners_new": figure(
                s.scalar(select(func.count()).select_from(Owner).where(y.within(Owner.created_ms))),
                "owners (created_ms in the year)",
            ),
            "persons": figure(persons, batch_src + " joined to vehicles: distinct owner_id of those vehicles"),
            "vehicles_without_owner": figure(unowned, batch_src + " joined to vehicles with no owner"),
            "batches": figure(totals[0], batch_src + ", count"),
            "samples": figure(int(totals[1]), batch_src + ", sum of samples"),
            "bytes": figure(int(totals[2]), batch_src + ", sum of length (exact signed bytes stored)"),
            "by_category": {
                "rows": by_category,
                "source": batch_src + " x the catalogue category of each column",
                "method": "batches with the same vehicle and column set are summed; each sum of samples and of "
                "bytes is split over the columns in proportion to their catalogue rate (Hz), in whole units by "
                "largest remainder, then added up by category",
            },
        }
        return scale, {r["category"]: r["samples"] for r in by_category}

    def _by_category(self, groups: Iterable[tuple[str, str, int, int, int]]) -> list[dict[str, Any]]:
        samples: dict[str, int] = defaultdict(int)
        size: dict[str, int] = defaultdict(int)
        batches: dict[str, int] = defaultdict(int)
        vins: dict[str, set[str]] = defaultdict(set)
        for vin, columns, count, n_samples, n_bytes in groups:
            paths = [p for p in columns.split(",") if p]
            if not paths:
                continue
            cats = [self.catalogue[p].category if p in self.catalogue else "unclassified" for p in paths]
            weights = [self.catalogue[p].rate_hz if p in self.catalogue else 1 for p in paths]
            for cat, share in zip(cats, apportion(int(n_samples), weights), strict=True):
                samples[cat] += share
            for cat, share in zip(cats, apportion(int(n_bytes), weights), strict=True):
                size[cat] += share
            for cat in set(cats):
                batches[cat] += int(count)
                vins[cat].add(vin)
        order = [*CATEGORIES, *sorted(set(samples) - set(CATEGORIES))]
        return [
            {"category": c, "batches": batches[c], "vehicles": len(vins[c]), "samples": samples[c], "bytes": size[c]}
            for c in order
            if c in batches
        ]

    def _purposes(self, s: Session, y: _Year, collected: dict[str, int]) -> dict[str, Any]:
        consents = dict(
            s.execute(
                select(ConsentRecord.category, func.count())
                .where(y.within(ConsentRecord.granted_ms), ConsentRecord.enabled.is_(True))
                .group_by(ConsentRecord.category)
            ).all()
        )
        rows = [
            {
                "category": c.name,
                "purpose": c.purpose,
                "legal_basis": "contract" if collection(c.name) == "default" else "consent",
                "collected_in_year": collected.get(c.name, 0) > 0,
                "consents_given": int(consents.get(c.name, 0)),
            }
            for c in CATEGORIES.values()
        ]
        return {
            "categories": rows,
            "source": "signals.CATEGORIES (purpose); consents (enabled, granted_ms in the year), count per category",
        }

    def _storage(self, s: Session, y: _Year) -> dict[str, Any]:
        out: dict[str, Any] = {
            "place": figure(
                f"region {self.region}: batches, log and metadata stored on this region's servers only",
                "settings: region; residency rules (compliance/residency.py)",
            ),
            "metadata_backend": figure(self.db.engine.dialect.name, "settings: database_url"),
            "retention_days": figure(
                {c.name: c.retention_days for c in CATEGORIES.values()}, "signals.CATEGORIES retention_days"
            ),
        }
        purges = s.scalar(
            select(func.count())
            .select_from(RetentionRun)
            .where(y.within(RetentionRun.finished_ms), RetentionRun.status == "done", RetentionRun.dry_run.is_(False))
        )
        out["purge_runs"] = figure(purges, "retention_runs (finished_ms in the year, status done, not dry runs)")
        return out

    def _provision(self, s: Session, y: _Year) -> dict[str, Any]:
        in_force = and_(
            Grant.kind.in_(PROVISION_KINDS),
            Grant.created_ms < y.end,
            Grant.expires_ms >= y.start,
            or_(Grant.revoked_ms.is_(None), Grant.revoked_ms >= y.start),
        )
        grants = list(s.scalars(select(Grant).where(in_force).order_by(Grant.id)))
        apps = {a.client_id: a for a in s.scalars(select(App).where(App.client_id.in_({g.client_id for g in grants})))}
        bundles = {
            b.grant_id: json.loads(b.recipient)
            for b in s.scalars(select(PortabilityBundle).where(PortabilityBundle.grant_id.in_([g.id for g in grants])))
        }
        recipients: dict[tuple[str, str], dict[str, Any]] = {}
        for g in grants:
            who = self._recipient(g, apps, bundles)
            r = recipients.setdefault(
                (g.kind, who["id"]),
                {
                    **who,
                    "kind": g.kind,
                    "grants_in_force": 0,
                    "grants_created": 0,
                    "owners": set(),
                    "purposes": set(),
                    "categories": set(),
                },
            )
            r["grants_in_force"] += 1
            r["grants_created"] += int(y.start <= g.created_ms < y.end)
            r["owners"].add(g.owner_id)
            r["purposes"].add(g.purpose)
            r["categories"].update(self._categories(json.loads(g.signals)))
        rows = [
            {**r, "owners": len(r["owners"]), "purposes": sorted(r["purposes"]), "categories": sorted(r["categories"])}
            for r in recipients.values()
        ]
        src = (
            "grants of kind app or portability in force during the year (created before its end, not expired or "
            "revoked before its start) joined to apps and portability_bundles"
        )
        processors = self._processors(s, y)
        return {
            "recipients": figure(len(rows), src),
            "grants_in_force": figure(len(grants), src),
            "grants_created": figure(sum(r["grants_created"] for r in rows), src + "; created_ms in the year"),
            "owners": figure(len({g.owner_id for g in grants}), src + "; distinct owner_id"),
            "rows": rows,
            "source": src,
            "processors": figure(len(processors), PROCESSOR_SOURCE),
            "processor_rows": processors,
        }

    @staticmethod
    def _processors(s: Session, y: _Year) -> list[dict[str, Any]]:
        found = s.scalars(
            select(ProcessingRecord)
            .where(
                ProcessingRecord.kind == "processor",
                ProcessingRecord.created_ms < y.end,
                or_(ProcessingRecord.retired_ms.is_(None), ProcessingRecord.retired_ms >= y.start),
            )
            .order_by(ProcessingRecord.id)
        )
        return [
            {
                "key": p.key,
                "name": p.name,
                "purpose": p.purpose,
                "categories": json.loads(p.categories),
                "jurisdiction": p.jurisdiction,
                "retired_ms": p.retired_ms,
            }
            for p in found
        ]

    @staticmethod
    def _recipient(g: Grant, apps: dict[str, App], bundles: dict[int, dict[str, Any]]) -> dict[str, Any]:
        if g.kind == "app" and g.client_id in apps:
            a = apps[g.client_id]
            return {"id": a.client_id, "name": a.name, "legal_entity": a.legal_entity, "jurisdiction": a.jurisdiction}
        b = bundles.get(g.id, {})
        name = str(b.get("name") or g.label or g.client_id or f"grant {g.id}")
        return {"id": name, "name": name, "legal_entity": b.get("legal_entity"), "jurisdiction": b.get("jurisdiction")}

    def _categories(self, selectors: list[str]) -> set[str]:
        found: set[str] = set()
        for sel in selectors:
            found.update(s.category for s in self.catalogue if s.path == sel or s.path.startswith(sel + "."))
        return found

    def _transfers(self, s: Session, y: _Year) -> dict[str, Any]:
        records = list(
            s.scalars(
                select(TransferRecord)
                .where(
                    TransferRecord.created_ms < y.end, TransferRecord.from_ms < y.end, TransferRecord.to_ms > y.start
                )
                .order_by(TransferRecord.id)
            )
        )
        events = s.execute(
            select(
                TransferEvent.record_id, TransferEvent.owner_id, TransferEvent.sensitive, TransferEvent.action
            ).where(y.within(TransferEvent.at_ms))
        ).all()
        per_record: dict[int, dict[str, Any]] = defaultdict(lambda: {"events": 0, "persons": set()})
        actions: dict[str, int] = defaultdict(int)
        persons: set[int] = set()
        sensitive: set[int] = set()
        other: set[int] = set()
        for record_id, owner_id, is_sensitive, action in events:
            per_record[record_id]["events"] += 1
            actions[action] += 1
            if owner_id is not None:
                per_record[record_id]["persons"].add(owner_id)
                persons.add(owner_id)
                (sensitive if is_sensitive else other).add(owner_id)
        ev_src = "transfer_events (at_ms in the year)"
        rows = [
            {
                "id": r.id,
                "route": r.route,
                "recipient_kind": r.recipient_kind,
                "recipient": r.recipient,
                "jurisdiction": r.recipient_jurisdiction,
                "purpose": r.purpose,
                "categories": json.loads(r.categories),
                "max_persons": r.max_persons,
                "from_ms": r.from_ms,
                "to_ms": r.to_ms,
                "approval_reference": r.approval_reference,
                "status": r.status,
                "events": per_record[r.id]["events"],
                "persons": len(per_record[r.id]["persons"]),
            }
            for r in records
        ]
        return {
            "records": figure(len(rows), "transfer_records in force during the year (from_ms..to_ms overlaps it)"),
            "events": figure(len(events), ev_src + ", count"),
            "by_action": figure(dict(sorted(actions.items())), ev_src + ", count per action"),
            "persons": figure(len(persons), ev_src + ", distinct owner_id"),
            "persons_sensitive": figure(len(sensitive), ev_src + ", distinct owner_id of events with sensitive data"),
            "persons_non_sensitive": figure(
                len(other), ev_src + ", distinct owner_id of events without sensitive data"
            ),
            "rows": rows,
            "source": "transfer_records, transfer_events",
        }

    def _incidents(self, s: Session, y: _Year) -> dict[str, Any]:
        found = list(s.scalars(select(Incident).where(y.within(Incident.detected_ms)).order_by(Incident.id)))
        src = "incidents (detected_ms in the year)"
        rows = [
            {
                "id": i.id,
                "title": i.title,
                "status": i.status,
                "detected_ms": i.detected_ms,
                "categories": json.loads(i.scope_categories),
                "affected_owners": i.affected_owners,
                "owners_notified_ms": i.owners_notified_ms,
                "authority": i.authority,
                "authority_notified_ms": i.authority_notified_ms,
                "closed_ms": i.closed_ms,
                "measures": _measures(i.content),
            }
            for i in found
        ]
        return {
            "incidents": figure(len(rows), src + ", count"),
            "owners_notified": figure(
                sum(i.affected_owners or 0 for i in found if i.owners_notified_ms),
                src + ", sum of affected_owners where owners were notified",
            ),
            "authority_notified": figure(
                sum(1 for i in found if i.authority_notified_ms), src + ", authority notified"
            ),
            "closed": figure(sum(1 for i in found if i.closed_ms), src + ", closed"),
            "rows": rows,
            "source": src,
        }

    def _rights(self, s: Session, y: _Year) -> dict[str, Any]:
        found = list(s.scalars(select(RightsRequest).where(y.within(RightsRequest.received_ms))))
        src = "rights_requests (received_ms in the year)"
        kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in found:
            kinds[r.kind][r.status] += 1
            kinds[r.kind]["total"] += 1
            closed_ms = r.closed_ms
            on_time = closed_ms is not None and closed_ms <= r.deadline_ms
            late = (closed_ms is not None and closed_ms > r.deadline_ms) or (
                closed_ms is None and r.deadline_ms < y.end
            )
            kinds[r.kind]["on_time"] += int(on_time)
            kinds[r.kind]["late"] += int(late)
        complaints = [r for r in found if r.kind == "complaint"]
        refusals = [
            {"id": r.id, "kind": r.kind, "reason": r.reason}
            for r in sorted(found, key=lambda r: r.id)
            if r.status == "refused"
        ]
        return {
            "requests": figure(len(found), src + ", count"),
            "by_kind": figure(
                {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())},
                src + ", count per kind and status; on_time: closed by deadline_ms; late: closed after "
                "it, or still open with the deadline before the end of the year",
            ),
            "refused_with_reason": figure(
                sum(1 for r in found if r.status == "refused" and r.reason),
                src + ", status refused with a written reason",
            ),
            "complaints": figure(len(complaints), src + ", kind complaint"),
            "refusals": refusals,
            "complaint_outcomes": [
                {
                    "id": r.id,
                    "status": r.status,
                    "received_ms": r.received_ms,
                    "closed_ms": r.closed_ms,
                    "outcome": r.outcome,
                    "reason": r.reason,
                }
                for r in sorted(complaints, key=lambda r: r.id)
            ],
            "source": src,
        }

    def _deletions(self, s: Session, y: _Year) -> dict[str, Any]:
        found = list(s.scalars(select(DeletionRequest).where(y.within(DeletionRequest.requested_ms))))
        src = "deletion_requests (requested_ms in the year)"
        statuses: dict[str, int] = defaultdict(int)
        for r in found:
            statuses[r.status] += 1
        return {
            "requests": figure(len(found), src + ", count"),
            "by_status": figure(dict(sorted(statuses.items())), src + ", count per status"),
            "completed_on_time": figure(
                sum(1 for r in found if r.completed_ms is not None and r.completed_ms <= r.deadline_ms),
                src + ", completed_ms not after deadline_ms",
            ),
            "source": src,
        }

    def _authority(self, s: Session, y: _Year) -> dict[str, Any]:
        orders = list(s.scalars(select(AuthorityOrder).where(y.within(AuthorityOrder.created_ms))))
        by_authority: dict[str, int] = defaultdict(int)
        for o in orders:
            by_authority[o.authority] += 1
        placed = s.scalar(select(func.count()).select_from(LegalHold).where(y.within(LegalHold.since_ms)))
        released = s.scalar(select(func.count()).select_from(LegalHold).where(y.within(LegalHold.released_ms)))
        in_force = s.scalar(
            select(func.count())
            .select_from(LegalHold)
            .where(LegalHold.since_ms < y.end, or_(LegalHold.released_ms.is_(None), LegalHold.released_ms >= y.end))
        )
        return {
            "orders": figure(len(orders), "authority_orders (created_ms in the year)"),
            "orders_by_authority": figure(dict(sorted(by_authority.items())), "authority_orders, count per authority"),
            "holds_placed": figure(placed, "legal_holds (since_ms in the year)"),
            "holds_released": figure(released, "legal_holds (released_ms in the year)"),
            "holds_in_force_at_year_end": figure(in_force, "legal_holds placed before the end, not released by it"),
        }


def _measures(content: str) -> dict[str, str]:
    """The measures taken, per language, from an incident's notification content (compliance/incidents.py)."""
    try:
        by_language = json.loads(content)
    except ValueError:
        return {}
    if not isinstance(by_language, dict):
        return {}
    return {
        lang: str(text["measures"])
        for lang, text in by_language.items()
        if isinstance(text, dict) and text.get("measures")
    }


def due_text_en(year: int, days_left: int, state: str) -> str:
    """The reminder in English."""
    if state == "filed":
        return f"The annual report for {year} has been finalised."
    if state == "overdue":
        return f"The annual report for {year} was due by 15 Dec {year}: {-days_left} days overdue."
    return f"Annual report for {year} due by 15 Dec {year}: {days_left} days left."


def due_text_zh(year: int, days_left: int, state: str) -> str:
    """The reminder in Simplified Chinese."""
    if state == "filed":
        return f"{year} 年度报告已定稿。"
    if state == "overdue":
        return f"{year} 年度报告应于 {year} 年 12 月 15 日前报送，已逾期 {-days_left} 天。"
    return f"{year} 年度报告须于 {year} 年 12 月 15 日前报送，还剩 {days_left} 天。"
