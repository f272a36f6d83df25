"""A reusable live-load generator: N cars streaming signed live frames over WebSockets (docs/protocol.md §8).

``stream_fleet`` opens one vehicle-signed connection per car, sends a frame every ``interval_ms`` per car (the
cars' phases spread over the interval, as real cars are), and measures each frame's acknowledgement time. With
a ``LiveHub`` it also measures sample-to-subscriber latency (frame ``t_ms`` to delivery to a hub subscriber,
on the same or another replica). ``carvault bench`` calls it; tests call it small.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from carvault.ingest.live import LiveHub
from carvault.protocol.live import LIVE_PATH, LIVE_SUBPROTOCOL, encode_frame
from carvault.protocol.requests import sign_request
from carvault.provisioning import provision
from carvault.region import Region
from carvault.vehicle.identity import VehicleIdentity

# What each frame carries: plausible values of technical and personal categories (collected unless stopped).
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


def _ms() -> int:
    return time.time_ns() // 1_000_000


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / min / max of a sample (nearest rank); empty -> {}."""
    if not values:
        return {}
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "min": s[0], "max": s[-1], "n": float(len(s))}


@dataclass
class LiveLoadResult:
    """What a run measured."""

    cars: int
    seconds: float
    frames_sent: int = 0
    acked: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    ack_ms: list[float] = field(default_factory=list)
    subscriber_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Figures for the bench file."""
        return {
            "cars": self.cars,
            "seconds": round(self.seconds, 2),
            "frames_sent": self.frames_sent,
            "acked": self.acked,
            "refused": self.refused,
            "frames_per_s": round(self.acked / self.seconds, 1) if self.seconds else 0.0,
            "ack_ms": quantiles(self.ack_ms),
            "sample_to_subscriber_ms": quantiles(self.subscriber_ms),
        }


def _ws_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    scheme = "wss" if base.startswith("https://") else "ws"
    return f"{scheme}://{base.split('://', 1)[-1]}{LIVE_PATH}"


async def _one_car(
    url: str, car: VehicleIdentity, index: int, cars: int, seconds: float, interval_ms: int, result: LiveLoadResult
) -> None:
    headers = sign_request(car.key, "GET", LIVE_PATH, car.vin)
    async with connect(url, additional_headers=headers, subprotocols=[LIVE_SUBPROTOCOL], max_queue=None) as ws:  # type: ignore[list-item]
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            code = ready.get("error", {}).get("code", "refused")
            result.refused[code] = result.refused.get(code, 0) + 1
            return
        sent: dict[int, float] = {}
        n = max(1, int(seconds * 1000 // interval_ms))

        async def read() -> None:
            for _ in range(n):
                answer = json.loads(await ws.recv())
                at = time.perf_counter()
                if answer.get("type") == "ack":
                    result.acked += 1
                    result.ack_ms.append((at - sent.pop(answer["counter"], at)) * 1000)
                else:
                    code = answer.get("error", {}).get("code", "error")
                    result.refused[code] = result.refused.get(code, 0) + 1

        reader = asyncio.create_task(read())
        await asyncio.sleep(interval_ms / 1000 * index / max(cars, 1))  # spread the cars over the interval
        start = time.perf_counter()
        base = _ms()  # counters above any earlier run's (a run sends fewer frames than milliseconds pass)
        for i in range(n):
            t = _ms()
            values = {SPEED: 40.0 + 20.0 * math.sin(i / 30 + index), SOC: 80.0 - i * 0.001}
            frame = encode_frame(car.vin, car.region, base + i, t, values, car.key)
            sent[base + i] = time.perf_counter()
            await ws.send(frame)
            result.frames_sent += 1
            delay = start + (i + 1) * interval_ms / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(reader, timeout=30)


async def _listen(hub: LiveHub, vins: Sequence[str], result: LiveLoadResult, stop: asyncio.Event) -> None:
    subs = [hub.subscribe(v) for v in vins]

    async def drain(sub: Any) -> None:
        async for update in sub:
            result.subscriber_ms.append(float(_ms() - update.t_ms))

    tasks = [asyncio.create_task(drain(s)) for s in subs]
    await stop.wait()
    for s in subs:
        await s.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def stream_fleet(
    endpoint: str,
    cars: Sequence[VehicleIdentity],
    *,
    seconds: float = 10.0,
    interval_ms: int = 1000,
    subscriber_hub: LiveHub | None = None,
) -> LiveLoadResult:
    """Stream every car for ``seconds``; acknowledgement and (with a hub) sample-to-subscriber latencies."""
    result = LiveLoadResult(cars=len(cars), seconds=seconds)
    stop = asyncio.Event()
    listener = (
        asyncio.create_task(_listen(subscriber_hub, [c.vin for c in cars], result, stop))
        if subscriber_hub is not None
        else None
    )
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    url = _ws_url(endpoint)
    await asyncio.gather(*(_one_car(url, c, i, len(cars), seconds, interval_ms, result) for i, c in enumerate(cars)))
    result.seconds = time.perf_counter() - began
    await asyncio.sleep(0.2)  # let the last updates reach the subscriber
    stop.set()
    if listener is not None:
        await listener
    return result


def provision_fleet(region: Region, n: int, folder: Path, *, prefix: str = "LRWLIVE") -> list[VehicleIdentity]:
    """``n`` cars registered in ``region`` (keys in ``folder``), VINs ``<prefix><number>`` padded to 17 characters."""
    width = 17 - len(prefix)
    return [provision(region, f"{prefix}{i:0{width}d}", folder) for i in range(1, n + 1)]


def run_live_load(
    endpoint: str,
    cars: Sequence[VehicleIdentity],
    *,
    seconds: float = 10.0,
    interval_ms: int = 1000,
    subscriber_hub: LiveHub | None = None,
) -> LiveLoadResult:
    """``stream_fleet`` from synchronous code (the bench runner)."""
    return asyncio.run(
        stream_fleet(endpoint, cars, seconds=seconds, interval_ms=interval_ms, subscriber_hub=subscriber_hub)
    )


# ------------------------------------------------------------------------------ process-pool cars and subscribers
# For the bench at scale (``carvault.bench.live_bench``) the cars and the VISS subscribers run in their own
# processes, so the server's CPU is counted apart from the load generator's. Each car still builds and signs every
# frame when it is due (signing is the car's job); the processes meet the parent through queues and events.


def _now_ms_f() -> float:
    return time.time_ns() / 1e6


def parse_iso_ms(text: str) -> int:
    """Epoch milliseconds of a VISS timestamp (``2026-12-03T08:10:25.123Z``)."""
    import calendar

    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 + int(text[20:23])


async def _car_session(
    url: str,
    car: VehicleIdentity,
    go: asyncio.Event,
    phase_s: float,
    seconds: float,
    interval_ms: int,
    out: dict[str, Any],
    ready: list[int],
    gate: asyncio.Semaphore,
) -> None:
    """One car: connect (under ``gate``), report ready, wait for ``go``, stream, then read the last acks."""
    headers = sign_request(car.key, "GET", LIVE_PATH, car.vin)
    async with gate:
        ws = await connect(url, additional_headers=headers, subprotocols=[LIVE_SUBPROTOCOL], max_queue=None)  # type: ignore[list-item]
        hello = json.loads(await ws.recv())
    if hello.get("type") != "ready":
        code = hello.get("error", {}).get("code", "refused")
        out["refused"][code] = out["refused"].get(code, 0) + 1
        await ws.close()
        return
    ready[0] += 1
    n = max(1, int(seconds * 1000 // interval_ms))
    pending: dict[int, float] = {}

    async def read() -> None:
        for _ in range(n):
            answer = json.loads(await ws.recv())
            if answer.get("type") == "ack":
                out["acked"] += 1
                began = pending.pop(answer["counter"], None)
                if began is not None:
                    out["ack_ms"].append(_now_ms_f() - began)
            else:
                code = answer.get("error", {}).get("code", "error")
                out["refused"][code] = out["refused"].get(code, 0) + 1

    await go.wait()
    reader = asyncio.create_task(read())
    await asyncio.sleep(phase_s)
    start = time.perf_counter()
    base = _ms()
    try:
        for i in range(n):
            due = start + i * interval_ms / 1000
            out["late_ms"].append(max(0.0, (time.perf_counter() - due) * 1000))
            t = _ms()  # the sample time: the frame is built and signed now
            values = {SPEED: 40.0 + 20.0 * math.sin(i / 30 + phase_s), SOC: 80.0 - i * 0.001}
            frame = encode_frame(car.vin, car.region, base + i, t, values, car.key)
            pending[base + i] = _now_ms_f()
            await ws.send(frame)
            out["sent"].append((car.vin, t, _now_ms_f()))
            delay = start + (i + 1) * interval_ms / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(reader, timeout=30)
    finally:
        reader.cancel()
        await ws.close()


def car_worker(
    folders: Sequence[str], url: str, seconds: float, interval_ms: int, phase_of: Sequence[float], ready_q: Any, go: Any
) -> dict[str, Any]:
    """A process of cars (run by a process pool): connect them all, report how many are ready, stream on ``go``."""
    cars = [VehicleIdentity.load(Path(f)) for f in folders]
    url = _ws_url(url)
    out: dict[str, Any] = {"acked": 0, "refused": {}, "ack_ms": [], "late_ms": [], "sent": []}

    async def main() -> None:
        started = asyncio.Event()
        ready = [0]
        gate = asyncio.Semaphore(32)  # connection set-ups at once (the server checks each signature in a thread)
        tasks = [
            asyncio.create_task(_car_session(url, c, started, phase_of[i], seconds, interval_ms, out, ready, gate))
            for i, c in enumerate(cars)
        ]
        while sum(t.done() for t in tasks) + ready[0] < len(tasks):
            await asyncio.sleep(0.05)
        ready_q.put(("cars", ready[0]))
        await asyncio.to_thread(go.wait)
        started.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [type(r).__name__ for r in results if isinstance(r, BaseException)]
        for e in errors:
            out["refused"][e] = out["refused"].get(e, 0) + 1

    asyncio.run(main())
    out["cpu_s"] = time.process_time()
    return out


async def _subscriber_session(
    url: str, token: str, stop: asyncio.Event, out: dict[str, Any], ready: list[int], gate: asyncio.Semaphore
) -> None:
    """One VISS connection subscribing to a car's speed on every frame (a range filter always true)."""
    request = {
        "action": "subscribe",
        "requestId": "1",
        "path": SPEED,
        "filter": {"variant": "range", "parameter": {"logic-op": "gte", "boundary": "-1000"}},
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with gate:
        ws = await connect(url, additional_headers=headers, subprotocols=["VISSv3"], max_queue=None)  # type: ignore[list-item]
        await ws.send(json.dumps(request))
        answer = json.loads(await ws.recv())
    if "subscriptionId" not in answer or "error" in answer:
        code = answer.get("error", {}).get("code", "refused")
        out["refused"][code] = out["refused"].get(code, 0) + 1
        await ws.close()
        return
    ready[0] += 1
    vin = url.rsplit("/", 1)[-1]
    try:
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except TimeoutError:
                continue
            received = _now_ms_f()
            event = json.loads(text)
            data = event.get("data")
            if event.get("action") != "subscription" or not isinstance(data, dict):
                code = event.get("error", {}).get("code", "unexpected")
                out["refused"][code] = out["refused"].get(code, 0) + 1
                continue
            out["got"].append((vin, parse_iso_ms(data["dp"]["ts"]), parse_iso_ms(event["ts"]), received))
    finally:
        await ws.close()


def subscriber_worker(base_url: str, vins: Sequence[str], token: str, ready_q: Any, stop: Any) -> dict[str, Any]:
    """A process of VISS subscribers, one connection per vehicle, until ``stop`` is set."""
    out: dict[str, Any] = {"refused": {}, "got": []}
    ws_base = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/")

    async def main() -> None:
        halt = asyncio.Event()
        ready = [0]
        gate = asyncio.Semaphore(16)
        tasks = [
            asyncio.create_task(_subscriber_session(f"{ws_base}/api/v1/viss/{v}", token, halt, out, ready, gate))
            for v in vins
        ]
        while sum(t.done() for t in tasks) + ready[0] < len(tasks):
            await asyncio.sleep(0.05)
        ready_q.put(("subscribers", ready[0]))
        await asyncio.to_thread(stop.wait)
        halt.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                out["refused"][type(r).__name__] = out["refused"].get(type(r).__name__, 0) + 1

    asyncio.run(main())
    out["cpu_s"] = time.process_time()
    return out
