"""`carvault bench`: the figures of ARCHITECTURE.md "Numbers it must reach", measured in one run.

What one run does (docs/benchmarks.md describes it for readers of the figures):

1. **Dataset.** ``vehicles`` simulated cars (``carvault.vehicle.simulator``), each with ``hours`` of drive
   rows (earlier days are simulated until there is enough driving) and the 40 signals of
   ``BENCH_SIGNALS`` (20 at 10 Hz, 20 at 1 Hz). Every batch (``batch_seconds`` long) is encoded and
   signed *before* timing starts: signing is the vehicle's cost, not the gateway's.
2. **Ingest** through the full path: a real ``carvault serve`` subprocess (own data folder, SQLite),
   vehicles provisioned beforehand through a ``Region`` on the same folder, batches POSTed over
   loopback by an asyncio client (one keep-alive connection per vehicle, each vehicle's batches in
   order, the next sent only after the receipt). The figure is samples acknowledged per second.
3. **Storage**: segment bytes per sample, and the same with the metadata DB and the log added; then
   ingest and storage once more in a fresh region with ``alt_batch_seconds`` batches (the trade-off).
4. **Window**: the store grows to ``store_samples`` (the same tables re-signed for more VINs), then a
   30-minute all-signal window is read with ``Region.telemetry.window`` in this process (and, for
   information, through HTTP as Parquet), p50/p95 over random windows inside driving time.
5. **Peer**: the same data in PostgreSQL 15 (``carvault.bench.peer``), wide and long layouts.
6. **Transparency log**: append rate and proof times (``carvault.bench.ledger``).

Figures go to a JSON file; docs/benchmarks.md is rewritten from them. A hand-written section between
``<!-- analysis:start -->`` and ``<!-- analysis:end -->`` in the existing file is carried over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from carvault.protocol import (
    BATCH_MEDIA_TYPE,
    GENESIS_PREV,
    BatchHeader,
    encode_envelope,
    encode_payload,
    sha256_hex,
)
from carvault.signals import Signal, catalogue

# The 40 benchmark signals: the 10 Hz set minus the four that only ever change in a crash (delta-V,
# airbags), and the 1 Hz signals a logger records on every drive.
SIGNALS_10HZ: tuple[str, ...] = (
    "Vehicle.Speed",
    "Vehicle.Acceleration.Longitudinal",
    "Vehicle.Acceleration.Lateral",
    "Vehicle.Acceleration.Vertical",
    "Vehicle.AngularVelocity.Yaw",
    "Vehicle.Chassis.Accelerator.PedalPosition",
    "Vehicle.Chassis.Brake.PedalPosition",
    "Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected",
    "Vehicle.Chassis.SteeringWheel.Angle",
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed",
    "Vehicle.Body.Lights.Brake.IsActive",
    "Vehicle.ADAS.ABS.IsEngaged",
    "Vehicle.ADAS.ESC.IsEngaged",
    "Vehicle.ADAS.EBA.IsEngaged",
    "Vehicle.ADAS.TCS.IsEngaged",
    "Vehicle.Powertrain.ElectricMotor.Speed",
    "Vehicle.Powertrain.ElectricMotor.Torque",
    "Vehicle.Powertrain.TractionBattery.CurrentCurrent",
    "Vehicle.EDR.BrakeMasterCylinderPressure",
    "Vehicle.EDR.AEB.IsEngaged",
)
SIGNALS_1HZ: tuple[str, ...] = (
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.CurrentLocation.Altitude",
    "Vehicle.CurrentLocation.Heading",
    "Vehicle.TraveledDistance",
    "Vehicle.IsMoving",
    "Vehicle.Powertrain.Transmission.SelectedGear",
    "Vehicle.Powertrain.ElectricMotor.Temperature",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
    "Vehicle.Powertrain.TractionBattery.CurrentVoltage",
    "Vehicle.Powertrain.TractionBattery.CurrentPower",
    "Vehicle.Powertrain.TractionBattery.Temperature.Average",
    "Vehicle.Powertrain.Range",
    "Vehicle.LowVoltageBattery.CurrentVoltage",
    "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
    "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure",
    "Vehicle.Exterior.AirTemperature",
    "Vehicle.Cabin.HVAC.AmbientAirTemperature",
    "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted",
)
BENCH_SIGNALS: tuple[str, ...] = SIGNALS_10HZ + SIGNALS_1HZ
REGION = "cn"
SEED = 2021
INGEST_PATH = "/api/v1/ingest/batches"

# ARCHITECTURE.md "Numbers it must reach", and the reference figures of the PostgreSQL peer there.
TARGET_INGEST = 5_000_000.0
TARGET_INGEST_PEER_FACTOR = 2.0
TARGET_BYTES = 1.5
TARGET_BYTES_PEER_FACTOR = 9.0
TARGET_WINDOW_MS = 10.0
TARGET_WINDOW_PEER_FACTOR = 4.0
TARGET_STORE_SAMPLES = 100_000_000
REFERENCE_PEER = {
    "wide_copy_samples_per_s": 4.7e6,
    "wide_batch_samples_per_s": 2.4e6,
    "wide_bytes_per_sample": 13.6,
    "wide_window_p50_ms": "43–52",
    "long_copy_samples_per_s": 0.66e6,
    "long_bytes_per_sample": 85.5,
    "long_window_p50_ms": 333,
}
NOT_YET_MEASURED = (("Vehicle-year export stream", "≥ 10 M samples/s"),)
DEID_LABELS = Path(__file__).resolve().parents[2] / "tests" / "assets" / "images" / "labels-check.json"
ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"


class BenchError(RuntimeError):
    """A benchmark step failed (a refused batch, a server that would not start ...)."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything one run measures with; ``quick()`` is the tiny variant the test suite runs."""

    vehicles: int = 20
    hours: float = 2.0
    batch_seconds: int = 300  # the agent's default (carvault.vehicle.agent.DEFAULT_BATCH_SECONDS)
    server_workers: int = 1
    # Ingest-only runs in fresh regions, as (batch seconds, `carvault serve --workers`): the trade-offs.
    extra_ingests: tuple[tuple[int, int], ...] = ((60, 1), (300, 2))
    can_frames: int = 5_000_000
    store_samples: int = TARGET_STORE_SAMPLES
    windows: int = 100
    dense_windows: int = 20
    window_minutes: float = 30.0
    postgres: bool = True
    peer_batch_seconds: int = 10
    peer_clients: int = 4
    peer_windows: int = 50
    log_append_leaves: int = 1_000_000
    log_proof_leaves: int = 1 << 25
    seed: int = SEED
    quick: bool = False
    work_dir: Path | None = None
    keep: bool = False
    live: bool = True  # the live step (carvault.bench.live_bench); quick runs use a handful of cars

    @classmethod
    def quick_config(cls, **overrides: Any) -> BenchConfig:
        """2 vehicles x 5 minutes, no growth, a small peer and log: well under a minute."""
        base: dict[str, Any] = dict(
            vehicles=2,
            hours=5 / 60,
            extra_ingests=((120, 2),),
            store_samples=0,
            windows=30,
            dense_windows=5,
            window_minutes=2.0,
            peer_windows=30,
            log_append_leaves=5_000,
            log_proof_leaves=0,
            quick=True,
            can_frames=50_000,
        )
        base.update(overrides)
        return cls(**base)


# ---------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem_gib = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


# ---------------------------------------------------------------------------------------- dataset
@dataclass
class VehicleData:
    """One simulated vehicle: its drive rows and its batches' payloads (encoded, not yet signed)."""

    vin: str
    table: pa.Table
    samples: int
    slices: list[tuple[int, int, int, int, bytes]]  # (t0, t1, rows, samples, Parquet payload)


def _count_samples(table: pa.Table) -> int:
    return sum(len(c) - c.null_count for c in table.columns[1:])


def drive_rows(vin: str, seed: int, hours: float, signals: Sequence[str], last_day: dt.date) -> pa.Table:
    """Rows of the simulator's drives (pull-away to standstill), earlier days first, until ``hours``."""
    from carvault.vehicle.simulator import simulate_day

    want = int(round(hours * 3600 * 10))  # rows at 10 Hz
    parts: list[pa.Table] = []
    have = 0
    day = last_day
    for _ in range(60):  # a car drives 0.5-1.5 h a day; 60 days is plenty for any sane ``hours``
        sim = simulate_day(vin, seed, day, signals=list(signals))
        t = sim.table.column("t").cast(pa.int64()).to_numpy()
        day_parts = []
        for d in sim.drives:
            a, b = np.searchsorted(t, [d.start_ms, d.end_ms + 1])
            day_parts.append(sim.table.slice(int(a), int(b - a)))
        parts[:0] = day_parts  # earlier days go before later ones
        have += sum(p.num_rows for p in day_parts)
        if have >= want:
            break
        day -= dt.timedelta(days=1)
    table = pa.concat_tables(parts).combine_chunks()
    # Keep the *last* ``want`` rows: the most recent driving, cut at an earlier day's drive if needed.
    return table.slice(max(table.num_rows - want, 0))


def _prepare_vehicle(args: tuple[str, int, float, tuple[str, ...], dt.date, int]) -> VehicleData:
    """Worker: simulate one vehicle and encode its batch payloads (runs in a pool process)."""
    from carvault.vehicle.agent import time_slices

    vin, seed, hours, signals, last_day, batch_seconds = args
    table = drive_rows(vin, seed, hours, signals, last_day)
    slices = []
    for t0, t1, part in time_slices(table, batch_seconds * 1000):
        slices.append((t0, t1, part.num_rows, _count_samples(part), encode_payload(part)))
    return VehicleData(vin=vin, table=table, samples=_count_samples(table), slices=slices)


def _encode_slices(args: tuple[pa.Table, int]) -> list[tuple[int, int, int, int, bytes]]:
    """Worker: cut a table into batches of ``batch_seconds`` and encode their payloads."""
    from carvault.vehicle.agent import time_slices

    table, batch_seconds = args
    return [
        (t0, t1, part.num_rows, _count_samples(part), encode_payload(part))
        for t0, t1, part in time_slices(table, batch_seconds * 1000)
    ]


def make_dataset(vins: Sequence[str], cfg: BenchConfig, advance: Callable[[int], None]) -> list[VehicleData]:
    """Simulate and encode every vehicle, in parallel processes (one per core)."""
    last_day = dt.date.today() - dt.timedelta(days=2)  # wholly in the past, whatever the time zone
    jobs = [(vin, cfg.seed + i, cfg.hours, BENCH_SIGNALS, last_day, cfg.batch_seconds) for i, vin in enumerate(vins)]
    out = []
    with ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, len(jobs)), mp_context=get_context("spawn")) as pool:
        for v in pool.map(_prepare_vehicle, jobs):
            out.append(v)
            advance(1)
    return out


@dataclass
class SignedVehicle:
    """The pre-signed upload of one VIN."""

    vin: str
    source: int  # index of the VehicleData whose payloads it carries
    batches: list[bytes]
    samples: list[int]

    @property
    def total_samples(self) -> int:
        """Samples in all of this VIN's batches."""
        return sum(self.samples)


def sign_vehicle(vin: str, key: Ed25519PrivateKey, source: int, data: VehicleData) -> SignedVehicle:
    """Chain and sign a vehicle's batches (seq from 1) exactly as the agent does."""
    prev = GENESIS_PREV
    batches, samples = [], []
    for seq, (t0, t1, rows, n, payload) in enumerate(data.slices, start=1):
        header = BatchHeader(vin=vin, region=REGION, seq=seq, prev=prev, t0=t0, t1=t1, rows=rows)
        blob = encode_envelope(header, payload, key)
        prev = sha256_hex(blob)
        batches.append(blob)
        samples.append(n)
    return SignedVehicle(vin=vin, source=source, batches=batches, samples=samples)


# ---------------------------------------------------------------------------------------- server
def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) and of its live descendants, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return 0.0
    # uvicorn --workers runs the gateways as child processes of the supervisor.
    return own + sum(_cpu_seconds(int(c)) for c in children)


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot (busy = not idle, not iowait)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(values[:8]) - values[3] - values[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """``carvault serve`` in a subprocess on loopback, over its own data folder."""

    def __init__(
        self, data_dir: Path, port: int, log_path: Path, workers: int = 1, extra_env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.port = port
        self.log_path = log_path
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start and wait for /api/v1/health."""
        env = dict(os.environ, CARVAULT_REGION_ENDPOINTS=f"{REGION}={self.url}", **self.extra_env)
        cmd = [
            sys.executable,
            "-m",
            "carvault.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--region",
            REGION,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"carvault serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"carvault serve did not answer within {timeout:.0f} s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far."""
        assert self.proc is not None
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Ask uvicorn to shut down (SIGINT), then make sure."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------- client
@dataclass
class IngestResult:
    """What one upload run measured."""

    batches: int
    samples: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float
    machine_cpu_s: float
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def samples_per_s(self) -> float:
        """Acknowledged samples per wall-clock second."""
        return self.samples / self.seconds

    def to_json(self) -> dict[str, Any]:
        """Figures for the JSON file."""
        lat = sorted(self.latencies_ms)
        return {
            "batches": self.batches,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "samples_per_s": round(self.samples_per_s),
            "batches_per_s": round(self.batches / self.seconds, 1),
            "concurrent_vehicles": self.concurrency,
            "client_cpu_seconds": round(self.client_cpu_s, 2),
            "client_cpu_share_of_machine": round(self.client_cpu_s / (self.seconds * (os.cpu_count() or 1)), 3),
            "server_cpu_seconds": round(self.server_cpu_s, 2),
            "server_cores_busy": round(self.server_cpu_s / self.seconds, 2),
            "server_cpu_ms_per_batch": round(self.server_cpu_s * 1000 / self.batches, 3),
            # CPU that neither the server nor the client used: other work on the machine disturbing the figure.
            "other_processes_cpu_seconds": round(
                max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s), 2
            ),
            "receipt_latency_ms_p50": round(statistics.median(lat), 2) if lat else None,
            "receipt_latency_ms_p95": round(lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
        }


async def _upload_one_vehicle(port: int, v: SignedVehicle, done: Callable[[int], None], latencies: list[float]) -> None:
    # A raw HTTP/1.1 keep-alive client: a few microseconds per request, so the client costs the
    # machine next to nothing and the server is what is measured.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for seq, blob in enumerate(v.batches, start=1):
            t0 = time.perf_counter()
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (INGEST_PATH.encode(), BATCH_MEDIA_TYPE.encode(), len(blob))
            )
            writer.write(blob)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            status = int(status_line.split()[1]) if status_line else 0
            if status != 200:
                raise BenchError(f"batch {seq} of {v.vin} refused: HTTP {status} {body[:300]!r}")
            receipt = json.loads(body)
            if receipt.get("seq") != seq or not isinstance(receipt.get("log_index"), int):
                raise BenchError(f"bad receipt for batch {seq} of {v.vin}: {receipt}")
            done(1)
    finally:
        writer.close()
        await writer.wait_closed()


def upload(
    server: ServerProcess, vehicles: Sequence[SignedVehicle], concurrency: int, done: Callable[[int], None]
) -> IngestResult:
    """POST every vehicle's batches, ``concurrency`` vehicles at a time, each vehicle in order."""
    latencies: list[float] = []

    async def main() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(v: SignedVehicle) -> None:
            async with sem:
                await _upload_one_vehicle(server.port, v, done, latencies)

        await asyncio.gather(*(one(v) for v in vehicles))

    cpu0, srv0, all0 = time.process_time(), server.cpu_seconds(), machine_busy_seconds()
    t0 = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - t0
    machine = machine_busy_seconds() - all0
    return IngestResult(
        batches=sum(len(v.batches) for v in vehicles),
        samples=sum(v.total_samples for v in vehicles),
        seconds=seconds,
        client_cpu_s=time.process_time() - cpu0,
        server_cpu_s=server.cpu_seconds() - srv0,
        machine_cpu_s=machine,
        concurrency=min(concurrency, len(vehicles)),
        latencies_ms=latencies,
    )


def ingest_variant(
    work: Path,
    data: Sequence[VehicleData],
    batch_seconds: int,
    workers: int,
    console: Console,
    bar: Progress,
    encoded: dict[int, list[list[tuple[int, int, int, int, bytes]]]],
) -> dict[str, Any]:
    """The ingest and storage figures again, in a fresh region, with other batches and server processes."""
    from carvault.server import free_port

    name = f"{batch_seconds}s-{workers}w"
    alt_dir = work / f"region-cn-{name}"
    if batch_seconds not in encoded:  # payloads depend on the batch length only; signing is per region
        with ProcessPoolExecutor(
            max_workers=min(os.cpu_count() or 1, len(data)), mp_context=get_context("spawn")
        ) as pool:
            encoded[batch_seconds] = list(pool.map(_encode_slices, [(v.table, batch_seconds) for v in data]))
    slices = encoded[batch_seconds]
    keys, _ = _provision(alt_dir, [v.vin for v in data], work / f"vehicles-{name}", [])
    signed = [
        sign_vehicle(v.vin, keys[v.vin], i, VehicleData(v.vin, v.table, v.samples, sl))
        for i, (v, sl) in enumerate(zip(data, slices, strict=True))
    ]
    server = ServerProcess(alt_dir, free_port(), work / f"server-{name}.log", workers).start()
    try:
        n = sum(len(v.batches) for v in signed)
        with _step(console, bar, f"ingest again: {batch_seconds} s batches, {workers} server process(es)", n) as adv:
            result = upload(server, signed, len(signed), adv)
    finally:
        server.stop()
    out = {
        "batch_seconds": batch_seconds,
        "server_workers": workers,
        **result.to_json(),
        "mean_batch_bytes": sum(len(b) for v in signed for b in v.batches) / n,
    }
    out["storage"] = storage_figures(alt_dir, result.samples)
    shutil.rmtree(alt_dir, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------- windows
def pick_windows(data: Sequence[VehicleData], n: int, minutes: float, seed: int) -> list[tuple[str, int, int]]:
    """``n`` random (vin, start, start + minutes) windows starting at a drive row, uniform over driving time.

    A window holds whatever the car recorded in that wall-clock span: drives are often shorter than 30
    minutes, so most windows also cover a stop (no rows) and part of another drive.
    """
    rng = random.Random(seed)
    span = int(minutes * 60_000)
    times = [(v.vin, v.table.column("t").cast(pa.int64()).to_numpy()) for v in data]
    out = []
    for _ in range(n):
        vin, t = times[rng.randrange(len(times))]
        last = max(int(np.searchsorted(t, t[-1] - span + 100)), 1)  # the window must end inside the data
        start = int(t[rng.randrange(last)])
        out.append((vin, start, start + span))
    return out


def pick_dense_windows(data: Sequence[VehicleData], n: int, minutes: float, seed: int) -> list[tuple[str, int, int]]:
    """``n`` windows holding ``minutes`` of *driving* (that many consecutive drive rows, stops skipped)."""
    rng = random.Random(seed + 1)
    rows = int(minutes * 60 * 10)
    times = [(v.vin, v.table.column("t").cast(pa.int64()).to_numpy()) for v in data]
    out = []
    for _ in range(n):
        vin, t = times[rng.randrange(len(times))]
        i = rng.randrange(max(len(t) - rows, 1))
        j = min(i + rows, len(t)) - 1
        out.append((vin, int(t[i]), int(t[j]) + 1))
    return out


def _quantiles(ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(round(0.95 * (len(ordered) - 1)))], 3),
        "min_ms": round(ordered[0], 3),
        "n": len(ordered),
    }


def time_windows_in_process(
    data_dir: Path, sets: dict[str, Sequence[tuple[str, int, int]]], advance: Callable[[int], None]
) -> dict[str, dict[str, Any]]:
    """p50/p95 of ``Region.telemetry.window`` for each set of (vin, start, end), every bench signal, Arrow out."""
    from carvault.region import Region
    from carvault.settings import Settings

    results = {}
    with Region(Settings(data_dir=data_dir, region=REGION)) as region:
        sigs = [region.catalogue[p] for p in BENCH_SIGNALS]
        for name, windows in sets.items():
            for vin, a, b in windows[:3]:  # warm the DB connection pool, the page cache and the thread pool
                region.telemetry.window(vin, a, b, sigs)
            times, samples, batches = [], 0, 0
            for vin, a, b in windows:
                t0 = time.perf_counter()
                table = region.telemetry.window(vin, a, b, sigs)
                times.append((time.perf_counter() - t0) * 1000)
                samples += _count_samples(table)
                batches += len(region.telemetry.batches(vin, a, b - 1))
                advance(1)
            out: dict[str, Any] = _quantiles(times)
            out["mean_samples"] = round(samples / len(windows))
            out["mean_batches"] = round(batches / len(windows), 1)
            results[name] = out
    return results


def time_windows_http(
    server: ServerProcess, token: str, windows: Sequence[tuple[str, int, int]], advance: Callable[[int], None]
) -> dict[str, Any]:
    """The same windows through GET /api/v1/vehicles/{vin}/telemetry?format=parquet, decoded to Arrow."""
    times = []
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        params = {"signals": ",".join(BENCH_SIGNALS), "format": "parquet"}

        def get(vin: str, a: int, b: int) -> pa.Table:
            r = http.get(f"/api/v1/vehicles/{vin}/telemetry", params={**params, "start": str(a), "end": str(b)})
            if r.status_code != 200:
                raise BenchError(f"window read failed: HTTP {r.status_code} {r.text[:300]}")
            # One file in memory: ParquetFile reads it directly (read_table goes through the dataset layer, ~1 ms
            # more per window for the same table).
            return pq.ParquetFile(pa.BufferReader(r.content)).read()

        for vin, a, b in windows[:3]:
            get(vin, a, b)
        load, server_cpu, client_cpu = _loadavg(), server.cpu_seconds(), time.process_time()
        for vin, a, b in windows:
            t0 = time.perf_counter()
            get(vin, a, b)
            times.append((time.perf_counter() - t0) * 1000)
            advance(1)
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu
    # CPU per request says what the wall clock cannot on a shared machine: serially, an idle machine answers in about
    # the server's and the client's CPU time together (plus the access record's fsync where it outlasts the encoding).
    return {
        **_quantiles(times),
        "server_cpu_ms": round(server_cpu / len(windows) * 1000, 2),
        "client_cpu_ms": round(client_cpu / len(windows) * 1000, 2),
        "load_average": [load, _loadavg()],
    }


# ---------------------------------------------------------------------------------------- storage
def _dir_bytes(path: Path, pattern: str = "*") -> int:
    """Bytes the files allocate on disk (st_blocks × 512): a punched-out range (a compacted payload) counts nothing."""
    return sum(p.stat().st_blocks * 512 for p in path.glob(pattern) if p.is_file())


def storage_figures(data_dir: Path, samples: int) -> dict[str, Any]:
    """Bytes allocated on disk: the evidence (segments and, for compacted days, the payload parts they share with the
    query copies), the metadata DB (checkpointed) and the log, and the query-only copies of open days."""
    db = data_dir / "metadata.sqlite3"
    with sqlite3.connect(db, timeout=30) as conn:
        # Fold the WAL into the main file so its size is the DB's, not the WAL's high-water mark.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = conn.execute("SELECT COALESCE(SUM(samples), 0), COUNT(*) FROM batches").fetchone()
    seg = _dir_bytes(data_dir / "segments", "*.cvseg")
    # Payload parts (store/day_copies.py): evidence and query copy at once, counted once, as evidence.
    parts = _dir_bytes(data_dir / "copies", "*/*/part-*.parquet")
    meta = _dir_bytes(data_dir, "metadata.sqlite3*")
    log = _dir_bytes(data_dir / "log")
    # Query-only copies: per-batch Arrow files of days not compacted yet (store/derived.py), and any re-encoded day
    # files an earlier release left (copies/.../rate=*/). Not evidence, but disk all the same.
    derived = _dir_bytes(data_dir / "derived", "*/*.arrow") + _dir_bytes(data_dir / "copies", "*/*/rate=*/*.parquet")
    if int(stored[0]) != samples:
        raise BenchError(f"the batch index holds {stored[0]} samples, the dataset {samples}")
    evidence = seg + parts
    return {
        "samples": samples,
        "batches": int(stored[1]),
        "segment_bytes": seg,
        "part_bytes": parts,
        "evidence_bytes": evidence,
        "metadata_db_bytes": meta,
        "log_bytes": log,
        "derived_bytes": derived,
        "bytes_per_sample": evidence / samples,
        "bytes_per_sample_with_metadata": (evidence + meta + log) / samples,
        "bytes_per_sample_with_derived": (evidence + meta + log + derived) / samples,
        "query_copy_bytes_per_sample": derived / samples,
    }


# ---------------------------------------------------------------------------------------- log
def log_figures(work: Path, cfg: BenchConfig, console: Console) -> dict[str, Any]:
    """Append rate through ``TransparencyLog.append``; proof times at the largest affordable size."""
    try:
        from carvault.bench.ledger import BENCH_ORIGIN, bench_log, build_large_log, proof_figures
        from carvault.ledger.log import TransparencyLog
    except ImportError:
        return {}
    out: dict[str, Any] = {"append": bench_log(work / "log-append", cfg.log_append_leaves, proof_samples=200)}
    from carvault.bench.tlog_bench import bench_backends  # file vs PostgreSQL log backend, publisher lag

    out["backends"] = bench_backends(work, min(cfg.log_append_leaves, 20_000))
    from carvault.bench.witness_bench import witness_figures  # receipt -> cosigned checkpoint (issue 12)

    out["witness"] = witness_figures(work / "witness", appends=20 if cfg.quick else 100)
    console.print(f"  receipt to cosigned checkpoint: {out['witness']}")
    shutil.rmtree(work / "log-append", ignore_errors=True)
    if cfg.log_proof_leaves:
        console.print(f"  building a log of {cfg.log_proof_leaves:,} leaves for the proof figures ...")
        built = build_large_log(work / "log-large", cfg.log_proof_leaves)
        # Any key will do: it signs only the checkpoint whose cost proof_figures also reports.
        with TransparencyLog(work / "log-large", BENCH_ORIGIN, Ed25519PrivateKey.generate(), BENCH_ORIGIN) as log:
            built.update(proof_figures(log, 500))
        out["large"] = built
        shutil.rmtree(work / "log-large", ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------- report
def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def _step(console: Console, bar: Progress, what: str, total: int) -> Iterator[Callable[[int], None]]:
    task = bar.add_task(what, total=total)
    yield lambda n: bar.advance(task, n)
    bar.update(task, completed=total)


def _fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e6:.2f} M/s"


def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _parts(absolute: bool, relative: bool | None) -> dict[str, Any]:
    """``met`` of a two-part target (absolute figure and ratio to the peer), with which part failed."""
    if relative is None:
        return {"met": absolute, "met_detail": None}
    return {
        "met": absolute and relative,
        "met_detail": f"absolute {'yes' if absolute else 'no'}, vs peer {'yes' if relative else 'no'}",
    }


def _row(
    figure: str,
    carvault: str,
    peer: str = "—",
    ratio: float | None = None,
    target: str = "(information)",
    met: bool | None = None,
    **more: Any,
) -> dict[str, Any]:
    """One row of the comparison table (``more``: ``met_detail`` of a two-part target)."""
    return {"figure": figure, "carvault": carvault, "peer": peer, "ratio": ratio, "target": target, "met": met, **more}


def _ingest_rows(fig: dict[str, float], extra: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Ingest against each peer load, and the variants with other batch lengths and server processes."""
    ingest = fig.get("ingest_samples_per_s")
    peer_best = max(
        (
            fig[k]
            for k in ("peer_wide_copy_samples_per_s", "peer_wide_batch_samples_per_s", "peer_long_copy_samples_per_s")
            if k in fig
        ),
        default=None,
    )
    met_ingest = _parts(
        ingest is not None and ingest >= TARGET_INGEST,
        None if peer_best is None or ingest is None else ingest >= TARGET_INGEST_PEER_FACTOR * peer_best,
    )
    rows = [
        _row(
            f"Ingest, full path (samples/s) vs peer {label}",
            _fmt_rate(ingest),
            _fmt_rate(fig.get(key)),
            _ratio(ingest, fig.get(key)),
            "≥ 5 M/s and ≥ 2× peer best",
            **met_ingest,
        )
        for key, label in (
            ("peer_wide_copy_samples_per_s", "wide, bulk COPY"),
            ("peer_wide_batch_samples_per_s", "wide, COPY + commit per 10 s batch"),
            ("peer_long_copy_samples_per_s", "long, bulk COPY"),
        )
    ]
    rows += _ingest_cost_rows(fig)
    for batch_s, workers in extra:
        alt = fig.get(f"ingest_{batch_s}s_{workers}w_samples_per_s")
        if alt is not None:
            rows.append(
                _row(
                    f"Ingest, full path, {batch_s} s batches, {workers} server process"
                    f"{'es' if workers > 1 else ''} (samples/s) vs peer best",
                    _fmt_rate(alt),
                    _fmt_rate(peer_best),
                    _ratio(alt, peer_best),
                )
            )
    return rows


def _ingest_cost_rows(fig: dict[str, float]) -> list[dict[str, Any]]:
    """Issue 10: 60-second batches into one process, its server CPU per batch, and the fixed part of that."""
    rate = fig.get("ingest_cost_60s_samples_per_s")
    if rate is None:
        return []
    fixed = fig.get("ingest_cost_fixed_cpu_ms_per_batch")
    return [
        _row(
            "Ingest, 60-second batches, 1 process (samples/s)",
            _fmt_rate(rate),
            target="≥ 5 M/s",
            met=rate >= TARGET_INGEST,
        ),
        _row(
            "Ingest, 60-second batches, 1 process: server CPU per batch",
            _fmt(fig["ingest_cost_60s_cpu_ms_per_batch"], " ms"),
        ),
        _row(
            "Ingest: fixed server CPU per batch (line through 60 s and 5 s batches)",
            _fmt(fixed, " ms"),
            target="≤ 2 ms",
            met=None if fixed is None else fixed <= 2.0,
        ),
    ]


def _storage_rows(fig: dict[str, float], extra: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Bytes per sample in segments against the peer, per batch length, and with metadata, log and copies."""
    rows = []
    b = fig.get("storage_bytes_per_sample")
    wide = fig.get("peer_wide_bytes_per_sample")
    for key, label in (("peer_wide_bytes_per_sample", "wide"), ("peer_long_bytes_per_sample", "long")):
        met = _parts(
            b is not None and b <= TARGET_BYTES,
            None if b is None or wide is None else b * TARGET_BYTES_PEER_FACTOR <= wide,
        )
        rows.append(
            _row(
                f"Storage, bytes/sample (segments) vs peer {label}",
                _fmt(b, " B"),
                _fmt(fig.get(key), " B"),
                _ratio(b, fig.get(key)),
                "≤ 1.5 B and ≥ 9× smaller than wide",
                **met,
            )
        )
    for batch_s in sorted({b for b, _ in extra}):
        ba = fig.get(f"storage_{batch_s}s_bytes_per_sample")
        if ba is not None:
            rows.append(
                _row(
                    f"Storage, bytes/sample (segments), {batch_s} s batches vs peer wide",
                    _fmt(ba, " B"),
                    _fmt(wide, " B"),
                    _ratio(ba, wide),
                )
            )
    bm = fig.get("storage_bytes_per_sample_with_metadata")
    rows.append(
        _row(
            "Storage, bytes/sample incl. metadata DB and log vs peer wide",
            _fmt(bm, " B"),
            _fmt(wide, " B"),
            _ratio(bm, wide),
        )
    )
    bd = fig.get("storage_bytes_per_sample_with_derived")
    if bd is not None:
        rows.append(
            _row(
                "Storage, bytes/sample incl. metadata, log and derived query copies vs peer wide",
                _fmt(bd, " B"),
                _fmt(wide, " B"),
                _ratio(bd, wide),
            )
        )
    return rows


def _window_rows(fig: dict[str, float], minutes: float) -> list[dict[str, Any]]:
    """Window reads (p50, p95, driving-only, over HTTP) against the peer layouts."""
    rows = []
    w = fig.get("window_p50_ms")
    wide_w = fig.get("peer_wide_window_p50_ms")
    met_w = _parts(
        w is not None and w <= TARGET_WINDOW_MS,
        None if w is None or wide_w is None else w * TARGET_WINDOW_PEER_FACTOR <= wide_w,
    )
    for q in ("p50", "p95"):
        for layout in ("wide", "long"):
            cv, peer = fig.get(f"window_{q}_ms"), fig.get(f"peer_{layout}_window_{q}_ms")
            rows.append(
                _row(
                    f"{minutes:g}-min all-signal window to Arrow, {q} vs peer {layout}",
                    _fmt(cv, " ms"),
                    _fmt(peer, " ms"),
                    _ratio(cv, peer),
                    "≤ 10 ms p50 and ≥ 4× faster than wide" if q == "p50" else "(information)",
                    **(met_w if q == "p50" else {"met": None}),
                )
            )
    cv, peer = fig.get("window_dense_p50_ms"), fig.get("peer_wide_window_dense_p50_ms")
    rows.append(
        _row(
            f"Window of {minutes:g} min of *driving* (stops skipped), p50 vs peer wide",
            _fmt(cv, " ms"),
            _fmt(peer, " ms"),
            _ratio(cv, peer),
        )
    )
    h = fig.get("window_http_parquet_p50_ms")
    rows.append(
        _row(
            "Same window over HTTP as Parquet, p50 (client-side Arrow) vs peer wide",
            _fmt(h, " ms"),
            _fmt(wide_w, " ms"),
            _ratio(h, wide_w),
        )
    )
    return rows


def _other_rows(fig: dict[str, float]) -> list[dict[str, Any]]:
    """Figures without a peer: the log, incident packages, CAN import, de-identification."""
    rows = []
    if "log_append_leaves_per_s" in fig:
        rows.append(
            _row(
                "Transparency log append (leaves/s, batches of 1000)",
                f"{fig['log_append_leaves_per_s'] / 1e3:.0f} k/s",
            )
        )
    if "log_append_postgres_leaves_per_s" in fig:
        rows.append(
            _row(
                "Log append on PostgreSQL (leaves/s, batches of 1000; 1-leaf appends/s from two processes)",
                f"{fig['log_append_postgres_leaves_per_s'] / 1e3:.0f} k/s; "
                f"{fig['log_append_postgres_two_process_per_s']:.0f}/s",
            )
        )
    if "package_build_s" in fig:
        build, verify = fig["package_build_s"], fig["package_verify_s"]
        rows.append(
            _row(
                "Incident package build, 30-min window before a crash (median of 3)",
                _fmt(build, " s"),
                target="≤ 1 s",
                met=build <= 1.0,
            )
        )
        rows.append(
            _row(
                "Incident package offline verify, same package (median of 3)",
                _fmt(verify, " s"),
                target="≤ 1 s",
                met=verify <= 1.0,
            )
        )
    if "package_verify_process_s" in fig:
        rows.append(
            _row(
                "`carvault verify` of the same package as a whole process (median of 7)",
                _fmt(fig["package_verify_process_s"], " s"),
                target="≤ 0.3 s",
                met=fig["package_verify_process_s"] <= 0.3,
            )
        )
    if "can_import_frames_per_s" in fig:
        rows.append(
            _row(
                "CAN import, Tesla party bus candump at 50k frames/s (frames/s, wall)",
                f"{fig['can_import_frames_per_s'] / 1e6:.2f} M/s",
                target="well under real time (≥ 50 k/s)",
                met=fig["can_import_frames_per_s"] >= 50_000,
            )
        )
    if "deid_rate" in fig:
        rows.append(
            _row(
                "De-identification detection rate (plates + faces, check set, IoU ≥ 0.3)",
                f"{fig['deid_rate'] * 100:.1f} %",
                target="≥ 90 %",
                met=fig["deid_rate"] >= 0.9,
            )
        )
        rows.append(
            _row("De-identification time per 720×1160 frame (wall, ms)", _fmt(fig.get("deid_ms_per_frame"), " ms"))
        )
    return rows


def build_rows(
    fig: dict[str, float], minutes: float = 30.0, extra: Sequence[tuple[int, int]] = ()
) -> list[dict[str, Any]]:
    """The comparison table: figure, CarVault, peer, ratio CarVault/peer, target, met."""
    return (
        _ingest_rows(fig, extra)
        + _storage_rows(fig, extra)
        + _window_rows(fig, minutes)
        + _other_rows(fig)
        + [_row(what, "not yet measured", target=target) for what, target in NOT_YET_MEASURED]
    )


def verify_process_s(package: Path, trust: dict[str, Any], trust_file: Path, runs: int = 7) -> float:
    """Wall seconds of `carvault verify PACKAGE --trust FILE` as a whole process (median of ``runs``, one warm-up).

    Bytecode is cached as on any installed copy (the warm-up writes it next to the trust file), even where
    PYTHONDONTWRITEBYTECODE is set.
    """
    trust_file.write_text(json.dumps(trust))
    script = Path(sys.executable).with_name("carvault")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "carvault"]
    cmd += ["verify", str(package), "--trust", str(trust_file)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(trust_file.parent / "pycache")
    walls = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, check=False, env=env)
        if i:
            walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"carvault verify exited {done.returncode}: {done.stdout[-300:]!r}")
    return round(statistics.median(walls), 3)


def car_figures(work: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Incident package build/verify for a simulated crash, CAN import rate, de-identification rate and time."""
    import datetime as _dt

    from carvault.access.audit import Actor
    from carvault.access.packages import Event, PackageBuilder, trust_document
    from carvault.provisioning import provision
    from carvault.region import Region
    from carvault.server import BackgroundServer
    from carvault.settings import Settings
    from carvault.store.metadata import VehicleEvent
    from carvault.vehicle.agent import VehicleAgent
    from carvault.vehicle.simulator import simulate_day
    from carvault.verify.package import verify_package

    out: dict[str, Any] = {}
    folder = work / "car-figures"
    region = Region(Settings(data_dir=folder / "region", region="cn"))
    try:
        car = provision(region, "LRWBENCH000000001", folder / "cars")
        day = simulate_day(car.vin, 3, (_dt.datetime.now(_dt.UTC) - _dt.timedelta(days=1)).date(), incident=True)
        with BackgroundServer(region) as server:
            agent = VehicleAgent(car, folder / "cars" / car.vin, server.url)
            agent.process(day.table)
            agent.finish()
            agent.upload_pending()
        with region.db.session() as s:
            crash = s.query(VehicleEvent).filter(VehicleEvent.kind == "crash").first()
        if crash is not None:
            builds, verifies = [], []
            trust = trust_document(region)
            for _ in range(3):
                t0 = time.perf_counter()
                pkg = PackageBuilder(region).build(
                    car.vin,
                    crash.t_ms - 30 * 60_000,
                    crash.t_ms + 60_000,
                    event=Event("crash", crash.t_ms),
                    requested_by=Actor("bench", "1"),
                    owner_id=None,
                    legal_basis="benchmark",
                )
                builds.append(time.perf_counter() - t0)
                path = folder / "package.zip"
                path.write_bytes(PackageBuilder(region).read(pkg))
                t0 = time.perf_counter()
                verdict = verify_package(path, trust=trust)
                verifies.append(time.perf_counter() - t0)
                assert verdict.ok, [c for c in verdict.checks if c.ok is False]
            out.update(
                package_build_s=round(float(np.median(builds)), 3),
                package_verify_s=round(float(np.median(verifies)), 3),
                package_verify_process_s=verify_process_s(path, trust, folder / "trust.json"),
                package_bytes=path.stat().st_size,
                package_batches=pkg.batches,
            )
    finally:
        region.close()
    from carvault.bench.can_bench import bench_can_import

    can = bench_can_import(cfg.can_frames, sign=False)
    out.update(
        can_import_frames_per_s=can["import_frames_per_s"],
        can_frames=can["frames"],
        can_decode_frames_per_s=can["decode_frames_per_s"],
    )
    if DEID_LABELS.exists() and not cfg.quick:
        from carvault.bench.deidentify_eval import measure

        m = measure(DEID_LABELS)
        out.update(
            deid_rate=m["all"]["rate"],
            deid_objects=m["objects"],
            deid_ms_per_frame=m["ms_per_frame"].get("720x1160"),
            deid_false_positives_per_image=m["false_positives"]["per_image"],
        )
        out["deid"] = m
    return out


def _met(m: bool | None) -> str:
    return "—" if m is None else ("yes" if m else "**no**")


def _results_lines(result: dict[str, Any]) -> list[str]:
    """The title, the machine and the results table."""
    m, c, det = result["machine"], result["config"], result["details"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `carvault bench` (do not edit the generated parts by hand: re-run it). The figures are those of",
        'ARCHITECTURE.md "Numbers it must reach", measured in one run next to a PostgreSQL peer holding the same',
        "data.",
        f"Run {'(quick mode: tiny data, figures not meaningful) ' if c['quick'] else ''}finished "
        f"{result['finished']} in {result['seconds']:.0f} s; JSON: `{result['json']}`.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores: {m['cpu_model']}; {m['memory_gib']} GiB RAM; Linux {m['kernel']}",
        f"- Python {m['python']}, pyarrow {m['pyarrow']}, SQLite {m['sqlite']}"
        + (f", PostgreSQL {det['peer']['version']}" if det.get("peer") else ""),
        "- Client, server and PostgreSQL share the same cores (one machine, loopback).",
        "",
        "## Results",
        "",
        "| figure | CarVault | peer | ratio CarVault/peer | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in result["rows"]:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = _met(r["met"]) + (f" ({r['met_detail']})" if r.get("met_detail") else "")
        lines.append(f"| {r['figure']} | {r['carvault']} | {r['peer']} | {ratio} | {r['target']} | {met} |")
    return lines


def _measured_lines(result: dict[str, Any]) -> list[str]:
    """What was measured: dataset, batches, ingest and its variants."""
    c, d, det = result["config"], result["dataset"], result["details"]
    ing = det["ingest"]
    lines = [
        "",
        "Ratios are CarVault divided by peer: above 1 is better for ingest, below 1 is better for bytes and latency.",
        "",
        "## What was measured",
        "",
        f"- **Dataset**: {d['vehicles']} simulated vehicles × {d['hours']:g} h of drive rows "
        f"(`carvault.vehicle.simulator`, rows from pull-away to standstill, earlier days added until there is "
        f"enough driving), {len(SIGNALS_10HZ)} signals at 10 Hz + {len(SIGNALS_1HZ)} at 1 Hz "
        f"(`carvault.bench.run.BENCH_SIGNALS`): **{d['samples']:,} samples** in {d['rows']:,} rows.",
        f"- **Batches**: {c['batch_seconds']} s each ({d['batches']:,} batches, "
        f"{d['mean_batch_bytes'] / 1024:.1f} KiB and {d['mean_batch_samples']:,.0f} samples on average), "
        f"Parquet payload as `carvault.protocol.encode_payload` writes it. Encoding and Ed25519 signing happened "
        f"before timing ({d['prepare_seconds']:.1f} s for simulation and encoding on all cores, "
        f"{d['sign_seconds']:.1f} s to sign): they are the vehicle's cost.",
        f"- **Ingest**: `carvault serve --workers {c['server_workers']}` in a subprocess (SQLite metadata, "
        "segments and log in its data folder, "
        f"fsync on every group commit), vehicles provisioned beforehand through a `Region` on the same folder. "
        f"An asyncio client POSTs the batches over loopback, one keep-alive connection per vehicle, "
        f"{ing['concurrent_vehicles']} vehicles at once, each vehicle's batches in order and the next only after "
        f"the receipt (durable and logged). Wall time from the first request to the last receipt: "
        f"{ing['seconds']:.2f} s for {ing['batches']:,} batches "
        f"({ing['batches_per_s']:.0f} batches/s; receipt latency p50 {ing['receipt_latency_ms_p50']} ms, "
        f"p95 {ing['receipt_latency_ms_p95']} ms).",
        f"- **Client overhead**: the client used {ing['client_cpu_seconds']:.2f} CPU-seconds "
        f"({ing['client_cpu_share_of_machine'] * 100:.1f} % of the machine during ingest); the server used "
        f"{ing['server_cpu_seconds']:.2f} CPU-seconds ({ing['server_cores_busy']:.2f} cores busy, "
        f"{ing['server_cpu_ms_per_batch']:.2f} ms of CPU per batch). Other processes on the machine used "
        f"{ing['other_processes_cpu_seconds']:.1f} CPU-seconds meanwhile (load average "
        f"{result['load_average']['start']} at the start of the run, {result['load_average']['end']} at the end).",
    ]
    for alt in det.get("ingest_variants", []):
        lines.append(
            f"- **Variant**: the same {d['samples']:,} samples in {alt['batch_seconds']} s batches "
            f"({alt['batches']:,} batches, {alt['mean_batch_bytes'] / 1024:.1f} KiB each on average) into a "
            f"fresh region, `carvault serve --workers {alt['server_workers']}`, the same client: "
            f"{alt['samples_per_s'] / 1e6:.2f} M samples/s ({alt['server_cpu_ms_per_batch']:.2f} ms of server "
            f"CPU per batch, {alt['server_cores_busy']:.2f} cores busy, other processes "
            f"{alt['other_processes_cpu_seconds']:.1f} CPU-s), "
            f"{alt['storage']['bytes_per_sample']:.2f} bytes/sample in segments."
        )
    if det.get("ingest_cost"):
        lines.append(_ingest_cost_line(det["ingest_cost"]))
    if det.get("ingest_growth"):
        g = det["ingest_growth"]
        lines.append(
            f"- **Store growth**: {g['vehicles']} more VINs carrying the same tables, re-signed with their "
            "own "
            f"keys, ingested the same way at {g['samples_per_s'] / 1e6:.2f} M samples/s: the store then holds "
            f"{det['store_samples']:,} samples."
        )
    return lines


def _ingest_cost_line(cost: dict[str, Any]) -> str:
    """What the ingest-cost runs (issue 10) did and found."""
    main, short = cost["runs"]["main"], cost["runs"]["short"]
    fixed = cost["fixed_cpu_ms_per_batch"]
    per_k = cost["cpu_us_per_1000_samples"]
    return (
        f"- **Ingest cost per batch**: the same drives in {cost['batch_seconds']} s batches ({main['batches']:,} "
        f"batches of {main['mean_batch_samples']:,.0f} samples on average) into a fresh region, one "
        f"`carvault serve` process, {cost['vehicles']} vehicles at once: {main['samples_per_s'] / 1e6:.2f} M "
        f"samples/s, {main['server_cpu_ms_per_batch']:.2f} ms of server CPU per batch (other processes "
        f"{main['other_processes_cpu_seconds']:.1f} CPU-s). The first minutes again in {short['batch_seconds']} s "
        f"batches ({short['batches']:,} of {short['mean_batch_samples']:,.0f} samples): "
        f"{short['server_cpu_ms_per_batch']:.2f} ms per batch. The line through both puts the fixed server CPU "
        + (
            f"at {fixed:.2f} ms per batch and {per_k:.0f} µs per 1,000 samples."
            if fixed is not None and per_k is not None
            else "out of reach (both runs had batches of one size)."
        )
    )


def _storage_window_lines(result: dict[str, Any]) -> list[str]:
    """What was measured: storage and window reads."""
    c, d, det = result["config"], result["dataset"], result["details"]
    win = det["window"]
    st = det["storage"]
    evidence = st.get("evidence_bytes", st["segment_bytes"])
    return [
        f"- **Storage** (bytes allocated on disk, st_blocks): the evidence (the exact signed batches) after the "
        f"{d['samples']:,}-sample ingest: {evidence:,} B."
        f" With the metadata DB (checkpointed) and the transparency log: "
        f"{evidence + st['metadata_db_bytes'] + st['log_bytes']:,} B; the query copies add "
        f"{st.get('derived_bytes', 0):,} B as written at ingest (per-batch "
        f"Arrow, `store/derived.py`) and {det.get('storage_compacted', {}).get('derived_bytes', 0):,} B once the "
        f"days are compacted: compaction moves each payload into its Parquet part (`store/day_copies.py`; "
        f"{det.get('compaction', {}).get('days', 0)} vehicle-days in {det.get('compaction', {}).get('seconds', 0)} s),"
        f" evidence and query copy at once. Windows are read from the parts.",
        f"- **Window**: {win['n']} random {c['window_minutes']:g}-minute windows, each starting at a random drive "
        f"row (uniform over driving time), one vehicle, all {len(BENCH_SIGNALS)} signals, read with "
        f"`Region.telemetry.window` in the bench process from a store of {det['store_samples']:,} samples, after 3 "
        f"warm-up reads; the server process is idle meanwhile. The simulated drives are mostly shorter than "
        f"{c['window_minutes']:g} minutes, so a window also spans stops without rows: on average it returned "
        f"{win['mean_samples']:,} samples from {win['mean_batches']} batches (a full {c['window_minutes']:g} minutes "
        f"of driving is {int(c['window_minutes'] * 60 * (10 * len(SIGNALS_10HZ) + len(SIGNALS_1HZ))):,}). "
        f"The *driving* windows are {det['window_dense']['n']} spans of {c['window_minutes']:g} minutes of "
        f"consecutive drive rows (stops skipped): {det['window_dense']['mean_samples']:,} samples from "
        f"{det['window_dense']['mean_batches']} batches on average. The HTTP figure is "
        f"`GET /api/v1/vehicles/{{vin}}/telemetry?format=parquet` (bearer token, audit record written) for the "
        f"random windows, timed to a decoded Arrow table in the client.",
    ]


def _peer_log_lines(det: dict[str, Any]) -> list[str]:
    """What was measured: the PostgreSQL peer and the transparency log."""
    lines: list[str] = []
    if det.get("peer"):
        p = det["peer"]
        lines += [
            f"- **Peer**: PostgreSQL {p['version']} started for the run (`TemporaryPostgres`; "
            + ", ".join(f"{k}={v}" for k, v in p["settings"].items())
            + "), the same tables, a vehicle being a `smallint car_id` as in TeslaMate. *wide*: "
            f"`(car_id, ts, c00..c39)` typed columns, primary key `(car_id, ts)`, one bulk `COPY ... (FORMAT csv)` "
            f"({p['wide_copy']['rows']:,} rows), and into a second table a `COPY` + commit per "
            f"{p['wide_batch']['batch_seconds']} s batch of one vehicle from {p['wide_batch']['clients']} connections "
            f"at once ({p['wide_batch']['batches']:,} commits). *long*: `(car_id, ts, signal_id smallint, value "
            f"double precision)`, primary key `(car_id, ts, signal_id)`, one bulk binary `COPY`. Load data was encoded "
            f"before timing. Sizes are `pg_total_relation_size` after `VACUUM ANALYZE`. Windows: `COPY (SELECT "
            f"...) TO STDOUT (FORMAT csv)` parsed by `pyarrow.csv` into Arrow, {p['wide_window']['n']} windows "
            f"(the first {p['wide_window']['n']} of CarVault's list).",
        ]
    if det.get("log"):
        lg = det["log"]
        a = lg["append"]
        lines.append(
            f"- **Transparency log**: {a['appended']:,} leaves appended in batches of {a['batch_size']} "
            f"through `TransparencyLog.append` (fdatasync per append): "
            f"{a['append_leaves_per_s']:,} leaves/s."
        )
        if lg.get("large"):
            lg_l = lg["large"]
            lines.append(
                f"  Proofs at {lg_l['size']:,} leaves (log bulk-built in {lg_l['build_seconds']} s): inclusion "
                f"proof p50 {lg_l['inclusion_proof_ms_p50']} ms (p99 {lg_l['inclusion_proof_ms_p99']}), "
                f"verify {lg_l['inclusion_verify_ms_p50']} ms; consistency proof p50 "
                f"{lg_l['consistency_proof_ms_p50']} ms (p99 {lg_l['consistency_proof_ms_p99']}), verify "
                f"{lg_l['consistency_verify_ms_p50']} ms; checkpoint sign {lg_l['checkpoint_sign_ms']} ms."
            )
    return lines


def _closing_lines(rows: list[dict[str, Any]], analysis: str | None) -> list[str]:
    """Targets missed and the hand-written analysis."""
    lines = ["", "## Targets missed", ""]
    missed = [r for r in rows if r["met"] is False]
    seen = set()
    for r in missed:
        key = r["target"]
        if key in seen:
            continue
        seen.add(key)
        detail = f"; {r['met_detail']}" if r.get("met_detail") else ""
        lines.append(f"- {r['figure'].split(' vs ')[0]}: {r['carvault']} (target {r['target']}{detail}).")
    if not missed:
        lines.append("- none of the measured targets.")
    lines += [
        "",
        "## Analysis",
        "",
        ANALYSIS_START,
        analysis.strip()
        if analysis
        else "_Not written yet: hand-written notes on what dominates go here and survive re-runs._",
        ANALYSIS_END,
        "",
    ]
    return lines


_SECTION = re.compile(r"<!-- ([a-z][a-z0-9-]*):start[^>]*-->")


def other_sections(text: str, own: Sequence[str] = ("live", "analysis")) -> list[str]:
    """The page's sections written by other steps (``carvault bench --only retention|fleet…``), whole and in order.

    A full run rewrites the page but not these: it carries them over as they are (top-level sections only)."""
    out: list[str] = []
    pos = 0
    while (m := _SECTION.search(text, pos)) is not None:
        end = f"<!-- {m.group(1)}:end -->"
        b = text.find(end, m.end())
        if b < 0:
            pos = m.end()
            continue
        if m.group(1) not in own:
            out.append(text[m.start() : b + len(end)])
        pos = b + len(end)
    return out


def render_markdown(
    result: dict[str, Any], analysis: str | None, live_notes: str | None = None, others: Sequence[str] = ()
) -> str:
    """docs/benchmarks.md from a result (``others``: sections of other steps, carried over before the targets)."""
    lines = _results_lines(result) + _measured_lines(result) + _storage_window_lines(result)
    lines += _peer_log_lines(result["details"])
    if result["details"].get("blob_store"):
        from carvault.bench.blob_bench import blob_store_lines

        lines += ["", *blob_store_lines(result["details"]["blob_store"])]
    if result.get("live"):
        from carvault.bench.live_bench import live_block

        lines += ["", live_block(result["live"], live_notes)]
    for block in others:
        lines += ["", block]
    lines += _closing_lines(result["rows"], analysis)
    return "\n".join(lines)


def _existing_live_notes(path: Path) -> str | None:
    from carvault.bench.live_bench import live_notes

    try:
        return live_notes(path.read_text(encoding="utf-8"))
    except OSError:
        return None


def _existing_analysis(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    a, b = text.find(ANALYSIS_START), text.find(ANALYSIS_END)
    if a < 0 or b < a:
        return None
    body = text[a + len(ANALYSIS_START) : b].strip()
    return None if body.startswith("_Not written yet") else body


# ---------------------------------------------------------------------------------------- run
def _provision(
    data_dir: Path | Any, vins: Sequence[str], vehicles_dir: Path, owner_vins: Sequence[str]
) -> tuple[dict[str, Ed25519PrivateKey], str]:
    """Provision every VIN and make an owner (with an API token) of ``owner_vins``.

    ``data_dir``: the region's folder (embedded settings), or the region's whole ``Settings`` (a cluster).
    """
    from carvault.provisioning import provision
    from carvault.region import Region
    from carvault.settings import Settings

    keys = {}
    settings = data_dir if isinstance(data_dir, Settings) else Settings(data_dir=data_dir, region=REGION)
    with Region(settings) as region:
        codes = {}
        for vin in vins:
            ident = provision(region, vin, vehicles_dir)
            keys[vin] = ident.key
            codes[vin] = ident.pairing_code
        owner = region.accounts.register("bench-owner@carvault.example", "bench password, long enough")
        token, _ = region.accounts.issue(owner.id, "token", label="bench")
        # BENCH_SIGNALS carry the location track, which the gateway takes only under the owner's consent: the
        # fleet's owner opted in (lasting) before the simulated days, which lie within the last ~60 days.
        since = int(time.time() * 1000) - 180 * 86_400_000
        for vin in vins:
            region.consents.decide(
                vin,
                owner.id,
                "location",
                enabled=True,
                purpose="benchmark fleet route history",
                ends_ms=since + 365 * 86_400_000,
                lasting=True,
                at_ms=since,
            )
        for vin in owner_vins:
            region.vehicles.claim(owner.id, vin, codes[vin])
    return keys, token


Figures = dict[str, float]


def _bench_config(
    vehicles: int, hours: float, postgres: bool, quick: bool, config: BenchConfig | None, overrides: dict[str, Any]
) -> BenchConfig:
    """The configuration given, or the quick or full one with ``overrides``."""
    if config is not None:
        return config
    if quick:
        return BenchConfig.quick_config(postgres=postgres, **overrides)
    return BenchConfig(vehicles=vehicles, hours=hours, postgres=postgres, **overrides)


def _dataset_step(
    cfg: BenchConfig, console: Console, bar: Progress, data_dir: Path, work: Path, details: dict[str, Any]
) -> tuple[list[VehicleData], list[SignedVehicle], str]:
    """1. Simulate and encode in parallel, provision, then sign (the vehicle's side, before any timing)."""
    from carvault.vehicle.simulator import fleet_vins

    t0 = time.perf_counter()
    per_vehicle_samples = max(1, int(cfg.hours * 3600 * (10 * len(SIGNALS_10HZ) + len(SIGNALS_1HZ))))
    extra = max(0, -(-(cfg.store_samples - cfg.vehicles * per_vehicle_samples) // per_vehicle_samples))
    all_vins = fleet_vins(cfg.vehicles + extra, cfg.seed)
    with _step(console, bar, "simulate + encode batches", cfg.vehicles) as adv:
        data = make_dataset(all_vins[: cfg.vehicles], cfg, adv)
    prepare_s = time.perf_counter() - t0
    samples = sum(v.samples for v in data)
    with _step(console, bar, "provision vehicles", 1) as adv:
        keys, token = _provision(data_dir, all_vins, work / "vehicles", [v.vin for v in data])
        adv(1)
    t0 = time.perf_counter()
    with _step(console, bar, "sign batches (vehicle side)", len(all_vins)) as adv:
        signed = []
        for i, vin in enumerate(all_vins):
            signed.append(sign_vehicle(vin, keys[vin], i % len(data), data[i % len(data)]))
            adv(1)
    sign_s = time.perf_counter() - t0
    main_set = signed[: cfg.vehicles]
    n_batches = sum(len(v.batches) for v in main_set)
    details["dataset"] = {
        "vehicles": cfg.vehicles,
        "hours": cfg.hours,
        "samples": samples,
        "rows": sum(v.table.num_rows for v in data),
        "batches": n_batches,
        "mean_batch_bytes": sum(len(b) for v in main_set for b in v.batches) / n_batches,
        "mean_batch_samples": samples / n_batches,
        "prepare_seconds": round(prepare_s, 2),
        "sign_seconds": round(sign_s, 2),
        "signals_10hz": list(SIGNALS_10HZ),
        "signals_1hz": list(SIGNALS_1HZ),
    }
    return data, signed, token


def _ingest_step(
    server: ServerProcess,
    main_set: list[SignedVehicle],
    data_dir: Path,
    console: Console,
    bar: Progress,
    details: dict[str, Any],
    fig: Figures,
) -> None:
    """2. Ingest through the full path; 3. storage, on the dataset alone."""
    samples, n_batches = details["dataset"]["samples"], details["dataset"]["batches"]
    with _step(console, bar, f"ingest {samples / 1e6:.1f} M samples over HTTP", n_batches) as adv:
        ingest = upload(server, main_set, len(main_set), adv)
    details["ingest"] = ingest.to_json()
    fig["ingest_samples_per_s"] = ingest.samples_per_s

    details["storage"] = storage_figures(data_dir, samples)
    fig["storage_bytes_per_sample"] = details["storage"]["bytes_per_sample"]
    fig["storage_bytes_per_sample_with_metadata"] = details["storage"]["bytes_per_sample_with_metadata"]
    with _step(console, bar, "compact the query copies", n_batches) as adv:
        details["compaction"] = compact_copies(data_dir, samples, adv)
    fig["compaction_samples_per_s"] = details["compaction"]["samples_per_s"]
    details["storage_compacted"] = storage_figures(data_dir, samples)
    fig["storage_bytes_per_sample_with_derived"] = details["storage_compacted"]["bytes_per_sample_with_derived"]


def compact_copies(data_dir: Path, samples: int, advance: Callable[[int], None]) -> dict[str, Any]:
    """Compact every day of the store: payloads into their parts (store/day_copies.py), timed in-process."""
    from carvault.region import Region
    from carvault.settings import Settings

    with Region(Settings(data_dir=data_dir, region=REGION)) as region:
        t0 = time.perf_counter()
        done = region.telemetry.compact(now=2**61, limit=1_000_000)
        seconds = time.perf_counter() - t0
    advance(sum(c.batches for c in done))
    return {
        "days": len(done),
        "batches": sum(c.batches for c in done),
        "seconds": round(seconds, 2),
        "samples_per_s": samples / seconds if seconds else None,
        "copy_bytes": sum(c.bytes for c in done),
    }


def _window_step(
    server: ServerProcess,
    growth: list[SignedVehicle],
    data: list[VehicleData],
    token: str,
    cfg: BenchConfig,
    console: Console,
    bar: Progress,
    details: dict[str, Any],
    fig: Figures,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """4. Grow the store, then time window reads in-process and over HTTP; return the windows read."""
    store_samples = details["dataset"]["samples"]
    if growth:
        g_batches = sum(len(v.batches) for v in growth)
        with _step(console, bar, f"grow store by {len(growth)} VINs", g_batches) as adv:
            g = upload(server, growth, len(growth), adv)
        details["ingest_growth"] = {"vehicles": len(growth), **g.to_json()}
        store_samples += g.samples
        fig["ingest_growth_samples_per_s"] = g.samples_per_s
        with _step(console, bar, "compact the grown store", g_batches) as adv:
            details["compaction_growth"] = compact_copies(server.data_dir, g.samples, adv)
    details["store_samples"] = store_samples
    windows = pick_windows(data, cfg.windows, cfg.window_minutes, cfg.seed)
    dense = pick_dense_windows(data, cfg.dense_windows, cfg.window_minutes, cfg.seed)
    with _step(console, bar, "window reads in-process", len(windows) + len(dense)) as adv:
        timed = time_windows_in_process(server.data_dir, {"random": windows, "dense": dense}, adv)
    details["window"], details["window_dense"] = timed["random"], timed["dense"]
    fig["window_p50_ms"] = details["window"]["p50_ms"]
    fig["window_p95_ms"] = details["window"]["p95_ms"]
    fig["window_dense_p50_ms"] = details["window_dense"]["p50_ms"]
    with _step(console, bar, "window reads over HTTP (Parquet)", cfg.windows) as adv:
        details["window_http"] = time_windows_http(server, token, windows, adv)
    fig["window_http_parquet_p50_ms"] = details["window_http"]["p50_ms"]
    fig["window_http_parquet_p95_ms"] = details["window_http"]["p95_ms"]
    return windows, dense


def _variants_step(
    work: Path,
    data: list[VehicleData],
    cfg: BenchConfig,
    console: Console,
    bar: Progress,
    details: dict[str, Any],
    fig: Figures,
) -> None:
    """The same ingest with other batch lengths and server processes, for the trade-offs."""
    details["ingest_variants"] = []
    encoded: dict[int, list[list[tuple[int, int, int, int, bytes]]]] = {cfg.batch_seconds: [v.slices for v in data]}
    for batch_s, workers in cfg.extra_ingests:
        alt = ingest_variant(work, data, batch_s, workers, console, bar, encoded)
        details["ingest_variants"].append(alt)
        fig[f"ingest_{batch_s}s_{workers}w_samples_per_s"] = alt["samples_per_s"]
        if batch_s != cfg.batch_seconds:  # the main run already gave this batch length's figure
            fig[f"storage_{batch_s}s_bytes_per_sample"] = alt["storage"]["bytes_per_sample"]


def _blob_store_step(
    work: Path, data: list[VehicleData], console: Console, bar: Progress, details: dict[str, Any]
) -> None:
    """The same ingest with evidence on the local folder and on S3-compatible storage (bench/blob_bench.py)."""
    from carvault.bench.blob_bench import blob_store_figures

    def signed_for(data_dir: Path, vehicles_dir: Path) -> list[SignedVehicle]:
        keys, _ = _provision(data_dir, [v.vin for v in data], vehicles_dir, [])
        return [sign_vehicle(v.vin, keys[v.vin], i, v) for i, v in enumerate(data)]

    details["blob_store"] = blob_store_figures(work, signed_for, console, bar, len(data))


def _ingest_cost_step(
    work: Path,
    data: list[VehicleData],
    cfg: BenchConfig,
    console: Console,
    bar: Progress,
    details: dict[str, Any],
    fig: Figures,
) -> None:
    """Ingest cost per batch (issue 10): 60-second batches into one server process, and the fixed CPU per batch."""
    from carvault.bench.ingest_cost import IngestCostConfig, measure_ingest_cost

    cost_cfg = IngestCostConfig(vehicles=len(data), hours=cfg.hours, short_minutes=min(10.0, cfg.hours * 60 / 2))
    n = sum(-(-int(cfg.hours * 3600) // s) for s in (60, 5)) * len(data)  # about; the bar is only a guide
    with _step(console, bar, "ingest cost: 60 s and 5 s batches, 1 server process", n) as adv:
        cost = measure_ingest_cost(work / "ingest-cost", cost_cfg, adv, tables=[(v.vin, v.table) for v in data])
    details["ingest_cost"] = cost
    fig["ingest_cost_60s_samples_per_s"] = cost["samples_per_s"]
    fig["ingest_cost_60s_cpu_ms_per_batch"] = cost["server_cpu_ms_per_batch"]
    if (cost["fixed_cpu_ms_per_batch"] or 0) > 0:  # a line through two noisy points can miss; then no figure
        fig["ingest_cost_fixed_cpu_ms_per_batch"] = cost["fixed_cpu_ms_per_batch"]


def _peer_figures(p: dict[str, Any]) -> Figures:
    """5. The PostgreSQL peer's headline figures."""
    return {
        "peer_wide_copy_samples_per_s": p["wide_copy"]["samples_per_s"],
        "peer_wide_batch_samples_per_s": p["wide_batch"]["samples_per_s"],
        "peer_long_copy_samples_per_s": p["long_copy"]["samples_per_s"],
        "peer_wide_bytes_per_sample": p["wide_copy"]["bytes_per_sample"],
        "peer_long_bytes_per_sample": p["long_copy"]["bytes_per_sample"],
        "peer_wide_window_p50_ms": p["wide_window"]["p50_ms"],
        "peer_wide_window_p95_ms": p["wide_window"]["p95_ms"],
        "peer_long_window_p50_ms": p["long_window"]["p50_ms"],
        "peer_long_window_p95_ms": p["long_window"]["p95_ms"],
        "peer_wide_window_dense_p50_ms": p["wide_window_dense"]["p50_ms"],
    }


def _log_and_car_step(work: Path, cfg: BenchConfig, console: Console, details: dict[str, Any], fig: Figures) -> None:
    """6. The transparency log; 7. the car and the evidence (package build and verify, CAN import, de-id)."""
    console.print("transparency log figures ...")
    lg = log_figures(work, cfg, console)
    if lg:
        details["log"] = lg
        fig["log_append_leaves_per_s"] = lg["append"]["append_leaves_per_s"]
        pg = lg["backends"].get("postgres", {})
        if "batched_leaves_per_s" in pg:
            fig["log_append_postgres_leaves_per_s"] = pg["batched_leaves_per_s"]
            fig["log_append_postgres_two_process_per_s"] = pg["two_process_single_leaf_appends_per_s"]
        src = lg.get("large") or lg["append"]
        fig["log_inclusion_proof_ms_p50"] = src["inclusion_proof_ms_p50"]
        fig["log_consistency_proof_ms_p50"] = src["consistency_proof_ms_p50"]
        fig["log_proof_tree_size"] = src["size"]
    console.print("incident package, CAN import and de-identification figures ...")
    details["car"] = car_figures(work, cfg)
    fig.update({k: v for k, v in details["car"].items() if isinstance(v, int | float)})


def _result(
    out: Path, cfg: BenchConfig, started: float, load_start: float, details: dict[str, Any], fig: Figures
) -> dict[str, Any]:
    """The whole result as written to JSON, with the comparison rows."""
    result: dict[str, Any] = {
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "json": str(out),
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": _loadavg()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "dataset": details["dataset"],
        "figures": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fig.items()},
        "reference_peer": REFERENCE_PEER,
        "details": details,
        "not_measured": [{"figure": w, "target": t} for w, t in NOT_YET_MEASURED],
    }
    result["rows"] = build_rows(fig, cfg.window_minutes, cfg.extra_ingests)
    return result


def run_bench(
    out: Path,
    docs: Path,
    vehicles: int = 20,
    hours: float = 2.0,
    postgres: bool = True,
    console: Console | None = None,
    *,
    quick: bool = False,
    config: BenchConfig | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run every measurement, write the JSON to ``out`` and the report to ``docs``; return the result."""
    from carvault.server import free_port

    console = console or Console()
    cfg = _bench_config(vehicles, hours, postgres, quick, config, overrides)
    started = time.perf_counter()
    load_start = _loadavg()
    if load_start > 0.5:
        console.print(
            f"[yellow]warning:[/] load average is {load_start}: other work on this machine will distort the figures"
        )
    work = cfg.work_dir or Path(tempfile.mkdtemp(prefix="carvault-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "region-cn"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    sigs: list[Signal] = [catalogue()[p] for p in BENCH_SIGNALS]
    details: dict[str, Any] = {}
    fig: Figures = {}
    console.rule("[bold]carvault bench" + (" (quick)" if cfg.quick else ""))
    console.print(f"work folder {work}; {cfg.vehicles} vehicles × {cfg.hours:g} h, {cfg.batch_seconds} s batches")

    server: ServerProcess | None = None
    live: dict[str, Any] | None = None
    try:
        with _progress(console) as bar:
            data, signed, token = _dataset_step(cfg, console, bar, data_dir, work, details)
            server = ServerProcess(data_dir, free_port(), work / "server.log", cfg.server_workers).start()
            _ingest_step(server, signed[: cfg.vehicles], data_dir, console, bar, details, fig)
            windows, dense = _window_step(server, signed[cfg.vehicles :], data, token, cfg, console, bar, details, fig)
            server.stop()
            server = None
            del signed  # the signed batches are the largest thing held; the rest needs only the tables
            _variants_step(work, data, cfg, console, bar, details, fig)
            _blob_store_step(work, data, console, bar, details)
            _ingest_cost_step(work, data, cfg, console, bar, details, fig)
            if cfg.postgres:
                details["peer"] = _run_peer(cfg, data, sigs, windows, dense, console, bar)
                fig.update(_peer_figures(details["peer"]))
        _log_and_car_step(work, cfg, console, details, fig)
        if cfg.live:
            from carvault.bench.live_bench import LiveBenchConfig, live_figures

            live = live_figures(LiveBenchConfig.quick() if cfg.quick else LiveBenchConfig(), console, work / "live")
    finally:
        if server is not None:
            server.stop()
        if not cfg.keep and cfg.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    result = _result(out, cfg, started, load_start, details, fig)
    if live is not None:
        result["live"] = live
    try:  # figures of the steps this run did not make (``--only fleet``, ``--only retention`` …) stay
        previous = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict):
        result = {**{k: v for k, v in previous.items() if k not in result}, **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    try:
        page = docs.read_text(encoding="utf-8")
    except OSError:
        page = ""
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(
        render_markdown(result, _existing_analysis(docs), _existing_live_notes(docs), other_sections(page)),
        encoding="utf-8",
    )
    _print_summary(console, result)
    return result


def _run_peer(
    cfg: BenchConfig,
    data: Sequence[VehicleData],
    sigs: Sequence[Signal],
    windows: Sequence[tuple[str, int, int]],
    dense: Sequence[tuple[str, int, int]],
    console: Console,
    bar: Progress,
) -> dict[str, Any]:
    from carvault.bench.peer import PeerVehicle, PostgresPeer

    peer_data = [PeerVehicle(v.vin, v.table, v.samples) for v in data]
    peer = PostgresPeer(sigs, batch_seconds=cfg.peer_batch_seconds, clients=cfg.peer_clients)
    with _step(console, bar, "peer: start PostgreSQL", 1) as adv:
        peer.start()
        adv(1)
    try:
        out: dict[str, Any] = {"version": peer.version, "settings": peer.settings}
        peer.register_cars(peer_data)
        with _step(console, bar, "peer: wide, bulk COPY", len(peer_data)) as adv:
            out["wide_copy"] = peer.load_wide_copy(peer_data, adv)
        n_batches = sum(-(-v.table.num_rows // (cfg.peer_batch_seconds * 10)) for v in data)
        with _step(console, bar, f"peer: wide, commit per {cfg.peer_batch_seconds} s batch", n_batches) as adv:
            out["wide_batch"] = peer.load_wide_batches(peer_data, adv)
        with _step(console, bar, "peer: long, bulk COPY", len(peer_data) + 2) as adv:
            out["long_copy"] = peer.load_long_copy(peer_data, adv)
        pw = list(windows[: cfg.peer_windows])
        with _step(console, bar, "peer: wide windows", len(pw)) as adv:
            out["wide_window"] = peer.windows("wide", pw, progress=adv)
        with _step(console, bar, "peer: long windows", len(pw)) as adv:
            out["long_window"] = peer.windows("long", pw, progress=adv)
        with _step(console, bar, "peer: wide windows of 30 min of driving", len(dense)) as adv:
            out["wide_window_dense"] = peer.windows("wide", dense, progress=adv)
        return out
    finally:
        peer.stop()


def _print_summary(console: Console, result: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="carvault bench")
    for col in ("figure", "CarVault", "peer", "ratio", "target", "met?"):
        t.add_column(col)
    for r in result["rows"]:
        t.add_row(
            r["figure"],
            r["carvault"],
            r["peer"],
            "—" if r["ratio"] is None else f"{r['ratio']:.2f}",
            r["target"],
            _met(r["met"]),
        )
    console.print(t)
    console.print(f"figures written to {result['json']}")
