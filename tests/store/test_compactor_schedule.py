"""The in-process schedule of compaction and of the sweep of cached part downloads (store/day_copies.Compactor)."""

from __future__ import annotations

import asyncio
import threading

from carvault.store.day_copies import Compactor
from tests.factories import run_coroutine


def test_the_cache_sweep_runs_even_with_compaction_off() -> None:
    """Fix: cached downloads of parts erased through another replica stayed until this replica's next compaction —
    never with ``compaction_interval_s = 0`` (compaction from cron)."""
    compactions, sweeps = threading.Semaphore(0), threading.Semaphore(0)

    async def run() -> None:
        c = Compactor(compactions.release, 0, sweep=sweeps.release, sweep_s=0.05)
        c.start()
        await asyncio.sleep(0.4)
        await c.stop()

    run_coroutine(run())
    assert sweeps.acquire(timeout=0)  # swept at least once
    assert not compactions.acquire(timeout=0)  # compaction stays off


def test_both_loops_run_and_a_failure_does_not_end_them() -> None:
    calls = {"compact": 0, "sweep": 0}

    def compact() -> None:
        calls["compact"] += 1
        raise RuntimeError("the store is down")  # logged; the next interval tries again

    def sweep() -> None:
        calls["sweep"] += 1

    async def run() -> None:
        c = Compactor(compact, 1, sweep=sweep, sweep_s=0.05)
        c.interval_s = 0.05  # type: ignore[assignment]  # the loop takes any positive interval
        c.start()
        await asyncio.sleep(0.5)
        await c.stop()

    run_coroutine(run())
    assert calls["compact"] >= 2 and calls["sweep"] >= 2
