"""Fleet-wide jobs, written once as SQL and run on any engine of fleet/engines.py (DuckDB or Spark).

They read the payload parts of compacted days the metadata DB lists (``engines.dataset_of``), withheld values
already null.

- ``retention_scan``: per category, the samples (and vehicles) older than the category's retention cutoff — what
  the next purge will withhold (compliance/retention.py decides; this sizes it across the fleet).
- ``monthly_statistics``: per month of a year, vehicles with data, rows and samples per category (the annual
  report's volume figures, docs/annual-report.md).
- ``vehicle_year_export``: one vehicle's year, every signal, one row per instant, as one Parquet file.
- ``research_aggregate``: de-identified aggregates for research — per ~1 km cell (0.01°) and UTC hour of day, the
  vehicles, samples and mean speed, with cells seen by fewer than ``k`` vehicles left out (k-anonymity).

Each job returns an Arrow table sorted by its key columns, so two engines' answers compare directly (the tests run
every job on both).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from carvault.fleet.engines import Engine
from carvault.signals import Catalogue

KEYS = ("t", "vin", "day")
LAT, LON, SPEED = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude", "Vehicle.Speed"
MS_PER_YEAR_GUARD = 366 * 86_400_000


def _signals(engine: Engine, view: str) -> list[str]:
    return [c for c in engine.columns(view) if c not in KEYS]


def retention_scan(engine: Engine, catalogue: Catalogue, cutoffs: Mapping[str, int]) -> pa.Table:
    """Per category with a cutoff: samples older than it, the vehicles holding them, the oldest such sample (ms)."""
    rows: dict[str, dict[str, int]] = {}
    for view in ("fast", "slow"):
        cols = [c for c in _signals(engine, view) if (s := catalogue.get(c)) is not None and s.category in cutoffs]
        if not cols:
            continue
        t = engine.epoch_ms("t")
        per_col = ", ".join(
            f"count(CASE WHEN {t} < {int(cutoffs[catalogue[c].category])} THEN {engine.q(c)} END) AS c{i}"
            for i, c in enumerate(cols)
        )
        totals = engine.sql(f"SELECT {per_col} FROM {view}").to_pylist()[0]
        for i, c in enumerate(cols):
            cat = catalogue[c].category
            rows.setdefault(cat, {"samples": 0})["samples"] += int(totals[f"c{i}"] or 0)
        by_category: dict[str, list[str]] = {}
        for c in cols:
            by_category.setdefault(catalogue[c].category, []).append(c)
        for cat, members in by_category.items():
            present = " OR ".join(f"{engine.q(c)} IS NOT NULL" for c in members)
            found = engine.sql(
                f"SELECT vin, min({t}) AS oldest FROM {view} WHERE {t} < {int(cutoffs[cat])} AND ({present}) "
                "GROUP BY vin"
            ).to_pylist()
            entry = rows[cat]
            vins = set(entry.get("_vins", set())) | {r["vin"] for r in found}  # type: ignore[arg-type]
            entry["_vins"] = vins  # type: ignore[assignment]
            oldest = [int(r["oldest"]) for r in found] + ([entry["oldest_ms"]] if "oldest_ms" in entry else [])
            if oldest:
                entry["oldest_ms"] = min(oldest)
    out = [
        {
            "category": cat,
            "samples_past": v["samples"],
            "vehicles": len(v.get("_vins", ())),  # type: ignore[arg-type]
            "oldest_ms": v.get("oldest_ms"),
        }
        for cat, v in sorted(rows.items())
    ]
    schema = pa.schema(
        [("category", pa.string()), ("samples_past", pa.int64()), ("vehicles", pa.int64()), ("oldest_ms", pa.int64())]
    )
    return pa.Table.from_pylist(out, schema=schema)


def monthly_statistics(engine: Engine, catalogue: Catalogue, year: int) -> pa.Table:
    """Per month of ``year`` (UTC) and category: vehicles with data, rows (instants) and samples."""
    parts = []
    for view in ("fast", "slow"):
        cols = [c for c in _signals(engine, view) if catalogue.get(c) is not None]
        if not cols:
            continue
        by_category: dict[str, list[str]] = {}
        for c in cols:
            by_category.setdefault(catalogue[c].category, []).append(c)
        for cat, members in sorted(by_category.items()):
            samples = " + ".join(f"count({engine.q(c)})" for c in members)
            present = " OR ".join(f"{engine.q(c)} IS NOT NULL" for c in members)
            parts.append(
                f"SELECT month(t) AS month, '{cat}' AS category, count(DISTINCT CASE WHEN {present} THEN vin END) "
                f"AS vehicles, CAST({samples} AS BIGINT) AS samples FROM {view} WHERE year(t) = {int(year)} "
                "GROUP BY month(t)"
            )
    schema = pa.schema(
        [("month", pa.int64()), ("category", pa.string()), ("vehicles", pa.int64()), ("samples", pa.int64())]
    )
    if not parts:
        return schema.empty_table()
    table = engine.sql(" UNION ALL ".join(parts))
    # One category can have signals in both views: add them up (vehicles: the larger view's count is a lower bound,
    # so they are counted again over both views together).
    grouped = table.group_by(["month", "category"]).aggregate([("samples", "sum"), ("vehicles", "max")])
    out = pa.table(
        {
            "month": grouped.column("month").cast(pa.int64()),
            "category": grouped.column("category").cast(pa.string()),
            "vehicles": grouped.column("vehicles_max").cast(pa.int64()),
            "samples": grouped.column("samples_sum").cast(pa.int64()),
        }
    )
    return out.filter(pc.greater(out.column("samples"), 0)).sort_by([("month", "ascending"), ("category", "ascending")])


def vehicle_year_export(engine: Engine, vin: str, year: int, target: Path) -> int:
    """One vehicle's year, every signal (fast ones first) on one row per instant, to ``target`` (Parquet); rows."""
    if not vin.isalnum():
        raise ValueError(f"bad VIN {vin!r}")
    cols = ", ".join(
        ["t", *(engine.q(c) for c in _signals(engine, "fast")), *(engine.q(c) for c in _signals(engine, "slow"))]
    )
    query = f"SELECT {cols} FROM telemetry WHERE vin = '{vin}' AND year(t) = {int(year)} ORDER BY t"
    return engine.write_parquet(query, target)


def research_aggregate(engine: Engine, k: int = 5) -> pa.Table:
    """Per 0.01° cell and UTC hour: vehicles, samples, mean speed (km/h); cells under ``k`` vehicles left out."""
    if k < 2:
        raise ValueError("k must be at least 2: a cell of one vehicle describes that vehicle")
    slow, fast = set(_signals(engine, "slow")), set(_signals(engine, "fast"))
    if not {LAT, LON} <= slow or SPEED not in fast:
        return pa.schema(
            [
                ("lat", pa.float64()),
                ("lon", pa.float64()),
                ("hour", pa.int64()),
                ("vehicles", pa.int64()),
                ("samples", pa.int64()),
                ("mean_speed_kmh", pa.float64()),
            ]
        ).empty_table()
    lat, lon, speed = engine.q(LAT), engine.q(LON), engine.q(SPEED)
    query = (
        f"SELECT CAST(floor(s.{lat} * 100) AS BIGINT) AS lat_cell, CAST(floor(s.{lon} * 100) AS BIGINT) AS lon_cell, "
        "CAST(hour(s.t) AS BIGINT) AS hour, count(DISTINCT s.vin) AS vehicles, count(*) AS samples, "
        f"avg(CAST(f.{speed} AS DOUBLE)) AS mean_speed_kmh "
        "FROM slow s JOIN fast f ON f.vin = s.vin AND f.t = s.t "
        f"WHERE s.{lat} IS NOT NULL AND s.{lon} IS NOT NULL AND f.{speed} IS NOT NULL "
        f"GROUP BY 1, 2, 3 HAVING count(DISTINCT s.vin) >= {int(k)}"
    )
    table = engine.sql(query)
    out = pa.table(
        {
            "lat": pc.divide(table.column("lat_cell").cast(pa.float64()), 100.0),
            "lon": pc.divide(table.column("lon_cell").cast(pa.float64()), 100.0),
            "hour": table.column("hour").cast(pa.int64()),
            "vehicles": table.column("vehicles").cast(pa.int64()),
            "samples": table.column("samples").cast(pa.int64()),
            "mean_speed_kmh": table.column("mean_speed_kmh").cast(pa.float64()),
        }
    )
    return out.sort_by([("lat", "ascending"), ("lon", "ascending"), ("hour", "ascending")])
