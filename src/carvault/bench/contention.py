"""Owner reads under upload load: read latency while many cars upload at once (issue 8, class 7).

``python -m carvault.bench.contention`` provisions a region, starts ``carvault serve`` in a subprocess, uploads
a warm-up of every car's data, then for a fixed time lets ``--cars`` cars upload back to back while ``--owners``
owners each read a window of their own car in a loop. It prints the read and upload latencies (p50, p99, max),
first with no upload running (the baseline) and then under load. Both clients speak raw HTTP/1.1 with
keep-alive, so the client costs the machine little and the server is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carvault.bench.run import INGEST_PATH, REGION, ServerProcess
from carvault.protocol import BATCH_MEDIA_TYPE, GENESIS_PREV, BatchHeader, encode_envelope, encode_payload, sha256_hex
from carvault.server import free_port
from carvault.signals import catalogue

SIGNALS = ("Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current")
BATCH_S = 10
START_MS = 1_762_999_980_000  # whole minute in the past, like the tests' data
WARM_BATCHES = 6  # a minute of data per car before the load starts: what the owners read


@dataclass
class Car:
    """One car's pre-signed uploads, in seq order."""

    vin: str
    batches: list[bytes]
    sent: int = 0
    held: list[bytes] = field(default_factory=list)  # sent only in the load phase


@dataclass
class Latencies:
    """Milliseconds of each answer, by kind, and answers that were not 200."""

    reads: list[float] = field(default_factory=list)
    uploads: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)


def _payload(t0: int) -> tuple[int, bytes]:
    """A 10 Hz batch of the bench signals starting at ``t0``: (rows, Parquet payload)."""
    cat = catalogue()
    n = BATCH_S * 10
    t = t0 + np.arange(n, dtype=np.int64) * 100
    speed = pa.array(60 + 20 * np.sin(np.arange(n) / 40.0)).cast(cat[SIGNALS[0]].arrow_type, safe=False)
    soc = pa.array(np.full(n, 70.0)).cast(cat[SIGNALS[1]].arrow_type, safe=False)
    time_col = pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return n, encode_payload(pa.Table.from_arrays([time_col, speed, soc], schema=cat.arrow_schema(list(SIGNALS))))


def sign_batches(vin: str, key: Ed25519PrivateKey, count: int, payloads: list[tuple[int, bytes]]) -> Car:
    """Chain and sign ``count`` consecutive batches for one car."""
    prev, out = GENESIS_PREV, []
    for seq in range(1, count + 1):
        t0 = START_MS + (seq - 1) * BATCH_S * 1000
        rows, payload = payloads[seq - 1]
        header = BatchHeader(vin=vin, region=REGION, seq=seq, prev=prev, t0=t0, t1=t0 + BATCH_S * 1000 - 100, rows=rows)
        blob = encode_envelope(header, payload, key)
        prev = sha256_hex(blob)
        out.append(blob)
    return Car(vin, out)


def provision(data_dir: Path, cars: int, owners: int) -> tuple[list[tuple[str, Ed25519PrivateKey]], list[str]]:
    """Register the cars, and ``owners`` owners (one API token each) who each pair one car."""
    from carvault.provisioning import provision as provision_car
    from carvault.region import Region
    from carvault.settings import Settings

    keys, tokens = [], []
    with Region(Settings(data_dir=data_dir, region=REGION)) as region:
        for i in range(cars):
            ident = provision_car(region, f"LRWBENCH{i:09d}", data_dir.parent / "vehicles")
            keys.append((ident.vin, ident.key))
            if i < owners:
                owner = region.accounts.register(f"owner-{i}@bench.example", "bench password, long enough")
                region.vehicles.claim(owner.id, ident.vin, ident.pairing_code)
                tokens.append(region.accounts.issue(owner.id, "token", label="bench")[0])
    return keys, tokens


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes = b""
) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 exchange: (status, body)."""
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(status_line.split()[1]), await reader.readexactly(length)


async def _uploader(port: int, car: Car, until: float, out: Latencies) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: %s\r\n" % (
        INGEST_PATH.encode(),
        BATCH_MEDIA_TYPE.encode(),
    )
    try:
        while car.sent < len(car.batches) and time.monotonic() < until:
            t0 = time.perf_counter()
            status, _ = await _request(reader, writer, head, car.batches[car.sent])
            if status != 200:
                out.failures[status] = out.failures.get(status, 0) + 1
                return
            out.uploads.append((time.perf_counter() - t0) * 1000)
            car.sent += 1
    finally:
        writer.close()


async def _reader(port: int, vin: str, token: str, until: float, out: Latencies) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    end = START_MS + WARM_BATCHES * BATCH_S * 1000
    path = f"/api/v1/vehicles/{vin}/telemetry?start={START_MS}&end={end}&signals={SIGNALS[0]}"
    head = b"GET %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n" % (path.encode(), token.encode())
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            status, _ = await _request(reader, writer, head)
            if status != 200:
                out.failures[status] = out.failures.get(status, 0) + 1
                await asyncio.sleep(0.05)
                continue
            out.reads.append((time.perf_counter() - t0) * 1000)
    finally:
        writer.close()


async def _phase(port: int, cars: list[Car], owners: list[tuple[str, str]], seconds: float) -> Latencies:
    out = Latencies()
    until = time.monotonic() + seconds
    tasks = [_uploader(port, c, until, out) for c in cars] + [_reader(port, v, t, until, out) for v, t in owners]
    await asyncio.gather(*tasks)
    return out


def quantiles(ms: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of latencies in ms."""
    if not ms:
        return {"n": 0}
    s = sorted(ms)
    return {
        "n": len(s),
        "p50": round(statistics.median(s), 1),
        "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
        "max": round(s[-1], 1),
    }


def run(cars: int, owners: int, seconds: float, work: Path) -> dict[str, Any]:
    """Provision, warm up, then measure reads alone and reads under upload load."""
    keys, tokens = provision(work / "region", cars, owners)
    per_car = WARM_BATCHES + int(seconds * 10) + 20  # more than a car can send in the time
    payloads = [_payload(START_MS + i * BATCH_S * 1000) for i in range(per_car)]
    signed = [sign_batches(vin, key, per_car, payloads) for vin, key in keys]
    for car in signed:
        car.batches, car.held = car.batches[:WARM_BATCHES], car.batches[WARM_BATCHES:]
    server = ServerProcess(work / "region", free_port(), work / "server.log").start()
    try:
        asyncio.run(_phase(server.port, signed, [], 600))  # the warm-up: every car's first minute
        owners_of = [(signed[i].vin, tokens[i]) for i in range(owners)]
        alone = asyncio.run(_phase(server.port, [], owners_of, min(seconds, 10)))
        for car in signed:
            car.batches += car.held
        print(
            f"server pid {server.proc.pid if server.proc else '?'}: {cars} cars upload, {owners} owners read",
            file=sys.stderr,
        )
        loaded = asyncio.run(_phase(server.port, signed, owners_of, seconds))
    finally:
        server.stop()
    return {
        "cars": cars,
        "owners": owners,
        "seconds": seconds,
        "reads_alone_ms": quantiles(alone.reads),
        "reads_under_upload_ms": quantiles(loaded.reads),
        "uploads_ms": quantiles(loaded.uploads),
        "not_200": loaded.failures | alone.failures,
    }


def main() -> None:
    """Command line: print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", type=int, default=50)
    ap.add_argument("--owners", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="carvault-contention-") as d:
        print(json.dumps(run(args.cars, args.owners, args.seconds, Path(d)), indent=2))


if __name__ == "__main__":
    main()
