"""Receipt to cosigned checkpoint: how long after a log append its tree is cosigned by the witnesses' quorum.

Starts real ``carvault witness serve`` processes on loopback, a region whose log they witness (quorum: all of
them), then appends one leaf at a time the way the gateway does when it answers a receipt (the receipt is sent
right after the append returns). For each append the latency is the time until a checkpoint of at least that
size has the quorum of cosignatures (``Witnessing.cosigned_at``). Goal: p95 ≤ 2 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from carvault.ledger.checkpoint import format_vkey
from carvault.server import free_port

__all__ = ["witness_figures"]


def _start_witness(directory: Path, label: str, log_vkey: str) -> tuple[subprocess.Popen[bytes], str, str]:
    cmd = [sys.executable, "-m", "carvault", "witness"]
    name = f"bench.example/{label}"
    vkey = subprocess.run(
        [*cmd, "init", "--name", name, "--dir", str(directory)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run([*cmd, "add-log", log_vkey, "--dir", str(directory)], capture_output=True, check=True)
    port = free_port()
    proc = subprocess.Popen(
        [*cmd, "serve", "--dir", str(directory), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, f"{label}={vkey}@{url}", vkey
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("a bench witness did not start")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def witness_figures(work: Path, *, witnesses: int = 2, appends: int = 40, gap_s: float = 0.1) -> dict[str, Any]:
    """p50/p95/max seconds from an append (a receipt) to a quorum-cosigned checkpoint that covers it."""
    from carvault.region import Region, load_or_create_key, log_origin
    from carvault.settings import Settings

    data_dir = work / "region"
    key = load_or_create_key(data_dir / "keys" / "log-ed25519.pem")
    log_vkey = format_vkey(log_origin("cn"), key.public_key())
    procs: list[subprocess.Popen[bytes]] = []
    entries = []
    try:
        for i in range(witnesses):
            proc, entry, _ = _start_witness(work / f"w{i + 1}", f"w{i + 1}", log_vkey)
            procs.append(proc)
            entries.append(entry)
        port = free_port()
        settings = Settings(
            data_dir=data_dir,
            region="cn",
            port=port,
            region_endpoints={"cn": f"http://127.0.0.1:{port}"},
            witnesses=";".join(entries),
            witness_quorum=witnesses,
        )
        with Region(settings) as region:
            appended: list[tuple[int, float]] = []
            log: Any = region.log  # either backend (file or PostgreSQL) appends
            for i in range(appends):
                size = log.append([f"bench-{i}".encode()]) + 1
                appended.append((size, time.monotonic()))
                time.sleep(gap_s)
            deadline = time.monotonic() + 30
            last = appended[-1][0]
            while not any(s >= last for s in region.witnessing.cosigned_at) and time.monotonic() < deadline:
                time.sleep(0.02)
            cosigned = sorted(region.witnessing.cosigned_at.items())
            latencies = []
            for size, at in appended:
                done = [t for s, t in cosigned if s >= size]
                if done:
                    latencies.append(min(done) - at)
            missing = appends - len(latencies)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {
        "witnesses": witnesses,
        "quorum": witnesses,
        "appends": appends,
        "never_cosigned": missing,
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(_percentile(latencies, 0.95), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "goal_p95_s": 2.0,
    }


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(witness_figures(Path(tmp)), indent=2))
