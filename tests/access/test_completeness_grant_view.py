"""A grant holder's completeness report says that data is missing and when, never why when the why is the owner's
private act: a deletion on request reads ``not_available``, and the owner's deletion requests, software versions
and the signals that changed with an update are in the owner's report only (coordinator's decision, issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carvault.access.accounts import Principal
from carvault.access.completeness import DELETED, NOT_AVAILABLE, gaps_csv
from carvault.region import Region
from carvault.verify.completeness import verify_report
from tests.access.test_completeness import DAY, PATHS, SPEED, Car, T


@pytest.fixture
def car(region: Region, tmp_path: Path) -> Car:
    return Car(region, tmp_path)


def _grant_report(region: Region, car: Car, signals: list[str], now: int) -> dict:
    _, grant = region.grants.personal_token(car.owner.id, label="app", vins=[car.identity.vin], signals=signals)
    holder = Principal(car.owner.id, car.owner.email, 0, "personal", grant_id=grant.id)
    c = region.completeness
    lo, hi, zone = c.window(day=DAY, start_ms=None, end_ms=None, tz="UTC")
    return c.report(region.grants.access(holder, car.identity.vin), lo, hi, zone, now=now)


def test_a_grant_holder_sees_deleted_data_as_not_available(region: Region, car: Car) -> None:
    car.send(T, 60)
    car.send(T + 60_000, 60)
    req = region.deletions.request(car.owner.id, car.identity.vin, "erase", immediately=True)
    assert req.status == "completed"
    car.send(T + 600_000, 60, version="2025.46.2", paths=[SPEED, "Vehicle.IsMoving"])  # seq 3, after an update
    car.send(T + 660_000, 60, version="2025.46.2", paths=[SPEED, "Vehicle.IsMoving"])
    now = T + 86_400_000

    owner = car.report(now=now)
    assert DELETED in {g["reason"] for g in owner["gaps"]} and owner["deletions"]
    assert {b["software_version"] for b in owner["batches"]} == {"2025.46.2"} and owner["software"]

    grant = _grant_report(region, car, PATHS, now)
    assert grant["for"] == "grant"
    reasons = [g["reason"] for g in grant["gaps"]]
    assert NOT_AVAILABLE in reasons and DELETED not in reasons
    [hole] = [g for g in grant["gaps"] if g["reason"] == NOT_AVAILABLE]
    [owner_hole] = [g for g in owner["gaps"] if g["reason"] == DELETED]
    assert (hole["start_ms"], hole["end_ms"]) == (owner_hole["start_ms"], owner_hole["end_ms"])  # the same when
    assert hole["detail"]["missing_seqs"] == [1, 2]  # when, and which seqs: the chain shows those anyway
    assert grant["totals"]["gap_seconds"].get(NOT_AVAILABLE) and DELETED not in grant["totals"]["gap_seconds"]
    assert grant["deletions"] == [] and grant["software"] == []
    assert all(b["software_version"] is None for b in grant["batches"])
    assert all(d["software_version"] is None for d in grant["drives"] or [])
    text = json.dumps(grant) + gaps_csv(grant)
    for secret in ("deletion_requests", "deleted", "2025.46.2", "receipt_signature", "appeared", "vanished"):
        assert secret not in text, secret
    # The grant holder's report is signed and checks offline like the owner's.
    assert verify_report(grant).ok
