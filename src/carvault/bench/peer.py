"""The benchmark's PostgreSQL peer: the same telemetry kept the way today's owner-data loggers keep it.

Two layouts, both in a throwaway PostgreSQL 15 server (``TemporaryPostgres``, fsync on, default
``synchronous_commit``), loaded with the exact tables CarVault ingests:

* **wide**: one row per timestamp, ``(car_id, ts, c00 .. c39)`` with typed columns and the primary key
  ``(car_id, ts)``, like TeslaMate's ``positions``. Loaded by one bulk ``COPY`` (CSV) and, into a second
  table, by a ``COPY`` plus commit per 10-second batch from several connections.
* **long**: one row per sample, ``(car_id, ts, signal_id smallint, value double precision)`` with the
  primary key ``(car_id, ts, signal_id)``. Loaded by one bulk binary ``COPY``.

A vehicle is a ``smallint`` ``car_id`` (a ``cars`` table maps it to the VIN), as in TeslaMate: a 17-byte
VIN on every row would make the peer needlessly larger and slower. The long table's key leads with
``ts`` after the car so that rows arriving in time order append at one place per car, and a window of
all signals is one range scan: the peer's best layout for these figures.

Load data is encoded before timing starts, as CarVault's batches are signed before timing starts. A
window read is ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` parsed by ``pyarrow.csv`` into an Arrow
table: the fastest way we know to get a result set from PostgreSQL into Arrow from Python.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.signals import Signal

# VSS datatype -> PostgreSQL column type of the wide table (the narrowest type that holds the range).
PG_TYPES: dict[str, str] = {
    "boolean": "boolean",
    "int8": "smallint",
    "uint8": "smallint",
    "int16": "smallint",
    "uint16": "integer",
    "int32": "integer",
    "uint32": "bigint",
    "int64": "bigint",
    "uint64": "numeric",
    "float": "real",
    "double": "double precision",
    "string": "text",
}
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, the zero of PostgreSQL's binary timestamps
COPY_CHUNK = 1 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PeerVehicle:
    """One vehicle's data: its VIN, its table (``t`` then one column per signal) and its sample count."""

    vin: str
    table: pa.Table
    samples: int


def column_name(i: int) -> str:
    """Short column name of signal ``i`` in the wide table (VSS paths exceed PostgreSQL's 63-byte names)."""
    return f"c{i:02d}"


def wide_ddl(name: str, signals: Sequence[Signal]) -> str:
    """CREATE TABLE of a wide table for ``signals``."""
    cols = ",\n  ".join(f"{column_name(i)} {PG_TYPES[s.datatype]}" for i, s in enumerate(signals))
    return (
        f"CREATE TABLE {name} (\n  car_id smallint NOT NULL REFERENCES cars,\n  ts timestamptz NOT NULL,\n"
        f"  {cols},\n  PRIMARY KEY (car_id, ts)\n)"
    )


CARS_DDL = "CREATE TABLE cars (id smallint PRIMARY KEY, vin text NOT NULL UNIQUE)"
LONG_DDL = """CREATE TABLE long (
  car_id smallint NOT NULL REFERENCES cars,
  ts timestamptz NOT NULL,
  signal_id smallint NOT NULL,
  value double precision NOT NULL,
  PRIMARY KEY (car_id, ts, signal_id)
)"""


def wide_csv(car_id: int, table: pa.Table) -> bytes:
    """CSV rows (no header) for the wide table: car_id, ts, then the signal columns; nulls are empty fields."""
    out = table.rename_columns(["ts"] + [column_name(i) for i in range(table.num_columns - 1)])
    out = out.add_column(0, "car_id", pa.array(np.full(table.num_rows, car_id, dtype=np.int16)))
    sink = io.BytesIO()
    pacsv.write_csv(out, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()


def _as_float(col: pa.ChunkedArray, sig: Signal) -> pa.Array:
    """A signal column as float64 for the long table (booleans 0/1, enums by their index in VSS)."""
    arr = col.combine_chunks()
    if pa.types.is_string(arr.type):
        return pc.index_in(arr, value_set=pa.array(sig.allowed or ())).cast(pa.float64())
    return arr.cast(pa.float64())


_LONG_ROW = np.dtype(
    [
        ("nf", ">i2"),
        ("l1", ">i4"),
        ("car", ">i2"),
        ("l2", ">i4"),
        ("ts", ">i8"),
        ("l3", ">i4"),
        ("sid", ">i2"),
        ("l4", ">i4"),
        ("val", ">f8"),
    ]
)


def long_copy_binary(car_id: int, table: pa.Table, signals: Sequence[Signal]) -> bytes:
    """The long table's rows for one vehicle in PostgreSQL's binary COPY format, in time order."""
    t_us = table.column("t").cast(pa.int64()).to_numpy() * 1000 - PG_EPOCH_US
    parts_t, parts_s, parts_v = [], [], []
    for i, sig in enumerate(signals):
        col = table.column(sig.path)
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        vals = _as_float(col, sig).to_numpy(zero_copy_only=False)
        parts_t.append(t_us[valid])
        parts_s.append(np.full(int(valid.sum()), i, dtype=np.int16))
        parts_v.append(vals[valid])
    ts, sid, val = np.concatenate(parts_t), np.concatenate(parts_s), np.concatenate(parts_v)
    order = np.lexsort((sid, ts))  # a logger writes samples as they arrive: by time, then signal
    rows = np.empty(len(ts), dtype=_LONG_ROW)
    rows["nf"], rows["l1"], rows["car"], rows["l2"], rows["l3"], rows["l4"] = 4, 2, car_id, 8, 2, 8
    rows["ts"], rows["sid"], rows["val"] = ts[order], sid[order], val[order]
    return rows.tobytes()


BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
BINARY_TRAILER = b"\xff\xff"


def _copy(conn: psycopg.Connection[Any], sql: str, blobs: Sequence[bytes], progress: Progress | None) -> None:
    with conn.cursor() as cur, cur.copy(sql) as cp:
        for blob in blobs:
            view = memoryview(blob)
            for off in range(0, len(view), COPY_CHUNK):
                cp.write(view[off : off + COPY_CHUNK])
            if progress:
                progress(1)


# Epoch milliseconds parse faster (and with less ambiguity) than PostgreSQL's timestamptz text.
_EPOCH_MS = "(extract(epoch FROM ts) * 1000)::bigint"


def _ts_literal(ms: int) -> str:
    return "'" + datetime.fromtimestamp(ms / 1000, UTC).isoformat() + "'::timestamptz"


def _quantiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))], 3),
        "n": len(ordered),
    }


class PostgresPeer:
    """Loads the benchmark data into PostgreSQL in both layouts and measures the same figures."""

    def __init__(self, signals: Sequence[Signal], *, batch_seconds: int = 10, clients: int = 4) -> None:
        self.signals = list(signals)
        self.batch_seconds = batch_seconds
        self.clients = clients
        self.pg = TemporaryPostgres(fsync=True)
        self.car_ids: dict[str, int] = {}

    def start(self) -> PostgresPeer:
        """Start the server; give it room for WAL between checkpoints (a bulk-loading DBA would)."""
        self.pg.start()
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
            conn.execute("SELECT pg_reload_conf()")
            # The reload is asynchronous: wait until it is in force before loading anything.
            deadline = time.monotonic() + 10
            while (conn.execute("SHOW max_wal_size").fetchone() or ("",))[0] != "4GB" and time.monotonic() < deadline:
                time.sleep(0.05)
            self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            self.settings = {
                k: str(conn.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
                for k in (
                    "shared_buffers",
                    "max_wal_size",
                    "fsync",
                    "synchronous_commit",
                    "wal_level",
                    "full_page_writes",
                )
            }
        return self

    def stop(self) -> None:
        """Stop the server and delete its files."""
        self.pg.stop()

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection to the peer."""
        return psycopg.connect(self.pg.dsn)

    def _size(self, table: str) -> int:
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {table}")  # what autovacuum does after a load; sets hint bits
            return int(conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0])  # type: ignore[index]

    # ------------------------------------------------------------------ loads
    def register_cars(self, data: Sequence[PeerVehicle]) -> None:
        """The ``cars`` table: a smallint id per VIN."""
        self.car_ids = {v.vin: i for i, v in enumerate(data, start=1)}
        with self.connect() as conn:
            conn.execute(CARS_DDL)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO cars (id, vin) VALUES (%s, %s)", [(i, v) for v, i in self.car_ids.items()])
            conn.commit()

    def load_wide_copy(self, data: Sequence[PeerVehicle], progress: Progress | None = None) -> dict[str, Any]:
        """One bulk COPY of every vehicle's rows into ``wide``; returns seconds, rate and size."""
        blobs = [wide_csv(self.car_ids[v.vin], v.table) for v in data]
        samples = sum(v.samples for v in data)
        with self.connect() as conn:
            conn.execute(wide_ddl("wide", self.signals))
            conn.commit()
            t0 = time.perf_counter()
            _copy(conn, "COPY wide FROM STDIN (FORMAT csv)", blobs, progress)
            conn.commit()
            seconds = time.perf_counter() - t0
        size = self._size("wide")
        return {
            "seconds": round(seconds, 3),
            "samples_per_s": samples / seconds,
            "bytes": size,
            "bytes_per_sample": size / samples,
            "rows": sum(v.table.num_rows for v in data),
        }

    def load_wide_batches(self, data: Sequence[PeerVehicle], progress: Progress | None = None) -> dict[str, Any]:
        """A COPY and a commit per ``batch_seconds`` of one vehicle, from ``clients`` connections at once."""
        from carvault.vehicle.agent import time_slices

        ms = self.batch_seconds * 1000
        per_vehicle = [[wide_csv(self.car_ids[v.vin], part) for _, _, part in time_slices(v.table, ms)] for v in data]
        samples = sum(v.samples for v in data)
        with self.connect() as conn:
            conn.execute(wide_ddl("wide_batches", self.signals))
            conn.commit()
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                with self.connect() as conn:
                    for batches in per_vehicle[k :: self.clients]:
                        for blob in batches:
                            _copy(conn, "COPY wide_batches FROM STDIN (FORMAT csv)", [blob], None)
                            conn.commit()
                            if progress:
                                progress(1)
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(min(self.clients, len(data)))]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        n = sum(len(b) for b in per_vehicle)
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE wide_batches")  # same content as ``wide``; free the disk and the cache
        return {
            "seconds": round(seconds, 3),
            "samples_per_s": samples / seconds,
            "batches": n,
            "clients": self.clients,
            "batch_seconds": self.batch_seconds,
        }

    def load_long_copy(self, data: Sequence[PeerVehicle], progress: Progress | None = None) -> dict[str, Any]:
        """One bulk binary COPY of every sample into ``long``; returns seconds, rate and size."""
        blobs = [long_copy_binary(self.car_ids[v.vin], v.table, self.signals) for v in data]
        samples = sum(v.samples for v in data)
        with self.connect() as conn:
            conn.execute(LONG_DDL)
            conn.commit()
            t0 = time.perf_counter()
            _copy(conn, "COPY long FROM STDIN (FORMAT binary)", [BINARY_HEADER, *blobs, BINARY_TRAILER], progress)
            conn.commit()
            seconds = time.perf_counter() - t0
        size = self._size("long")
        return {
            "seconds": round(seconds, 3),
            "samples_per_s": samples / seconds,
            "bytes": size,
            "bytes_per_sample": size / samples,
            "rows": samples,
        }

    # ------------------------------------------------------------------ window reads
    def _wide_window(self, conn: psycopg.Connection[Any], vin: str, start_ms: int, end_ms: int) -> pa.Table:
        cols = ", ".join(column_name(i) for i in range(len(self.signals)))
        sql = (
            f"COPY (SELECT {_EPOCH_MS}, {cols} FROM wide WHERE car_id = {self.car_ids[vin]} "
            f"AND ts >= {_ts_literal(start_ms)} AND ts < {_ts_literal(end_ms)} ORDER BY ts) TO STDOUT (FORMAT csv)"
        )
        types: dict[str, pa.DataType] = {"ts": pa.int64()}
        types.update({column_name(i): s.arrow_type for i, s in enumerate(self.signals)})
        return self._fetch(conn, sql, ["ts", *(column_name(i) for i in range(len(self.signals)))], types)

    def _long_window(self, conn: psycopg.Connection[Any], vin: str, start_ms: int, end_ms: int) -> pa.Table:
        ids = ",".join(str(i) for i in range(len(self.signals)))
        sql = (
            f"COPY (SELECT {_EPOCH_MS}, signal_id, value FROM long WHERE car_id = {self.car_ids[vin]} "
            f"AND signal_id IN ({ids}) AND ts >= {_ts_literal(start_ms)} AND ts < {_ts_literal(end_ms)} "
            f"ORDER BY ts, signal_id) "
            f"TO STDOUT (FORMAT csv)"
        )
        types = {"ts": pa.int64(), "signal_id": pa.int16(), "value": pa.float64()}
        return self._fetch(conn, sql, ["ts", "signal_id", "value"], types)

    @staticmethod
    def _fetch(conn: psycopg.Connection[Any], sql: str, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
        buf = bytearray()
        with conn.cursor() as cur, cur.copy(sql) as cp:
            for chunk in cp:
                buf += chunk
        table = pacsv.read_csv(
            pa.BufferReader(bytes(buf)),
            read_options=pacsv.ReadOptions(column_names=names),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=True, true_values=["t"], false_values=["f"]
            ),
        )
        return table.set_column(0, "ts", table.column("ts").cast(pa.timestamp("ms", tz="UTC")))

    def windows(
        self, layout: str, windows: Sequence[tuple[str, int, int]], warmup: int = 3, progress: Progress | None = None
    ) -> dict[str, Any]:
        """p50/p95 milliseconds of ``windows`` (vin, start, end) read into Arrow from ``layout``."""
        read = self._wide_window if layout == "wide" else self._long_window
        times: list[float] = []
        rows = samples = 0
        with self.connect() as conn:
            conn.autocommit = True
            for vin, a, b in windows[:warmup]:
                read(conn, vin, a, b)
            for vin, a, b in windows:
                t0 = time.perf_counter()
                table = read(conn, vin, a, b)
                times.append((time.perf_counter() - t0) * 1000)
                rows += table.num_rows
                samples += table.num_rows if layout == "long" else sum(len(c) - c.null_count for c in table.columns[1:])
                if progress:
                    progress(1)
        out = _quantiles(times)
        out["mean_samples"] = samples / max(len(windows), 1)
        out["mean_rows"] = rows / max(len(windows), 1)
        return out
