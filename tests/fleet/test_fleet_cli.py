"""`carvault admin fleet …` (admin/fleet.py): the fleet jobs from the operator's command line, on DuckDB and Spark,
audited, refused to staff without the permission, and never reading a vehicle whose data is frozen."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from carvault.cli import app as cli_app
from carvault.compliance.deletion import frozen_vins
from carvault.region import Region
from carvault.store.metadata import BatchRecord
from carvault.vehicle.identity import VehicleIdentity
from tests.factories import BASE_MS
from tests.fleet.fleets import compacted_fleet

CARS = 3
YEAR = 2025

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, list[VehicleIdentity]]]:
    """Three cars on the same road (so research cells hold several vehicles), uploaded over HTTP and compacted."""
    region, cars = compacted_fleet(tmp_path_factory.mktemp("fleet-cli"), 300, CARS, lambda i: [(BASE_MS, 180, 0)])
    region.staff.create("ada-admin", "a long enough password", "region_admin")
    region.staff.create("sam-support", "a long enough password", "support")
    yield region, cars
    region.close()


def _args(region: Region) -> list[str]:
    return ["--data-dir", str(region.settings.data_dir), "--region", region.name]


def _samples(region: Region, vins: list[str] | None = None) -> int:
    q = select(func.sum(BatchRecord.samples)).where(BatchRecord.kind == "telemetry")
    if vins is not None:
        q = q.where(BatchRecord.vin.in_(vins))
    with region.db.session() as s:
        return int(s.scalar(q) or 0)


def test_statistics_on_both_engines_agree_and_the_run_is_audited(
    fleet: tuple[Region, list[VehicleIdentity]], tmp_path: Path
) -> None:
    region, _ = fleet
    runner = CliRunner()
    answers = {}
    for engine in ("duckdb", "spark"):
        r = runner.invoke(
            cli_app,
            ["admin", "fleet", "statistics", "--year", str(YEAR), "--engine", engine, "--json", *_args(region)],
        )
        assert r.exit_code == 0, r.output
        answers[engine] = json.loads(r.output)["rows"]
    assert answers["duckdb"] == answers["spark"]
    assert sum(row["samples"] for row in answers["duckdb"]) == _samples(region)
    # --out writes every row (CSV here), and the table on the terminal says where.
    out = tmp_path / "stats.csv"
    r = runner.invoke(cli_app, ["admin", "fleet", "statistics", "--year", str(YEAR), "--out", str(out), *_args(region)])
    assert r.exit_code == 0 and "written" in r.output, r.output
    assert pcsv.read_csv(out).num_rows == len(answers["duckdb"])
    events = [e for e in region.audit.list(None, limit=1000) if e.action == "fleet.job"]  # type: ignore[arg-type]
    assert len(events) == 3 and {json.loads(e.detail)["engine"] for e in events} == {"duckdb", "spark"}
    assert all(e.actor.startswith("staff:cli:") for e in events)


def test_research_is_k_anonymous_and_refused_without_the_permission(
    fleet: tuple[Region, list[VehicleIdentity]], tmp_path: Path
) -> None:
    region, _ = fleet
    runner = CliRunner()
    out = tmp_path / "cells.parquet"
    r = runner.invoke(
        cli_app, ["admin", "fleet", "research", "--k", "3", "--out", str(out), "--as", "ada-admin", *_args(region)]
    )
    assert r.exit_code == 0, r.output
    cells = pq.read_table(out)
    assert cells.num_rows > 0 and min(cells.column("vehicles").to_pylist()) >= 3
    assert "vin" not in cells.column_names
    more = runner.invoke(cli_app, ["admin", "fleet", "research", "--k", str(CARS + 1), "--json", *_args(region)])
    assert more.exit_code == 0 and json.loads(more.output)["rows"] == []  # no cell is seen by more cars than exist
    refused = runner.invoke(cli_app, ["admin", "fleet", "research", "--as", "sam-support", *_args(region)])
    assert refused.exit_code == 1 and "role_forbidden" in refused.output
    one = runner.invoke(cli_app, ["admin", "fleet", "research", "--k", "1", *_args(region)])
    assert one.exit_code != 0  # a cell of one vehicle describes that vehicle
    bad = runner.invoke(cli_app, ["admin", "fleet", "research", "--out", str(tmp_path / "x.xlsx"), *_args(region)])
    assert bad.exit_code == 1 and "validation_failed" in bad.output and not (tmp_path / "x.xlsx").exists()
    engine = runner.invoke(cli_app, ["admin", "fleet", "research", "--engine", "oracle", *_args(region)])
    assert engine.exit_code == 1 and "unknown engine" in engine.output


def test_a_frozen_vehicle_is_left_out_of_every_job(fleet: tuple[Region, list[VehicleIdentity]]) -> None:
    """Data under a legal hold that a deletion request waits on is kept, not served: no fleet job reads it."""
    region, cars = fleet
    frozen = cars[0]
    owner = region.accounts.register("frozen-owner@example.com", "correct horse battery")
    region.vehicles.claim(owner.id, frozen.vin, frozen.pairing_code)
    hold = region.deletions.place_hold(frozen.vin, "Shenzhen Intermediate Court", "case (2026) 456")
    assert frozen_vins(region.db) == set()  # a hold alone freezes nothing: no deletion request waits on it
    request = region.deletions.request(owner.id, frozen.vin, "delete my car's data", immediately=True)
    assert request.status == "held"
    assert frozen_vins(region.db) == {frozen.vin}
    try:
        runner = CliRunner()
        r = runner.invoke(cli_app, ["admin", "fleet", "statistics", "--year", str(YEAR), "--json", *_args(region)])
        assert r.exit_code == 0, r.output
        others = [c.vin for c in cars[1:]]
        assert sum(row["samples"] for row in json.loads(r.output)["rows"]) == _samples(region, others)
        shown = runner.invoke(cli_app, ["admin", "fleet", "retention-scan", *_args(region)])
        assert shown.exit_code == 0 and "1 vehicle(s) left out" in shown.output, shown.output
    finally:
        region.deletions.release_hold(hold.id)  # the request then proceeds: the car's data is erased
    assert frozen_vins(region.db) == set()
