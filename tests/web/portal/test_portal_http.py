"""The portal over plain HTTP (no browser): log-in redirects, CSRF, security headers, rate limits, message
catalogues, the vendored chart library, and the API routes the portal added (timeline, route, exports)."""

from __future__ import annotations

import hashlib
import json
import re
import string
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from carvault.access.gpx import to_gpx
from carvault.region import Region
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web import i18n
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in

WEB = Path(i18n.__file__).parent
ROOT = Path(__file__).resolve().parents[3]


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def _login(http: httpx.Client, o: OwnerClient) -> None:
    token = _token(http.get("/login").text)
    r = http.post("/login", data={"email": o.email, "password": o.password, "csrf_token": token, "next": "/vehicles"})
    assert r.status_code == 303 and r.headers["location"] == "/vehicles", r.text


def test_pages_need_a_login_and_say_where_to_come_back(http: httpx.Client) -> None:
    for path in ("/", "/vehicles", "/vehicles/LRWTEST0000000001", "/access", "/deletion", "/account"):
        r = http.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login"), path
    assert http.get("/vehicles").headers["location"] == "/login?next=/vehicles"


def test_security_headers_on_pages(http: httpx.Client) -> None:
    r = http.get("/login")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "form-action 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "same-origin"
    cookie = r.headers["set-cookie"]
    assert "carvault_presession=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    # No inline script or style anywhere in the page (the CSP would block them anyway).
    assert "<script>" not in r.text and "style=" not in r.text and "onclick" not in r.text


def test_forms_need_the_csrf_token_of_this_browser(http: httpx.Client, owner: OwnerClient) -> None:
    form = {"email": owner.email, "password": owner.password}
    r = http.post("/login", data=form)
    assert r.status_code == 403 and "<h1>" in r.text  # an HTML page, not JSON
    token = _token(http.get("/login").text)
    with httpx.Client(base_url=str(http.base_url)) as other:  # another browser's token does not fit this one
        other_token = _token(other.get("/login").text)
    assert http.post("/login", data={**form, "csrf_token": other_token}).status_code == 403
    r = http.post("/login", data={**form, "csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = http.post("/login", data={**form, "csrf_token": token, "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/vehicles"  # never off-site
    session = r.headers["set-cookie"]
    assert "carvault_session=" in session and "HttpOnly" in session and "SameSite=lax" in session
    # Logged in, the token is bound to the session: the pre-login token no longer works.
    assert http.post("/logout", data={"csrf_token": token}).status_code == 403
    assert (
        http.post(
            "/account/password",
            data={"current_password": owner.password, "new_password": "x" * 12, "new_password_confirm": "x" * 12},
        ).status_code
        == 403
    )
    page = http.get("/account")
    assert page.status_code == 200 and owner.email in page.text
    assert http.post("/logout", data={"csrf_token": _token(page.text)}).status_code == 303
    assert http.get("/vehicles").status_code == 303


def test_portal_log_in_is_rate_limited(http: httpx.Client, owner: OwnerClient) -> None:
    token = _token(http.get("/login").text)
    for _ in range(10):
        r = http.post("/login", data={"email": owner.email, "password": "not the password", "csrf_token": token})
        assert r.status_code == 401 and "Wrong email or password" in r.text
    r = http.post("/login", data={"email": owner.email, "password": owner.password, "csrf_token": token})
    assert (
        r.status_code == 429
        and "Too many failed log-ins" in r.text
        and "carvault_session" not in r.headers.get("set-cookie", "")
    )


def test_language_from_the_browser_or_the_switch(http: httpx.Client) -> None:
    r = http.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert '<html lang="zh-CN">' in r.text and "登录" in r.text
    assert '<html lang="en">' in http.get("/login", headers={"Accept-Language": "fr, en;q=0.5"}).text
    token = _token(http.get("/login").text)
    r = http.post("/language", data={"lang": "zh-CN", "next": "/login", "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert '<html lang="zh-CN">' in http.get("/login", headers={"Accept-Language": "en"}).text
    assert http.post("/language", data={"lang": "xx", "csrf_token": token}).status_code == 400


def test_negotiation() -> None:
    assert i18n.negotiate("zh-CN,zh;q=0.9") == "zh-CN"
    assert i18n.negotiate("zh-Hans") == "zh-CN" and i18n.negotiate("zh-TW") == "en"
    assert i18n.negotiate("de;q=1, en;q=0.1, zh;q=0.5") == "zh-CN"
    assert i18n.negotiate(None) == "en" and i18n.negotiate("en-US") == "en"
    assert i18n.timezone("Nowhere/Nothing", "cn")[0] == "Asia/Shanghai"


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_message_catalogues_are_complete_and_consistent() -> None:
    en, zh = i18n.messages("en"), i18n.messages("zh-CN")
    assert set(en) == set(zh)
    for key in en:
        assert _fields(en[key]) == _fields(zh[key]), key
    used = set()
    for path in list((WEB / "templates").glob("*.html")) + list((WEB / "views").glob("*.py")):
        text = path.read_text()
        used |= set(re.findall(r"""\bt\(\s*['"]([a-z_]+\.[a-z_0-9.]+)['"]""", text))
    missing = sorted(k for k in used if k not in en and not k.endswith("."))
    assert not missing, missing
    # Keys built at run time: every value they can take has a message.
    from carvault.access.jobs import FORMATS, STATUSES
    from carvault.signals import CATEGORIES
    from carvault.web.views.base import NOTICES

    dynamic = (
        [f"notice.{n}" for n in NOTICES]
        + [f"job.{s}" for s in STATUSES]
        + [f"format.{f}" for f in FORMATS]
        + [f"category.{c}" for c in CATEGORIES]
        + [f"purpose.{c}" for c in CATEGORIES]
        + [f"privacy.{p}" for p in ("technical", "personal", "sensitive", "important")]
        + [f"status.{s}" for s in ("collecting", "off", "in_car_only")]
        + [f"deletion.status.{s}" for s in ("scheduled", "pending", "completed", "held", "cancelled")]
        + [f"event.{k}" for k in ("hard_braking", "abs", "aeb", "crash")]
        + [f"field.{f}" for f in ("from", "to", "ends", "since", "until")]
    )
    assert not [k for k in dynamic if k not in en]


@pytest.mark.parametrize("folder", [WEB / "static" / "vendor", ROOT / "tests" / "web" / "portal" / "vendor"])
def test_vendored_browser_code_matches_its_lock_file(folder: Path) -> None:
    manifest = json.loads((folder / "VENDOR.json").read_text())
    lock = json.loads((ROOT / "frontend" / "package-lock.json").read_text())
    pinned = json.loads((ROOT / "frontend" / "package.json").read_text())["dependencies"]
    assert manifest["packages"]
    for name, pkg in manifest["packages"].items():
        locked = lock["packages"][f"node_modules/{name}"]
        assert pkg["version"] == locked["version"] == pinned[name] and pkg["integrity"] == locked["integrity"]
        for file, meta in pkg["files"].items():
            data = (folder / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], file


def test_static_files_are_served(http: httpx.Client) -> None:
    r = http.get("/static/vendor/uPlot.iife.min.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"] and b"uPlot" in r.content
    assert http.get("/static/portal.js").status_code == 200
    assert http.get("/static/portal.css").headers["content-type"].startswith("text/css")


@pytest.fixture
def uploaded(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity, agent: VehicleAgent
) -> OwnerClient:
    opt_in(region, vehicle.vin)  # the table carries location and biometrics: the gateway checks consent
    agent.record(drive_table(seconds=240), batch_seconds=60)
    agent.upload_pending()
    assert (
        http.post(
            "/api/v1/vehicles/claim",
            headers=owner.headers,
            json={"vin": vehicle.vin, "pairing_code": vehicle.pairing_code},
        ).status_code
        == 201
    )
    return owner


def test_timeline_and_route_api(
    http: httpx.Client, uploaded: OwnerClient, vehicle: VehicleIdentity, region: Region
) -> None:
    base = f"/api/v1/vehicles/{vehicle.vin}"
    tl = http.get(f"{base}/timeline", headers=uploaded.headers).json()
    assert tl["data_start_ms"] <= BASE_MS and tl["end_ms"] == tl["data_end_ms"]
    (drive,) = tl["drives"]  # the factory's car never stops
    assert drive["start_ms"] == BASE_MS and drive["duration_s"] == pytest.approx(240, abs=1)
    assert drive["top_speed_kmh"] > 0 and drive["distance_m"] > 0
    assert [e.action for e in region.audit.list(uploaded.owner_id, action="timeline.read")]
    window = {"start": BASE_MS, "end": BASE_MS + 60_000}
    gpx = http.get(f"{base}/route", headers=uploaded.headers, params=window)
    assert gpx.headers["content-type"].startswith("application/gpx+xml")
    assert len(ET.fromstring(gpx.content).findall(".//{http://www.topografix.com/GPX/1/1}trkpt")) == 60
    geo = http.get(f"{base}/route", headers=uploaded.headers, params={**window, "format": "geojson"}).json()
    assert geo["geometry"]["type"] == "LineString" and len(geo["geometry"]["coordinates"]) == 60
    bad = http.get(f"{base}/timeline", headers=uploaded.headers, params={"start": 0, "end": 400 * 86_400_000})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "window_too_long"  # issue 13: its own code


def test_portal_api_routes_are_the_owners_only(
    http: httpx.Client, uploaded: OwnerClient, vehicle: VehicleIdentity
) -> None:
    job = http.post("/api/v1/exports", headers=uploaded.headers, json={"vin": vehicle.vin, "format": "json"}).json()
    stranger = make_owner(http)
    for vin in (vehicle.vin, "LRWNOSUCHVIN00000"):
        for path in (f"/api/v1/vehicles/{vin}/timeline", f"/api/v1/vehicles/{vin}/route?start=0&end=1"):
            r = http.get(path, headers=stranger.headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        r = http.post("/api/v1/exports", headers=stranger.headers, json={"vin": vin, "format": "csv"})
        assert r.status_code == 404
    for path in (f"/api/v1/exports/{job['id']}", f"/api/v1/exports/{job['id']}/download"):
        assert http.get(path, headers=stranger.headers).status_code == 404
    assert http.delete(f"/api/v1/exports/{job['id']}", headers=stranger.headers).status_code == 404
    assert http.get("/api/v1/exports", headers=stranger.headers).json() == []
    assert http.get(f"/api/v1/vehicles/{vehicle.vin}/timeline").status_code == 401


def test_gpx_splits_segments_at_gaps() -> None:
    t = pa.array([0, 1000, 2000, 200_000, 201_000], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    table = pa.table(
        {
            "t": t,
            "Vehicle.CurrentLocation.Latitude": [22.5, 22.5001, None, 22.6, 22.6001],
            "Vehicle.CurrentLocation.Longitude": [114.0, 114.0001, 114.1, 114.2, 114.2001],
        }
    )
    root = ET.fromstring(to_gpx(table, "a & b <test>"))
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    segments = root.findall(".//g:trkseg", ns)
    assert [len(s.findall("g:trkpt", ns)) for s in segments] == [2, 2]
    assert root.find(".//g:name", ns).text == "a & b <test>"  # type: ignore[union-attr]
