"""`carvault demo`: two regions, an owner, three simulated cars, a day of driving uploaded over HTTP."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
from authlib.integrations.httpx_client import OAuth2Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from carvault.errors import CarVaultError
from carvault.protocol import TIME_TYPE, make_batch
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.vehicle.agent import UploadRefused, VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.vehicle.simulator import fleet_vins, simulate_day

DEMO_EMAIL = "owner@carvault.example"
BATCH_SECONDS = 300


@dataclass
class DemoResult:
    """What the demo did, step by step."""

    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        """Record one step."""
        self.steps.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        """True when every step worked."""
        return all(ok for _, ok, _ in self.steps)


def run_demo(data_dir: Path, *, serve: bool, console: Console, seed: int = 7, port: int | None = None) -> DemoResult:
    """Set up regions cn and eu, upload a simulated day, check it, then serve (unless ``serve`` is False)."""
    started = time.monotonic()
    result = DemoResult()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    cn_port = port or (8400 if serve else free_port())
    eu_port = free_port()
    endpoints = {"cn": f"http://127.0.0.1:{cn_port}", "eu": f"http://127.0.0.1:{eu_port}"}
    directory = str(data_dir / "region-directory.txt")  # VIN -> home region: provisioning writes, both read
    ports = {"cn": cn_port, "eu": eu_port}
    cn, eu = (
        Region(
            Settings(
                data_dir=data_dir / f"region-{name}",
                region=name,
                port=ports[name],
                region_endpoints=endpoints,
                region_directory=directory,
            )
        )
        for name in ("cn", "eu")
    )
    cn_server = BackgroundServer(cn, port=cn_port).start()
    eu_server = BackgroundServer(eu, port=eu_port).start()
    console.print(f"[bold]Regions up[/]: cn at {cn_server.url}, eu at {eu_server.url}")
    try:
        _run_steps(data_dir, cn, eu, cn_server, eu_server, result, console, seed)
        result.add("whole set-up", True, f"{time.monotonic() - started:.1f} s")
        _report(result, console)
        if serve and result.ok:
            console.print(
                f"\nOpen [bold]{cn_server.url}/[/] (the owner portal; API at {cn_server.url}/api/v1/docs) "
                "and log in with the credentials above; press Ctrl-C to stop."
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        cn_server.stop()
        eu_server.stop()
        cn.close()
        eu.close()
    return result


@dataclass
class _World:
    """What the demo steps share: the regions, their servers, the owner's API client and the cars."""

    data_dir: Path
    cn: Region
    eu: Region
    cn_server: BackgroundServer
    eu_server: BackgroundServer
    result: DemoResult
    console: Console
    seed: int
    api: httpx.Client | None = None
    auth: dict[str, str] | None = None
    cars: list[VehicleIdentity] | None = None
    foreign: VehicleIdentity | None = None
    password: str = ""
    owner_id: int = 0


def _run_steps(
    data_dir: Path,
    cn: Region,
    eu: Region,
    cn_server: BackgroundServer,
    eu_server: BackgroundServer,
    result: DemoResult,
    console: Console,
    seed: int,
) -> None:
    w = _World(data_dir, cn, eu, cn_server, eu_server, result, console, seed)
    _owner_and_cars(w)
    total, first_blob, first_receipt, agent = _simulate_and_upload(w)
    _refusals(w, agent, first_blob, first_receipt)
    _records(w, total)
    _sharing(w)
    _operator(w)


def _owner_and_cars(w: _World) -> None:
    """An owner account, three cars in cn and one in eu, pairing over the API, a lasting location opt-in."""
    password = w.password = secrets.token_urlsafe(12)
    w.owner_id = w.cn.accounts.register(DEMO_EMAIL, password, "Demo Owner").id
    w.result.add("owner account", True, f"{DEMO_EMAIL} / {password}")

    vins = fleet_vins(4, w.seed)
    w.cars = [provision(w.cn, vin, w.data_dir / "vehicles") for vin in vins[:3]]
    w.foreign = provision(w.eu, vins[3], w.data_dir / "vehicles")
    w.result.add("provisioning", True, f"3 vehicles in cn ({', '.join(vins[:3])}), 1 in eu ({vins[3]})")

    w.api = httpx.Client(base_url=w.cn_server.url, timeout=60)
    r = w.api.post("/api/v1/auth/login", json={"email": DEMO_EMAIL, "password": password})
    w.auth = {"Authorization": f"Bearer {r.json()['token']}"}
    claimed = [
        w.api.post(
            "/api/v1/vehicles/claim", headers=w.auth, json={"vin": c.vin, "pairing_code": c.pairing_code}
        ).status_code
        for c in w.cars
    ]
    w.result.add("pairing", claimed == [201, 201, 201], f"claim answers {claimed}")

    # The owner opted in to location (coarse) for route history when buying the cars, before the simulated day.
    bought = int((datetime.now(UTC) - timedelta(days=3)).timestamp() * 1000)
    for c in w.cars:
        w.cn.consents.decide(
            c.vin,
            1,
            "location",
            enabled=True,
            purpose="route history in my portal",
            ends_ms=bought + 365 * 86_400_000,
            lasting=True,
            at_ms=bought,
        )
    w.result.add("consent", True, "location (coarse H3 cells) opted in, lasting, 1 year; biometrics stay in the car")


def _simulate_and_upload(w: _World) -> tuple[int, bytes, dict[str, Any], VehicleAgent]:
    """Simulate yesterday for each car and upload it through the car pipeline, with a progress bar."""
    assert w.cars is not None
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    days = [simulate_day(car.vin, w.seed + i, day, incident=(i == 0)) for i, car in enumerate(w.cars)]
    samples = sum(d.samples for d in days)
    w.result.add("simulation", True, f"{samples:,} samples over {sum(d.table.num_rows for d in days):,} instants")

    agents = [VehicleAgent(c, w.data_dir / "vehicles" / c.vin, w.cn_server.url) for c in w.cars]
    total = 0
    for a, d in zip(agents, days, strict=True):
        a.fetch_policy()
        total += a.process(d.table, BATCH_SECONDS) + a.finish()
    first_blob = agents[0].pending()[0].read_bytes()
    first_receipt: dict[str, Any] = {}
    t0 = time.monotonic()
    uploaded = 0
    with Progress(
        TextColumn("uploading"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=w.console,
        transient=True,
    ) as bar:
        task = bar.add_task("upload", total=total)
        for a in agents:
            while a.pending():
                got = a.upload_pending(limit=20)
                if a is agents[0] and uploaded == 0:
                    first_receipt = got[0]
                uploaded += len(got)
                bar.advance(task, len(got))
    secs = time.monotonic() - t0
    w.result.add(
        "upload over HTTP", uploaded == total, f"{uploaded}/{total} batches, {samples / secs / 1e6:.2f} M samples/s"
    )
    return total, first_blob, first_receipt, agents[0]


def _refusals(w: _World, agent: VehicleAgent, first_blob: bytes, first_receipt: dict[str, Any]) -> None:
    """The refusals that matter: an identical re-send, a foreign car sent to the wrong region."""
    assert w.foreign is not None
    # The first batch again: the same receipt, nothing stored twice.
    again = agent.upload_one(first_blob)
    w.result.add(
        "re-send gives the same receipt",
        again["log_index"] == first_receipt["log_index"] and again["batch_hash"] == first_receipt["batch_hash"],
        f"log index {again['log_index']}",
    )

    _modified_car(w, agent)

    foreign_agent = VehicleAgent(w.foreign, w.data_dir / "vehicles" / w.foreign.vin, w.cn_server.url)
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    foreign_day = simulate_day(w.foreign.vin, w.seed + 99, day)
    foreign_agent.process(foreign_day.table.slice(0, 600), BATCH_SECONDS)
    try:
        foreign_agent.upload_pending(limit=1)
        w.result.add("foreign vehicle refused (421)", False, "the cn gateway accepted an eu vehicle")
    except UploadRefused as e:
        w.result.add(
            "foreign vehicle refused (421)",
            e.status == 421 and e.body["error"].get("home_region") == "eu",
            f"HTTP {e.status} {e.code}: home region {e.body['error'].get('home_region')}, "
            f"endpoint {e.body['error'].get('endpoint')}",
        )
    foreign_agent.endpoint = w.eu_server.url
    sent_home = foreign_agent.upload_pending()
    w.result.add("foreign vehicle uploads at home", len(sent_home) >= 1, f"{len(sent_home)} batches accepted by eu")


def _modified_car(w: _World, agent: VehicleAgent) -> None:
    """A car whose software ignores the owner's consent sends heart rate: the region refuses it by its own rule."""
    now = int(datetime.now(UTC).timestamp() * 1000)
    t = pa.array([now - 2000, now - 1000], type=TIME_TYPE)
    rogue = pa.table({"t": t, "Vehicle.Driver.HeartRate": pa.array([72, 74], type=pa.uint16())})
    blob = make_batch(
        vin=agent.identity.vin,
        region=agent.identity.region,
        seq=agent.head.seq + 1,
        prev=agent.head.prev,
        table=rogue,
        key=agent.identity.key,
    )
    try:
        agent.upload_one(blob)
        w.result.add("region enforces consent itself", False, "the gateway stored biometrics without consent")
    except UploadRefused as e:
        w.result.add(
            "region enforces consent itself",
            e.status == 403 and e.code == "consent_not_given",
            f"HTTP {e.status} {e.code}: heart rate (biometrics) from a car that ignored the owner's choice",
        )


def _records(w: _World, total: int) -> None:
    """Events, the incident window and its package, the audit log and the transparency log."""
    assert w.api is not None and w.auth is not None and w.cars is not None
    api, auth, vin = w.api, w.auth, w.cars[0].vin
    events = api.get(f"/api/v1/vehicles/{vin}/events", headers=auth).json()
    w.result.add(
        "events recorded in the car",
        any(e["kind"] == "crash" for e in events),
        ", ".join(f"{e['kind']}" for e in reversed(events)),
    )
    crash = next((e for e in events if e["kind"] == "crash"), None)
    incident = _Event(crash["kind"], crash["t_ms"]) if crash else None
    if incident is not None:
        start = incident.t_ms - 30 * 60_000
        r = api.get(
            f"/api/v1/vehicles/{vin}/telemetry",
            headers=auth,
            params={"start": start, "end": incident.t_ms + 60_000, "format": "json"},
        )
        rows = r.json().get("rows", 0) if r.status_code == 200 else 0
        w.result.add(
            "incident window query",
            r.status_code == 200 and rows > 0,
            f"30 min before the {incident.kind}: {rows:,} instants",
        )
        _package_steps(api, auth, vin, incident, w.data_dir, w.result)
    audit = api.get("/api/v1/audit", headers=auth).json()["events"]
    w.result.add("audit log", any(e["action"] == "telemetry.read" for e in audit), f"{len(audit)} entries")
    cp = api.get("/api/v1/log/checkpoint").text
    w.result.add(
        "transparency log",
        cp.splitlines()[1].isdigit() and int(cp.splitlines()[1]) == total,
        f"checkpoint tree size {cp.splitlines()[1]}",
    )


class _Form(HTMLParser):
    """The fields a browser would post from a page's form: checked boxes, hidden and text fields."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        kind = a.get("type", "text")
        if tag != "input" or "name" not in a or kind == "submit":
            return
        if kind in ("checkbox", "radio") and "checked" not in a:
            return
        self.fields.append((a["name"], a.get("value", "on" if kind == "checkbox" else "")))


def _sharing(w: _World) -> None:
    """An insurer's app asks for speed and brakes (OAuth code + PKCE), the owner approves on the consent screen;
    the app reads what was granted, is refused the rest, and stops at once when the owner revokes; a gatekeeper and
    an app abroad are refused as recipients."""
    assert w.api is not None and w.auth is not None and w.cars is not None
    api, auth, vin, region = w.api, w.auth, w.cars[0].vin, w.cn
    redirect = "http://127.0.0.1:9/callback"  # the app's callback: the demo reads the redirect, never follows it
    app, secret = region.apps.register(  # what `carvault apps add` does, then `carvault apps approve`
        name="Demo Insure",
        legal_entity="Demo Insurance Co., Ltd.",
        jurisdiction=region.name,
        contact="dpo@insure.example",
        purposes=["insurance"],
        redirect_uris=[redirect],
    )
    region.apps.decide(app.client_id, "approved", by="demo operator")
    client = OAuth2Client(
        client_id=app.client_id,
        client_secret=secret,
        scope="vss:Vehicle.Speed vss:Vehicle.Chassis.Brake history",
        redirect_uri=redirect,
        code_challenge_method="S256",
        base_url=w.cn_server.url,
        timeout=60,
    )
    verifier = secrets.token_urlsafe(48)
    uri, _ = client.create_authorization_url("/oauth/authorize", code_verifier=verifier, purpose="insurance")
    with httpx.Client(base_url=w.cn_server.url, timeout=60) as browser:
        browser.post("/api/v1/auth/login", json={"email": DEMO_EMAIL, "password": w.password})
        page = browser.get(uri)
        form = _Form()
        form.feed(page.text)
        # The owner picks one of their three cars and narrows: no brake pedal position.
        fields = [(k, v) for k, v in form.fields if not (k == "signal" and v == "Vehicle.Chassis.Brake.PedalPosition")]
        fields = [(k, v) for k, v in fields if k != "vin"] + [("vin", vin), ("decision", "approve")]
        answer = browser.post("/oauth/authorize", data=_form_body(fields))
    location = answer.headers.get("location", "")
    if answer.status_code != 302 or "code=" not in location:
        w.result.add("app authorised (OAuth code + PKCE)", False, f"HTTP {answer.status_code}")
        return
    token = client.fetch_token("/oauth/token", authorization_response=location, code_verifier=verifier)
    w.result.add(
        "app authorised (OAuth code + PKCE)",
        bool(token.get("access_token")),
        f"Demo Insure: {token.get('scope')}, {token.get('expires_in')} s, refresh token rotates",
    )
    batch = api.get(f"/api/v1/vehicles/{vin}/batches", headers=auth).json()["batches"][0]
    window = {"start": batch["t0"], "end": batch["t1"] + 1, "format": "json"}
    app_auth = {"Authorization": f"Bearer {token['access_token']}"}
    path = f"/api/v1/vehicles/{vin}/telemetry"
    inside = api.get(path, headers=app_auth, params={**window, "signals": "Vehicle.Speed"})
    outside = api.get(path, headers=app_auth, params={**window, "signals": "Vehicle.CurrentLocation"})
    w.result.add(
        "app reads what was granted, only that",
        inside.status_code == 200 and outside.status_code == 403 and _code(outside) == "out_of_scope",
        f"speed: {inside.json().get('rows', 0) if inside.status_code == 200 else inside.status_code} instants; "
        f"location: HTTP {outside.status_code} {_code(outside)}",
    )
    grant = next(
        g
        for g in api.get("/api/v1/grants", headers=auth).json()["grants"]
        if (g.get("app") or {}).get("name") == "Demo Insure"
    )
    api.delete(f"/api/v1/grants/{grant['id']}", headers=auth)
    after = api.get(path, headers=app_auth, params={**window, "signals": "Vehicle.Speed"})
    w.result.add("owner revokes: the next read fails", after.status_code == 401, f"HTTP {after.status_code}")
    refused = []
    for name, where, gatekeeper in (("Giant Platform", region.name, True), ("Overseas Analytics", "eu", False)):
        other, _ = region.apps.register(
            name=name,
            legal_entity=f"{name} Inc.",
            jurisdiction=where,
            contact="legal@other.example",
            purposes=["research"],
            redirect_uris=[redirect],
            gatekeeper=gatekeeper,
        )
        region.apps.decide(other.client_id, "approved", by="demo operator")
        try:
            region.grants.create(
                w.owner_id,
                kind="app",
                client_id=other.client_id,
                vins=[vin],
                signals=["Vehicle.Speed"],
                purpose="research",
            )
            refused.append(f"{name}: accepted")
        except CarVaultError as e:
            refused.append(f"{name}: {e.code}")
    w.result.add(
        "gatekeeper and recipient abroad refused",
        refused == ["Giant Platform: gatekeeper_refused", "Overseas Analytics: cross_border_transfer"],
        "; ".join(refused),
    )


def _operator(w: _World) -> None:
    """The operator's duties (issue 11): a DPO logs in with a second factor, answers the owner's complaint,
    runs a dry-run purge and downloads the annual report; the public data sheet describes the data."""
    import pyotp

    assert w.api is not None and w.auth is not None
    api = w.api
    password = secrets.token_urlsafe(12)
    _, totp_secret = w.cn.staff.create("dpo", password, "dpo", display_name="Data protection officer")
    r = api.post(
        "/api/v1/admin/session", json={"username": "dpo", "password": password, "code": pyotp.TOTP(totp_secret).now()}
    )
    if r.status_code != 200:
        w.result.add("operator logs in with a second factor", False, r.text[:200])
        return
    staff = {"Authorization": f"Bearer {r.json()['token']}"}
    w.result.add("operator logs in with a second factor", True, "DPO: password + TOTP code; 30 min idle session")
    filed = api.post(
        "/api/v1/rights-requests",
        headers=w.auth,
        json={"kind": "complaint", "details": "Why is my location kept for a year?"},
    ).json()
    api.post(f"/api/v1/admin/rights-requests/{filed['id']}/start", headers=staff)
    api.post(
        f"/api/v1/admin/rights-requests/{filed['id']}/complete",
        headers=staff,
        json={"outcome": "Explained: the location track is kept 365 days for your route history; you can stop it."},
    )
    seen = api.get(f"/api/v1/rights-requests/{filed['id']}", headers=w.auth).json()
    w.result.add(
        "owner's complaint answered by the rights desk",
        seen.get("status") == "done",
        f"request {filed['id']}: {seen.get('status')}, deadline {_day(seen.get('deadline_ms'))}",
    )
    run = api.post("/api/v1/admin/retention/runs", headers=staff, json={"dry_run": True})
    w.result.add(
        "retention purge (dry run)",
        run.status_code == 201 and run.json()["status"] == "done",
        f"run {run.json().get('id')}: signed purge record" if run.status_code == 201 else run.text[:200],
    )
    year = datetime.now(UTC).year
    report = api.get(f"/api/v1/admin/reports/annual/{year}", headers=staff)
    pdf = api.get(f"/api/v1/admin/reports/annual/{year}.pdf", headers=staff, params={"lang": "zh-CN"})
    ok = report.status_code == 200 and pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    if ok:
        (w.data_dir / f"annual-report-{year}.json").write_bytes(report.content)
        (w.data_dir / f"annual-report-{year}-zh-CN.pdf").write_bytes(pdf.content)
    w.result.add(
        "annual report from the region's own records",
        ok,
        f"JSON and Chinese PDF ({len(pdf.content):,} bytes) → {w.data_dir}/annual-report-{year}-zh-CN.pdf"
        if ok
        else (report.text if report.status_code != 200 else pdf.text)[:200],
    )
    sheet = api.get("/api/v1/data-sheet")
    w.result.add(
        "Data Act data sheet published",
        sheet.status_code == 200,
        f"{len(sheet.content):,} bytes of JSON at /api/v1/data-sheet, page at /data-sheet",
    )


def _day(ms: Any) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat() if isinstance(ms, int) else "?"


def _form_body(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True)
class _Event:
    kind: str
    t_ms: int


def _package_steps(
    api: httpx.Client, auth: dict[str, str], vin: str, incident: object, data_dir: Path, result: DemoResult
) -> None:
    """Save a checkpoint, request the incident package for the event, verify it offline."""
    import json

    from carvault.verify.package import verify_package

    note = api.get("/api/v1/log/checkpoint").text
    saved = api.post("/api/v1/log/saved-checkpoints", headers=auth, json={"note": note})
    (data_dir / "saved-checkpoint.txt").write_text(note)
    result.add("owner keeps a checkpoint", saved.status_code == 201, f"tree size {saved.json().get('tree_size')}")
    t0 = time.monotonic()
    r = api.post(
        f"/api/v1/vehicles/{vin}/packages",
        headers=auth,
        json={
            "event_time": incident.t_ms,
            "event_kind": incident.kind,  # type: ignore[attr-defined]
            "minutes_before": 30,
            "minutes_after": 1,
        },
    )
    built = time.monotonic() - t0
    if r.status_code != 201:
        result.add("incident package", False, r.text[:200])
        return
    pkg = data_dir / f"incident-{vin}.zip"
    pkg.write_bytes(api.get(r.json()["download"], headers=auth).content)
    trust = data_dir / "region-cn-trust.json"
    trust.write_text(json.dumps(api.get("/api/v1/region/trust").json(), indent=1))
    result.add(
        "incident package",
        True,
        f"{r.json()['batches']} batches, {pkg.stat().st_size:,} bytes, built in {built:.2f} s → {pkg}",
    )
    t0 = time.monotonic()
    verdict = verify_package(pkg, saved_checkpoint=note, trust=json.loads(trust.read_text()))
    failed = ", ".join(c.name for c in verdict.failures())
    result.add(
        "offline verification",
        verdict.ok,
        f"{len(verdict.checks)} checks in {time.monotonic() - t0:.2f} s; "
        f"carvault verify {pkg} --trust {trust} --checkpoint {data_dir / 'saved-checkpoint.txt'}"
        if verdict.ok
        else f"failed: {failed}",
    )


def _report(result: DemoResult, console: Console) -> None:
    t = Table(title="CarVault demo")
    t.add_column("step")
    t.add_column("ok")
    t.add_column("detail")
    for name, ok, detail in result.steps:
        t.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]", detail)
    console.print(t)
