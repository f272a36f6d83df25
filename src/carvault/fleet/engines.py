"""The engines fleet jobs run on: DuckDB in-process (the embedded default) and Apache Spark (at scale).

Both read the same files: the compact query copies (store/day_copies.py), a Hive-partitioned Parquet dataset
``copies/vin=<VIN>/day=<YYYY-MM-DD>/rate=<10hz|1hz>/part-*.parquet``. A job is one SQL text per question
(fleet/jobs.py), written once; an engine supplies the few spellings the two dialects do not share (quoting names
that contain dots, a time as epoch milliseconds) and answers with an Arrow table.

Two views are defined over the dataset: ``fast`` (t, vin, day and the 10 Hz signals) and ``slow`` (t, vin, day and
the slower ones). Spark runs in local mode unless given a master URL (``spark://…``, ``yarn``); it needs a Java
runtime (Debian's ``default-jre-headless``).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa

from carvault.errors import InvalidQuery, Unavailable

RATES = {"fast": "10hz", "slow": "1hz"}


class Engine(ABC):
    """A SQL engine over the copies dataset rooted at ``root`` (the ``copies`` folder)."""

    name: str

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, view: str) -> bool:
        """Whether any file of the view exists (an empty region has none)."""
        return any(self.root.glob(f"*/*/rate={RATES[view]}/*.parquet"))

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


class DuckDBEngine(Engine):
    """DuckDB in this process: the embedded default."""

    name = "duckdb"

    def __init__(self, root: Path, threads: int | None = None) -> None:
        import duckdb

        super().__init__(root)
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.execute("SET TimeZone = 'UTC'")
        for view, rate in RATES.items():
            if self.has(view):
                pattern = str(root / "*" / "*" / f"rate={rate}" / "*.parquet").replace("'", "''")
                self.con.execute(
                    f"CREATE VIEW {view} AS SELECT * EXCLUDE (rate) FROM read_parquet('{pattern}', "
                    "hive_partitioning = true, union_by_name = true)"
                )
            else:
                self.con.execute(
                    f"CREATE VIEW {view} AS SELECT NULL::TIMESTAMPTZ AS t, '' AS vin, NULL::DATE AS day WHERE false"
                )

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

    def __init__(self, root: Path, master: str = "local[2]", session: Any = None) -> None:
        super().__init__(root)
        self.own = session is None
        self.spark = session or spark_session(master)
        for view, rate in RATES.items():
            if self.has(view):
                df = (
                    self.spark.read.option("mergeSchema", "true")
                    .option("basePath", str(root))
                    .parquet(str(root / "*" / "*" / f"rate={rate}"))
                    .drop("rate")
                )
            else:
                df = self.spark.sql(
                    "SELECT CAST(NULL AS TIMESTAMP) AS t, '' AS vin, CAST(NULL AS DATE) AS day WHERE false"
                )
            df.createOrReplaceTempView(view)

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
            .getOrCreate()
        )
    session.sparkContext.setLogLevel("ERROR")  # Spark's warnings (e.g. about glob paths) are not ours to print
    return session


def engine_of(name: str, root: Path, **options: Any) -> Engine:
    """The engine called ``name`` (duckdb | spark) over the copies under ``root``."""
    if name == "duckdb":
        return DuckDBEngine(root, **options)
    if name == "spark":
        return SparkEngine(root, **options)
    raise InvalidQuery(f"unknown engine {name!r}; choose duckdb or spark", engine=name)
