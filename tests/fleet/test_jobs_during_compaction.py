"""A fleet job running while compaction moves late batches of an already compacted day into their parts counts
every row once: the job reads the explicit part list the metadata DB holds at its start (one part per batch), so a
day is never read from an old and a new file at once (the double count the earlier day copies allowed)."""

from __future__ import annotations

import threading
from pathlib import Path

from carvault.fleet.engines import DuckDBEngine, dataset_of
from carvault.region import Region
from tests.access.test_completeness import Car, T

ROWS_PER_BATCH = 600  # a minute at 10 Hz


def _rows(region: Region) -> tuple[int, int]:
    """(rows, rows that repeat a vehicle and time) of the telemetry view over the parts listed now."""
    assert region.telemetry.days is not None
    data = dataset_of(region.db, region.telemetry.days, region.catalogue, region.telemetry.withheld())
    with DuckDBEngine(data, threads=1) as e:
        n = e.sql("SELECT count(*) AS n FROM telemetry").column("n")[0].as_py()
        twice = (
            e.sql("SELECT count(*) AS n FROM (SELECT vin, t FROM telemetry GROUP BY vin, t HAVING count(*) > 1)")
            .column("n")[0]
            .as_py()
        )
    return int(n or 0), int(twice or 0)


def test_a_job_during_a_recompaction_counts_each_row_once(region: Region, tmp_path: Path) -> None:
    cars = [Car(region, tmp_path, n) for n in (1, 2)]
    for car in cars:
        car.send(T, 60)
        car.send(T + 60_000, 60)
    assert region.telemetry.compact(now=2**61)
    before, twice = _rows(region)
    assert before == 4 * ROWS_PER_BATCH and twice == 0
    for car in cars:  # late batches of the same, already compacted day
        for k in range(3):
            car.send(T + (10 + k) * 60_000, 60)

    seen: list[tuple[int, int]] = []
    done, running = threading.Event(), threading.Event()

    errors: list[BaseException] = []

    def jobs() -> None:
        try:
            while not done.is_set():
                seen.append(_rows(region))
                running.set()
        except BaseException as e:  # noqa: BLE001 - a job that fails while compaction runs fails the test
            errors.append(e)
            running.set()

    runner = threading.Thread(target=jobs)
    runner.start()
    try:
        assert running.wait(60)  # jobs are under way before compaction starts, and go on while it runs
        assert region.telemetry.compact(now=2**61)
    finally:
        done.set()
        runner.join()
    assert not errors, errors
    after, twice = _rows(region)
    assert after == before + 6 * ROWS_PER_BATCH and twice == 0
    seen.append((after, twice))
    assert len(seen) >= 2
    for n, repeated in seen:
        assert repeated == 0  # no vehicle-time read twice
        assert before <= n <= after and (n - before) % ROWS_PER_BATCH == 0  # whole batches, each once
