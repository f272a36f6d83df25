"""Query-optimised copies of accepted batches: uncompressed Arrow IPC files, memory-mapped on read.

Derived from the evidence (the exact signed bytes in the segments), never the evidence: each file is keyed
by the batch hash, made by the batch's first read (``TelemetryStore.batch_table``), not fsynced, and made
again whenever it is missing or unreadable. Ingest writes none: most batches are never read before their day
is compacted into payload parts (store/day_copies.py), and a copy per accepted batch cost the gateway about an
eighth of its CPU per batch (issue 10). Reading one is a memory map, not a decode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.ipc as ipc

if TYPE_CHECKING:
    from carvault.store.day_copies import DayCopies


class DerivedCopies:
    """Per-batch Arrow IPC files under ``<directory>/<vin>/<batch hash>.arrow``."""

    def __init__(self, directory: Path, kept: Callable[[str, str], bool] | None = None) -> None:
        self.directory = directory
        # Whether a batch (vin, hash) is still stored: a copy written while the batch was being deleted (a queued
        # write, or a read racing the deletion) is removed again, so deleted data never reappears here.
        self.kept = kept
        self.days: DayCopies | None = None  # the payload parts of closed days (store/day_copies.py), set by Region

    def path(self, vin: str, batch_hash: str) -> Path:
        """Where the copy of one batch lives."""
        return self.directory / vin / f"{batch_hash}.arrow"

    def write(self, vin: str, batch_hash: str, table: pa.Table) -> None:
        """Write a copy atomically (temporary name, then rename); failures only cost speed later.

        The file is built in memory and written with one call: this runs for every accepted batch, and a
        folder check plus Arrow's own file opening cost more than the bytes (issue 10). A vehicle's folder is
        made only when the first write finds it missing.
        """
        target = self.path(vin, batch_hash)
        tmp = target.with_name(f"{batch_hash}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            sink = pa.BufferOutputStream()
            with ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            data = memoryview(sink.getvalue())
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if self.kept is not None and not self.kept(vin, batch_hash):
                target.unlink(missing_ok=True)  # deleted meanwhile: deletion sweeps again after dropping its rows
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def read(self, vin: str, batch_hash: str) -> pa.Table | None:
        """The memory-mapped copy, or None when there is none (yet)."""
        try:
            return ipc.open_file(pa.memory_map(str(self.path(vin, batch_hash)))).read_all()
        except (OSError, pa.ArrowInvalid):
            return None

    def delete(self, vin: str, batch_hash: str) -> int:
        """Remove the per-batch copy of one batch; return the bytes freed.

        A compacted batch's payload part is evidence as well as its query copy: deletion and retention erasure
        remove it with the batch (store/day_copies.py), withholding never does.
        """
        return self.discard(vin, batch_hash)

    def discard(self, vin: str, batch_hash: str) -> int:
        """Remove the per-batch copy only (compaction, once the batch is read from its part); bytes freed."""
        target = self.path(vin, batch_hash)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        return size

    def delete_vehicle(self, vin: str) -> int:
        """Remove every copy of a vehicle's batches, payload parts included (its deletion); return the bytes freed."""
        folder = self.directory / vin
        size = sum(p.stat().st_size for p in folder.glob("*.arrow")) if folder.exists() else 0
        if self.days is not None:
            size += self.days.drop_vehicle(vin)
        shutil.rmtree(folder, ignore_errors=True)
        return size
