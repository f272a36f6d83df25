"""Portability end to end over HTTP between two real deployments, each with its own keys.

Region A serves a simulated vehicle that uploads real signed batches; its owner asks for a transfer; the recipient
fetches the bundle once with the one-time token (a second fetch is 401); region B's owner imports it over B's API
(every batch re-verified, stored with its exact bytes, logged in B, readable through B's telemetry API); a bundle
with one byte changed is refused whole and B stores nothing. The CLI verifies the bundle offline and imports it
into a third data folder.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from carvault.access.packages import trust_document
from carvault.cli import app as cli
from carvault.compliance.consent import default_on
from carvault.compliance.sharing import NEVER_SHAREABLE
from carvault.provisioning import provision
from carvault.region import Region
from carvault.server import BackgroundServer, free_port
from carvault.settings import Settings
from carvault.signals import catalogue
from carvault.store.metadata import BatchRecord, ImportedBundle, Vehicle
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, vin_for

pytestmark = pytest.mark.slow

PLAIN = [s.path for s in catalogue() if default_on(s.category) and s.category not in NEVER_SHAREABLE]
CABIN = [s.path for s in catalogue() if s.category == "cabin"]
RECIPIENT = {"name": "Second Operator", "legal_entity": "Second Operator Ltd", "jurisdiction": "cn"}


@dataclass
class Deployment:
    """One region deployment with a server and an HTTP client."""

    region: Region
    http: httpx.Client
    owner: OwnerClient


@dataclass
class Two:
    """Region A with the vehicle's data, region B to import into."""

    a: Deployment
    b: Deployment
    ident: VehicleIdentity
    folder: Path


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    folder = tmp_path_factory.mktemp("portability")
    regions = [Region(Settings(data_dir=folder / name, region="cn", port=free_port())) for name in ("a", "b")]
    try:
        with (
            BackgroundServer(regions[0], port=regions[0].settings.port) as sa,
            BackgroundServer(regions[1], port=regions[1].settings.port) as sb,
            httpx.Client(base_url=sa.url, timeout=60) as ha,
            httpx.Client(base_url=sb.url, timeout=60) as hb,
        ):
            ident = provision(regions[0], vin_for(41), folder / "vehicles")
            agent = VehicleAgent(ident, folder / "vehicles" / ident.vin, sa.url)
            owner_a = make_owner(ha, "alice@example.com")
            claim = {"vin": ident.vin, "pairing_code": ident.pairing_code}
            assert ha.post("/api/v1/vehicles/claim", headers=owner_a.headers, json=claim).status_code == 201
            agent.record(drive_table(BASE_MS, seconds=120, paths=PLAIN), batch_seconds=60)  # seq 1, 2
            agent.record(drive_table(BASE_MS + 120_000, seconds=60, paths=PLAIN + CABIN), batch_seconds=60)  # 3
            agent.record(drive_table(BASE_MS + 180_000, seconds=120, paths=PLAIN), batch_seconds=60)  # seq 4, 5
            assert len(agent.upload_pending()) == 5
            owner_b = make_owner(hb, "alice@example.com")
            origins = regions[1].settings.data_dir / "imports" / "origins"  # B's operator accepts A's bundles
            origins.mkdir(parents=True)
            (origins / "a.json").write_text(json.dumps(trust_document(regions[0])))
            yield Two(Deployment(regions[0], ha, owner_a), Deployment(regions[1], hb, owner_b), ident, folder)
    finally:
        for r in regions:
            r.close()


@pytest.fixture(scope="module")
def fetched(two: Two) -> tuple[Path, dict]:
    """The owner asks A for a transfer; the recipient fetches the bundle with the one-time token."""
    a = two.a
    r = a.http.post(
        f"/api/v1/vehicles/{two.ident.vin}/portability", headers=a.owner.headers, json={"recipient": RECIPIENT}
    )
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["batches"] == 4 and meta["excluded"] == 1 and meta["fetch_url"] == f"/api/v1/portability/{meta['id']}"
    recipient = {"Authorization": f"Bearer {meta['token']}"}
    # The token does nothing but fetch its bundle.
    assert a.http.get(f"/api/v1/vehicles/{two.ident.vin}", headers=recipient).json()["error"]["code"] == "out_of_scope"
    got = a.http.get(meta["fetch_url"], headers=recipient)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/zip"
    path = two.folder / "bundle.zip"
    path.write_bytes(got.content)
    return path, meta


def test_second_fetch_is_refused_and_the_owner_sees_who_fetched(two: Two, fetched: tuple[Path, dict]) -> None:
    _, meta = fetched
    again = two.a.http.get(meta["fetch_url"], headers={"Authorization": f"Bearer {meta['token']}"})
    assert again.status_code == 401 and again.json()["error"]["code"] == "unauthenticated"
    events = two.a.http.get("/api/v1/audit", headers=two.a.owner.headers, params={"action": "portability.fetch"})
    (event,) = [e for e in events.json()["events"] if e["detail"]["bundle_id"] == meta["id"]]
    assert event["actor"] == "recipient:Second Operator" and event["detail"]["bundle_id"] == meta["id"]
    listed = two.a.http.get(f"/api/v1/vehicles/{two.ident.vin}/portability", headers=two.a.owner.headers).json()
    assert listed[0]["fetched_ms"] is not None and "token" not in listed[0]
    # The portal's access log shows the fetch, named, in both languages.
    session = two.a.http.post(
        "/api/v1/auth/login", json={"email": two.a.owner.email, "password": two.a.owner.password}
    ).json()["token"]
    for lang, text in (("en", "Portability bundle fetched by the recipient"), ("zh-CN", "接收方取走可携带数据包")):
        page = two.a.http.get("/access", cookies={"carvault_session": session, "carvault_lang": lang})
        assert page.status_code == 200 and text in page.text and "Second Operator" in page.text, lang
    two.a.http.cookies.clear()


def test_recipient_abroad_is_a_cross_border_transfer(two: Two) -> None:
    r = two.a.http.post(
        f"/api/v1/vehicles/{two.ident.vin}/portability",
        headers=two.a.owner.headers,
        json={"recipient": {**RECIPIENT, "jurisdiction": "eu"}},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_border_transfer"
    gate = {**RECIPIENT, "gatekeeper": True}
    r = two.a.http.post(
        f"/api/v1/vehicles/{two.ident.vin}/portability", headers=two.a.owner.headers, json={"recipient": gate}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "gatekeeper_refused"


def counts(region: Region) -> tuple[int, int, int]:
    with region.db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Vehicle)) or 0,
            s.scalar(select(func.count()).select_from(BatchRecord)) or 0,
            s.scalar(select(func.count()).select_from(ImportedBundle)) or 0,
        )


def post_bundle(d: Deployment, data: bytes, code: str = "") -> httpx.Response:
    headers = {**d.owner.headers, "Content-Type": "application/zip", "CarVault-Import-Code": code}
    return d.http.post("/api/v1/portability/import", headers=headers, content=data)


def test_tampered_bundle_is_refused_whole_by_b(two: Two, fetched: tuple[Path, dict]) -> None:
    path, _ = fetched
    with zipfile.ZipFile(path) as z:
        files = {i.filename: z.read(i.filename) for i in z.infolist()}
    batch = bytearray(files["batches/000000000002.cvb"])
    batch[len(batch) // 2] ^= 0x01
    files["batches/000000000002.cvb"] = bytes(batch)
    bad = two.folder / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    before = counts(two.b.region), two.b.region.log.size, sorted((two.b.region.settings.data_dir).rglob("*.zip"))
    r = post_bundle(two.b, bad.read_bytes())
    assert r.status_code == 422 and r.json()["error"]["code"] == "bundle_rejected", r.text
    assert "batch signatures" in {f["check"] for f in r.json()["error"]["failed"]} or "files match the manifest" in {
        f["check"] for f in r.json()["error"]["failed"]
    }
    after = counts(two.b.region), two.b.region.log.size, sorted((two.b.region.settings.data_dir).rglob("*.zip"))
    assert after == before  # nothing stored, nothing logged, no file kept
    r = post_bundle(two.b, b"PK\x03\x04 not really a zip")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bundle_unreadable"
    r = two.b.http.post("/api/v1/portability/import", headers=two.b.owner.headers, content=b"{}")
    assert r.status_code == 415


def test_b_imports_verifies_and_serves_the_data(two: Two, fetched: tuple[Path, dict]) -> None:
    path, meta = fetched
    r = post_bundle(two.b, path.read_bytes(), meta["import_code"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["added"], body["batches"], body["excluded"], body["origin_region"]) == (4, 4, 1, "cn")
    assert all(c["ok"] is not False for c in body["checks"])
    assert {"batch signatures", "log inclusion", "hash chain", "vehicle log key"} <= {
        c["check"] for c in body["checks"]
    }
    vin, b = two.ident.vin, two.b
    window = {"start": BASE_MS, "end": BASE_MS + 300_000, "signals": "Vehicle.Speed"}
    got = b.http.get(f"/api/v1/vehicles/{vin}/telemetry", headers=b.owner.headers, params=window)
    want = two.a.http.get(f"/api/v1/vehicles/{vin}/telemetry", headers=two.a.owner.headers, params=window)
    assert got.status_code == 200, got.text
    a_json, b_json = want.json(), got.json()
    left_out = range(BASE_MS + 120_000, BASE_MS + 180_000)
    kept = [i for i, t in enumerate(a_json["t"]) if t not in left_out]
    assert b_json["rows"] == 2400 and a_json["rows"] == 3000
    assert b_json["t"] == [a_json["t"][i] for i in kept]
    assert b_json["signals"]["Vehicle.Speed"] == [a_json["signals"]["Vehicle.Speed"][i] for i in kept]
    batches = b.http.get(f"/api/v1/vehicles/{vin}/batches", headers=b.owner.headers).json()
    assert [x["seq"] for x in batches["batches"]] == [1, 2, 4, 5]
    assert b.region.log.size == 4  # B's own log now holds them too
    again = post_bundle(b, path.read_bytes(), meta["import_code"])
    assert again.status_code == 201 and again.json()["added"] == 0 and again.json()["duplicate"] is True
    assert counts(b.region) == (1, 4, 1) and b.region.log.size == 4


def test_cli_verifies_offline_and_imports_into_a_data_folder(two: Two, fetched: tuple[Path, dict]) -> None:
    path, meta = fetched
    trust = two.folder / "trust-a.json"
    trust.write_text(json.dumps(two.a.http.get("/api/v1/region/trust").json()))
    runner = CliRunner()
    ok = runner.invoke(cli, ["portability", "verify", str(path), "--trust", str(trust)])
    assert ok.exit_code == 0, ok.output
    assert "batch signatures" in ok.output and "FAILED" not in ok.output
    c_dir = two.folder / "c"
    with Region(Settings(data_dir=c_dir, region="cn")) as c:
        c.accounts.register("carol@example.com", "correct horse battery")
    args = ["portability", "import", str(path), "--data-dir", str(c_dir), "--region", "cn"]
    args += ["--import-code", meta["import_code"]]
    out = runner.invoke(cli, [*args, "--owner", "carol@example.com", "--trust", str(trust)])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())  # rich wraps long lines
    assert "4 of 4 batches added" in said and "anchored by the trust file" in said
    tampered = two.folder / "cli-bad.zip"
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(tampered, "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            out.writestr(info.filename, data.replace(b"BEGIN CERTIFICATE", b"BEGIN CERTIFICATF", 1))
    refused = runner.invoke(cli, ["portability", "verify", str(tampered), "--trust", str(trust)])
    assert refused.exit_code == 1 and "FAILED" in refused.output
    again = runner.invoke(cli, [*args, "--owner", "carol@example.com", "--trust", str(trust)])
    assert again.exit_code == 0 and "0 of 4 batches added" in " ".join(again.output.split())  # nothing new
    bad_args = ["portability", "import", str(tampered), "--data-dir", str(c_dir), "--owner", "carol@example.com"]
    bad_args += ["--import-code", meta["import_code"]]
    refused = runner.invoke(cli, bad_args)
    assert refused.exit_code == 1 and "bundle_rejected" in refused.output
    nobody = runner.invoke(cli, [*args, "--owner", "nobody@example.com"])
    assert nobody.exit_code == 1 and "not_found" in nobody.output
    with Region(Settings(data_dir=c_dir, region="cn")) as c:
        assert counts(c) == (1, 4, 1)
        speed = c.telemetry.window(two.ident.vin, BASE_MS, BASE_MS + 120_000, [catalogue()["Vehicle.Speed"]])
        assert speed.num_rows == 1200


def test_portal_page_prepares_a_transfer_and_shows_the_code_once(two: Two) -> None:
    base = str(two.a.http.base_url)
    with httpx.Client(base_url=base, timeout=60) as browser:
        token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text)
        assert token is not None
        form = {"email": two.a.owner.email, "password": two.a.owner.password, "csrf_token": token[1], "next": "/"}
        assert browser.post("/login", data=form).status_code == 303
        for lang, title in (("en", "Move my data to another company"), ("zh-CN", "把我的数据转给另一家公司")):
            browser.cookies.set("carvault_lang", lang)
            page = browser.get("/portability")
            assert page.status_code == 200 and title in page.text, lang
        browser.cookies.set("carvault_lang", "en")
        page = browser.get("/portability")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        ask = {"csrf_token": csrf[1], "vin": two.ident.vin, **RECIPIENT, "confirm": "on"}
        abroad = browser.post("/portability", data={**ask, "jurisdiction": "eu"})
        assert abroad.status_code == 403 and "cross-border" in abroad.text
        unconfirmed = browser.post("/portability", data={k: v for k, v in ask.items() if k != "confirm"})
        assert unconfirmed.status_code == 400
        made = browser.post("/portability", data=ask)
        assert made.status_code == 201 and "The copy is ready" in made.text
        code = re.search(r'id="token">([^<]+)<', made.text)
        assert code is not None
        again = browser.get("/portability")
        assert code[1] not in again.text and "Second Operator" in again.text  # the code is shown once only
    bundle = re.search(r"/api/v1/portability/([A-Za-z0-9_-]{24})", made.text)
    assert bundle is not None
    got = two.a.http.get(f"/api/v1/portability/{bundle[1]}", headers={"Authorization": f"Bearer {code[1]}"})
    assert got.status_code == 200 and got.content[:2] == b"PK"
