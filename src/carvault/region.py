"""A region deployment: the one object that the server, the CLI and the tests all build from settings."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from carvault.access.accounts import Accounts
from carvault.access.apps import Apps
from carvault.access.audit import AuditLog
from carvault.access.charging import Charging, nearest_towns
from carvault.access.completeness import Completeness
from carvault.access.consents import Consents
from carvault.access.grants import Grants
from carvault.access.places import Places
from carvault.access.staff import Staff
from carvault.access.statistics import Statistics
from carvault.access.vehicles import Vehicles
from carvault.compliance.annual_report import AnnualReports
from carvault.compliance.cases import Cases
from carvault.compliance.data_sheet import DataSheet
from carvault.compliance.deletion import Deletions
from carvault.compliance.incidents import Incidents
from carvault.compliance.operator_profile import OperatorProfiles
from carvault.compliance.records import Records
from carvault.compliance.residency import RegionDirectory, Residency
from carvault.compliance.retention import Retention
from carvault.compliance.rights import Rights
from carvault.compliance.transfers import Transfers
from carvault.durable import create_exclusively
from carvault.ingest.broker import broker_of
from carvault.ingest.fleet_telemetry import FleetTelemetry
from carvault.ingest.frames import FrameStore
from carvault.ingest.gateway import Gateway
from carvault.ingest.live import LastValueStore, LiveChannel, LiveHub
from carvault.ingest.reconcile import reconcile
from carvault.ledger.leaves import DATA_KEY_FILE, log_key_of, seal_clear_log_keys
from carvault.ledger.sequencer import log_of
from carvault.ledger.tiles import TilePublisher
from carvault.ledger.witnessing import Witnessing, parse_witnesses
from carvault.metrics import Metrics
from carvault.pki import RegionCA
from carvault.settings import Settings
from carvault.signals import Catalogue, catalogue
from carvault.store.blobs import blob_store_of
from carvault.store.day_copies import DayCopies
from carvault.store.derived import DerivedCopies
from carvault.store.metadata import BatchRecord, Database
from carvault.store.segments import SegmentReader, SegmentWriter
from carvault.store.telemetry import TelemetryStore


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key kept as PKCS#8 PEM (mode 0600), created on first use."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        if create_exclusively(path, pem):
            return key
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)  # ours, or the race winner's
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key


DATA_KEY_LEN = 32


def load_or_create_data_key(path: Path) -> bytes:
    """A 32-byte symmetric key kept raw (mode 0600), created on first use; the same file in every process."""
    if not path.exists():
        key = os.urandom(DATA_KEY_LEN)
        if create_exclusively(path, key):
            return key
    key = path.read_bytes()
    if len(key) != DATA_KEY_LEN:
        raise ValueError(f"{path} is not a {DATA_KEY_LEN}-byte key")
    return key


def log_origin(region: str) -> str:
    """The checkpoint origin line of a region's transparency log."""
    return f"{region}.carvault.example/log"


class Region:
    """Every store and service of one region, wired together."""

    def __init__(self, settings: Settings, *, catalogue_: Catalogue | None = None) -> None:
        self.settings = settings
        self.name = settings.region
        self.metrics = Metrics(self)  # what /metrics shows the operator's Prometheus (levels read when scraped)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        self.db.create_schema()
        self.catalogue = catalogue_ or catalogue()
        keys = settings.data_dir / "keys"
        # Bytes that are not metadata (issue 12): the local folder by default, S3-compatible storage at scale.
        self.blobs = blob_store_of(
            settings.blob_store,
            settings.data_dir,
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
        )
        self.db.data_key = load_or_create_data_key(keys / DATA_KEY_FILE)  # seals vehicles' log keys at rest
        seal_clear_log_keys(self.db)  # log keys written in the clear before sealing
        self.log_key = load_or_create_key(keys / "log-ed25519.pem")
        self.ca = RegionCA.load_or_create(load_or_create_key(keys / "ca-ed25519.pem"), keys / "ca.pem", self.name)
        # The log's tree: a folder (one machine) or PostgreSQL (replicas; ledger/sequencer.py), per log_backend.
        self.log = log_of(
            settings.log_backend,
            settings.data_dir / "log",
            settings.resolved_database_url,
            origin=log_origin(self.name),
            private_key=self.log_key,
            key_name=log_origin(self.name),
        )
        # C2SP tlog-tiles in the blob store (log/…), published in the background after appends (ledger/tiles.py).
        self.tiles = TilePublisher(self.log, self.blobs, exclusive=self.log.publishing)
        self.log.listeners.append(self.tiles.notify)
        # Independent witnesses cosign each published checkpoint, in the background (ledger/witnessing.py).
        self.witnessing = Witnessing(
            self.log, self.blobs, self.db, parse_witnesses(settings.witnesses), settings.witness_quorum
        ).start()
        self.tiles.on_published = self.witnessing.notify
        self.tiles.start()
        # Batches committed by a process killed before its log append get their leaf now, exactly once.
        self.reconciled = reconcile(self.db, self.log, self.name, settings.data_dir)
        self.segments = SegmentWriter(self.blobs, settings.segment_max_bytes)  # evidence: segments/ keys
        self.segment_reader = SegmentReader(self.blobs)
        self.accounts = Accounts(self.db, settings.session_ttl_s)
        self.residency = Residency.of_database(
            self.db, self.name, settings.region_endpoints, RegionDirectory.of_setting(settings.region_directory)
        )
        self.vehicles = Vehicles(self.db, self.name, self.residency)
        self.audit = AuditLog(self.db)
        self.staff = Staff(self.db, self.audit, self.name)  # the operator's staff accounts (issue 11)
        self.consents = Consents(self.db, self.audit, self.name)
        self.apps = Apps(self.db)
        # Cross-border transfers (issue 11): the gate every read by a principal outside this region passes.
        self.transfers = Transfers(self.db, self.audit, self.name)
        self.grants = Grants(
            self.db, self.catalogue, self.apps, self.accounts, self.audit, self.name, transfers=self.transfers
        )
        self.derived = DerivedCopies(settings.data_dir / "derived", kept=self._batch_kept)
        # Payload parts of closed days (issue 12): evidence and query copy share their bytes (store/day_copies.py).
        self.derived.days = DayCopies(self.db, self.blobs, self.segment_reader, settings.data_dir / "copies-cache")
        self.telemetry = TelemetryStore(self.db, self.segment_reader, self.derived, days=self.derived.days)
        self.frames = FrameStore(self.db, self.segment_reader, self.blobs)  # frames: blobs/ keys
        self.deletions = Deletions(self)
        # Rights desk, incidents (PIPL Art. 57) and processing records (issue 11).
        self.rights = Rights(self.db, self.audit, self.name)
        self.incidents = Incidents(self.db, self.audit, self.catalogue)
        self.records = Records(self.db, self.audit, self.catalogue, self.name)
        # Operator cases (issue 11): the one way staff read an owner's data; foreign staff pass the transfer gate.
        self.cases = Cases(
            self.db,
            self.catalogue,
            self.audit,
            self.name,
            check_served=self.deletions.check_served,
            transfers=lambda: getattr(self, "transfers", None),
        )
        # Reports (issue 11): the operator profile, the annual report (signed like deletion receipts), the data sheet.
        self.operator_profile = OperatorProfiles(self.db, self.audit, self.name)
        self.reports = AnnualReports(
            self.db, self.catalogue, self.name, self.operator_profile, self.audit, self.log_key, self.log.vkey
        )
        self.data_sheet = DataSheet(self.db, self.catalogue, self.name, self.operator_profile)
        # Retention (issue 11): each category's period enforced by a purge; reads withhold what a run has cut off.
        self.retention = Retention(
            self.db,
            self.catalogue,
            self.audit,
            segments=self.segment_reader,
            derived=self.derived,
            frames=self.frames,
            data_dir=settings.data_dir,
            region=self.name,
            log_key=self.log_key,
            log_vkey=self.log.vkey,
            interval_s=settings.retention_interval_s,
        )
        self.telemetry.withheld = self.retention.withheld
        # Statistics (issue 13): day summaries kept as a cache of the evidence, dropped with the batches.
        self.statistics = Statistics(
            self.db,
            self.catalogue,
            self.telemetry.window,
            withheld=self.retention.withheld,
            last_seen=lambda vin: self.live.last_seen_ms(vin),  # the live channel: online though batches are pending
        )
        # Charging (issue 13): sessions derived per day and kept as a cache of the evidence, tariffs, battery health.
        self.charging = Charging(
            self.db,
            self.telemetry,
            self.catalogue,
            self.name,
            places=lambda: getattr(self, "places", None),
            describe=nearest_towns,
        )
        # Completeness (issue 13): per day and drive, what is missing and why; signed like deletion receipts.
        self.completeness = Completeness(
            self.db, self.catalogue, self.telemetry, self.consents.policy, self.name, self.log_key, self.log.vkey
        )
        # Live frames (issue 10): last values and subscriptions, fanned out to every replica through the broker.
        self.live = LiveHub(
            broker_of(settings.live_broker, self.name, settings.resolved_database_url), LastValueStore(self.db)
        )
        self.live.withheld = self.retention.withheld  # last values past their retention period are not served
        # Owner-defined places (issue 13): shown on maps; masked ones travel to the car and are enforced here.
        self.places = Places(self.db, self.audit)
        self.gateway = Gateway(
            settings,
            self.db,
            self.segments,
            self.log,
            self.catalogue,
            self.ca.cert_pem,
            policy_of=self.consents.policy,  # no cache: a stop applies to the very next batch, in every worker
            residency=self.residency,
        )
        self.gateway.metrics = self.metrics
        # Cars streaming live frames to this replica: checked like batches, fanned out through region.live.
        self.live_channel = LiveChannel(self.gateway, self.catalogue, self.live)
        self.gateway.live_root_check = self.live_channel.evidence.check_root
        self.gateway.places_check = self.places.check_batch  # the owner's masked places, enforced here too
        # Fleet Telemetry (issue 14): Teslas stream as they are; the region attests their records with its own key.
        self.fleet = FleetTelemetry(
            self.gateway,
            self.catalogue,
            self.ca,
            load_or_create_key(keys / "attestation-ed25519.pem"),
            register=self.vehicles.register,
            log_key_of=lambda vin: log_key_of(self.db, vin),
            hub=self.live,
            telemetry=self.telemetry,
        )
        self.fleet.masked_places = self.places.masked_for_vehicle  # a Tesla does not mask: the region does

    def _batch_kept(self, vin: str, batch_hash: str) -> bool:
        """Whether a batch is still stored (a query copy of a deleted batch is removed as soon as it is written)."""
        with self.db.connection() as conn:  # one read per ingested batch: Core, no session (issue 10)
            found = conn.scalar(
                select(BatchRecord.seq).where(BatchRecord.vin == vin, BatchRecord.batch_hash == batch_hash).limit(1)
            )
        return found is not None

    def close(self) -> None:
        """Stop background work and release files and connections."""
        self.gateway.close()  # first: its group commit may still append to the log
        self.tiles.close()
        self.witnessing.close()
        self.log.close()
        self.segments.close()
        self.segment_reader.close()
        self.blobs.close()
        self.db.dispose()

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
