"""Fleet jobs (fleet/jobs.py) on DuckDB and on Apache Spark over the same payload parts: the same answers, answers
that agree with the batch index, only the parts the metadata DB lists, withheld values null on both."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from carvault.fleet.engines import Dataset, DuckDBEngine, SparkEngine, dataset_of, engine_of, spark_session
from carvault.fleet.jobs import monthly_statistics, research_aggregate, retention_scan, vehicle_year_export
from carvault.region import Region
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord
from tests.factories import BASE_MS, vin_for
from tests.fleet.fleets import compacted_fleet

CARS = 5
YEAR = 2025


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    """Five cars driving the same road on two days, uploaded over HTTP and compacted."""
    region, _ = compacted_fleet(
        tmp_path_factory.mktemp("fleet"),
        200,
        CARS,
        lambda i: [(BASE_MS, 240, 0), (BASE_MS + 86_400_000, 120, i)],
    )
    yield region
    region.close()


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    session = spark_session("local[2]")
    yield session
    session.stop()


def _root(region: Region) -> Dataset:
    """The parts the metadata DB lists (never a glob of the folder), with the region's withheld cutoffs."""
    assert region.telemetry.days is not None and region.telemetry.withheld is not None
    return dataset_of(region.db, region.telemetry.days, region.catalogue, region.telemetry.withheld())


def _engines(region: Region, spark: object, data: Dataset | None = None) -> list[tuple[str, object]]:
    data = data or _root(region)
    return [("duckdb", DuckDBEngine(data)), ("spark", SparkEngine(data, session=spark))]


def _same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (name, x, y)
            else:
                assert x == y, (name, x, y)


pytestmark = pytest.mark.slow


def test_monthly_statistics_agree_with_each_other_and_the_batch_index(fleet: Region, spark: object) -> None:
    answers = {name: monthly_statistics(e, fleet.catalogue, YEAR) for name, e in _engines(fleet, spark)}
    _same(answers["duckdb"], answers["spark"])
    with fleet.db.session() as s:
        stored = s.scalar(select(func.sum(BatchRecord.samples)).where(BatchRecord.kind == "telemetry"))
    assert sum(answers["duckdb"].column("samples").to_pylist()) == stored
    assert set(answers["duckdb"].column("vehicles").to_pylist()) == {CARS}


def test_retention_scan_counts_what_a_purge_would_withhold(fleet: Region, spark: object) -> None:
    categories = {s.category for s in fleet.catalogue}
    everything = {c: 2**60 for c in categories}  # every sample is past a cutoff in the far future
    nothing = {c: 0 for c in categories}
    second_day = {c: BASE_MS + 86_400_000 for c in categories}
    for cutoffs in (everything, nothing, second_day):
        answers = {name: retention_scan(e, fleet.catalogue, cutoffs) for name, e in _engines(fleet, spark)}
        _same(answers["duckdb"], answers["spark"])
    with fleet.db.session() as s:
        stored = s.scalar(select(func.sum(BatchRecord.samples)).where(BatchRecord.kind == "telemetry"))
    past_all = retention_scan(DuckDBEngine(_root(fleet)), fleet.catalogue, everything)
    assert sum(past_all.column("samples_past").to_pylist()) == stored
    assert set(past_all.column("vehicles").to_pylist()) == {CARS}
    assert (
        sum(retention_scan(DuckDBEngine(_root(fleet)), fleet.catalogue, nothing).column("samples_past").to_pylist())
        == 0
    )
    first_day = retention_scan(DuckDBEngine(_root(fleet)), fleet.catalogue, second_day)
    assert 0 < sum(first_day.column("samples_past").to_pylist()) < stored
    assert max(first_day.column("oldest_ms").to_pylist()) < BASE_MS + 86_400_000


def test_vehicle_year_export_is_the_same_file_content(fleet: Region, spark: object, tmp_path: Path) -> None:
    vin = vin_for(201)
    tables = {}
    for name, e in _engines(fleet, spark):
        target = tmp_path / f"{name}.parquet"
        rows = vehicle_year_export(e, vin, YEAR, target)
        tables[name] = pq.read_table(target)
        assert rows == tables[name].num_rows
    with fleet.db.session() as s:
        stored_rows = s.scalar(select(func.sum(BatchRecord.rows)).where(BatchRecord.vin == vin))
    assert tables["duckdb"].num_rows == stored_rows
    d, sp = tables["duckdb"], tables["spark"]
    assert d.column_names == sp.column_names
    # DuckDB writes times as microseconds in UTC, Spark as nanoseconds: the same instants.
    as_ms = pa.timestamp("ms", tz="UTC")
    assert d.column("t").cast(as_ms).equals(sp.column("t").cast(as_ms))
    for name in d.column_names[1:]:
        assert d.column(name).equals(sp.column(name).cast(d.schema.field(name).type)), name
    # The same values as the region's own window read.
    window = fleet.telemetry.window(
        vin, BASE_MS - 1, BASE_MS + 2 * 86_400_000, [fleet.catalogue[c] for c in d.column_names[1:]]
    )
    assert window.num_rows == d.num_rows
    assert window.column("Vehicle.Speed").equals(d.column("Vehicle.Speed"))


def test_research_aggregate_is_k_anonymous_and_the_same_on_both(fleet: Region, spark: object) -> None:
    answers = {name: research_aggregate(e, k=CARS) for name, e in _engines(fleet, spark)}
    _same(answers["duckdb"], answers["spark"])
    table = answers["duckdb"]
    assert table.num_rows > 0 and min(table.column("vehicles").to_pylist()) >= CARS
    assert research_aggregate(DuckDBEngine(_root(fleet)), k=CARS + 1).num_rows == 0  # no cell has six cars
    with pytest.raises(ValueError, match="k must be"):
        research_aggregate(DuckDBEngine(_root(fleet)), k=1)


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown engine"):
        engine_of("hive", Dataset(tmp_path))
    # An empty region: every job answers with nothing rather than failing.
    e = DuckDBEngine(Dataset(tmp_path))
    assert retention_scan(e, catalogue(), {"driving": 2**60}).num_rows == 0
    assert monthly_statistics(e, catalogue(), YEAR).num_rows == 0


def test_only_listed_parts_are_read_and_withheld_values_are_null(fleet: Region, spark: object) -> None:
    """A stray file in the folder (a part whose batch is gone) is never read; a withheld category is null in SQL."""
    data = _root(fleet)
    stray = data.root / f"vin={vin_for(299)}" / "day=2025-01-01" / "part-stray.parquet"
    stray.parent.mkdir(parents=True)
    pq.write_table(pq.read_table(data.files[0]), stray)
    try:
        body = [c for c in data.signals if fleet.catalogue[c].category == "body"]
        assert body
        cut = BASE_MS + 86_400_000  # the first day's body values are withheld
        withheld = Dataset(data.root, data.files, data.fast, data.slow, dict.fromkeys(body, cut))
        answers = {}
        for name, e in _engines(fleet, spark, withheld):
            answers[name] = monthly_statistics(e, fleet.catalogue, YEAR)  # type: ignore[arg-type]
            vins = e.sql("SELECT DISTINCT vin FROM telemetry").column("vin").to_pylist()  # type: ignore[attr-defined]
            assert vin_for(299) not in vins and len(vins) == CARS
            t = e.epoch_ms("t")  # type: ignore[attr-defined]
            present = " OR ".join(f"{e.q(c)} IS NOT NULL" for c in body)  # type: ignore[attr-defined]
            early = e.sql(f"SELECT count(*) AS n FROM telemetry WHERE {t} < {cut} AND ({present})")  # type: ignore[attr-defined]
            late = e.sql(f"SELECT count(*) AS n FROM telemetry WHERE {t} >= {cut} AND ({present})")  # type: ignore[attr-defined]
            assert early.column("n")[0].as_py() == 0 and late.column("n")[0].as_py() > 0
            if name == "spark":  # no relation of the session holds the raw parts: only the withholding views
                names = {r.viewName for r in e.spark.sql("SHOW VIEWS").collect()}  # type: ignore[attr-defined]
                assert names == {"telemetry", "fast", "slow"}, names
        _same(answers["duckdb"], answers["spark"])
        full = monthly_statistics(DuckDBEngine(data), fleet.catalogue, YEAR)
        body_samples = sum(r["samples"] for r in full.to_pylist() if r["category"] == "body")
        assert 0 < sum(r["samples"] for r in answers["duckdb"].to_pylist() if r["category"] == "body") < body_samples
    finally:
        stray.unlink()
