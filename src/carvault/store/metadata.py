"""The region's metadata database: owners, vehicles, credentials, the batch index and the audit log.

One SQLAlchemy 2 schema serves both backends: SQLite (the embedded default, WAL mode so several
gateway processes can share it) and PostgreSQL (at scale). Nothing here assumes one process: the
per-vehicle chain head advances with a conditional UPDATE, and uniqueness of (vin, seq) and of the
batch hash is enforced by the database.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateColumn, CreateIndex

from carvault.errors import Unavailable
from carvault.protocol import GENESIS_PREV


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE or DELETE (typed access to ``CursorResult.rowcount``)."""
    return int(result.rowcount)


def now_ms() -> int:
    """Wall-clock time in UTC milliseconds."""
    return time.time_ns() // 1_000_000


class Base(DeclarativeBase):
    """Declarative base of every metadata table."""


class Owner(Base):
    """A person who owns vehicles and logs into the portal/API."""

    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    locale: Mapped[str] = mapped_column(String(16), default="en")
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # Where the owner lives, a region name; NULL means this region's own (so databases made before the column
    # existed need no rewrite). compliance/transfers.py reads it through ``owner_jurisdiction``.
    jurisdiction: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Vehicle(Base):
    """A provisioned vehicle of this region, its key, its pairing code and its chain head."""

    __tablename__ = "vehicles"
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    region: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100), default="")
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    pairing_code_hash: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    claimed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provisioned_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_PREV)
    policy_applied: Mapped[int] = mapped_column(BigInteger, default=0)  # consent version the car last fetched
    # 32 random bytes that open this vehicle's v2 log leaves (docs/transparency-log.md); never served publicly.
    log_key: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    # Highest signed ignition counter (Vehicle.EDR.IgnitionCycle) accepted and the time of its last sample:
    # a rise in a later batch is a new ignition cycle (compliance/consent.py ``ignition_starts``).
    ignition_cycle: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ignition_seen_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The name its owner gave it (access/vehicles.py ``display_name``); cleared when another owner pairs it.
    name: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Credential(Base):
    """A bearer secret; only its SHA-256 is stored.

    Kinds: ``session`` (browser), ``token`` (personal access token), ``access`` and ``refresh`` (OAuth tokens
    of an app). A credential with a ``grant_id`` acts within that grant's scope only (access/grants.py);
    one without is the owner's own, full access (sessions, unscoped personal tokens).
    """

    __tablename__ = "credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "session" | "token" | "access" | "refresh"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_used_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True, index=True)
    # OAuth refresh rotation: every token issued from one authorization shares a family; a refresh token used
    # twice revokes the whole family (RFC 9700 §4.14.2).
    family: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope: Mapped[str | None] = mapped_column(Text, nullable=True)


class App(Base):
    """A registered third-party application (a data recipient): who it is, where, for what, and its status."""

    __tablename__ = "apps"
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    legal_entity: Mapped[str] = mapped_column(String(300))
    jurisdiction: Mapped[str] = mapped_column(String(16))  # a region name: where the recipient processes data
    contact: Mapped[str] = mapped_column(String(320))
    purposes: Mapped[str] = mapped_column(Text)  # JSON list, from compliance.sharing.PURPOSES
    redirect_uris: Mapped[str] = mapped_column(Text)  # JSON list
    gatekeeper: Mapped[bool] = mapped_column(Boolean, default=False)  # Data Act Art. 5(3): refused as recipient
    client_secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: public (PKCE) client
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | suspended | rejected
    description: Mapped[str] = mapped_column(Text, default="")
    website: Mapped[str] = mapped_column(String(500), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    decided_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Grant(Base):
    """What an owner allowed a recipient (an app, their own script, a portability recipient) to read, until when.

    The scope's meaning and every rule applied to it live in compliance/sharing.py.
    """

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "app" | "pat" | "portability"
    client_id: Mapped[str | None] = mapped_column(ForeignKey("apps.client_id"), nullable=True, index=True)
    vins: Mapped[str] = mapped_column(Text)  # JSON list of VINs
    signals: Mapped[str] = mapped_column(Text)  # JSON list of VSS branches or paths
    from_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: from the start of the data
    to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: open-ended (until the end date)
    live: Mapped[bool] = mapped_column(Boolean, default=False)
    precise_location: Mapped[bool] = mapped_column(Boolean, default=False)
    purpose: Mapped[str] = mapped_column(String(64))
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_access_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reads: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_served: Mapped[int] = mapped_column(BigInteger, default=0)
    label: Mapped[str] = mapped_column(String(200), default="")


class OAuthCode(Base):
    """A one-time authorization code (RFC 6749 §4.1) bound to its grant, redirect URI and PKCE challenge."""

    __tablename__ = "oauth_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"))
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    used_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class DeviceAuthorization(Base):
    """A pending device authorization (RFC 8628): the device polls with its code, the owner approves by user code."""

    __tablename__ = "device_authorizations"
    device_code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("apps.client_id"))
    scope: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(64), default="")
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    interval_s: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | denied | used
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    last_poll_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class BatchRecord(Base):
    """Index entry of one accepted batch: where its exact bytes are and what they cover."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("vin", "seq", name="uq_batches_vin_seq"),
        Index("ix_batches_vin_span", "vin", "t0", "t1"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    batch_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    t0: Mapped[int] = mapped_column(BigInteger)
    t1: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[str] = mapped_column(Text)  # comma-separated signal paths present in the batch
    segment: Mapped[str] = mapped_column(String(200))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    leaf_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # set when logged; NULL = v1
    leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True, index=True)  # public anyway
    received_ms: Mapped[int] = mapped_column(BigInteger)
    # The region that built and signed this batch from records the car did not sign (Fleet Telemetry, docs/protocol.md
    # §9); NULL for a batch the car signed itself. The batch header says the same, inside the signed bytes.
    attested_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The software version the signed header names (docs/protocol.md §10), NULL if the car said none: provenance
    # shown to the owner (access/completeness.py), trusted for nothing else.
    software_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The blob key of the standalone Parquet part holding this batch's payload bytes (store/day_copies.py): set when
    # its closed day is compacted, NULL while the payload is still inside the segment. Either way the envelope is
    # read back byte for byte through SegmentReader.envelope (store/segments.py).
    payload_key: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)


class BatchRefusal(Base):
    """Refused uploads of an authenticated vehicle (signature valid), counted per vehicle, code and hour received.

    Bounded by design: one row per (vehicle, stable error code, hour), so a car that sends a flood of bad batches
    grows a counter, not the table. The seq and header-span extremes say which data the refusals concerned
    (access/completeness.py shows them as "sent but refused").
    """

    __tablename__ = "batch_refusals"
    __table_args__ = (UniqueConstraint("vin", "code", "hour_ms", name="uq_batch_refusals_bucket"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    code: Mapped[str] = mapped_column(String(64))
    hour_ms: Mapped[int] = mapped_column(BigInteger)  # start of the hour (UTC) the refusals were received in
    count: Mapped[int] = mapped_column(BigInteger, default=1)
    first_ms: Mapped[int] = mapped_column(BigInteger)  # first and last refusal received in the hour
    last_ms: Mapped[int] = mapped_column(BigInteger)
    seq_min: Mapped[int] = mapped_column(BigInteger)
    seq_max: Mapped[int] = mapped_column(BigInteger)
    t0_min: Mapped[int] = mapped_column(BigInteger)  # the refused batches' header spans, earliest start ...
    t1_max: Mapped[int] = mapped_column(BigInteger)  # ... and latest end
    message: Mapped[str] = mapped_column(String(300), default="")  # the latest refusal's message, cut short


class AuditEvent(Base):
    """One entry of the append-only, hash-chained audit log of access to owners' data."""

    __tablename__ = "audit_events"
    # One chain per owner (and one for region-level events); a unique (chain, prev_hash) makes a fork
    # impossible even when several processes append at once: the loser retries on the new head.
    __table_args__ = (UniqueConstraint("chain", "prev_hash", name="uq_audit_chain_prev"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(64), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    vin: Mapped[str | None] = mapped_column(String(17), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    legal_basis: Mapped[str] = mapped_column(String(200))
    at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class IncidentPackage(Base):
    """A built incident package: who asked, for which window, and where its file is."""

    __tablename__ = "incident_packages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    event_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    event_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("authority_orders.id"), nullable=True)
    file_name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    batches: Mapped[int] = mapped_column(Integer)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class AuthorityOrder(Base):
    """An authority's order to release a vehicle's data (e.g. to its owner in a dispute)."""

    __tablename__ = "authority_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    authority: Mapped[str] = mapped_column(String(200))
    reference: Mapped[str] = mapped_column(String(200))
    legal_basis: Mapped[str] = mapped_column(String(400))
    vin: Mapped[str] = mapped_column(String(17), index=True)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    recipient_owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # Where the ordering authority sits, a region name; NULL means this region's own (a domestic authority).
    jurisdiction: Mapped[str | None] = mapped_column(String(16), nullable=True)


class SavedCheckpoint(Base):
    """A log checkpoint an owner saw and kept, to prove later that the log was not rewritten."""

    __tablename__ = "saved_checkpoints"
    __table_args__ = (UniqueConstraint("owner_id", "tree_size", name="uq_saved_checkpoint_size"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text)
    saved_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class ConsentRecord(Base):
    """One owner decision about one category of one vehicle (append-only: a stop is a new row)."""

    __tablename__ = "consents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    category: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean)
    purpose: Mapped[str] = mapped_column(String(400), default="")
    lasting: Mapped[bool] = mapped_column(Boolean, default=False)
    starts_ms: Mapped[int] = mapped_column(BigInteger)
    ends_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    granted_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    granted_by: Mapped[str] = mapped_column(String(200))


class VehicleEvent(Base):
    """An event the car recorded (hard braking, ABS, AEB, crash), uploaded as a signed event batch."""

    __tablename__ = "vehicle_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    t_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    batch_seq: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text, default="{}")
    legal_basis: Mapped[str] = mapped_column(String(400))


class DeletionRequest(Base):
    """An owner's request to delete off-vehicle copies of their data, with its deadline and receipt."""

    __tablename__ = "deletion_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    vin: Mapped[str | None] = mapped_column(String(17), nullable=True)
    reason: Mapped[str] = mapped_column(String(1000), default="")
    status: Mapped[str] = mapped_column(String(16))  # scheduled | pending | held | completed | cancelled
    requested_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    deadline_ms: Mapped[int] = mapped_column(BigInteger)
    completed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    receipt: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the grace period ends and erasure starts (compliance/deletion.py); the owner may cancel until then.
    due_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LegalHold(Base):
    """A legal hold on a vehicle's data: kept (frozen, not served), not deleted, until released."""

    __tablename__ = "legal_holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    authority: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(1000))
    since_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    released_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class PortabilityBundle(Base):
    """A portability bundle built for a recipient the owner named, fetched once with its one-time grant."""

    __tablename__ = "portability_bundles"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # random, unguessable; part of the fetch URL
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"))
    recipient: Mapped[str] = mapped_column(Text)  # JSON: name, legal_entity, jurisdiction
    include_sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    file_name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    batches: Mapped[int] = mapped_column(Integer)
    batch_hashes: Mapped[str] = mapped_column(Text)  # JSON list: what the file holds (checked against deletions)
    excluded: Mapped[int] = mapped_column(Integer, default=0)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    fetch_started_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fetched_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ImportedBundle(Base):
    """A portability bundle another deployment built, verified and imported here: the imported data's provenance."""

    __tablename__ = "imported_bundles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the bundle file: the same file imports once
    bundle_id: Mapped[str] = mapped_column(String(64))
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    origin_region: Mapped[str] = mapped_column(String(16))
    origin_log_origin: Mapped[str] = mapped_column(String(200))
    origin_log_vkey: Mapped[str] = mapped_column(Text)
    origin_checkpoint: Mapped[str] = mapped_column(Text)
    anchored: Mapped[bool] = mapped_column(Boolean, default=False)  # origin keys given from outside the bundle
    batches: Mapped[int] = mapped_column(Integer)  # batches in the bundle
    added: Mapped[int] = mapped_column(Integer)  # of them, new here
    file_name: Mapped[str] = mapped_column(String(200))  # the bundle, kept: it holds the origin proofs
    imported_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class LoginAttempt(Base):
    """Failed logins, for rate limiting across processes."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), index=True)
    at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class StaffMember(Base):
    """An operator's staff account (access/staff.py): one role, a jurisdiction, a password and a TOTP second factor."""

    __tablename__ = "staff_members"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(32))  # compliance.roles.Role
    jurisdiction: Mapped[str] = mapped_column(String(16))  # a region name: where this person works from
    password_hash: Mapped[str] = mapped_column(String(200))
    totp_sealed: Mapped[bytes] = mapped_column(LargeBinary(200))  # the TOTP secret, sealed with the data key
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # a code is accepted once
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    disabled_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class StaffSession(Base):
    """A staff member's session (cookie or ``cvs_`` bearer secret, only its SHA-256 kept): short idle and absolute
    limits."""

    __tablename__ = "staff_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_members.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client: Mapped[str] = mapped_column(String(100), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_used_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_ms: Mapped[int] = mapped_column(BigInteger)  # absolute end, however active the session is
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Case(Base):
    """An operator case (compliance/cases.py): the only way staff read an owner's data, bounded in vehicles and time.

    Kinds: rights_request, authority_order, breach_investigation, support_ticket (read only once the owner
    approves it in the portal: ``owner_approved_ms``).
    """

    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    vins: Mapped[str] = mapped_column(Text)  # JSON list of VINs
    subject: Mapped[str] = mapped_column(String(1000), default="")  # what and why, as the owner reads it
    legal_basis: Mapped[str] = mapped_column(String(400))
    reference: Mapped[str] = mapped_column(String(200), default="")  # ticket, order or request reference
    authority: Mapped[str | None] = mapped_column(String(200), nullable=True)  # authority_order: who ordered
    jurisdiction: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the authority's; NULL = here
    from_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the data window the case covers
    to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    opened_by: Mapped[str] = mapped_column(String(200))  # actor: staff:<role>:<username>
    opened_by_id: Mapped[int] = mapped_column(ForeignKey("staff_members.id"))
    opened_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    ends_ms: Mapped[int] = mapped_column(BigInteger)  # required, at most 90 days after opening
    closed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(1000), default="")
    owner_approved_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    owner_declined_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class RightsRequest(Base):
    """An owner's rights request (PIPL Art. 44–50; GDPR Art. 15–22): its kind, legal deadline, status and outcome.

    ``owner_id`` is the person whose data it concerns; ``requester_owner_id`` the account that filed it (the same,
    except for next-of-kin requests, where a close relative acts for a deceased owner). The owner sees the handler's
    role, never their name.
    """

    __tablename__ = "rights_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    requester_owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # compliance.rights.Kind
    vin: Mapped[str | None] = mapped_column(String(17), nullable=True)
    details: Mapped[str] = mapped_column(Text, default="")  # what the requester asks, in their words
    evidence: Mapped[str] = mapped_column(Text, default="")  # next of kin: relationship and proof of death
    subject_email: Mapped[str | None] = mapped_column(String(320), nullable=True)  # next of kin: the deceased
    deadline_rule: Mapped[str] = mapped_column(String(32))  # compliance.rights.DEADLINES key that set deadline_ms
    status: Mapped[str] = mapped_column(String(16), index=True)  # received | in_progress | done | refused | withdrawn
    received_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    deadline_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    handler: Mapped[str | None] = mapped_column(String(200), nullable=True)  # staff username (operator-only)
    handler_role: Mapped[str | None] = mapped_column(String(32), nullable=True)  # shown to the owner
    started_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    verified_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # next of kin: evidence checked
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # required for a refusal
    case_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # compliance.cases, when data had to be read
    # What the existing services produced when the request was carried out (one home each; nothing duplicated).
    deletion_request_id: Mapped[int | None] = mapped_column(ForeignKey("deletion_requests.id"), nullable=True)
    export_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    portability_bundle_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Incident(Base):
    """A personal-information security incident (PIPL Art. 57): what happened, its scope, and whom it was told to.

    ``content`` is the notification text in every portal language (JSON ``{"en": {...}, "zh-CN": {...}}`` with
    what, cause, harm, measures, actions and contact); the scope columns are JSON lists.
    """

    __tablename__ = "incidents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | notified | closed
    detected_ms: Mapped[int] = mapped_column(BigInteger)
    occurred_from_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    occurred_to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    scope_vins: Mapped[str] = mapped_column(Text, default="[]")
    scope_owner_ids: Mapped[str] = mapped_column(Text, default="[]")
    scope_categories: Mapped[str] = mapped_column(Text, default="[]")
    content: Mapped[str] = mapped_column(Text)
    affected_owners: Mapped[int | None] = mapped_column(Integer, nullable=True)  # counted when owners were told
    recorded_by: Mapped[str] = mapped_column(String(200))
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    owners_notified_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    authority: Mapped[str | None] = mapped_column(String(300), nullable=True)
    authority_notified_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    authority_reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    authority_content: Mapped[str | None] = mapped_column(Text, nullable=True)


class IncidentNotice(Base):
    """An incident notice to one affected owner, shown in the portal until read (content as sent, per language)."""

    __tablename__ = "incident_notices"
    __table_args__ = (UniqueConstraint("incident_id", "owner_id", name="uq_incident_notice_owner"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    content: Mapped[str] = mapped_column(Text)
    sent_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    read_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ProcessingRecord(Base):
    """One entry of the records of processing (Network Data Security Management Regulations Art. 12, kept ≥ 3 years).

    Kinds: ``activity`` (one per signal category, from the catalogue), ``recipient`` (an app holding grants, from
    the grants table) and ``processor`` (an entrusted processor the operator records). Rows are retired, never
    deleted before three years have passed since retirement (compliance/records.py).
    """

    __tablename__ = "processing_records"
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_processing_record_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # activity | recipient | processor
    key: Mapped[str] = mapped_column(String(200))  # category name, app client_id, or processor slug
    name: Mapped[str] = mapped_column(String(300))
    purpose: Mapped[str] = mapped_column(Text, default="")
    categories: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of signal categories
    legal_basis: Mapped[str] = mapped_column(Text, default="")
    retention: Mapped[str] = mapped_column(Text, default="")
    jurisdiction: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the rest (contact, contract, privacy classes)
    source: Mapped[str] = mapped_column(String(16))  # catalogue | grants | operator
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    retired_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TransferRecord(Base):
    """An approved cross-border transfer (compliance/transfers.py): route, recipient, purpose, data, scale, period."""

    __tablename__ = "transfer_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    route: Mapped[str] = mapped_column(String(32))  # security_assessment | standard_contract | certification
    recipient_kind: Mapped[str] = mapped_column(String(16))  # app | staff | authority | entity
    recipient: Mapped[str] = mapped_column(String(300))  # client_id, staff username, authority or legal entity name
    recipient_jurisdiction: Mapped[str] = mapped_column(String(16))  # a region name outside this one
    purpose: Mapped[str] = mapped_column(String(1000))
    categories: Mapped[str] = mapped_column(Text)  # JSON list of signals.CATEGORIES names
    max_persons: Mapped[int] = mapped_column(BigInteger)  # persons per calendar year the approval covers
    from_ms: Mapped[int] = mapped_column(BigInteger)
    to_ms: Mapped[int] = mapped_column(BigInteger)  # the period ends here (exclusive): status reads "expired"
    approval_reference: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="approved")  # approved | suspended
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    suspended_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    suspended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    suspend_reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)


class TransferEvent(Base):
    """One admitted transfer abroad: when, under which record, to whom, whose data, which vehicle and categories."""

    __tablename__ = "transfer_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms, index=True)
    year: Mapped[int] = mapped_column(Integer, index=True)  # calendar year (region's civil time) it is counted in
    record_id: Mapped[int] = mapped_column(ForeignKey("transfer_records.id"), index=True)
    principal: Mapped[str] = mapped_column(String(300))  # "<kind>:<id>", e.g. "app:<client_id>"
    jurisdiction: Mapped[str] = mapped_column(String(16))  # the principal's
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"), nullable=True, index=True)
    vin: Mapped[str | None] = mapped_column(String(17), nullable=True)
    categories: Mapped[str] = mapped_column(Text)  # JSON list
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)  # sensitive personal information among them
    action: Mapped[str] = mapped_column(String(16))  # query | download | export (the Guideline's three)


class TransferPerson(Base):
    """A person counted once per calendar year in a counter (``scope``: "region" or "record:<id>"; ``klass``)."""

    __tablename__ = "transfer_persons"
    __table_args__ = (UniqueConstraint("year", "scope", "klass", "owner_id", name="uq_transfer_persons"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    year: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(32))
    klass: Mapped[str] = mapped_column(String(16))  # sensitive | personal | all
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class TransferCounter(Base):
    """Distinct persons transferred in a calendar year, per scope and class; raised by conditional UPDATEs."""

    __tablename__ = "transfer_counters"
    __table_args__ = (UniqueConstraint("year", "scope", "klass", name="uq_transfer_counters"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    year: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(32))  # "region" or "record:<id>"
    klass: Mapped[str] = mapped_column(String(16))  # sensitive | personal | all
    persons: Mapped[int] = mapped_column(BigInteger, default=0)


class RetentionRun(Base):
    """One retention purge (compliance/retention.py): when, what it planned, what it erased and withheld, signed."""

    __tablename__ = "retention_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_ms: Mapped[int] = mapped_column(BigInteger)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    now_ms: Mapped[int] = mapped_column(BigInteger)  # the time the plan was computed for
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    actor: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed | interrupted
    cutoffs: Mapped[str] = mapped_column(Text)  # JSON {category: ms}: samples before it are past their period
    summary: Mapped[str] = mapped_column(Text, default="{}")  # JSON per category counts and totals
    record: Mapped[str | None] = mapped_column(Text, nullable=True)  # the signed purge record (JSON)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RetentionLease(Base):
    """The one-purge-at-a-time guard shared by every replica: a named row with its holder and expiry."""

    __tablename__ = "retention_leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_ms: Mapped[int] = mapped_column(BigInteger)


class RetentionErasure(Base):
    """A batch whose index row a purge removed and whose bytes it has not finished erasing (crash-safe queue)."""

    __tablename__ = "retention_erasures"
    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)
    vin: Mapped[str] = mapped_column(String(17))
    batch_hash: Mapped[str] = mapped_column(String(64))
    segment: Mapped[str] = mapped_column(String(200))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    files: Mapped[str] = mapped_column(Text, default="[]")  # JSON: frame blobs, packages, bundles to remove


class PayloadReclaim(Base):
    """A segment range whose payload now lives in its part, not yet reclaimed (crash-safe queue of compaction).

    Inserted in the transaction that sets ``BatchRecord.payload_key``, removed once the range is a hole (local) or
    zeroed/deleted (object storage); a compaction run first finishes the rows a killed one left.
    """

    __tablename__ = "payload_reclaims"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    segment: Mapped[str] = mapped_column(String(200))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)


class RetentionWithheld(Base):
    """Categories of a kept batch that are past their period: withheld from reads, dropped from its query copy."""

    __tablename__ = "retention_withheld"
    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    categories: Mapped[str] = mapped_column(Text)  # JSON sorted list of category names


class StatisticsDay(Base):
    """One local day's statistics summary of a vehicle (access/statistics.py): a cache derived from the evidence.

    Recomputed when its fingerprint (the batches it was built from) changes; dropped with the batches by a deletion
    or a retention purge. ``body`` is JSON.
    """

    __tablename__ = "statistics_days"
    __table_args__ = (UniqueConstraint("vin", "start_ms", "end_ms", name="uq_statistics_days_span"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    fingerprint: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    computed_ms: Mapped[int] = mapped_column(BigInteger)


class OperatorProfile(Base):
    """Who runs this region and whom to contact (compliance/operator_profile.py): the one hand-entered part of the
    annual report and the data sheet, edited by a region admin."""

    __tablename__ = "operator_profile"
    region: Mapped[str] = mapped_column(String(16), primary_key=True)
    operator_name: Mapped[str] = mapped_column(String(300))  # the legal entity processing the data
    security_lead: Mapped[str] = mapped_column(String(200))  # the person responsible for data security
    security_lead_contact: Mapped[str] = mapped_column(String(320))
    rights_contact: Mapped[str] = mapped_column(String(200))  # whom owners contact about their rights
    rights_contact_contact: Mapped[str] = mapped_column(String(320))
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_by: Mapped[str] = mapped_column(String(200))


class AnnualReportFiling(Base):
    """A finalised annual report (compliance/annual_report.py): the signed JSON as filed, never recomputed."""

    __tablename__ = "annual_reports"
    __table_args__ = (UniqueConstraint("region", "year", name="uq_annual_reports_year"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    region: Mapped[str] = mapped_column(String(16))
    year: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)  # the signed report JSON, byte for byte as served
    sha256: Mapped[str] = mapped_column(String(64))
    finalised_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    finalised_by: Mapped[str] = mapped_column(String(200))


class ChargingTariff(Base):
    """A price an owner pays for charging (access/charging.py): at one of their places or anywhere, on some weekdays
    between two local times, from/to a date; prices in millionths of the currency so sums are exact."""

    __tablename__ = "charging_tariffs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    place_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # an owner place; NULL: anywhere
    weekdays: Mapped[int] = mapped_column(Integer)  # bit 0 Monday … bit 6 Sunday
    start_minute: Mapped[int] = mapped_column(Integer)  # local minute of the day, inclusive
    end_minute: Mapped[int] = mapped_column(Integer)  # exclusive, at most 1440
    price_micros: Mapped[int] = mapped_column(BigInteger)  # per kWh
    session_fee_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    valid_from_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    valid_to_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class ChargingDay(Base):
    """A UTC day of a vehicle whose charging sessions were derived (access/charging.py) from the batches named by
    ``fingerprint``; a different set of batches makes the day stale. Deletion and retention drop these rows."""

    __tablename__ = "charging_days"
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    day_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(100))
    computed_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class ChargingSession(Base):
    """One charging session derived from a vehicle's telemetry (never evidence; rebuilt from the batches when
    missing): its figures as JSON, and its power curve and energy per minute as JSON, read only when needed."""

    __tablename__ = "charging_sessions"
    __table_args__ = (Index("ix_charging_sessions_vin_start", "vin", "start_ms"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    day_ms: Mapped[int] = mapped_column(BigInteger)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)


class WitnessCosignatureRecord(Base):
    """A witness's cosignature/v1 line on the log's checkpoint of one tree size (ledger/witnessing.py)."""

    __tablename__ = "witness_cosignatures"
    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    line: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class CosignedCheckpointRecord(Base):
    """A checkpoint note carrying enough witness cosignatures (the quorum, at least one) for its tree size."""

    __tablename__ = "cosigned_checkpoints"
    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    note: Mapped[str] = mapped_column(Text)
    cosignatures: Mapped[int] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers and one writer (from any process) work at once; FULL makes a commit durable
    # before we acknowledge it; busy_timeout makes concurrent writers wait instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# What a failing store looks like from here, per backend: the disk is full or failing, the database cannot be
# opened or reached. Each is answered ``Unavailable`` (503) instead of escaping as an internal error.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
SQLITE_STORAGE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})
POSTGRES_STORAGE_CLASSES = frozenset({"08", "53", "57", "58"})  # connection, resources, operator, system/IO


def storage_failure(e: BaseException) -> Unavailable | None:
    """``Unavailable`` if ``e`` (an OSError, a DB-API error or SQLAlchemy's wrapper of one) is a storage failure."""
    orig = e.orig if isinstance(e, DBAPIError) else e
    if isinstance(e, DBAPIError) and e.connection_invalidated:  # the server went away (SQLAlchemy drops the pool)
        return Unavailable(f"metadata database connection lost: {str(orig).strip()[:200]}")
    if isinstance(orig, OSError) and orig.errno in STORAGE_ERRNOS:
        return Unavailable(f"storage unavailable: {orig.strerror}")
    if isinstance(orig, sqlite3.Error) and (getattr(orig, "sqlite_errorcode", -1) & 0xFF) in SQLITE_STORAGE_CODES:
        return Unavailable(f"metadata database unavailable: {orig}")
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in POSTGRES_STORAGE_CLASSES:
        return Unavailable(f"metadata database unavailable: {str(orig).strip()}")
    return None


SQLITE_BUSY_S = 30  # how long a writer waits for SQLite's one write lock before the store counts as unavailable
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")
_HOLDS_WRITE_GATE = "carvault_holds_write_gate"


class OwnerPlaceRecord(Base):
    """A place an owner named (home, work …, access/places.py): centre (WGS-84), radius, and whether the car masks
    every position inside it before anything leaves the car (the region refuses a batch that does not)."""

    __tablename__ = "owner_places"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    radius_m: Mapped[int] = mapped_column(Integer)
    mask_in_car: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class WriteGate:
    """This process's queue for SQLite's single write lock.

    SQLite lets one transaction write at a time; a writer that finds the lock taken sleeps in its busy handler
    (up to 100 ms a nap) and retries, so under steady ingest an owner read's audit record could lose the race
    again and again and wait for seconds (issue 8, measured by ``carvault.bench.contention``). Here writers of
    this process queue on a lock instead, taken before a transaction's first write statement and given back when
    its connection returns to the pool, so each is woken the moment the previous writer is done. Other processes
    sharing the file still meet SQLite's own busy handler.
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine.pool, "checkin", self._release)
        event.listen(engine.pool, "invalidate", self._release_invalidated)

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.info.get(_HOLDS_WRITE_GATE) or not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        if not self._lock.acquire(timeout=SQLITE_BUSY_S):
            raise Unavailable(f"the metadata database stayed busy for {SQLITE_BUSY_S} s")
        conn.info[_HOLDS_WRITE_GATE] = True

    def _release(self, _dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(_HOLDS_WRITE_GATE, False):
            self._lock.release()

    def _release_invalidated(self, _dbapi_conn: Any, record: Any, _exc: Any) -> None:
        self._release(_dbapi_conn, record)


def _has_column(engine: Engine, table: str, column: str) -> bool:
    """Whether the database's table has the column now (a fresh look, no inspector cache)."""
    return column in {c["name"] for c in inspect(engine).get_columns(table)}


def _has_index(engine: Engine, table: str, name: str) -> bool:
    """Whether the database's table has an index (or unique constraint) of that name now."""
    insp = inspect(engine)
    names = {i["name"] for i in insp.get_indexes(table)} | {u["name"] for u in insp.get_unique_constraints(table)}
    return name in names


def _missing_columns(engine: Engine, metadata: MetaData) -> list[tuple[Table, Column[Any]]]:
    """The model's columns that the database's existing tables lack; refused if one cannot be added in place."""
    insp = inspect(engine)
    existing = set(insp.get_table_names())
    missing: list[tuple[Table, Column[Any]]] = []
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue  # create_all makes it whole
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable and column.server_default is None:
                raise Unavailable(
                    f"the metadata database lacks column {table.name}.{column.name}, which is NOT NULL without a "
                    "server default, so it cannot be added in place; upgrade this database by hand "
                    "(docs/operations.md)"
                )
            if column.primary_key:
                raise Unavailable(f"the metadata database lacks primary-key column {table.name}.{column.name}")
            missing.append((table, column))
    return missing


def upgrade_schema(engine: Engine, metadata: MetaData, added: list[str] | None = None) -> list[str]:
    """Add the nullable or server-defaulted columns and the indexes that existing tables lack; names what it added
    (appended to ``added`` as it goes, so a caller that retries after a failure still names what the first try did).

    ``create_all`` creates missing tables only, so a database made by an earlier release would lack the columns
    added since. Each column is added with ``ALTER TABLE ... ADD COLUMN`` compiled for the dialect, each in its own
    transaction; then the table's missing indexes are created (a unique column gets a unique index, since SQLite
    cannot add constraints). Several processes may start at once: one that loses the race to add a column or an
    index gets an error, looks again, and goes on if the other process added it.
    """
    missing = _missing_columns(engine, metadata)  # refuses before anything is altered
    quote = engine.dialect.identifier_preparer
    added = [] if added is None else added
    for table, column in missing:
        definition = CreateColumn(column).compile(dialect=engine.dialect)
        ddl = f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {definition}"
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)
            added.append(f"{table.name}.{column.name}")
        except DBAPIError:
            if not _has_column(engine, table.name, column.name):
                raise
    tables = {table for table, _ in missing}
    for table in metadata.sorted_tables:
        if table not in tables:
            continue
        statements: dict[str, CreateIndex | str] = {
            str(index.name): CreateIndex(index, if_not_exists=True) for index in table.indexes
        }
        for t, column in missing:
            if t is table and column.unique:  # SQLite cannot ADD CONSTRAINT: a unique index does the same
                name = f"uq_{table.name}_{column.name}"
                statements[name] = (
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {quote.quote(name)} "
                    f"ON {quote.format_table(table)} ({quote.quote(column.name)})"
                )
        for name, statement in statements.items():
            if _has_index(engine, table.name, name):
                continue
            try:
                with engine.begin() as conn:
                    if isinstance(statement, str):
                        conn.exec_driver_sql(statement)
                    else:
                        conn.execute(statement)
                added.append(name)
            except DBAPIError:
                if not _has_index(engine, table.name, name):
                    raise
    return added


IDLE_PING_S = 5.0  # a pooled server-database connection unused this long is pinged before its next use


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only if it sat idle ``IDLE_PING_S`` (a dead one is replaced)."""

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:  # noqa: BLE001 - any failure of the ping means the connection is gone
            alive = False
        if not alive:
            raise DisconnectionError("pooled connection did not answer its ping")  # the pool connects afresh

    event.listen(engine.pool, "checkin", checkin)
    event.listen(engine.pool, "checkout", checkout)


class Database:
    """An engine plus a session factory over the metadata schema."""

    def __init__(self, url: str) -> None:
        try:
            if url.startswith("sqlite"):
                # As many pooled connections as the ASGI server has worker threads (anyio's default 40), so a busy
                # moment does not open and close overflow connections (each one re-running the pragmas).
                self.engine: Engine = create_engine(
                    url,
                    connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False},
                    pool_size=40,
                    max_overflow=20,
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
                self.write_gate: WriteGate | None = WriteGate(self.engine)
            else:
                # No ping on every checkout (``pool_pre_ping``): on a busy server it doubled the round trips of
                # each statement (issue 12). A connection idle for ``IDLE_PING_S`` is pinged before use (a database
                # restart while the server was quiet costs no request); one that dies while busy fails its statement
                # as ``Unavailable`` and SQLAlchemy drops the pool's connections.
                self.engine = create_engine(url, pool_size=10, max_overflow=20)
                _ping_when_idle(self.engine)
                self.write_gate = None
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise Unavailable(f"metadata database URL {url!r} is not usable: {e}") from None
        self.url = url
        # The region's key for sealing vehicle log keys at rest (ledger.leaves); set by Region, None in bare use.
        self.data_key: bytes | None = None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info={"database": self})

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite backend."""
        return self.engine.dialect.name == "sqlite"

    def create_schema(self) -> list[str]:
        """Create every table that does not exist yet and add the columns and indexes older tables lack."""
        attempts = len(Base.metadata.tables) + 1  # each lost race means another process made one more table
        deadline = time.monotonic() + SQLITE_BUSY_S
        added: list[str] = []  # kept across attempts: a try that fails after adding columns still names them
        while True:
            try:
                Base.metadata.create_all(self.engine)
                return upgrade_schema(self.engine, Base.metadata, added)
            except OperationalError as e:
                # Processes starting at once on an older database race to create a new table: the loser's
                # CREATE TABLE fails with "already exists"; inspecting again finds the winner's table. On SQLite a
                # transaction that read the schema and then writes finds "database is locked" at once when another
                # starter wrote meanwhile (its snapshot is stale; no busy handler waits for that), and a prepared
                # statement may find "database schema has changed" under it: start again.
                text = str(e.orig)
                raced = "already exists" in text and attempts > 1
                locked = ("database is locked" in text or "schema has changed" in text) and time.monotonic() < deadline
                if raced or locked:
                    attempts -= 1 if raced else 0
                    time.sleep(0.05 if locked else 0)
                    continue
                raise Unavailable(f"metadata database at {self.engine.url!r} is unavailable: {e.orig}") from None

    @contextmanager
    def connection(self, *, write: bool = False) -> Iterator[Connection]:
        """A Core connection, one transaction (committed on success if ``write``); storage failures are
        ``Unavailable``. For per-batch paths (ingest checks, commit, log indexing), where an ORM session costs
        several times the statements' own time (issue 10)."""
        try:
            context: AbstractContextManager[Connection]
            if write:
                context = self.engine.begin()
            elif self.engine.dialect.name == "sqlite":
                context = self.engine.connect()  # pysqlite begins no transaction for a read
            else:
                # A read outside a transaction: no BEGIN and ROLLBACK round trips around it (each statement of a
                # READ COMMITTED transaction sees its own snapshot anyway).
                context = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            with context as conn:
                yield conn
        except Exception as e:
            failure = storage_failure(e)
            if failure is not None:
                raise failure from e
            raise

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException as e:
            s.rollback()
            failure = storage_failure(e)
            if failure is not None:
                raise failure from e
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


# The tables that belong to one service each (export jobs, camera frames) live in store/tables.py; importing it
# here puts them in the schema that create_schema builds.
from carvault.store import tables as _tables  # noqa: E402, F401
