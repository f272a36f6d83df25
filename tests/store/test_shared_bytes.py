"""Evidence and query copy share their bytes (issue 12): scans, compaction into payload parts, byte-exact envelopes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from carvault.region import Region
from carvault.signals import catalogue
from carvault.vehicle.agent import VehicleAgent
from tests.factories import BASE_MS, drive_table, opt_in

DAY = 86_400_000


def _upload(region: Region, agent: VehicleAgent) -> str:
    opt_in(region, agent.identity.vin)
    first = BASE_MS - BASE_MS % DAY + DAY - 120_000  # 23:58 to 00:03, and a day later
    agent.record(drive_table(start_ms=first, seconds=300, seed=1), batch_seconds=60)
    agent.record(drive_table(start_ms=first + DAY + 3_600_000, seconds=300, seed=2), batch_seconds=60)
    assert len(agent.upload_pending()) == 10
    return agent.identity.vin


def test_scan_covers_the_window_in_day_pieces(region: Region, agent: VehicleAgent) -> None:
    vin = _upload(region, agent)
    cat = catalogue()
    paths = sorted({c for r in region.telemetry.batches(vin, 0, 2**62) for c in r.columns} - {"t"})
    signals = [cat.get(p) for p in paths]
    start, end = BASE_MS - DAY, BASE_MS + 3 * DAY
    whole = region.telemetry.window(vin, start, end, signals)
    pieces = list(region.telemetry.scan(vin, start, end, signals))
    assert len(pieces) == 3  # three UTC days hold data
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.column("t").cast(pa.int64())[-1].as_py() < b.column("t").cast(pa.int64())[0].as_py()
        assert a.column("t").cast(pa.int64())[-1].as_py() // DAY < b.column("t").cast(pa.int64())[0].as_py() // DAY
    assert pa.concat_tables(pieces).equals(whole)


def test_scan_reads_compacted_parts_and_withholds(region: Region, agent: VehicleAgent) -> None:
    from carvault.compliance.retention import DAY_MS, period_ms

    vin = _upload(region, agent)
    cat = catalogue()
    paths = sorted({c for r in region.telemetry.batches(vin, 0, 2**62) for c in r.columns} - {"t"})
    signals = [cat.get(p) for p in paths]
    start, end = BASE_MS - DAY, BASE_MS + 3 * DAY
    before = pa.concat_tables(list(region.telemetry.scan(vin, start, end, signals)))
    assert sum(c.batches for c in region.telemetry.compact()) == 10
    assert all(r.payload_key for r in region.telemetry.batches(vin, 0, 2**62))
    assert pa.concat_tables(list(region.telemetry.scan(vin, start, end, signals))).equals(before)
    region.retention.run(now=BASE_MS + period_ms("body") + 30 * DAY_MS)  # body values withheld, parts untouched
    after = pa.concat_tables(list(region.telemetry.scan(vin, start, end, signals)))
    body = [s.path for s in signals if s.category == "body"]
    assert body and after.num_rows == before.num_rows
    assert all(after.column(p).null_count == after.num_rows for p in body)
    assert after.column("Vehicle.Speed").equals(before.column("Vehicle.Speed"))


def test_punch_frees_whole_blocks_and_reads_zeros(tmp_path: Path) -> None:
    import os

    from carvault.store.segments import punch

    path = tmp_path / "f.cvseg"
    path.write_bytes(b"\x01" * (1 << 20))
    os.sync()
    before = path.stat().st_blocks
    fd = os.open(path, os.O_RDWR)
    try:
        punch(fd, 1000, 600_000)
        os.fsync(fd)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) == 1 << 20 and data[1000:601_000] == bytes(600_000)
    assert data[:1000] == b"\x01" * 1000 and data[601_000:] == b"\x01" * ((1 << 20) - 601_000)
    assert path.stat().st_blocks * 512 <= before * 512 - 500_000  # the whole blocks inside went back


def test_a_missing_part_is_reported_not_papered_over(region: Region, agent: VehicleAgent) -> None:
    from carvault.errors import Unavailable

    vin = _upload(region, agent)
    region.telemetry.compact()
    ref = region.telemetry.batches(vin, 0, 2**62)[0]
    assert ref.payload_key is not None
    region.blobs.delete(ref.payload_key)
    with pytest.raises(Unavailable, match="missing"):
        region.segment_reader.envelope(ref)


def test_a_window_that_listed_batches_before_a_compaction_still_answers(region: Region, agent: VehicleAgent) -> None:
    """The interleaving forced: a window lists batches, then a compaction moves their payloads out (per-batch copies
    gone, ranges punched out), then the window reads them. It follows each batch to its part."""
    from carvault.errors import Unavailable

    vin = _upload(region, agent)
    cat = catalogue()
    signals = [cat.get("Vehicle.Speed")]
    start, end = BASE_MS - DAY, BASE_MS + 3 * DAY
    expected = region.telemetry.window(vin, start, end, signals)
    listed = region.telemetry.batches
    stale = listed(vin, start, end - 1)
    assert all(r.payload_key is None for r in stale)
    assert sum(c.batches for c in region.telemetry.compact()) == 10
    old = region.segment_reader.read(stale[0].segment, stale[0].offset, stale[0].length)
    assert hashlib.sha256(old).hexdigest() != stale[0].batch_hash  # the old place no longer holds the payload
    with pytest.raises(Unavailable, match="moved"):  # an evidence reader with the stale row gets no wrong bytes
        region.segment_reader.envelope(stale[0])
    region.telemetry.batches = lambda *_a, **_k: stale  # type: ignore[method-assign]
    try:
        assert region.telemetry.window(vin, start, end, signals).equals(expected)
    finally:
        region.telemetry.batches = listed  # type: ignore[method-assign]
