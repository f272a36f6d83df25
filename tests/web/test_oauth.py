"""OAuth 2.0 against the real server on loopback, driven by a real third-party client (authlib's httpx client).

The owner's side of each flow (the consent screen, the device page) is driven with httpx as a logged-in browser
would: GET the page, read its form, POST the decision with the page's CSRF token.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from sqlalchemy import select, update

from carvault.access.accounts import token_hash
from carvault.access.oauth import normal_user_code, oauth_text
from carvault.compliance.sharing import PURPOSES
from carvault.errors import AppNotApproved, CrossBorderTransfer, GatekeeperRefused
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.store.metadata import App, Credential, DeviceAuthorization, Grant, OAuthCode
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.i18n import messages
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS, drive_table, opt_in

REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens: the test reads the redirect, it never follows it
SCOPE = "vss:Vehicle.Speed vss:Vehicle.Chassis.Brake history"
NARROWED_AWAY = "Vehicle.Chassis.Brake.PedalPosition"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FORM = "application/x-www-form-urlencoded"
WINDOW = {"start": BASE_MS, "end": BASE_MS + 60_000}


# --------------------------------------------------------------------------------------------------- setup
@dataclass
class Registered:
    """An app registered (and decided) in the region, with its secret when confidential."""

    client_id: str
    secret: str | None


def register_app(
    region: Region,
    *,
    status: str = "approved",
    confidential: bool = True,
    jurisdiction: str = "cn",
    gatekeeper: bool = False,
    purposes: tuple[str, ...] = ("insurance", "repair"),
    name: str = "Acme Insure",
) -> Registered:
    app, secret = region.apps.register(
        name=name,
        legal_entity="Acme Insurance Co., Ltd.",
        jurisdiction=jurisdiction,
        contact="dpo@acme.example",
        purposes=list(purposes),
        redirect_uris=[REDIRECT],
        gatekeeper=gatekeeper,
        confidential=confidential,
    )
    if status != "pending":
        region.apps.decide(app.client_id, status, by="test")
    return Registered(app.client_id, secret)


def client_for(server: BackgroundServer, app: Registered, scope: str = SCOPE) -> OAuth2Client:
    """The app's own OAuth client (authlib), PKCE with S256."""
    return OAuth2Client(
        client_id=app.client_id,
        client_secret=app.secret,
        scope=scope,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic" if app.secret else "none",
        base_url=server.url,
        timeout=60,
    )


@pytest.fixture
def car(http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity) -> str:
    """The owner's car, claimed (no data: reads answer 200 with no rows); its VIN."""
    pairing = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=pairing).status_code == 201
    return vehicle.vin


@pytest.fixture
def data(region: Region, car: str, vehicle: VehicleIdentity, agent: VehicleAgent) -> str:
    """The owner's car with a minute of every (non-camera) signal uploaded; its VIN."""
    opt_in(region, vehicle.vin)
    agent.record(drive_table(seconds=60), batch_seconds=60)
    assert len(agent.upload_pending()) == 1
    return vehicle.vin


@pytest.fixture
def browser(server: BackgroundServer, owner: OwnerClient) -> Iterator[httpx.Client]:
    """The owner's browser: logged in with the session cookie, following no redirects."""
    with httpx.Client(base_url=server.url, timeout=60) as b:
        r = b.post("/api/v1/auth/login", json={"email": owner.email, "password": owner.password})
        assert r.status_code == 200, r.text
        yield b


@pytest.fixture
def app(region: Region) -> Registered:
    return register_app(region)


class FormReader(HTMLParser):
    """The consent form's fields as a browser would send them (checked boxes, hidden fields, date values)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self.offered: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag != "input" or "name" not in a:
            return
        kind = a.get("type", "text")
        if a["name"] == "signal":
            self.offered.append(a["value"])
        if kind in ("checkbox", "radio") and "checked" not in a:
            return
        self.fields.append((a["name"], a.get("value", "on" if kind == "checkbox" else "")))


def body(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Form pairs as httpx sends them (repeated names as lists)."""
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def consent_form(page: httpx.Response) -> FormReader:
    assert page.status_code == 200, page.text[:2000]
    reader = FormReader()
    reader.feed(page.text)
    return reader


def start(client: OAuth2Client, browser: httpx.Client, **params: str) -> tuple[httpx.Response, str, str]:
    """The app sends the owner to the consent screen; (the page, the PKCE verifier, the state)."""
    verifier = generate_token(48)
    uri, state = client.create_authorization_url("/oauth/authorize", code_verifier=verifier, **params)
    return browser.get(uri), verifier, state


def decide(
    browser: httpx.Client,
    page: httpx.Response,
    decision: str = "approve",
    *,
    untick: tuple[str, ...] = (),
    extra: list[tuple[str, str]] | None = None,
    replace: dict[str, str] | None = None,
    action: str = "/oauth/authorize",
) -> httpx.Response:
    """The owner's decision on the consent screen, optionally narrowed."""
    form = consent_form(page)
    fields = [(k, (replace or {}).get(k, v)) for k, v in form.fields if not (k == "signal" and v in untick)]
    return browser.post(action, data=body([*fields, *(extra or []), ("decision", decision)]))


def approve(
    client: OAuth2Client, browser: httpx.Client, *, untick: tuple[str, ...] = (), **params: str
) -> dict[str, Any]:
    """The whole authorization code flow with PKCE; the token response."""
    page, verifier, state = start(client, browser, purpose="insurance", **params)
    r = decide(browser, page, untick=untick)
    assert r.status_code == 302, r.text[:2000]
    location = r.headers["location"]
    assert location.startswith(REDIRECT) and parse_qs(urlsplit(location).query)["state"] == [state]
    assert parse_qs(urlsplit(location).query)["iss"] == [str(client.base_url).rstrip("/")]  # RFC 9207
    return dict(client.fetch_token("/oauth/token", authorization_response=location, code_verifier=verifier))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read(http: httpx.Client, vin: str, token: str, signals: str) -> httpx.Response:
    params = {**WINDOW, "signals": signals, "format": "json"}
    return http.get(f"/api/v1/vehicles/{vin}/telemetry", headers=bearer(token), params=params)


def error_of(r: httpx.Response) -> str:
    return str(r.json()["error"]) if r.headers.get("content-type", "").startswith("application/json") else ""


def token_request(http: httpx.Client, app: Registered, **form: str) -> httpx.Response:
    auth = (app.client_id, app.secret) if app.secret else None
    sent = form if app.secret else {**form, "client_id": app.client_id}
    return http.post("/oauth/token", data=sent, auth=auth)


# ------------------------------------------------------------------------------------------ the code flow
def test_pkce_flow_narrowed_by_the_owner_reads_only_what_was_approved(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, data: str
) -> None:
    client = client_for(server, app)
    token = approve(client, browser, untick=(NARROWED_AWAY,))
    assert token["token_type"] == "Bearer" and 3500 <= token["expires_in"] <= 3600
    assert token["refresh_token"] != token["access_token"]
    granted = token["scope"].split()
    assert "vss:Vehicle.Speed" in granted and "history" in granted and "live" not in granted
    assert f"vss:{NARROWED_AWAY}" not in granted and "vss:Vehicle.Chassis.Brake" not in granted
    assert "vss:Vehicle.Chassis.Brake.IsDriverEmergencyBrakingDetected" in granted

    ok = read(http, data, token["access_token"], "Vehicle.Speed")
    assert ok.status_code == 200, ok.text
    assert ok.json()["rows"] == 600
    refused = read(http, data, token["access_token"], NARROWED_AWAY)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "out_of_scope"
    assert refused.json()["error"]["outside"] == [NARROWED_AWAY]
    # The client library's own session carries the token too.
    assert client.get(f"/api/v1/vehicles/{data}").status_code == 200

    with region.db.session() as s:
        creds = list(s.scalars(select(Credential).where(Credential.client_id == app.client_id)))
        grant = s.scalars(select(Grant).where(Grant.client_id == app.client_id)).one()
        codes = list(s.scalars(select(OAuthCode)))
    assert sorted(c.kind for c in creds) == ["access", "refresh"]
    assert {c.token_hash for c in creds} == {token_hash(token["access_token"]), token_hash(token["refresh_token"])}
    assert all(c.grant_id == grant.id and c.family == creds[0].family and c.scope == token["scope"] for c in creds)
    refresh = next(c for c in creds if c.kind == "refresh")
    assert refresh.expires_ms - refresh.created_ms == pytest.approx(30 * 86_400_000, abs=5000)
    assert len(codes) == 1 and codes[0].used_ms is not None and codes[0].grant_id == grant.id
    assert grant.purpose == "insurance" and grant.vins == f'["{data}"]'


def test_public_client_uses_pkce_without_a_secret(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, car: str
) -> None:
    public = register_app(region, confidential=False, name="Wallbox")
    token = approve(client_for(server, public), browser)
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 200


def test_tokens_never_outlive_the_grant(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app)
    page, verifier, _ = start(client, browser, purpose="insurance")
    tomorrow = consent_form(page).fields
    ends = next(v for k, v in tomorrow if k == "ends")
    min_end = re.search(r'name="ends"[^>]*min="([0-9-]+)"', page.text)
    assert min_end and ends
    r = decide(browser, page, replace={"ends": min_end.group(1)})
    token = client.fetch_token("/oauth/token", authorization_response=r.headers["location"], code_verifier=verifier)
    with region.db.session() as s:
        grant = s.scalars(select(Grant).where(Grant.client_id == app.client_id)).one()
        refresh = s.scalars(select(Credential).where(Credential.kind == "refresh")).one()
    assert refresh.expires_ms == grant.expires_ms  # 30 days capped at the grant's end (tomorrow night)
    assert token["expires_in"] <= 3600


def test_the_consent_screen_needs_the_owner_logged_in(server: BackgroundServer, app: Registered) -> None:
    client = client_for(server, app)
    uri, _ = client.create_authorization_url("/oauth/authorize", code_verifier=generate_token(48), purpose="repair")
    with httpx.Client(base_url=server.url) as anonymous:
        r = anonymous.get(uri)
    assert r.status_code == 303
    login = urlsplit(r.headers["location"])
    assert login.path == "/login" and parse_qs(login.query)["next"][0].startswith("/oauth/authorize?")


def test_deny_is_one_click_and_shares_nothing(
    region: Region, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    page, _, state = start(client_for(server, app), browser, purpose="insurance")
    r = browser.post(
        "/oauth/authorize",
        data={
            "csrf_token": dict(consent_form(page).fields)["csrf_token"],
            "oauth_request": dict(consent_form(page).fields)["oauth_request"],
            "decision": "deny",
        },
    )
    assert r.status_code == 302
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == [state] and query["iss"] == [server.url]
    with region.db.session() as s:
        assert s.scalars(select(Grant)).all() == []


def test_the_form_needs_its_csrf_token(browser: httpx.Client, server: BackgroundServer, app: Registered) -> None:
    page, _, _ = start(client_for(server, app), browser, purpose="insurance")
    fields = [(k, v) for k, v in consent_form(page).fields if k != "csrf_token"]
    r = browser.post("/oauth/authorize", data=body([*fields, ("decision", "approve")]))
    assert r.status_code == 403 and "location" not in r.headers


def test_the_owner_can_only_narrow(
    region: Region, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    """Posted extras (a signal not asked for, live, precise location) do not widen the grant."""
    client = client_for(server, app, scope="vss:Vehicle.Speed history")
    page, _, _ = start(client, browser, purpose="insurance")
    extra = [("signal", "Vehicle.Powertrain"), ("live", "on"), ("precise", "on")]
    r = decide(browser, page, extra=extra)
    assert r.status_code == 302 and "code=" in r.headers["location"]
    with region.db.session() as s:
        grant = s.scalars(select(Grant)).one()
    assert grant.signals == '["Vehicle.Speed"]' and not grant.live and not grant.precise_location


def test_owner_choices_become_the_grant(
    region: Region, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(
        server, app, scope="vss:Vehicle.Speed vss:Vehicle.CurrentLocation history live location:precise"
    )
    page, _, _ = start(client, browser, purpose="repair")
    assert 'name="live"' in page.text and 'name="precise"' in page.text
    fields = [(k, v) for k, v in consent_form(page).fields if k not in ("live", "precise", "history")]
    r = browser.post(
        "/oauth/authorize",
        data=body([*fields, ("history", "now"), ("decision", "approve")]),
    )
    assert r.status_code == 302, r.text[:1000]
    with region.db.session() as s:
        grant = s.scalars(select(Grant)).one()
    assert grant.purpose == "repair" and not grant.live and not grant.precise_location
    assert grant.from_ms is not None and abs(grant.from_ms - time.time() * 1000) < 60_000 and grant.to_ms is None


def test_a_grant_needs_a_vehicle_and_a_signal(
    region: Region, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    page, _, _ = start(client_for(server, app), browser, purpose="insurance")
    fields = consent_form(page).fields
    no_car = [(k, v) for k, v in fields if k != "vin"]
    r = browser.post("/oauth/authorize", data=body([*no_car, ("decision", "approve")]))
    assert r.status_code == 400 and "Choose at least one vehicle" in r.text
    no_signal = [(k, v) for k, v in fields if k != "signal"]
    r = browser.post("/oauth/authorize", data=body([*no_signal, ("decision", "approve")]))
    assert r.status_code == 400 and "Choose at least one kind of data" in r.text
    with region.db.session() as s:
        assert s.scalars(select(Grant)).all() == []


# ------------------------------------------------------------------------------------- what the owner sees
class VisibleText(HTMLParser):
    """The page's words a person reads in <main>, leaving out data marked translate="no" (names, paths, VINs)."""

    SKIP = {"script", "style"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []
        self.main = False
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "main":
            self.main = True
        if tag in ("input", "br", "meta", "link", "img"):
            return
        literal = a.get("translate") == "no" or tag in self.SKIP
        self.stack.append((tag, literal or bool(self.stack and self.stack[-1][1])))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break
        if tag == "main":
            self.main = False

    def handle_data(self, text: str) -> None:
        if self.main and not (self.stack and self.stack[-1][1]):
            self.words.extend(re.findall(r"[A-Za-z]{2,}", text))


def test_consent_screen_names_who_what_how_long_and_duties(
    browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app, scope="vss:Vehicle.Speed vss:Vehicle.CurrentLocation history live")
    page, _, _ = start(client, browser, purpose="insurance")
    text = html.unescape(page.text)
    for expected in (
        "Acme Insure",
        "Acme Insurance Co., Ltd.",
        "China",
        "dpo@acme.example",
        "Usage-based insurance or claims",
        "Driving dynamics",
        "Location",
        "Personal",
        "Sensitive personal",
        "Allow live values as they arrive",
        "Approximate area only",
        "Access ends on",
        "Erase the data when it is no longer needed",
        "Never pass the data on to a designated gatekeeper",
        "Use the data only for the purpose shown above",
        car,
    ):
        assert expected in text, expected
    assert "form-action 'self' http://127.0.0.1:9" in page.headers["content-security-policy"]


def test_chinese_consent_screen_has_no_english_ui_text(
    browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(
        server, app, scope="vss:Vehicle.Speed vss:Vehicle.CurrentLocation history live location:precise"
    )
    uri, _ = client.create_authorization_url("/oauth/authorize", code_verifier=generate_token(48), purpose="repair")
    page = browser.get(uri, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert page.status_code == 200 and '<html lang="zh-CN">' in page.text
    reader = VisibleText()
    reader.feed(page.text)
    assert reader.words == []
    for chinese in ("维修保养", "接收方的义务", "授权截止日期", "同意", "拒绝", "中国", "允许读取精确位置"):
        assert chinese in page.text


# ------------------------------------------------------------------------------ refusals before consenting
def test_redirect_uri_mismatch_is_refused_without_redirecting(
    browser: httpx.Client, server: BackgroundServer, app: Registered
) -> None:
    client = client_for(server, app)
    client.redirect_uri = "http://127.0.0.1:9/elsewhere"
    page, _, _ = start(client, browser, purpose="insurance")
    assert page.status_code == 400 and "location" not in page.headers
    assert 'data-error="invalid_request"' in page.text


def test_unknown_client_is_refused_without_redirecting(browser: httpx.Client, server: BackgroundServer) -> None:
    client = client_for(server, Registered("app_nobody", None))
    page, _, _ = start(client, browser, purpose="insurance")
    assert page.status_code == 400 and "location" not in page.headers
    assert 'data-error="invalid_client"' in page.text


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"scope": "vss:Vehicle.Speed calendar"}, "invalid_scope"),
        ({"scope": "history"}, "invalid_scope"),
        ({"scope": "vss:Vehicle.Cabin"}, "invalid_scope"),  # cabin data is never shareable
        ({"scope": "vss:Vehicle.Nowhere"}, "invalid_scope"),
        ({"purpose": "research"}, "invalid_request"),  # not among the app's declared purposes
        ({"purpose": None}, "invalid_request"),  # the app declared two: it must say which
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
    ids=[
        "no-challenge",
        "plain",
        "unknown-token",
        "no-signals",
        "cabin",
        "unknown-path",
        "purpose",
        "no-purpose",
        "rt",
    ],
)
def test_bad_requests_go_back_to_the_app_with_an_oauth_error(
    browser: httpx.Client, server: BackgroundServer, app: Registered, params: dict[str, str | None], error: str
) -> None:
    client = client_for(server, app)
    uri, state = client.create_authorization_url("/oauth/authorize", code_verifier=generate_token(48))
    query = {k: v[0] for k, v in parse_qs(urlsplit(uri).query).items()} | {"purpose": "insurance"}
    for k, v in params.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    r = browser.get("/oauth/authorize", params=query)
    assert r.status_code == 302, r.text[:1500]
    back = parse_qs(urlsplit(r.headers["location"]).query)
    assert r.headers["location"].startswith(REDIRECT) and back["error"] == [error] and back["state"] == [state]
    assert back["iss"] == [server.url]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ({"status": "pending"}, "app_not_approved"),
        ({"status": "suspended"}, "app_not_approved"),
        ({"gatekeeper": True}, "gatekeeper_refused"),
        ({"jurisdiction": "eu"}, "cross_border_transfer"),
    ],
    ids=["pending", "suspended", "gatekeeper", "foreign"],
)
def test_recipients_the_rules_bar_are_refused_at_the_authorization_request(
    region: Region, browser: httpx.Client, server: BackgroundServer, kind: dict[str, Any], code: str
) -> None:
    barred = register_app(region, **kind)
    page, _, state = start(client_for(server, barred), browser, purpose="insurance")
    assert page.status_code == 403 and "location" not in page.headers
    assert f'data-code="{code}"' in page.text and "This app cannot receive your data" in page.text
    back = re.search(r'id="back-to-app" href="([^"]+)"', page.text)
    assert back is not None
    query = parse_qs(urlsplit(html.unescape(back.group(1))).query)
    assert query["error"] == ["access_denied"] and query["carvault_code"] == [code] and query["state"] == [state]


# --------------------------------------------------------------------------------------- token endpoint
def test_pkce_verifier_missing_or_wrong_is_refused(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app)
    for verifier, error in ((None, "invalid_request"), (generate_token(48), "invalid_grant")):
        page, _, _ = start(client, browser, purpose="insurance")
        location = decide(browser, page).headers["location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        r = token_request(http, app, **form, **({"code_verifier": verifier} if verifier else {}))
        assert r.status_code == 400 and r.json()["error"] == error, r.text


def test_token_request_redirect_uri_must_match(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    page, verifier, _ = start(client_for(server, app), browser, purpose="insurance")
    code = parse_qs(urlsplit(decide(browser, page).headers["location"]).query)["code"][0]
    r = token_request(
        http, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "2", code_verifier=verifier
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_wrong_client_secret_is_refused(http: httpx.Client, app: Registered) -> None:
    r = http.post(
        "/oauth/token", data={"grant_type": "authorization_code", "code": "x"}, auth=(app.client_id, "cvs_wrong")
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert http.post("/oauth/token", data={"grant_type": "password"}).json()["error"] == "unsupported_grant_type"
    assert http.post("/oauth/token", content=b"\xff\xfe", headers={"Content-Type": "text/plain"}).status_code == 400


def test_a_code_used_twice_is_refused_and_revokes_its_tokens(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app)
    page, verifier, _ = start(client, browser, purpose="insurance")
    location = decide(browser, page).headers["location"]
    token = client.fetch_token("/oauth/token", authorization_response=location, code_verifier=verifier)
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 200
    code = parse_qs(urlsplit(location).query)["code"][0]
    again = token_request(
        http, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 401
    refresh = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"


def test_an_expired_code_is_refused(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    page, verifier, _ = start(client_for(server, app), browser, purpose="insurance")
    code = parse_qs(urlsplit(decide(browser, page).headers["location"]).query)["code"][0]
    with region.db.session() as s:
        row = s.get(OAuthCode, token_hash(code))
        assert row is not None and 59_000 <= row.expires_ms - int(time.time() * 1000) <= 60_000
        row.expires_ms -= 61_000
    r = token_request(
        http, app, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant" and "expired" in r.json()["error_description"]


def test_refresh_rotates_and_reuse_revokes_the_family(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    first = approve(client_for(server, app), browser)
    r = token_request(http, app, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"  # RFC 6749 §5.1
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and second["scope"] == first["scope"]
    assert read(http, car, second["access_token"], "Vehicle.Speed").status_code == 200
    assert read(http, car, first["access_token"], "Vehicle.Speed").status_code == 200  # access tokens run out alone
    # An attacker replays the first refresh token: refused, and the whole family ends.
    replay = token_request(http, app, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert read(http, car, second["access_token"], "Vehicle.Speed").status_code == 401
    assert read(http, car, first["access_token"], "Vehicle.Speed").status_code == 401
    after = token_request(http, app, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert after.json()["error"] == "invalid_grant"
    with region.db.session() as s:
        grant = s.scalars(select(Grant)).one()
    assert grant.revoked_ms is not None  # and the grant it acted for: the owner sees it ended
    entries = region.audit.list(grant.owner_id, action="grant.revoke")
    assert [e.actor for e in entries] == ["system:oauth"]


def test_refresh_is_bound_to_its_client_and_scope(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    token = approve(client_for(server, app), browser)
    other = register_app(region, name="Other")
    stolen = token_request(http, other, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert stolen.json()["error"] == "invalid_grant"
    wider = token_request(
        http, app, grant_type="refresh_token", refresh_token=token["refresh_token"], scope="vss:Vehicle"
    )
    assert wider.json()["error"] == "invalid_scope"
    ok = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert ok.status_code == 200  # neither refusal spent the token
    assert http.get("/api/v1/vehicles", headers=bearer(token["refresh_token"])).status_code == 401


def test_suspending_the_app_stops_refresh_and_reads(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    token = approve(client_for(server, app), browser)
    region.apps.decide(app.client_id, "suspended", by="test")
    r = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
    assert r.json()["carvault_code"] == "app_not_approved"
    refused = read(http, car, token["access_token"], "Vehicle.Speed")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "app_not_approved"


# ---------------------------------------------------------------------------- revocation and introspection
def test_revoking_an_access_token_ends_it_at_the_next_request(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app)
    token = approve(client, browser)
    assert client.revoke_token("/oauth/revoke", token["access_token"]).status_code == 200
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 401
    # The refresh token still works: the app can get a new access token.
    r = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert r.status_code == 200
    # Unknown tokens are answered 200 too (RFC 7009 §2.2).
    assert client.revoke_token("/oauth/revoke", "cvt_unknown").status_code == 200


def test_revoking_a_refresh_token_ends_its_family(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    client = client_for(server, app)
    token = approve(client, browser)
    r = client.revoke_token("/oauth/revoke", token["refresh_token"], token_type_hint="refresh_token")
    assert r.status_code == 200
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 401
    again = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert again.json()["error"] == "invalid_grant"


def test_introspection_active_then_inactive(
    region: Region,
    http: httpx.Client,
    browser: httpx.Client,
    server: BackgroundServer,
    app: Registered,
    owner: OwnerClient,
    car: str,
) -> None:
    client = client_for(server, app)
    token = approve(client, browser)
    r = client.introspect_token("/oauth/introspect", token["access_token"])
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["active"] is True and info["client_id"] == app.client_id and info["scope"] == token["scope"]
    assert info["vins"] == [car] and info["purpose"] == "insurance" and info["token_type"] == "Bearer"
    assert 0 < info["exp"] - time.time() <= 3600
    with region.db.session() as s:
        grant = s.scalars(select(Grant)).one()
    assert info["grant_id"] == grant.id
    assert client.introspect_token("/oauth/introspect", token["refresh_token"]).json()["active"] is True
    # Another app learns nothing about this app's tokens; a public client may not introspect at all.
    other = client_for(server, register_app(region, name="Other"))
    assert other.introspect_token("/oauth/introspect", token["access_token"]).json() == {"active": False}
    public = register_app(region, confidential=False, name="Public")
    anonymous = http.post("/oauth/introspect", data={"token": token["access_token"], "client_id": public.client_id})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    # The owner revokes the grant: every token of it is inactive at once.
    region.grants.revoke(owner.owner_id, grant.id)
    assert client.introspect_token("/oauth/introspect", token["access_token"]).json() == {"active": False}
    assert client.introspect_token("/oauth/introspect", "cvt_unknown").json() == {"active": False}


def test_metadata_document(http: httpx.Client, server: BackgroundServer) -> None:
    r = http.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    meta = r.json()
    assert meta["issuer"] == server.url
    for name, path in {
        "authorization_endpoint": "/oauth/authorize",
        "token_endpoint": "/oauth/token",
        "revocation_endpoint": "/oauth/revoke",
        "introspection_endpoint": "/oauth/introspect",
        "device_authorization_endpoint": "/oauth/device_authorization",
    }.items():
        assert meta[name] == server.url + path
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"] and meta["authorization_response_iss_parameter_supported"]
    assert set(meta["grant_types_supported"]) == {"authorization_code", "refresh_token", DEVICE_GRANT}
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post", "none"}
    assert {"history", "live", "location:precise", "vss:Vehicle.Powertrain"} <= set(meta["scopes_supported"])
    assert "vss:Vehicle.Cabin" not in meta["scopes_supported"]  # never shareable
    # What authlib's client discovers from it works.
    assert httpx.get(meta["token_endpoint"]).status_code == 405


# --------------------------------------------------------------------------------------------- device flow
def device_start(http: httpx.Client, app: Registered, scope: str = SCOPE, purpose: str = "insurance") -> dict[str, Any]:
    sent = {"scope": scope, "purpose": purpose}
    auth = (app.client_id, app.secret) if app.secret else None
    r = http.post("/oauth/device_authorization", data=sent if auth else {**sent, "client_id": app.client_id}, auth=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def poll(http: httpx.Client, app: Registered, device_code: str) -> httpx.Response:
    return token_request(http, app, grant_type=DEVICE_GRANT, device_code=device_code)


def test_device_flow_end_to_end(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, data: str
) -> None:
    wallbox = register_app(region, confidential=False, name="Wallbox", purposes=("charging",))
    started = device_start(http, wallbox, scope="vss:Vehicle.Speed history", purpose="charging")
    code = started["user_code"]
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", code)
    assert started["verification_uri"] == server.url + "/device" and started["interval"] == 5
    assert started["verification_uri_complete"] == f"{server.url}/device?user_code={code}"
    assert started["expires_in"] == 600
    with region.db.session() as s:
        row = s.scalars(select(DeviceAuthorization)).one()
    assert row.device_code_hash == token_hash(started["device_code"]) and row.purpose == "charging"

    assert poll(http, wallbox, started["device_code"]).json()["error"] == "authorization_pending"
    assert poll(http, wallbox, started["device_code"]).json()["error"] == "slow_down"  # polled at once again

    entry = browser.get("/device")
    assert entry.status_code == 200 and 'name="user_code"' in entry.text
    typed = code.lower().replace("-", " ")  # what a person types
    page = browser.get("/device", params={"user_code": typed})
    assert page.status_code == 200 and "Wallbox" in page.text and "Smart charging control" in page.text
    done = decide(browser, page, action="/device")
    assert done.status_code == 200 and 'data-outcome="approved"' in done.text

    token = poll(http, wallbox, started["device_code"])
    assert token.status_code == 200, token.text
    issued = token.json()
    assert (
        issued["token_type"] == "Bearer" and issued["refresh_token"] and issued["scope"] == "vss:Vehicle.Speed history"
    )
    assert read(http, data, issued["access_token"], "Vehicle.Speed").status_code == 200
    assert poll(http, wallbox, started["device_code"]).json()["error"] == "invalid_grant"  # exchanged once only
    assert browser.get("/device", params={"user_code": code}).status_code == 404  # no longer pending


def test_device_flow_denied_and_expired(
    region: Region, http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    denied = device_start(http, app)
    page = browser.get("/device", params={"user_code": denied["user_code"]})
    assert 'data-outcome="denied"' in decide(browser, page, "deny", action="/device").text
    assert poll(http, app, denied["device_code"]).json()["error"] == "access_denied"

    late = device_start(http, app)
    with region.db.session() as s:
        s.execute(
            update(DeviceAuthorization)
            .where(DeviceAuthorization.device_code_hash == token_hash(late["device_code"]))
            .values(expires_ms=0)
        )
    assert poll(http, app, late["device_code"]).json()["error"] == "expired_token"
    assert browser.get("/device", params={"user_code": late["user_code"]}).status_code == 404
    with region.db.session() as s:
        assert s.scalars(select(Grant)).all() == []


def test_device_authorization_refuses_barred_apps_and_bad_scopes(region: Region, http: httpx.Client) -> None:
    gatekeeper = register_app(region, gatekeeper=True)
    r = http.post(
        "/oauth/device_authorization",
        data={"scope": SCOPE, "purpose": "insurance"},
        auth=(gatekeeper.client_id, gatekeeper.secret or ""),
    )
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
    assert r.json()["carvault_code"] == "gatekeeper_refused"
    ok = register_app(region)
    auth = (ok.client_id, ok.secret or "")
    r = http.post("/oauth/device_authorization", data={"scope": "vss:Vehicle.Cabin", "purpose": "insurance"}, auth=auth)
    assert r.json()["error"] == "invalid_scope"
    r = http.post("/oauth/device_authorization", data={"scope": SCOPE, "purpose": "fleet"}, auth=auth)
    assert r.json()["error"] == "invalid_request"
    with region.db.session() as s:
        assert s.scalars(select(DeviceAuthorization)).all() == []


def test_device_page_limits_code_guessing(browser: httpx.Client, app: Registered) -> None:
    assert browser.get("/device", params={"user_code": "12"}).status_code == 400
    statuses = [browser.get("/device", params={"user_code": "BCDF-GHJK"}).status_code for _ in range(11)]
    assert statuses[:10] == [404] * 10 and statuses[10] == 429


def test_more_accounts_from_one_address_do_not_multiply_the_guesses(
    browser: httpx.Client, server: BackgroundServer, http: httpx.Client, app: Registered
) -> None:
    for _ in range(10):
        assert browser.get("/device", params={"user_code": "BCDF-GHJK"}).status_code == 404
    other = make_owner(http)
    with httpx.Client(base_url=server.url, timeout=60) as second:
        assert second.post("/api/v1/auth/login", json={"email": other.email, "password": other.password}).is_success
        assert second.get("/device", params={"user_code": "BCDF-GHJK"}).status_code == 429


def test_apps_are_only_rows_with_hashed_secrets(region: Region, app: Registered) -> None:
    with region.db.session() as s:
        row = s.get(App, app.client_id)
    assert row is not None and app.secret and row.client_secret_hash == token_hash(app.secret)


def test_every_purpose_and_refusal_has_words_in_both_languages() -> None:
    """Keys the consent screen builds at run time (purposes, CarVault's recipient refusals) exist in en and zh-CN."""
    keys = [f"oauth.purpose.{p}" for p in PURPOSES] + [
        f"oauth.refusal.{c.code}" for c in (AppNotApproved, GatekeeperRefused, CrossBorderTransfer)
    ]
    for lang in ("en", "zh-CN"):
        assert [k for k in keys if k not in messages(lang)] == [], lang


@pytest.mark.parametrize(
    ("typed", "stored"),
    [("wdjb-mjht", "WDJB-MJHT"), (" WDJB MJHT ", "WDJB-MJHT"), ("WDJBMJHT", "WDJB-MJHT"), ("WDJ-MJHT", ""), ("", "")],
)
def test_user_codes_are_read_as_people_type_them(typed: str, stored: str) -> None:
    assert normal_user_code(typed) == stored


def test_error_descriptions_stay_within_rfc_6749_characters() -> None:
    assert oauth_text('Acme "Insure" \\ 平安') == "Acme ?Insure? ? ??"


@pytest.mark.parametrize(
    "params",
    [
        {"response_type": 'code"'},
        {"redirect_uri": "http://127.0.0.1:9/\u5e73\u5b89"},
        {"redirect_uri": 'http://127.0.0.1:9/"x'},
        {"scope": "vss:\u8f66 history"},
        {"state": '\u5e73\\"'},
        {"client_id": "x" * 5000},
    ],
    ids=["response-type-quote", "redirect-unicode", "redirect-quote", "scope-unicode", "state-unicode", "long-client"],
)
def test_hostile_authorization_requests_get_a_4xx_never_a_500(
    browser: httpx.Client, server: BackgroundServer, app: Registered, params: dict[str, str]
) -> None:
    uri, _ = client_for(server, app).create_authorization_url("/oauth/authorize", code_verifier=generate_token(48))
    query = {k: v[0] for k, v in parse_qs(urlsplit(uri).query).items()} | {"purpose": "insurance"} | params
    r = browser.get("/oauth/authorize", params=query)
    assert r.status_code in (200, 302, 400), r.text[:500]  # state is the app's opaque value: any text is fine


def test_hostile_token_requests_get_a_4xx_never_a_500(http: httpx.Client, app: Registered) -> None:
    for form in (
        {"grant_type": '\u5e73"'},
        {"grant_type": "authorization_code", "code": "\u5e73" * 300, "redirect_uri": '"', "code_verifier": "\\"},
        {"grant_type": "refresh_token", "refresh_token": "x" * 10_000},
        {"grant_type": DEVICE_GRANT, "device_code": "\u5e73"},
    ):
        r = token_request(http, app, **form)
        assert 400 <= r.status_code < 500 and r.json()["error"], r.text
    assert (
        http.post("/oauth/revoke", data={"token": "\u5e73"}, auth=(app.client_id, app.secret or "")).status_code == 200
    )
    r = http.post(
        "/oauth/introspect", data={"token_type_hint": "\u5e73", "token": "x"}, auth=(app.client_id, app.secret or "")
    )
    assert 400 <= r.status_code < 500 and r.json()["error"] == "unsupported_token_type"
    assert http.post("/oauth/token", content=b"a" * 70_000, headers={"Content-Type": FORM}).status_code == 413


def test_refusal_page_and_device_page_in_chinese(
    region: Region, browser: httpx.Client, server: BackgroundServer, car: str
) -> None:
    zh = {"Accept-Language": "zh-CN"}
    gatekeeper = register_app(region, gatekeeper=True)
    uri, _ = client_for(server, gatekeeper).create_authorization_url(
        "/oauth/authorize", code_verifier=generate_token(48), purpose="insurance"
    )
    page = browser.get(uri, headers=zh)
    assert page.status_code == 403 and "此应用无法接收您的数据" in page.text and "守门人" in page.text
    assert "返回应用" in page.text
    entry = browser.get("/device", headers=zh)
    assert entry.status_code == 200 and "请输入设备上显示的代码" in entry.text
    wrong = browser.get("/device", params={"user_code": "BCDF-GHJK"}, headers=zh)
    assert wrong.status_code == 404 and "没有与此代码对应的待处理请求" in wrong.text


def test_racing_refreshes_of_one_token_cannot_both_win(
    http: httpx.Client, browser: httpx.Client, server: BackgroundServer, app: Registered, car: str
) -> None:
    """The spend is one conditional update: of simultaneous refreshes at most one gets tokens."""
    token = approve(client_for(server, app), browser)

    def refresh(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return token_request(c, app, grant_type="refresh_token", refresh_token=token["refresh_token"])

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(refresh, range(4)))
    assert sum(r.status_code == 200 for r in answers) <= 1
    assert sum(r.status_code == 400 and r.json()["error"] == "invalid_grant" for r in answers) >= 3
    # The losers' replays ended the family and its grant: whatever the winner got serves nothing either.
    assert read(http, car, token["access_token"], "Vehicle.Speed").status_code == 401
    for r in answers:
        if r.status_code == 200:
            assert read(http, car, r.json()["access_token"], "Vehicle.Speed").status_code == 401
