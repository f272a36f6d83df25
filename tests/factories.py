"""Builders of valid test data that go through the real code (no simulator needed)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from carvault.dtc import DTC_SIGNAL, DtcRecord, encode_dtcs
from carvault.signals import catalogue

if TYPE_CHECKING:
    from carvault.region import Region

BASE_MS = 1_762_999_980_000  # 2025-11-13, a whole minute, safely in the past


T = TypeVar("T")


def vin_for(n: int) -> str:
    """A deterministic, valid 17-character VIN."""
    return f"LRWTEST{n:010d}"


def drive_table(start_ms: int = BASE_MS, seconds: int = 120, paths: list[str] | None = None, seed: int = 0) -> pa.Table:
    """A plausible table at 10 Hz (1 Hz signals only on whole seconds), every value inside its range."""
    cat = catalogue()
    # Camera rows reference frames and need the in-car de-identification marks: not generic test data.
    sigs = [cat[p] for p in paths] if paths else [s for s in cat if s.category != "exterior_camera"]
    n = seconds * 10
    rng = np.random.default_rng(seed)
    t = start_ms + np.arange(n, dtype=np.int64) * 100
    whole = (t % 1000) == 0
    cols: list[pa.Array] = [pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
    for s in sigs:
        if s.allowed:
            vals = pa.array(np.array(s.allowed)[rng.integers(0, len(s.allowed), n)].tolist(), pa.string())
        elif s.path == DTC_SIGNAL:  # trouble codes: the JSON records carvault/dtc.py defines (the gateway checks)
            rec = DtcRecord("P0A80", "active", "BMS", int(start_ms), int(start_ms))
            vals = pa.array([encode_dtcs([rec])] * n, pa.string())
        elif s.datatype == "boolean":
            vals = pa.array(rng.random(n) < 0.1)
        else:
            lo = s.min if s.min is not None else 0.0
            hi = s.max if s.max is not None else 100.0
            mid, span = (lo + hi) / 2, (hi - lo) / 4
            x = np.clip(mid + span * np.sin(np.arange(n) / 50.0 + seed), lo, hi)
            vals = pa.array(x).cast(s.arrow_type, safe=False)
        if s.rate_hz == 1:
            vals = pa.array(np.where(whole, vals.to_numpy(zero_copy_only=False), None).tolist(), s.arrow_type)
        cols.append(vals)
    return pa.Table.from_arrays(cols, schema=cat.arrow_schema([s.path for s in sigs]))


def opt_in(region: Region, vin: str, *categories: str, at_ms: int = BASE_MS - 60_000) -> None:
    """The owner's lasting opt-in to categories the test data carries (the gateway checks consent itself).

    Default: every category of ``drive_table()`` that needs one. Given a minute before ``BASE_MS`` for a
    year, by an owner account made for it.
    """
    from carvault.compliance.consent import needs_opt_in

    if not categories:
        categories = tuple(sorted({s.category for s in catalogue() if s.category != "exterior_camera"}))
    owner = region.accounts.register(f"consent-{secrets.token_hex(4)}@example.com", "correct horse battery")
    for category in filter(needs_opt_in, categories):
        region.consents.decide(
            vin,
            owner.id,
            category,
            enabled=True,
            purpose="test data",
            ends_ms=at_ms + 365 * 86_400_000,
            lasting=True,
            at_ms=at_ms,
        )


def serve_process(data_dir: Path, port: int, *, stderr: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """A real `carvault serve` process for region cn over ``data_dir`` on ``port``."""
    env = {**os.environ, "CARVAULT_DATA_DIR": str(data_dir), "CARVAULT_REGION": "cn", "CARVAULT_PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, "-m", "carvault.cli", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )


def scrape(http: httpx.Client, **kw: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    r = http.get("/metrics", **kw)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Poll a server's health route until it answers 200; fail with its stderr if it dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server died"
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not start")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop in its own thread.

    ``asyncio.run`` refuses to start while the calling thread already runs a loop — as the thread holding
    Playwright's session-scoped synchronous browser does — so tests never call it directly.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def make_staff(region: Region, role: str, *, jurisdiction: str | None = None) -> tuple[Any, str]:
    """A staff member of ``role`` (a compliance.roles.Role) logged in with password and TOTP code.

    Returns (StaffPrincipal, bearer secret). The username is random, so each call makes a new member.
    """
    import pyotp

    username = f"{str(role).replace('_', '-')}-{secrets.token_hex(4)}"
    password = "staff password " + secrets.token_hex(4)
    _, totp_secret = region.staff.create(username, password, role, jurisdiction, f"Test {role}")
    secret, principal = region.staff.login(username, password, pyotp.TOTP(totp_secret).now())
    return principal, secret
