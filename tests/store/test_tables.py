"""Every table lives in store/: creating the schema from ``store.metadata`` alone builds all of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from carvault.store.metadata import Base, Database

# Built in a fresh interpreter that imports nothing but the store, so no service module can register a table.
SCHEMA_ONLY = """
import json, sys
from sqlalchemy import inspect
from carvault.store.metadata import Database
db = Database("sqlite:///" + sys.argv[1])
db.create_schema()
print(json.dumps(sorted(inspect(db.engine).get_table_names())))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("carvault."))))
"""


def test_the_store_alone_creates_every_table(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCHEMA_ONLY, str(tmp_path / "m.sqlite3")], capture_output=True, text=True, check=True
    )
    tables, modules = (json.loads(line) for line in run.stdout.splitlines())
    assert {"export_jobs", "camera_frames", "camera_frame_scans", "batches", "vehicles", "audit_events"} <= set(tables)
    assert not [m for m in modules if m.startswith(("carvault.access", "carvault.ingest"))], modules
    # ... and they are all the tables the application declares (importing the services adds none).
    import carvault.access.jobs  # noqa: F401
    import carvault.ingest.frames  # noqa: F401

    assert set(Base.metadata.tables) == set(tables)


def test_export_and_frame_tables_are_usable_after_create_schema(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    db.create_schema()
    columns = {t: {c["name"] for c in inspect(db.engine).get_columns(t)} for t in ("export_jobs", "camera_frames")}
    assert {"owner_id", "vin", "status", "lease_until_ms", "sha256"} <= columns["export_jobs"]
    assert {"vin", "sha256", "seq", "batch_hash", "deidentified", "redactions", "detectors"} <= columns["camera_frames"]
    db.dispose()
