"""Query-optimised copies of accepted batches: uncompressed Arrow IPC files, memory-mapped on read.

Derived from the evidence (the exact signed bytes in the segments), never the evidence: each file is keyed
by the batch hash, written after the batch is acknowledged, not fsynced, and rebuilt from the segment
whenever it is missing or unreadable. Reading one is a memory map, not a decode, which is what makes a
30-minute window a few milliseconds.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc


class DerivedCopies:
    """Per-batch Arrow IPC files under ``<directory>/<vin>/<batch hash>.arrow``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, vin: str, batch_hash: str) -> Path:
        """Where the copy of one batch lives."""
        return self.directory / vin / f"{batch_hash}.arrow"

    def write(self, vin: str, batch_hash: str, table: pa.Table) -> None:
        """Write a copy atomically (temporary name, then rename); failures only cost speed later."""
        target = self.path(vin, batch_hash)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            with ipc.new_file(tmp, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, target)
        except OSError:
            pass

    def read(self, vin: str, batch_hash: str) -> pa.Table | None:
        """The memory-mapped copy, or None when there is none (yet)."""
        try:
            return ipc.open_file(pa.memory_map(str(self.path(vin, batch_hash)))).read_all()
        except (OSError, pa.ArrowInvalid):
            return None

    def delete_vehicle(self, vin: str) -> int:
        """Remove every copy of a vehicle's batches; return the bytes freed."""
        folder = self.directory / vin
        size = sum(p.stat().st_size for p in folder.glob("*.arrow")) if folder.exists() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return size
