"""Retention purges the refusal counters (``batch_refusals``) past their period, counts them in a dry run, keeps
those of a vehicle under a legal hold, and states both figures in the signed purge record."""

from __future__ import annotations

import json

from sqlalchemy import select

from carvault.compliance.retention import DAY_MS, REFUSALS_KEPT_AS, period_ms
from carvault.region import Region
from carvault.store.metadata import BatchRefusal
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS, vin_for

HOUR_MS = 3_600_000
KEPT_MS = period_ms(REFUSALS_KEPT_AS)


def _refusal(vin: str, at_ms: int, code: str = "chain_broken", *, t1_ms: int | None = None) -> BatchRefusal:
    """One refusal counter row: refused at ``at_ms``, about data ending at ``t1_ms`` (default: a minute before)."""
    t1 = at_ms - 60_000 if t1_ms is None else t1_ms
    return BatchRefusal(
        vin=vin,
        code=code,
        hour_ms=at_ms - at_ms % HOUR_MS,
        count=3,
        first_ms=at_ms,
        last_ms=at_ms,
        seq_min=4,
        seq_max=6,
        t0_min=t1 - 60_000,
        t1_max=t1,
        message="batch 4 does not follow batch 2",
    )


def _left(region: Region) -> list[tuple[str, int]]:
    with region.db.session() as s:
        return sorted((str(v), int(t)) for v, t in s.execute(select(BatchRefusal.vin, BatchRefusal.last_ms)))


def test_refusal_rows_past_their_period_are_purged_and_counted(region: Region, vehicle: VehicleIdentity) -> None:
    other = vin_for(2)
    late_data = BASE_MS + 20 * DAY_MS  # refused at BASE_MS but about data of 20 days later (a car's clock)
    with region.db.session() as s:
        s.add_all(
            [
                _refusal(vehicle.vin, BASE_MS),  # expired
                _refusal(vehicle.vin, BASE_MS + HOUR_MS, code="invalid_payload"),  # expired
                _refusal(vehicle.vin, BASE_MS + 10 * DAY_MS),  # refused 10 days later: still in its period
                _refusal(vehicle.vin, BASE_MS + 2 * HOUR_MS, t1_ms=late_data),  # its data is younger: kept
                _refusal(other, BASE_MS),  # expired, another car
            ]
        )
    now = BASE_MS + KEPT_MS + 2 * DAY_MS
    before = _left(region)

    dry = region.retention.run(now=now, dry_run=True)
    summary = json.loads(dry.summary)
    assert summary["refusal_rows_erased"] == 3 and summary["refusal_rows_held"] == 0
    assert _left(region) == before  # a dry run counts, changes nothing

    run = region.retention.run(now=now)
    summary = json.loads(run.summary)
    assert summary["refusal_rows_erased"] == 3
    assert json.loads(run.record or "{}")["refusal_rows_erased"] == 3  # the signed record says so
    assert _left(region) == [(vehicle.vin, BASE_MS + 2 * HOUR_MS), (vehicle.vin, BASE_MS + 10 * DAY_MS)]

    # Once the later ones are past their period too, the next run takes them.
    summary = json.loads(region.retention.run(now=late_data + KEPT_MS + DAY_MS).summary)
    assert summary["refusal_rows_erased"] == 2 and _left(region) == []


def test_a_legal_hold_keeps_the_refusal_rows(region: Region, vehicle: VehicleIdentity) -> None:
    other = vin_for(3)
    with region.db.session() as s:
        s.add_all([_refusal(vehicle.vin, BASE_MS), _refusal(other, BASE_MS)])
    hold = region.deletions.place_hold(vehicle.vin, "Shenzhen Intermediate Court", "case (2026) 124")
    now = BASE_MS + KEPT_MS + DAY_MS
    summary = json.loads(region.retention.run(now=now).summary)
    assert summary["refusal_rows_erased"] == 1 and summary["refusal_rows_held"] == 1
    assert _left(region) == [(vehicle.vin, BASE_MS)]
    region.deletions.release_hold(hold.id)
    summary = json.loads(region.retention.run(now=now).summary)
    assert summary["refusal_rows_erased"] == 1 and summary["refusal_rows_held"] == 0
    assert _left(region) == []
