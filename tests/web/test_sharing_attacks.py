"""Issue 9 (sharing) attacked from outside: an app or a bystander trying to get more than the owner gave.

Each test is one attack an outside tester would try against a real region (and, where the attack is over HTTP, a
real server): the operator's decisions about an app, token confusion between apps at the OAuth endpoints, and
secrets at rest after a whole OAuth flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carvault.errors import Conflict, ValidationFailed
from carvault.region import Region
from carvault.server import BackgroundServer
from carvault.settings import Settings
from carvault.store.metadata import App, DeviceAuthorization
from carvault.web.app import create_app
from carvault.web.routes.oauth import MAX_ISSUERS
from tests.conftest import OwnerClient, make_owner
from tests.factories import BASE_MS
from tests.web import test_oauth, test_portability_e2e
from tests.web.test_oauth import (
    approve,
    bearer,
    client_for,
    decide,
    device_start,
    poll,
    register_app,
    token_request,
)

pytestmark = pytest.mark.slow

# The same fixtures: the owner's logged-in browser, their car, and the car with a minute of data uploaded.
browser, car, data = test_oauth.browser, test_oauth.car, test_oauth.data
# Two deployments over HTTP: A holds the car's data and made a bundle the recipient fetched; B imports.
two, fetched = test_portability_e2e.two, test_portability_e2e.fetched


# ------------------------------------------------------------------------------------ the operator's decisions
def test_a_rejected_app_cannot_be_approved_by_way_of_suspension(region: Region) -> None:
    """A rejection is final ("register again"): no path of decisions leads from rejected back to approved."""
    app = register_app(region, status="rejected")
    for status in ("suspended", "approved"):
        with pytest.raises(Conflict):
            region.apps.decide(app.client_id, status, by="operator")
    with region.db.session() as s:
        row = s.scalar(select(App).where(App.client_id == app.client_id))
    assert row is not None and row.status == "rejected"
    # Suspension alone stays reversible.
    other = register_app(region, status="suspended", name="Other Insure")
    assert region.apps.decide(other.client_id, "approved", by="operator").status == "approved"


@pytest.mark.parametrize(
    "website", ["javascript:alert(1)", "data:text/html,<script>1</script>", "//evil.example", "ftp://x.example"]
)
def test_an_apps_website_is_a_web_address_or_nothing(region: Region, website: str) -> None:
    """The website is published (GET /api/v1/apps/{client_id}) for others to show as a link: never a script."""
    before = len(region.apps.list())
    with pytest.raises(ValidationFailed) as e:
        region.apps.register(
            name="Sly",
            legal_entity="Sly Ltd",
            jurisdiction="cn",
            contact="dpo@sly.example",
            purposes=["insurance"],
            website=website,
        )
    assert e.value.details.get("field") == "website"
    assert len(region.apps.list()) == before
    ok, _ = region.apps.register(
        name="Fine",
        legal_entity="Fine Ltd",
        jurisdiction="cn",
        contact="a@fine.example",
        purposes=["repair"],
        website=" https://fine.example/about ",
    )
    assert ok.website == "https://fine.example/about"


# ------------------------------------------------------------------------------- token confusion between apps
def test_another_app_can_neither_revoke_nor_introspect_a_token(
    server: BackgroundServer, http: httpx.Client, browser: httpx.Client, car: str, region: Region
) -> None:
    a = register_app(region)
    token = approve(client_for(server, a), browser)
    b = register_app(region, name="Beta Insure")
    public = register_app(region, name="Gamma Public", confidential=False)
    for other in (b, public):
        for secret in (token["access_token"], token["refresh_token"]):
            if other.secret:
                http.post("/oauth/revoke", data={"token": secret}, auth=(other.client_id, other.secret))
            else:
                http.post("/oauth/revoke", data={"token": secret, "client_id": other.client_id})
    assert http.get(f"/api/v1/vehicles/{car}", headers=bearer(token["access_token"])).status_code == 200
    seen = http.post("/oauth/introspect", data={"token": token["access_token"]}, auth=(b.client_id, b.secret or ""))
    assert seen.status_code in (200, 401) and seen.json().get("active") is not True
    # A's refresh token is still A's to use (nobody else spent or revoked it).
    refreshed = token_request(http, a, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == token["scope"]
    # And B cannot spend it either.
    again = token_request(http, b, grant_type="refresh_token", refresh_token=refreshed.json()["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert http.get(f"/api/v1/vehicles/{car}", headers=bearer(refreshed.json()["access_token"])).status_code == 200


def test_a_refresh_refused_during_a_suspension_spends_nothing(
    server: BackgroundServer, http: httpx.Client, browser: httpx.Client, car: str, region: Region
) -> None:
    """Suspension is reversible: a refresh the app tries while suspended is refused without spending its refresh
    token, so after re-approval the same token works, and is not taken for a replayed one (which would revoke
    the owner's grant)."""
    app = register_app(region)
    token = approve(client_for(server, app), browser)
    region.apps.decide(app.client_id, "suspended", by="operator")
    refused = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert refused.status_code in (400, 401, 403), refused.text
    assert refused.json()["error"] in ("unauthorized_client", "access_denied", "invalid_client")
    assert http.get(f"/api/v1/vehicles/{car}", headers=bearer(token["access_token"])).status_code == 403
    region.apps.decide(app.client_id, "approved", by="operator")
    again = token_request(http, app, grant_type="refresh_token", refresh_token=token["refresh_token"])
    assert again.status_code == 200, again.text
    assert http.get(f"/api/v1/vehicles/{car}", headers=bearer(again.json()["access_token"])).status_code == 200
    grants = http.get("/api/v1/grants", headers={"Authorization": browser_auth(browser)}).json()["grants"]
    assert [g["active"] for g in grants] == [True]


def test_a_device_approval_survives_a_suspension_of_its_app(
    http: httpx.Client, browser: httpx.Client, car: str, region: Region
) -> None:
    """The owner approved on the device page; the app is suspended before its device polls: the poll is refused
    and the approval kept, so that once the app is approved again the device gets its tokens."""
    app = register_app(region, confidential=False, name="Wallbox", purposes=("charging",))
    started = device_start(http, app, scope="vss:Vehicle.Speed history", purpose="charging")
    page = browser.get("/device", params={"user_code": started["user_code"]})
    assert 'data-outcome="approved"' in decide(browser, page, action="/device").text
    region.apps.decide(app.client_id, "suspended", by="operator")
    refused = poll(http, app, started["device_code"])
    assert refused.status_code in (400, 401, 403) and refused.json()["error"] == "unauthorized_client", refused.text
    region.apps.decide(app.client_id, "approved", by="operator")
    with region.db.session() as s:  # the device waits its interval before polling again
        s.execute(update(DeviceAuthorization).values(last_poll_ms=None))
    issued = poll(http, app, started["device_code"])
    assert issued.status_code == 200, issued.text
    assert http.get(f"/api/v1/vehicles/{car}", headers=bearer(issued.json()["access_token"])).status_code == 200


def browser_auth(browser: httpx.Client) -> str:
    return f"Bearer {browser.cookies['carvault_session']}"


def test_no_token_code_or_secret_is_kept_in_clear_after_a_whole_flow(
    server: BackgroundServer, http: httpx.Client, browser: httpx.Client, car: str, region: Region
) -> None:
    app = register_app(region)
    token = approve(client_for(server, app), browser)
    device = http.post(
        "/oauth/device_authorization",
        data={"scope": "vss:Vehicle.Speed", "purpose": "insurance"},
        auth=(app.client_id, app.secret or ""),
    ).json()
    secrets = [token["access_token"], token["refresh_token"], app.secret or "", device["device_code"]]
    assert all(secrets)
    for path in region.settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (path, secret[:6])


# ----------------------------------------------------------------------------------------- reading beyond scope
def test_the_vehicle_record_tells_a_grant_holder_nothing_outside_its_window(
    http: httpx.Client, owner: OwnerClient, data: str
) -> None:
    """The chain head (last seq and hash) moves with every upload: it would show a grant whose window ended that
    the car is still driving, and when. A grant holder sees the car's identity only; the owner sees it all."""
    past = {"history_from": BASE_MS - 7_200_000, "history_to": BASE_MS - 3_600_000}
    made = http.post(
        "/api/v1/grants/tokens",
        headers=owner.headers,
        json={"label": "old window", "vins": [data], "signals": ["Vehicle.Speed"], **past},
    )
    assert made.status_code == 201, made.text
    holder = bearer(made.json()["token"])
    mine = http.get(f"/api/v1/vehicles/{data}", headers=owner.headers).json()
    assert mine["last_seq"] == 1 and mine["last_hash"]
    for seen in (
        http.get(f"/api/v1/vehicles/{data}", headers=holder).json(),
        *http.get("/api/v1/vehicles", headers=holder).json(),
    ):
        assert seen["vin"] == data
        assert not {"last_seq", "last_hash", "claimed_ms"} & set(seen), seen


# ------------------------------------------------------------------------------------------ portability import
def test_the_import_api_wants_the_owners_code_and_stores_nothing_without_it(
    two: test_portability_e2e.Two, fetched: tuple[Path, dict[str, Any]]
) -> None:
    path, meta = fetched
    b = two.b
    before = test_portability_e2e.counts(b.region), b.region.log.size
    zip_headers = {**b.owner.headers, "Content-Type": "application/zip"}
    codes: tuple[bytes | None, ...] = (None, b"", b"wrong", "é".encode())
    for code in codes:
        headers = [(k.encode(), v.encode()) for k, v in zip_headers.items()]
        headers += [(b"CarVault-Import-Code", code)] if code is not None else []
        r = b.http.post("/api/v1/portability/import", headers=headers, content=path.read_bytes())
        assert r.status_code == 403 and r.json()["error"]["code"] == "import_code_invalid", (code, r.text)
        assert r.json()["error"]["message"]
    assert (test_portability_e2e.counts(b.region), b.region.log.size) == before
    # Another account at B with the right code is still not the owner of a car B registered to someone else.
    ok = test_portability_e2e.post_bundle(b, path.read_bytes(), meta["import_code"])
    assert ok.status_code == 201, ok.text
    mallory = make_owner(b.http, "mallory@example.com")
    r = b.http.post(
        "/api/v1/portability/import",
        headers={**mallory.headers, "Content-Type": "application/zip", "CarVault-Import-Code": meta["import_code"]},
        content=path.read_bytes(),
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert b.http.get("/api/v1/vehicles", headers=mallory.headers).json() == []


# ------------------------------------------------------------------------------------------ the OAuth endpoints
def test_host_headers_cannot_grow_the_authorization_servers_without_bound(settings: Settings) -> None:
    """A region without a configured public URL names its issuer after the request's Host; a client sending a
    new Host each time must not make the region keep one authorization server per name it ever heard."""
    with Region(settings.with_(region_endpoints={})) as region:
        app = create_app(region)
        client = TestClient(app, base_url="http://cn.test")  # in process, without the lifespan (no live broker)
        for i in range(MAX_ISSUERS * 4):
            r = client.get("/.well-known/oauth-authorization-server", headers={"Host": f"h{i}.example"})
            assert r.status_code == 200 and r.json()["issuer"] == f"http://h{i}.example"
        assert len(app.state.oauth_servers) <= MAX_ISSUERS
        assert client.get("/.well-known/oauth-authorization-server").json()["issuer"] == "http://cn.test"
