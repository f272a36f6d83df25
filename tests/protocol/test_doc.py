"""A vehicle client written from docs/protocol.md alone (cryptography + pyarrow + httpx, no CarVault imports
on the client side) uploads to the real gateway."""

from __future__ import annotations

import hashlib
import io
import json
import struct

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from carvault.vehicle.identity import VehicleIdentity


def envelope(key, vin: str, region: str, seq: int, prev: str, table: pa.Table) -> bytes:  # type: ignore[no-untyped-def]
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    payload = sink.getvalue()
    ts = table.column("t").cast(pa.int64())
    header = json.dumps(
        {
            "v": 1,
            "vin": vin,
            "region": region,
            "seq": seq,
            "prev": prev,
            "t0": ts[0].as_py(),
            "t1": ts[-1].as_py(),
            "rows": table.num_rows,
            "payload": "parquet",
            "kind": "telemetry",
        }
    ).encode()
    body = b"CVB1" + struct.pack(">I", len(header)) + header + struct.pack(">Q", len(payload)) + payload
    return body + key.sign(body)


def test_client_from_the_doc(http: httpx.Client, vehicle: VehicleIdentity) -> None:
    prev = "0" * 64
    start = 1_700_000_000_000
    for seq in (1, 2):
        t = start + seq * 10_000 + np.arange(100) * 100
        table = pa.table(
            {
                "t": pa.array(t).cast(pa.timestamp("ms", tz="UTC")),
                "Vehicle.Speed": pa.array(np.linspace(0, 50, 100), pa.float32()),
                "Vehicle.ADAS.ABS.IsEngaged": pa.array([False] * 100),
            }
        )
        blob = envelope(vehicle.key, vehicle.vin, "cn", seq, prev, table)
        r = http.post(
            "/api/v1/ingest/batches", content=blob, headers={"Content-Type": "application/vnd.carvault.batch.v1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["batch_hash"] == hashlib.sha256(blob).hexdigest()
        prev = r.json()["batch_hash"]
