"""The engines fleet jobs run on: DuckDB in-process (the embedded default) and Apache Spark (at scale).

Both read the same files: the payload parts of compacted days (store/day_copies.py), Hive-partitioned Parquet
``copies/vin=<VIN>/day=<YYYY-MM-DD>/part-<batch hash>.parquet`` — the very payloads the cars signed. A job never
globs the folder: ``dataset_of`` lists the parts of the batches the metadata DB holds (so erased, deleted or
half-moved payloads are never read) and the columns they carry; the engine unions their schemas (a payload's 1 Hz
columns are null on its 10 Hz rows) and nulls in SQL every value retention withholds (``TelemetryStore.withheld``
cutoffs), the same on both engines. A job is one SQL text per question (fleet/jobs.py), written once; an engine
supplies the few spellings the two dialects do not share (quoting names that contain dots, a time as epoch
milliseconds) and answers with an Arrow table.

Three views are defined: ``telemetry`` (t, vin, day and every signal), ``fast`` (t, vin, day and the 10 Hz
signals) and ``slow`` (t, vin, day and the slower ones, the rows holding any of them). Spark runs in local mode
unless given a master URL (``spark://…``, ``yarn``); it needs a Java runtime (Debian's ``default-jre-headless``).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import select

from carvault.errors import InvalidQuery, Unavailable
from carvault.signals import Catalogue

if TYPE_CHECKING:
    from carvault.store.day_copies import DayCopies
    from carvault.store.metadata import Database

FAST_HZ = 10  # signals sampled at least this often are the ``fast`` view's


@dataclass(frozen=True)
class Dataset:
    """What a job reads: explicit part files under their Hive root, the signal columns, the withheld cutoffs, and
    the vehicles left out because their data is frozen."""

    root: Path
    files: tuple[Path, ...] = ()
    fast: tuple[str, ...] = ()
    slow: tuple[str, ...] = ()
    withheld: Mapping[str, int] = field(default_factory=dict)
    frozen: frozenset[str] = frozenset()

    @property
    def signals(self) -> tuple[str, ...]:
        """Every signal column, fast ones first."""
        return self.fast + self.slow


def dataset_of(
    db: Database,
    days: DayCopies,
    catalogue: Catalogue,
    withheld: Mapping[str, int],
    *,
    vins: Iterable[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> Dataset:
    """The live parts of compacted telemetry batches (optionally of ``vins`` overlapping [start_ms, end_ms)).

    ``withheld`` (``TelemetryStore.withheld()``: per signal, the time before which retention withholds it) is
    required, so no caller can forget it: the engines null every value it withholds. Vehicles whose data is frozen
    (a legal hold a deletion request waits on: ``compliance.deletion.frozen_vins``) are left out: their data is
    kept, not served, and no fleet job reads it (``frozen`` names them).

    On object storage each part is read through this replica's download cache (fetched once).
    """
    from carvault.compliance.deletion import frozen_vins
    from carvault.store.metadata import BatchRecord

    q = select(BatchRecord.payload_key, BatchRecord.columns).where(
        BatchRecord.kind == "telemetry", BatchRecord.payload_key.is_not(None)
    )
    if vins is not None:
        vins = list(vins)
        q = q.where(BatchRecord.vin.in_(vins))
    frozen = frozen_vins(db, vins)
    if frozen:
        q = q.where(BatchRecord.vin.not_in(sorted(frozen)))
    if start_ms is not None:
        q = q.where(BatchRecord.t1 >= start_ms)
    if end_ms is not None:
        q = q.where(BatchRecord.t0 < end_ms)
    with db.session() as s:
        rows = s.execute(q.order_by(BatchRecord.vin, BatchRecord.seq)).all()
    files, names = [], set()
    for key, columns in rows:
        path = days.local(key)
        if path is None:
            raise Unavailable(f"payload part {key} is missing from the blob store")
        files.append(path)
        names.update(c for c in columns.split(",") if c and c != "t")
    root = days.local_root()
    known = sorted(n for n in names if catalogue.get(n) is not None)
    fast = tuple(n for n in known if catalogue[n].rate_hz >= FAST_HZ)
    slow = tuple(n for n in known if catalogue[n].rate_hz < FAST_HZ)
    return Dataset(root, tuple(files), fast, slow, dict(withheld), frozenset(frozen))


class Engine(ABC):
    """A SQL engine over a dataset of payload parts."""

    name: str

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def _select(self) -> list[str]:
        """The ``telemetry`` view's column expressions: withheld values nulled by their cutoffs."""
        cols = ["t", "vin", "day"]
        t = self.epoch_ms("t")
        for c in self.data.signals:
            cut = self.data.withheld.get(c)
            q = self.q(c)
            cols.append(q if cut is None else f"CASE WHEN {t} >= {int(cut)} THEN {q} END AS {q}")
        return cols

    def _views(self, source: str | None, *, telemetry: bool = True) -> list[str]:
        """CREATE statements of the three views over ``source`` (a relation naming the parts), or empty views;
        without ``telemetry`` when the engine made that view itself (Spark, from a DataFrame)."""
        if source is None or not self.data.files:
            empty = f"SELECT {self.empty_row()} WHERE 1 = 0"
            return [f"{self.create_view} {v} AS {empty}" for v in ("telemetry", "fast", "slow")]
        fast = ", ".join(["t", "vin", "day", *(self.q(c) for c in self.data.fast)])
        slow = ", ".join(["t", "vin", "day", *(self.q(c) for c in self.data.slow)])
        any_slow = " OR ".join(f"{self.q(c)} IS NOT NULL" for c in self.data.slow) or "1 = 0"
        own = f"{self.create_view} telemetry AS SELECT {', '.join(self._select())} FROM {source}"
        return [
            *([own] if telemetry else []),
            f"{self.create_view} fast AS SELECT {fast} FROM telemetry",
            f"{self.create_view} slow AS SELECT {slow} FROM telemetry WHERE {any_slow}",
        ]

    create_view = "CREATE VIEW"

    @abstractmethod
    def empty_row(self) -> str:
        """A SELECT list of typed NULL t, vin and day (the views of a region with nothing compacted)."""

    @abstractmethod
    def q(self, name: str) -> str:
        """A column name quoted for this dialect (signal paths contain dots)."""

    @abstractmethod
    def epoch_ms(self, column: str) -> str:
        """SQL giving a timestamp column as epoch milliseconds."""

    @abstractmethod
    def columns(self, view: str) -> list[str]:
        """The view's column names."""

    @abstractmethod
    def sql(self, query: str) -> pa.Table:
        """Run a query; the answer as Arrow."""

    @abstractmethod
    def write_parquet(self, query: str, target: Path) -> int:
        """Write a query's rows to one Parquet file at ``target``; return the rows written."""

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release the engine."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DuckDBEngine(Engine):
    """DuckDB in this process: the embedded default."""

    name = "duckdb"

    def __init__(self, data: Dataset, threads: int | None = None) -> None:
        import duckdb

        super().__init__(data)
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute("SET TimeZone = 'UTC'")
        files = "[" + ", ".join(_sql_text(str(f)) for f in data.files) + "]"
        source = (
            f"read_parquet({files}, hive_partitioning = true, union_by_name = true, "
            "hive_types = {'vin': VARCHAR, 'day': DATE})"
        )
        for statement in self._views(source):
            self.con.execute(statement)

    def empty_row(self) -> str:
        """DuckDB's typed NULLs."""
        return "NULL::TIMESTAMPTZ AS t, '' AS vin, NULL::DATE AS day"

    def q(self, name: str) -> str:
        """Double quotes."""
        return '"' + name.replace('"', '""') + '"'

    def epoch_ms(self, column: str) -> str:
        """DuckDB's epoch_ms."""
        return f"epoch_ms({column})"

    def columns(self, view: str) -> list[str]:
        """From DESCRIBE."""
        return [r[0] for r in self.con.execute(f"DESCRIBE {view}").fetchall()]

    def sql(self, query: str) -> pa.Table:
        """The query's Arrow table."""
        return self.con.sql(query).to_arrow_table()

    def write_parquet(self, query: str, target: Path) -> int:
        """COPY … TO the file (zstd)."""
        path = str(target).replace("'", "''")
        self.con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
        return int(self.con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0])  # type: ignore[index]

    def close(self) -> None:
        """Close the connection."""
        self.con.close()


_SPARK_LOCK = threading.Lock()


class SparkEngine(Engine):
    """Apache Spark (pyspark): local mode by default, a cluster when ``master`` names one."""

    name = "spark"

    create_view = "CREATE OR REPLACE TEMPORARY VIEW"

    def __init__(self, data: Dataset, master: str = "local[2]", session: Any = None) -> None:
        super().__init__(data)
        self.own = session is None
        self.spark = session or spark_session(master)
        source = None
        if data.files:
            df = (
                self.spark.read.option("mergeSchema", "true")
                .option("basePath", str(data.root))
                .parquet(*[str(f) for f in data.files])
            )
            # The withheld values are nulled in the DataFrame itself: no view of the raw parts is ever named in the
            # session, so no query run on it can read what retention withholds.
            df = df.withColumn("day", df["day"].cast("date")).selectExpr(*self._select())
            df.createOrReplaceTempView("telemetry")
            source = "telemetry"
        for statement in self._views(source, telemetry=source is None):
            self.spark.sql(statement)

    def empty_row(self) -> str:
        """Spark's typed NULLs."""
        return "CAST(NULL AS TIMESTAMP) AS t, '' AS vin, CAST(NULL AS DATE) AS day"

    def q(self, name: str) -> str:
        """Backticks."""
        return "`" + name.replace("`", "``") + "`"

    def epoch_ms(self, column: str) -> str:
        """Spark's unix_millis."""
        return f"unix_millis({column})"

    def columns(self, view: str) -> list[str]:
        """The temporary view's columns."""
        return list(self.spark.table(view).columns)

    def sql(self, query: str) -> pa.Table:
        """The query's Arrow table (Spark 4's toArrow)."""
        return self.spark.sql(query).toArrow()

    def write_parquet(self, query: str, target: Path) -> int:
        """Write one Parquet file: the query coalesced to one partition, then the part file moved to ``target``."""
        df = self.spark.sql(query)
        folder = target.with_name(target.name + ".spark")
        df.coalesce(1).write.mode("overwrite").option("compression", "zstd").parquet(str(folder))
        parts = sorted(folder.glob("part-*.parquet"))
        if len(parts) != 1:
            raise Unavailable(f"Spark wrote {len(parts)} part files for one export")
        parts[0].replace(target)
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(target).metadata.num_rows)

    def close(self) -> None:
        """Stop the session if this engine started it."""
        if self.own:
            self.spark.stop()


def spark_session(master: str = "local[2]") -> Any:
    """A Spark session for fleet jobs (UTC, no web UI); Unavailable without pyspark or Java."""
    import shutil

    if shutil.which("java") is None:
        raise Unavailable("Spark needs a Java runtime (scripts/install-system-deps.sh installs default-jre-headless)")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise Unavailable("pyspark is not installed") from None
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode listens on loopback only
    with _SPARK_LOCK:
        session = (
            SparkSession.builder.master(master)
            .appName("carvault-fleet")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.parquet.enableVectorizedReader", "true")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")  # a VIN stays a string
            .getOrCreate()
        )
    session.sparkContext.setLogLevel("ERROR")  # Spark's warnings (e.g. about glob paths) are not ours to print
    return session


def engine_of(name: str, data: Dataset, **options: Any) -> Engine:
    """The engine called ``name`` (duckdb | spark) over the parts of ``data``."""
    if name == "duckdb":
        return DuckDBEngine(data, **options)
    if name == "spark":
        return SparkEngine(data, **options)
    raise InvalidQuery(f"unknown engine {name!r}; choose duckdb or spark", engine=name)
