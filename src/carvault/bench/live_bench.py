"""The live figures of ``carvault bench`` (issue 10): latency, CPU and memory of streaming cars and VISS subscribers.

One fleet is provisioned and paired with one owner; then, for each fleet size, a fresh ``carvault serve`` process
(two for the fan-out run) on that data folder, with the real broker between replicas (Debian's ``nats-server``,
started here as a process). Subscribers connect first: one VISS WebSocket per car (``/api/v1/viss/{vin}``, the
owner's token) with a subscription that fires on every frame; then the cars connect, one signed WebSocket each.
The server's resident memory is read before and after each group connects. On a signal every car streams a frame
a second for ``seconds``, building and signing each frame when it is due (the cars and the subscribers run in
process pools of their own, so the server's CPU, read from ``/proc/<pid>/stat``, is the server's alone).

Figures, on one host clock:

- *end to end*: the subscriber's receipt of an event minus the frame's sample time (``t_ms``, stamped when the
  car built and signed it);
- *added by the region*: the event's ``ts`` (stamped by the server as the notification leaves it) minus the time
  the car's ``send`` of the frame returned (the frame is then in the loopback socket: its arrival);
- server CPU per streaming car (with its subscriber) and per frame; memory per car connection and per VISS
  subscriber connection; the fan-out run puts the subscribers on a second replica.

Evidence bytes per sample for all-day streaming come from one simulated day streamed live and committed in
batches (``carvault simulate --live``), read back from the store: the whole evidence and the live members' share.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from carvault.bench.live_load import car_worker, quantiles, subscriber_worker
from carvault.bench.run import REGION, BenchError, ServerProcess, _loadavg, machine_busy_seconds
from carvault.bench.sections import save_section, splice_section

OWNER_EMAIL = "live-bench-owner@carvault.example"
FLEET_PREFIX = "LRWLIVE"
OWNER_PASSWORD = "live bench password, long enough"
GOAL_P95_MS = 2000.0
GOAL_REGION_P95_MS = 250.0
IDLE_WINDOW_S = 3.0


class LiveBenchError(BenchError):
    """The live step could not run (no nats-server, a process that did not report)."""


@dataclass(frozen=True)
class LiveBenchConfig:
    """What the live step measures with."""

    # (streaming cars, VISS subscribers): the subscribers watch the first cars, one connection each.
    # (streaming cars, VISS subscribers, `carvault serve --workers`); subscribers may land on another worker
    # process than their car: the broker joins them as it joins replicas.
    runs: tuple[tuple[int, int, int], ...] = ((100, 100, 1), (1000, 1000, 1), (1000, 1000, 2), (1000, 100, 2))
    seconds: float = 30.0
    interval_ms: int = 1000
    fanout_cars: int = 100
    car_processes: int = 2
    subscriber_processes: int = 1
    evidence_day: str | None = "2025-11-12"  # a simulated day streamed live and committed (None: skip)

    @classmethod
    def quick(cls) -> LiveBenchConfig:
        """A handful of cars for a few seconds: the machinery, not the figures."""
        return cls(runs=((4, 4, 1),), seconds=3.0, fanout_cars=3, car_processes=1, evidence_day=None)


# --------------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nats_server() -> Iterator[str]:
    """Debian's ``nats-server`` on a free loopback port for the run; its URL."""
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        raise LiveBenchError("nats-server is not installed (scripts/install-system-deps.sh installs it)")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise LiveBenchError("nats-server did not start")
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (``VmRSS``) and of its live descendants (uvicorn's workers), 0 if gone."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = int(line.split()[1]) * 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(rss_bytes(int(c)) for c in children)


def _pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


# ------------------------------------------------------------------------------------------------- fleet
@dataclass
class Fleet:
    """The provisioned cars (their folders) and the owner's API token."""

    folders: list[str]
    vins: list[str]
    token: str


def prepare_fleet(data_dir: Path, n: int, nats_url: str) -> Fleet:
    """``n`` cars in the region at ``data_dir``, paired with one owner, and a fresh API token of that owner.

    Provisioning costs an argon2 hash a car and pairing another (about half a second each here), so a work folder
    kept from an earlier run (``work`` given to ``live_figures``) is reused: only missing cars are provisioned.
    """
    from sqlalchemy import select

    from carvault.provisioning import provision
    from carvault.region import Region
    from carvault.settings import Settings
    from carvault.store.metadata import Owner, Vehicle
    from carvault.vehicle.identity import VehicleIdentity

    folder = data_dir.parent / "live-vehicles"
    width = 17 - len(FLEET_PREFIX)
    vins = [f"{FLEET_PREFIX}{i:0{width}d}" for i in range(1, n + 1)]
    with Region(Settings(data_dir=data_dir, region=REGION, live_broker=nats_url)) as region:
        with region.db.session() as s:
            owner_id = s.scalar(select(Owner.id).where(Owner.email == OWNER_EMAIL))
            paired = set(s.scalars(select(Vehicle.vin).where(Vehicle.owner_id == owner_id))) if owner_id else set()
        if owner_id is None:
            owner_id = region.accounts.register(OWNER_EMAIL, OWNER_PASSWORD).id
        for vin in vins:
            if vin in paired:
                continue
            car = (
                VehicleIdentity.load(folder / vin)
                if (folder / vin / "identity.json").exists()
                else provision(region, vin, folder)
            )
            region.vehicles.claim(owner_id, vin, car.pairing_code)
        token, _ = region.accounts.issue(owner_id, "token", label="live bench")
    return Fleet([str(folder / v) for v in vins], vins, token)


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


# --------------------------------------------------------------------------------------------------- a run
def _wait_ready(queue: Any, expected: int, what: str, timeout: float) -> int:
    got = 0
    for _ in range(expected):
        kind, n = queue.get(timeout=timeout)
        if kind != what:
            raise LiveBenchError(f"expected {what} to report, got {kind}")
        got += n
    return got


def _join(
    sent: Sequence[tuple[str, int, float]], got: Sequence[tuple[str, int, int, float]]
) -> tuple[list[float], list[float], list[float]]:
    """End-to-end, region-added and last-hop latencies of every delivered frame (matched by VIN and sample time)."""
    sent_at = {(vin, t): at for vin, t, at in sent}
    end_to_end, region, last_hop = [], [], []
    for vin, t, left, received in got:
        end_to_end.append(received - t)
        last_hop.append(received - left)
        at = sent_at.get((vin, t))
        if at is not None:
            region.append(left - at)
    return end_to_end, region, last_hop


def _round(q: dict[str, float], digits: int = 1) -> dict[str, float]:
    return {k: (int(v) if k == "n" else round(v, digits)) for k, v in q.items()}


def stream_run(
    work: Path,
    data_dir: Path,
    fleet: Fleet,
    cars: int,
    cfg: LiveBenchConfig,
    nats_url: str,
    *,
    subscribers: int | None = None,
    replicas: int = 1,
    workers: int = 1,
) -> dict[str, Any]:
    """One measured run: ``cars`` cars on replica A, subscribers to the first ``subscribers`` of them (default all)
    on the last replica (A, or B for fan-out)."""
    subscribers = cars if subscribers is None else min(subscribers, cars)
    env = {"CARVAULT_LIVE_BROKER": nats_url}
    servers = [
        ServerProcess(data_dir, _free_port(), work / f"live-server-{cars}-{i}.log", workers, env).start()
        for i in range(replicas)
    ]
    a, b = servers[0], servers[-1]
    ctx = get_context("spawn")
    manager = ctx.Manager()
    ready_q, go, stop = manager.Queue(), manager.Event(), manager.Event()
    vins, folders = fleet.vins[:cars], fleet.folders[:cars]
    sub_parts = _split(vins[:subscribers], cfg.subscriber_processes)
    car_parts = _split(list(range(cars)), cfg.car_processes)
    pool = ProcessPoolExecutor(len(sub_parts) + len(car_parts), mp_context=ctx)
    try:
        time.sleep(1.0)  # the servers settle (start-up garbage, broker connection)
        rss0 = {id(s): rss_bytes(_pid(s)) for s in servers}
        subs: list[Future[dict[str, Any]]] = [
            pool.submit(subscriber_worker, b.url, part, fleet.token, ready_q, stop) for part in sub_parts
        ]
        subscribed = _wait_ready(ready_q, len(subs), "subscribers", timeout=120 + cars * 0.2)
        time.sleep(1.0)
        rss1 = {id(s): rss_bytes(_pid(s)) for s in servers}
        # What open subscriptions cost while no car streams (their grant, consent and hold re-checks).
        idle0, idle_t = sum(s.cpu_seconds() for s in servers), time.perf_counter()
        time.sleep(IDLE_WINDOW_S)
        idle_cores = (sum(s.cpu_seconds() for s in servers) - idle0) / (time.perf_counter() - idle_t)
        phase = [cfg.interval_ms / 1000 * i / cars for i in range(cars)]  # cars spread over the interval
        car_jobs = [
            pool.submit(
                car_worker,
                [folders[i] for i in part],
                a.url,
                cfg.seconds,
                cfg.interval_ms,
                [phase[i] for i in part],
                ready_q,
                go,
            )
            for part in car_parts
        ]
        connected = _wait_ready(ready_q, len(car_jobs), "cars", timeout=120 + cars * 0.2)
        time.sleep(1.0)
        rss2 = {id(s): rss_bytes(_pid(s)) for s in servers}
        cpu0 = [s.cpu_seconds() for s in servers]
        busy0, load_start, t0 = machine_busy_seconds(), _loadavg(), time.perf_counter()
        go.set()
        car_out = [j.result(timeout=cfg.seconds + 120) for j in car_jobs]
        wall = time.perf_counter() - t0
        cpu1 = [s.cpu_seconds() for s in servers]
        busy1, load_end = machine_busy_seconds(), _loadavg()
        time.sleep(1.0)  # the last events reach the subscribers
        stop.set()
        sub_out = [j.result(timeout=60) for j in subs]
    finally:
        stop.set()
        go.set()
        pool.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()
        for s in servers:
            s.stop()
    sent = [x for o in car_out for x in o["sent"]]
    watching = set(vins[:subscribers])
    watched = sum(1 for vin, _, _ in sent if vin in watching)
    got = [x for o in sub_out for x in o["got"]]
    e2e, region, hop = _join(sent, got)
    acked = sum(o["acked"] for o in car_out)
    server_cpu = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
    gen_cpu = sum(o["cpu_s"] for o in car_out) + sum(o["cpu_s"] for o in sub_out)
    refused: dict[str, int] = {}
    for o in car_out + sub_out:
        for k, v in o["refused"].items():
            refused[k] = refused.get(k, 0) + v
    total_cpu = sum(server_cpu)
    p95 = quantiles(e2e).get("p95")
    region_p95 = quantiles(region).get("p95")
    return {
        "cars": cars,
        "subscribers": subscribers,
        "replicas": replicas,
        "server_workers": workers,
        "cars_connected": connected,
        "subscribers_connected": subscribed,
        "seconds": round(wall, 2),
        "frames_sent": len(sent),
        "frames_acked": acked,
        "events_received": len(got),
        "frames_watched": watched,
        "delivered_share": round(len(got) / watched, 4) if watched else 0.0,
        "refused": refused,
        "end_to_end_ms": _round(quantiles(e2e)),
        "added_by_region_ms": _round(quantiles(region)),
        "last_hop_ms": _round(quantiles(hop)),
        "ack_ms": _round(quantiles([x for o in car_out for x in o["ack_ms"]])),
        "car_late_ms": _round(quantiles([x for o in car_out for x in o["late_ms"]])),
        "goal_met": bool(
            p95 is not None
            and region_p95 is not None
            and p95 <= GOAL_P95_MS
            and region_p95 <= GOAL_REGION_P95_MS
            and len(got) >= 0.99 * watched
        ),
        "server_cores_busy_subscribers_only": round(idle_cores, 3),
        "server_cpu_seconds": [round(c, 2) for c in server_cpu],
        "server_cores_busy": round(total_cpu / wall, 3),
        "server_cpu_ms_per_frame": round(total_cpu * 1000 / max(1, acked), 3),
        "server_core_share_per_car": round(total_cpu / wall / cars, 5),
        "server_core_share_per_subscriber_idle": round(idle_cores / max(1, subscribers), 5),
        "generator_cpu_seconds": round(gen_cpu, 2),
        "other_processes_cpu_seconds": round(max(0.0, busy1 - busy0 - total_cpu - gen_cpu), 1),
        "load_average": {"start": load_start, "end": load_end},
        "server_rss_mib": {
            "idle": [round(rss0[id(s)] / 2**20, 1) for s in servers],
            "subscribed": [round(rss1[id(s)] / 2**20, 1) for s in servers],
            "cars_connected": [round(rss2[id(s)] / 2**20, 1) for s in servers],
        },
        "kib_per_subscriber_connection": round((rss1[id(b)] - rss0[id(b)]) / 1024 / max(1, subscribed), 1),
        "kib_per_car_connection": round((rss2[id(a)] - rss1[id(a)]) / 1024 / max(1, connected), 1),
    }


# ------------------------------------------------------------------------------------------------ evidence
def evidence_day(work: Path, data_dir: Path, nats_url: str, day: str) -> dict[str, Any]:
    """One simulated day streamed live (1 Hz while driving) then committed in batches: evidence bytes a sample."""
    from carvault.protocol import decode_envelope
    from carvault.provisioning import provision
    from carvault.region import Region
    from carvault.settings import Settings
    from carvault.store.metadata import BatchRecord

    vin = f"LRWLIVEDAY{int(time.time()) % 10**7:07d}"  # a new car each run: a kept work folder has the earlier days
    folder = work / "live-day-vehicle"
    settings = Settings(data_dir=data_dir, region=REGION, live_broker=nats_url)
    with Region(settings) as region:
        provision(region, vin, folder)
    server = ServerProcess(
        data_dir, _free_port(), work / "live-day-server.log", extra_env={"CARVAULT_LIVE_BROKER": nats_url}
    )
    server.start()
    try:
        cmd = [
            sys.executable,
            "-m",
            "carvault.cli",
            "simulate",
            str(folder / vin),
            "--endpoint",
            server.url,
            "--day",
            day,
            "--live",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise LiveBenchError(f"carvault simulate --live failed: {done.stdout[-400:]} {done.stderr[-400:]}")
    finally:
        server.stop()
    with Region(settings) as region, region.db.session() as s:
        rows = s.query(BatchRecord).filter(BatchRecord.vin == vin).all()
        blobs = [region.segment_reader.read(r.segment, r.offset, r.length) for r in rows]
    headers = [decode_envelope(blob).header for blob in blobs]
    samples = sum(r.samples for r in rows)
    frames = sum(h.live_size for h in headers)
    # What the three header members add to a batch as the car writes them (compact JSON, docs/protocol.md §8.4).
    live_bytes = sum(
        len(f',"live_first":{h.live_first},"live_last":{h.live_last},"live_root":"{h.live_root}"')
        for h in headers
        if h.live_first is not None
    )
    total = sum(len(b) for b in blobs)
    return {
        "day": day,
        "batches": len(rows),
        "samples": samples,
        "live_frames": frames,
        "evidence_bytes": total,
        "live_member_bytes": live_bytes,
        "bytes_per_sample": round(total / samples, 4) if samples else None,
        "live_bytes_per_sample": round(live_bytes / samples, 5) if samples else None,
        "live_share": round(live_bytes / total, 5) if total else None,
        "kept_hash_bytes_per_frame": 32,
    }


# ----------------------------------------------------------------------------------------------- the step
def live_figures(
    cfg: LiveBenchConfig | None = None, console: Console | None = None, work: Path | None = None
) -> dict[str, Any]:
    """Run the live measurements; the ``live`` member of the bench result."""
    cfg = cfg or LiveBenchConfig()
    console = console or Console()
    own = work is None
    work = work or Path(tempfile.mkdtemp(prefix="carvault-live-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "region-cn"
    started = time.perf_counter()
    load_start = _loadavg()
    out: dict[str, Any] = {"config": asdict(cfg), "load_average": {"start": load_start}, "runs": []}
    try:
        with nats_server() as nats_url:
            n = max([c for c, _, _ in cfg.runs] + [cfg.fanout_cars])
            console.print(f"live: provisioning {n} cars and pairing them with one owner")
            t = time.perf_counter()
            fleet = prepare_fleet(data_dir, n, nats_url)
            out["provision_seconds"] = round(time.perf_counter() - t, 1)
            for cars, subscribers, workers in cfg.runs:
                console.print(
                    f"live: {cars} cars streaming for {cfg.seconds:g} s, {subscribers} VISS subscribers, "
                    f"{workers} server worker(s)"
                )
                out["runs"].append(
                    stream_run(work, data_dir, fleet, cars, cfg, nats_url, subscribers=subscribers, workers=workers)
                )
                _say(console, out["runs"][-1])
            if cfg.fanout_cars:
                console.print(f"live: fan-out, {cfg.fanout_cars} cars on replica A, subscribers on replica B (NATS)")
                out["fanout"] = stream_run(work, data_dir, fleet, cfg.fanout_cars, cfg, nats_url, replicas=2)
                _say(console, out["fanout"])
            if cfg.evidence_day:
                console.print(f"live: evidence of a simulated day streamed live ({cfg.evidence_day})")
                out["evidence"] = evidence_day(work, data_dir, nats_url, cfg.evidence_day)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    out["load_average"]["end"] = _loadavg()
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return out


def _say(console: Console, run: dict[str, Any]) -> None:
    e, r = run["end_to_end_ms"], run["added_by_region_ms"]
    console.print(
        f"  delivered {run['events_received']}/{run['frames_sent']}; end to end p50 {e.get('p50')} p95 {e.get('p95')} "
        f"p99 {e.get('p99')} ms; region p95 {r.get('p95')} ms; server {run['server_cores_busy']} cores busy"
    )


# ------------------------------------------------------------------------------------------------ markdown
LIVE_START = "<!-- live:start -->"
LIVE_END = "<!-- live:end -->"
NOTES_START = "<!-- live-notes:start (hand-written, kept by re-runs) -->"
NOTES_END = "<!-- live-notes:end -->"


def _q(q: dict[str, float]) -> str:
    return f"{q.get('p50', '—')} / {q.get('p95', '—')} / {q.get('p99', '—')}" if q else "—"


def live_lines(live: dict[str, Any]) -> list[str]:
    """The ``## Live`` section of docs/benchmarks.md."""
    lines = [
        "## Live",
        "",
        f"Written by `carvault bench --only live` on {live['finished']} ({live['seconds']:.0f} s; load average "
        f"{live['load_average']['start']} at the start, {live['load_average']['end']} at the end: other work shared "
        "the 2 cores). One `carvault serve` process per replica, broker `nats-server`; cars and VISS subscribers in "
        "their own processes on the same machine, each car building and signing a frame a second (2 values). "
        "Latencies are p50 / p95 / p99 in ms; *end to end* is sample time to the subscriber's receipt over VISS, "
        "*region* is the car's send to the server's event timestamp (ms resolution). Goal: p95 ≤ 2,000 ms end to "
        "end, ≤ 250 ms added by the region.",
        "",
        "| run | cars / VISS subscribers | delivered | end to end | region | server cores busy | server CPU per "
        "car | CPU ms per frame | server cores, subscribers only | KiB per car connection | KiB per VISS "
        "connection | load avg | goal met? |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    runs = [(f"one replica, {r['server_workers']} worker(s)", r) for r in live.get("runs", [])]
    if live.get("fanout"):
        runs.append(("fan-out A→B", live["fanout"]))
    for name, r in runs:
        la = r["load_average"]
        lines.append(
            f"| {name} | {r['cars']} / {r['subscribers']} | {r['events_received']:,}/{r['frames_watched']:,} | "
            f"{_q(r['end_to_end_ms'])} | {_q(r['added_by_region_ms'])} | {r['server_cores_busy']} | "
            f"{r['server_core_share_per_car'] * 100:.3f} % of a core | {r['server_cpu_ms_per_frame']} | "
            f"{r['server_cores_busy_subscribers_only']} | {r['kib_per_car_connection']} | "
            f"{r['kib_per_subscriber_connection']} | {la['start']}→{la['end']} | "
            f"{'yes' if r['goal_met'] else '**no**'} |"
        )
    lines += [
        "",
        "*Server CPU per car* and *CPU ms per frame* divide the server's whole CPU while streaming (frame checks, "
        "broker, VISS events and the subscriptions' re-checks) by the cars and by the acknowledged frames; "
        "*subscribers only* is the server's CPU over 3 s with the subscriptions open and no car connected yet. "
        "*Delivered* counts events received over the frames of the watched cars.",
        "",
    ]
    for name, r in runs:
        lines.append(
            f"- {name}, {r['cars']} cars: acks p50/p95/p99 {_q(r['ack_ms'])} ms; cars late to their second "
            f"{_q(r['car_late_ms'])} ms; last hop (event ts to receipt) {_q(r['last_hop_ms'])} ms; load generator "
            f"{r['generator_cpu_seconds']} CPU-s, other processes {r['other_processes_cpu_seconds']} CPU-s; server "
            f"RSS MiB idle/subscribed/cars {r['server_rss_mib']['idle']}/{r['server_rss_mib']['subscribed']}/"
            f"{r['server_rss_mib']['cars_connected']}" + (f"; refused {r['refused']}" if r["refused"] else "") + "."
        )
    ev = live.get("evidence")
    if ev:
        lines.append(
            f"- Evidence for all-day streaming ({ev['day']} simulated, `carvault simulate --live`): "
            f"{ev['live_frames']:,} frames streamed, {ev['samples']:,} samples committed in {ev['batches']} batches, "
            f"**{ev['bytes_per_sample']} bytes a sample** of evidence in all, of which the live members "
            f"(`live_first`, `live_last`, `live_root`) are {ev['live_bytes_per_sample']} bytes a sample "
            f"({ev['live_share'] * 100:.2f} % of the evidence). The region keeps 32 bytes per frame for 30 min "
            "for root checks and proofs (not evidence)."
        )
    return lines


def live_block(live: dict[str, Any], notes: str | None = None) -> str:
    """The Live section between its markers (so ``--only live`` can replace it alone), hand-written notes last."""
    kept = notes.strip() if notes else "_No notes yet: what dominates the live figures goes here._"
    return "\n".join([LIVE_START, *live_lines(live), "", NOTES_START, kept, NOTES_END, LIVE_END])


def live_notes(markdown: str) -> str | None:
    """The hand-written notes of an existing Live section, if any."""
    a, b = markdown.find(NOTES_START), markdown.find(NOTES_END)
    if a < 0 or b < a:
        return None
    body = markdown[a + len(NOTES_START) : b].strip()
    return None if body.startswith("_No notes yet") else body


def splice_live(markdown: str, live: dict[str, Any]) -> str:
    """Put the Live section into a benchmarks page (replacing an earlier one, else before ``## Targets missed``)."""
    block = live_block(live, live_notes(markdown))
    return splice_section(markdown, block, LIVE_START, LIVE_END)


def run_live_only(
    out: Path, docs: Path, console: Console | None = None, cfg: LiveBenchConfig | None = None, work: Path | None = None
) -> dict:
    """``carvault bench --only live``: run the live step alone, set ``live`` in ``out``, rewrite its docs section.

    With ``work`` the data (and the provisioned fleet, reused next time) stays there.
    """

    live = live_figures(cfg, console, work)
    save_section(out, docs, "live", live, lambda page: splice_live(page, live))
    return live
