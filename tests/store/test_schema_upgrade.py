"""A metadata database made by the previous release (25176e5) is upgraded in place on start (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.errors import Unavailable
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import BatchRecord, Database, Vehicle, upgrade_schema

# What ``Base.metadata.create_all`` made at 25176e5 on SQLite (CreateTable/CreateIndex compiled for sqlite), verbatim.
OLD_SCHEMA_SQLITE = """
CREATE TABLE legal_holds (
    id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    authority VARCHAR(200) NOT NULL,
    reason VARCHAR(1000) NOT NULL,
    since_ms BIGINT NOT NULL,
    released_ms BIGINT,
    PRIMARY KEY (id)
);
CREATE INDEX ix_legal_holds_vin ON legal_holds (vin);
CREATE TABLE login_attempts (
    id INTEGER NOT NULL,
    "key" VARCHAR(400) NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_login_attempts_key ON login_attempts ("key");
CREATE TABLE owners (
    id INTEGER NOT NULL,
    email VARCHAR(320) NOT NULL,
    password_hash VARCHAR(200) NOT NULL,
    display_name VARCHAR(200) NOT NULL,
    locale VARCHAR(16) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (email)
);
CREATE TABLE audit_events (
    id INTEGER NOT NULL,
    chain VARCHAR(64) NOT NULL,
    owner_id INTEGER,
    vin VARCHAR(17),
    actor VARCHAR(200) NOT NULL,
    action VARCHAR(64) NOT NULL,
    detail TEXT NOT NULL,
    legal_basis VARCHAR(200) NOT NULL,
    at_ms BIGINT NOT NULL,
    prev_hash VARCHAR(64) NOT NULL,
    hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_audit_chain_prev UNIQUE (chain, prev_hash),
    FOREIGN KEY(owner_id) REFERENCES owners (id),
    UNIQUE (hash)
);
CREATE INDEX ix_audit_events_chain ON audit_events (chain);
CREATE INDEX ix_audit_events_owner_id ON audit_events (owner_id);
CREATE INDEX ix_audit_events_vin ON audit_events (vin);
CREATE TABLE authority_orders (
    id INTEGER NOT NULL,
    authority VARCHAR(200) NOT NULL,
    reference VARCHAR(200) NOT NULL,
    legal_basis VARCHAR(400) NOT NULL,
    vin VARCHAR(17) NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    recipient_owner_id INTEGER,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(recipient_owner_id) REFERENCES owners (id)
);
CREATE INDEX ix_authority_orders_vin ON authority_orders (vin);
CREATE TABLE credentials (
    id INTEGER NOT NULL,
    owner_id INTEGER NOT NULL,
    kind VARCHAR(16) NOT NULL,
    token_hash VARCHAR(64) NOT NULL,
    label VARCHAR(200) NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    last_used_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(owner_id) REFERENCES owners (id),
    UNIQUE (token_hash)
);
CREATE INDEX ix_credentials_owner_id ON credentials (owner_id);
CREATE TABLE deletion_requests (
    id INTEGER NOT NULL,
    owner_id INTEGER NOT NULL,
    vin VARCHAR(17),
    reason VARCHAR(1000) NOT NULL,
    status VARCHAR(16) NOT NULL,
    requested_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    completed_ms BIGINT,
    receipt TEXT,
    PRIMARY KEY (id),
    FOREIGN KEY(owner_id) REFERENCES owners (id)
);
CREATE INDEX ix_deletion_requests_owner_id ON deletion_requests (owner_id);
CREATE TABLE export_jobs (
    id INTEGER NOT NULL,
    owner_id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    whole_history BOOLEAN NOT NULL,
    format VARCHAR(16) NOT NULL,
    signals TEXT NOT NULL,
    resample_ms BIGINT,
    status VARCHAR(16) NOT NULL,
    progress FLOAT NOT NULL,
    rows BIGINT NOT NULL,
    size BIGINT,
    sha256 VARCHAR(64),
    file_name VARCHAR(200),
    error TEXT,
    worker VARCHAR(100),
    lease_until_ms BIGINT,
    attempts INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    expires_ms BIGINT,
    PRIMARY KEY (id),
    FOREIGN KEY(owner_id) REFERENCES owners (id)
);
CREATE INDEX ix_export_jobs_owner_id ON export_jobs (owner_id);
CREATE INDEX ix_export_jobs_status ON export_jobs (status);
CREATE INDEX ix_export_jobs_vin ON export_jobs (vin);
CREATE TABLE saved_checkpoints (
    id INTEGER NOT NULL,
    owner_id INTEGER NOT NULL,
    tree_size BIGINT NOT NULL,
    note TEXT NOT NULL,
    saved_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_saved_checkpoint_size UNIQUE (owner_id, tree_size),
    FOREIGN KEY(owner_id) REFERENCES owners (id)
);
CREATE INDEX ix_saved_checkpoints_owner_id ON saved_checkpoints (owner_id);
CREATE TABLE vehicles (
    vin VARCHAR(17) NOT NULL,
    region VARCHAR(16) NOT NULL,
    model VARCHAR(100) NOT NULL,
    public_key BLOB NOT NULL,
    certificate_pem TEXT,
    pairing_code_hash VARCHAR(200) NOT NULL,
    owner_id INTEGER,
    claimed_ms BIGINT,
    provisioned_ms BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_hash VARCHAR(64) NOT NULL,
    policy_applied BIGINT NOT NULL,
    PRIMARY KEY (vin),
    FOREIGN KEY(owner_id) REFERENCES owners (id)
);
CREATE INDEX ix_vehicles_owner_id ON vehicles (owner_id);
CREATE TABLE batches (
    id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    seq BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    batch_hash VARCHAR(64) NOT NULL,
    prev_hash VARCHAR(64) NOT NULL,
    t0 BIGINT NOT NULL,
    t1 BIGINT NOT NULL,
    rows INTEGER NOT NULL,
    samples BIGINT NOT NULL,
    columns TEXT NOT NULL,
    segment VARCHAR(200) NOT NULL,
    "offset" BIGINT NOT NULL,
    length INTEGER NOT NULL,
    log_index BIGINT,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_batches_vin_seq UNIQUE (vin, seq),
    FOREIGN KEY(vin) REFERENCES vehicles (vin),
    UNIQUE (batch_hash),
    UNIQUE (log_index)
);
CREATE INDEX ix_batches_vin_span ON batches (vin, t0, t1);
CREATE TABLE camera_frame_scans (
    vin VARCHAR(17) NOT NULL,
    scanned_seq BIGINT NOT NULL,
    PRIMARY KEY (vin),
    FOREIGN KEY(vin) REFERENCES vehicles (vin)
);
CREATE TABLE camera_frames (
    id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    batch_hash VARCHAR(64) NOT NULL,
    t_ms BIGINT NOT NULL,
    position VARCHAR(16),
    deidentified BOOLEAN NOT NULL,
    redactions TEXT NOT NULL,
    detectors TEXT NOT NULL,
    size INTEGER,
    stored_ms BIGINT,
    PRIMARY KEY (id),
    CONSTRAINT uq_camera_frames_vin_sha256 UNIQUE (vin, sha256),
    FOREIGN KEY(vin) REFERENCES vehicles (vin)
);
CREATE INDEX ix_camera_frames_vin ON camera_frames (vin);
CREATE TABLE consents (
    id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    category VARCHAR(64) NOT NULL,
    enabled BOOLEAN NOT NULL,
    purpose VARCHAR(400) NOT NULL,
    lasting BOOLEAN NOT NULL,
    starts_ms BIGINT NOT NULL,
    ends_ms BIGINT,
    granted_ms BIGINT NOT NULL,
    granted_by VARCHAR(200) NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(vin) REFERENCES vehicles (vin)
);
CREATE INDEX ix_consents_vin ON consents (vin);
CREATE TABLE incident_packages (
    id INTEGER NOT NULL,
    owner_id INTEGER,
    vin VARCHAR(17) NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    event_kind VARCHAR(32),
    event_ms BIGINT,
    requested_by VARCHAR(200) NOT NULL,
    order_id INTEGER,
    file_name VARCHAR(200) NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    size BIGINT NOT NULL,
    batches INTEGER NOT NULL,
    tree_size BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(owner_id) REFERENCES owners (id),
    FOREIGN KEY(order_id) REFERENCES authority_orders (id)
);
CREATE INDEX ix_incident_packages_owner_id ON incident_packages (owner_id);
CREATE INDEX ix_incident_packages_vin ON incident_packages (vin);
CREATE TABLE vehicle_events (
    id INTEGER NOT NULL,
    vin VARCHAR(17) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    t_ms BIGINT NOT NULL,
    batch_seq BIGINT NOT NULL,
    detail TEXT NOT NULL,
    legal_basis VARCHAR(400) NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(vin) REFERENCES vehicles (vin)
);
CREATE INDEX ix_vehicle_events_t_ms ON vehicle_events (t_ms);
CREATE INDEX ix_vehicle_events_vin ON vehicle_events (vin);
"""

NEW_COLUMNS = {
    "vehicles": {"log_key", "ignition_cycle", "ignition_seen_ms", "name"},  # name: owners name their cars
    "deletion_requests": {"due_ms", "cancelled_ms"},  # the grace period before erasure, and its cancelling
    # attested_by: region-attested batches (issue 14); software_version: provenance, payload_key: payload parts (13, 12)
    "batches": {"leaf_version", "leaf_hash", "attested_by", "software_version", "payload_key"},
    "credentials": {"grant_id", "client_id", "family", "scope"},  # sharing (issue 9): tokens acting for a grant
    "export_jobs": {"grant_id"},  # sharing: an export a grant holder asked for
    "owners": {"jurisdiction"},  # operator (issue 11): where an owner lives, for transfers abroad
    "authority_orders": {"jurisdiction"},
}
VIN = "WVWZZZ1JZXW000001"
BATCH_HASH = "ab" * 32


def old_schema(dialect: str) -> list[str]:
    """The previous release's DDL statements for ``dialect`` (PostgreSQL: SERIAL ids and BYTEA, as it compiled)."""
    statements = [s.strip() for s in OLD_SCHEMA_SQLITE.split(";") if s.strip()]
    if dialect == "sqlite":
        return statements
    out = []
    for s in statements:
        serial = "BIGSERIAL" if s.startswith("CREATE TABLE batches ") else "SERIAL"
        out.append(s.replace("\n    id INTEGER NOT NULL", f"\n    id {serial} NOT NULL").replace(" BLOB", " BYTEA"))
    return out


def make_old_database(url: str) -> None:
    """Build the old schema with plain SQL and store one owner, one vehicle and one committed-but-unlogged batch."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in old_schema(engine.dialect.name):
                conn.exec_driver_sql(statement)
            conn.execute(
                text(
                    "INSERT INTO vehicles (vin, region, model, public_key, pairing_code_hash, provisioned_ms,"
                    " last_seq, last_hash, policy_applied) VALUES (:vin, 'eu', 'Old Model', :pk, 'x', 1, 1, :h, 0)"
                ),
                {"vin": VIN, "pk": bytes(range(32)), "h": BATCH_HASH},
            )
            conn.execute(
                text(
                    "INSERT INTO batches (vin, seq, kind, batch_hash, prev_hash, t0, t1, rows, samples, columns,"
                    ' segment, "offset", length, log_index, received_ms)'
                    " VALUES (:vin, 1, 'routine', :h, :p, 10, 20, 3, 9, 'Vehicle.Speed', 'seg-0', 0, 100, NULL, 5)"
                ),
                {"vin": VIN, "h": BATCH_HASH, "p": "00" * 32},
            )
    finally:
        engine.dispose()


def columns_of(engine: Engine, table: str) -> set[str]:
    """The column names the database has for ``table``."""
    return {c["name"] for c in inspect(engine).get_columns(table)}


def check_upgrade(url: str, data_dir: Path, **settings: Any) -> None:
    """Open an old database with today's code: columns and index added, old rows intact, a Region starts on it."""
    make_old_database(url)
    db = Database(url)
    try:
        for table, new in NEW_COLUMNS.items():
            assert not new & columns_of(db.engine, table)  # really the old schema
        added = db.create_schema()
        assert set(added) == {
            "vehicles.log_key",
            "vehicles.ignition_cycle",
            "vehicles.ignition_seen_ms",
            "batches.leaf_version",
            "batches.leaf_hash",
            "ix_batches_leaf_hash",
            "credentials.grant_id",
            "credentials.client_id",
            "credentials.family",
            "credentials.scope",
            "ix_credentials_grant_id",
            "ix_credentials_family",
            "export_jobs.grant_id",
            "batches.attested_by",
            "owners.jurisdiction",
            "authority_orders.jurisdiction",
            "vehicles.name",
            "deletion_requests.due_ms",
            "deletion_requests.cancelled_ms",
            "batches.software_version",
            "batches.payload_key",
            "ix_batches_payload_key",
        }
        for table, new in NEW_COLUMNS.items():
            assert new <= columns_of(db.engine, table)
        assert "ix_batches_leaf_hash" in {i["name"] for i in inspect(db.engine).get_indexes("batches")}
        with db.session() as s:
            car = s.get(Vehicle, VIN)
            assert car is not None and car.model == "Old Model" and car.log_key is None and car.last_seq == 1
            rec = s.scalars(select(BatchRecord)).one()
            assert (rec.batch_hash, rec.leaf_version, rec.leaf_hash, rec.log_index) == (BATCH_HASH, None, None, None)
        assert db.create_schema() == []  # idempotent
    finally:
        db.dispose()
    # The old release's unlogged batch gets its leaf on start-up, which writes the new columns.
    with Region(Settings(data_dir=data_dir, region="eu", database_url=url, **settings)) as region:
        assert region.reconciled.indices == (0,)
        with region.db.session() as s:
            rec = s.scalars(select(BatchRecord)).one()
            assert rec.log_index == 0 and rec.leaf_version == 2 and rec.leaf_hash is not None
            assert len(rec.leaf_hash) == 32
            assert s.scalar(select(Vehicle.log_key).where(Vehicle.vin == VIN)) is not None


def test_sqlite_database_of_previous_release_upgrades(tmp_path: Path) -> None:
    """The default embedded store of an old data folder gains today's columns and the region starts."""
    url = Settings(data_dir=tmp_path).resolved_database_url
    check_upgrade(url, tmp_path)


def test_not_null_column_without_default_is_refused(tmp_path: Path) -> None:
    """A missing NOT NULL column with no default cannot be added in place: refused, nothing altered."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_old_database(url)
    future = MetaData()
    Table(
        "vehicles",
        future,
        Column("vin", String(17), primary_key=True),
        Column("nickname", String(40), nullable=True),
        Column("mileage", BigInteger, nullable=False),
    )
    engine = create_engine(url)
    try:
        with pytest.raises(Unavailable, match="vehicles.mileage.*NOT NULL"):
            upgrade_schema(engine, future)
        assert not {"nickname", "mileage"} & columns_of(engine, "vehicles")
        # With a server default the same column is added, and old rows get the default.
        Table("batches", future, Column("id", Integer, primary_key=True), Column("tier", Integer, server_default="7"))
        future.remove(future.tables["vehicles"])
        assert upgrade_schema(engine, future) == ["batches.tier"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT tier FROM batches")).scalar_one() == 7
    finally:
        engine.dispose()


def test_a_retry_still_names_what_an_earlier_try_added(tmp_path: Path) -> None:
    """``create_schema`` retries after a lock or a changed schema: the columns its first try added are still named."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_old_database(url)
    future = MetaData()
    Table("batches", future, Column("id", Integer, primary_key=True), Column("tier", Integer, server_default="7"))
    Table("vehicles", future, Column("vin", String(17), primary_key=True), Column("nickname", String(40)))
    engine = create_engine(url)
    try:
        added: list[str] = []
        with engine.begin() as conn:  # the first try got as far as one column before it failed
            conn.exec_driver_sql("ALTER TABLE batches ADD COLUMN tier INTEGER DEFAULT '7'")
        added.append("batches.tier")
        assert upgrade_schema(engine, future, added) == ["batches.tier", "vehicles.nickname"]
        assert added == ["batches.tier", "vehicles.nickname"]
    finally:
        engine.dispose()


def test_process_losing_the_race_to_add_a_column_carries_on(tmp_path: Path) -> None:
    """Another process adds the columns between this one's look and its ALTER: the duplicate is taken as done."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_old_database(url)
    late = Database(url)
    other_added: list[str] = []

    def other_process_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("ALTER TABLE") and not other_added:
            other = Database(url)  # its own engine and connections, as another process would have
            try:
                other_added.extend(other.create_schema())
            finally:
                other.dispose()

    event.listen(late.engine, "before_cursor_execute", other_process_first)
    try:
        assert late.create_schema() == []  # every ALTER met a duplicate column; every index was there
        assert "vehicles.log_key" in other_added
        for table, new in NEW_COLUMNS.items():
            assert new <= columns_of(late.engine, table)
    finally:
        late.dispose()


def test_several_starts_at_once_all_succeed(tmp_path: Path) -> None:
    """Four databases (own engines) upgrade the same old file concurrently; none fails, each column is added once."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_old_database(url)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        db = Database(url)
        try:
            barrier.wait()
            results.append(db.create_schema())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    added = [name for r in results for name in r]
    # Each column is added by exactly one starter (the others met a duplicate); CREATE INDEX IF NOT EXISTS may
    # report the index from more than one.
    assert sorted(n for n in added if "." in n) == sorted(f"{t}.{c}" for t, cols in NEW_COLUMNS.items() for c in cols)
    assert "ix_batches_leaf_hash" in added


@pytest.fixture(scope="module")
def postgres() -> Iterator[TemporaryPostgres]:
    """A throwaway PostgreSQL cluster for this module."""
    with TemporaryPostgres(fsync=False) as pg:
        yield pg


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_database_of_previous_release_upgrades(postgres: TemporaryPostgres, tmp_path: Path) -> None:
    """The same upgrade on PostgreSQL (ALTER compiled for its dialect: BYTEA columns)."""
    check_upgrade(postgres.create_database("old_release"), tmp_path)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_process_losing_the_race_carries_on(postgres: TemporaryPostgres) -> None:
    """On PostgreSQL too, a duplicate column from another starter is re-inspected and taken as done."""
    url = postgres.create_database("old_race")
    make_old_database(url)
    late = Database(url)
    other_added: list[str] = []

    def other_process_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("ALTER TABLE") and not other_added:
            other = Database(url)
            try:
                other_added.extend(other.create_schema())
            finally:
                other.dispose()

    event.listen(late.engine, "before_cursor_execute", other_process_first)
    try:
        assert late.create_schema() == []
        assert "batches.leaf_hash" in other_added
    finally:
        late.dispose()
