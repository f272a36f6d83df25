"""The owner's grants API over real HTTP: list, get, one-step revoke, scoped personal access tokens."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from carvault.region import Region
from carvault.store.metadata import Credential, Grant, now_ms
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient, make_owner

BATTERY = "Vehicle.Powertrain.TractionBattery"
DAY_MS = 86_400_000


def claim(http: httpx.Client, o: OwnerClient, v: VehicleIdentity) -> None:
    """Pair the vehicle with the owner through the API."""
    r = http.post("/api/v1/vehicles/claim", headers=o.headers, json={"vin": v.vin, "pairing_code": v.pairing_code})
    assert r.status_code == 201, r.text


def approved_app(region: Region, name: str = "Ping An Auto Insurance", **more: Any) -> str:
    """A registered app the operator approved; its client id."""
    fields: dict[str, Any] = {
        "name": name,
        "legal_entity": f"{name} Co., Ltd.",
        "jurisdiction": "cn",
        "contact": "dpo@insurer.example.cn",
        "purposes": ["insurance", "repair"],
        "redirect_uris": ["https://insurer.example.cn/callback"],
        **more,
    }
    app, _ = region.apps.register(**fields)
    region.apps.decide(app.client_id, "approved", "test operator")
    return app.client_id


def app_token(
    region: Region,
    owner_id: int,
    vin: str,
    client_id: str,
    signals: list[str] | None = None,
    purpose: str = "insurance",
) -> str:
    """What the consent screen and token endpoint produce: a grant for the app and an access token acting for it."""
    grant = region.grants.create(
        owner_id, kind="app", client_id=client_id, vins=[vin], signals=signals or [BATTERY], purpose=purpose
    )
    secret, _ = region.accounts.issue(
        owner_id, "access", ttl_ms=3_600_000, grant_id=grant.id, client_id=client_id, expires_ms=grant.expires_ms
    )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def token_body(vin: str, **more: Any) -> dict[str, Any]:
    return {"label": "home dashboard", "vins": [vin], "signals": [BATTERY], **more}


def test_personal_token_is_scoped_shown_once_and_revoked_in_one_step(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    ends = now_ms() + 30 * DAY_MS
    r = http.post(
        "/api/v1/grants/tokens",
        headers=owner.headers,
        json=token_body(vehicle.vin, expires=ends, history_from="2025-01-01T00:00:00Z", live=True),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    secret, grant = body["token"], body["grant"]
    assert grant["kind"] == "pat" and grant["purpose"] == "personal" and grant["label"] == "home dashboard"
    assert grant["signals"] == [BATTERY] and grant["vins"] == [vehicle.vin] and grant["live"] is True
    assert grant["expires_ms"] == ends and grant["from_ms"] == 1_735_689_600_000 and grant["to_ms"] is None
    assert grant["precise_location"] is False and grant["active"] is True
    # Stored only as its SHA-256; never shown again.
    with region.db.session() as s:
        cred = s.scalars(select(Credential).where(Credential.grant_id == grant["id"])).one()
    assert cred.token_hash == hashlib.sha256(secret.encode()).hexdigest() and secret not in cred.token_hash
    shown = http.get(f"/api/v1/grants/{grant['id']}", headers=owner.headers)
    assert shown.status_code == 200 and secret not in shown.text and shown.json()["id"] == grant["id"]

    # The token reads what it covers and nothing else.
    window = {"start": "2025-06-01T00:00:00Z", "end": "2025-06-02T00:00:00Z"}
    inside = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=bearer(secret),
        params={**window, "signals": f"{BATTERY}.StateOfCharge.Current"},
    )
    assert inside.status_code == 200, inside.text
    outside = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=bearer(secret),
        params={**window, "signals": "Vehicle.Speed"},
    )
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "out_of_scope"
    early = http.get(
        f"/api/v1/vehicles/{vehicle.vin}/telemetry",
        headers=bearer(secret),
        params={"start": "2024-06-01T00:00:00Z", "end": "2024-06-02T00:00:00Z"},
    )
    assert early.status_code == 403 and early.json()["error"]["code"] == "out_of_scope"
    # A grant token can neither see, widen nor revoke grants.
    for method, path, payload in (
        ("GET", "/api/v1/grants", None),
        ("GET", f"/api/v1/grants/{grant['id']}", None),
        ("POST", "/api/v1/grants/tokens", token_body(vehicle.vin, signals=["Vehicle"])),
        ("DELETE", f"/api/v1/grants/{grant['id']}", None),
    ):
        r = http.request(method, path, headers=bearer(secret), json=payload)
        assert r.status_code == 403 and r.json()["error"]["code"] == "owner_only", (method, path, r.text)

    listed = http.get("/api/v1/grants", headers=owner.headers).json()["grants"]
    assert [(g["id"], g["reads"]) for g in listed] == [(grant["id"], 1)]
    assert listed[0]["last_access_ms"] is not None and listed[0]["app"] is None

    r = http.delete(f"/api/v1/grants/{grant['id']}", headers=owner.headers)
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["revoked_ms"] is not None
    after = http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(secret))
    assert after.status_code == 401 and after.json()["error"]["code"] == "unauthenticated"
    assert http.get("/api/v1/grants", headers=owner.headers).json()["grants"] == []
    ended = http.get("/api/v1/grants", headers=owner.headers, params={"all": 1}).json()["grants"]
    assert [g["id"] for g in ended] == [grant["id"]] and ended[0]["active"] is False
    # Revoking twice is harmless and records one revocation.
    assert http.delete(f"/api/v1/grants/{grant['id']}", headers=owner.headers).status_code == 200
    revocations = http.get("/api/v1/audit", headers=owner.headers, params={"action": "grant.revoke"}).json()
    assert len(revocations["events"]) == 1


def test_app_grant_lists_who_reads_and_how_much_and_revocation_stops_the_app(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    client_id = approved_app(region)
    secret = app_token(region, owner.owner_id, vehicle.vin, client_id)
    for _ in range(2):
        assert http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(secret)).status_code == 200
    (g,) = http.get("/api/v1/grants", headers=owner.headers).json()["grants"]
    assert g["kind"] == "app" and g["purpose"] == "insurance" and g["reads"] == 2
    assert g["app"] == {
        "client_id": client_id,
        "name": "Ping An Auto Insurance",
        "legal_entity": "Ping An Auto Insurance Co., Ltd.",
        "jurisdiction": "cn",
        "contact": "dpo@insurer.example.cn",
        "status": "approved",
    }
    # Each read is in the owner's audit log under the app's name, with purpose and legal basis.
    events = http.get("/api/v1/audit", headers=owner.headers, params={"actor": f"app:{client_id}"}).json()["events"]
    assert len(events) == 2 and all(e["detail"]["purpose"] == "insurance" for e in events)
    assert all("Ping An Auto Insurance" in e["legal_basis"] for e in events)

    assert http.delete(f"/api/v1/grants/{g['id']}", headers=owner.headers).status_code == 200
    r = http.get(f"/api/v1/vehicles/{vehicle.vin}", headers=bearer(secret))
    assert r.status_code == 401


def test_another_owner_cannot_see_or_revoke_my_grant(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    grant_id = http.post("/api/v1/grants/tokens", headers=owner.headers, json=token_body(vehicle.vin)).json()["grant"][
        "id"
    ]
    other = make_owner(http)
    for method in ("GET", "DELETE"):
        r = http.request(method, f"/api/v1/grants/{grant_id}", headers=other.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.get("/api/v1/grants", headers=other.headers, params={"all": "true"}).json()["grants"] == []
    # ... nor make a token for my car.
    r = http.post("/api/v1/grants/tokens", headers=other.headers, json=token_body(vehicle.vin))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.get(f"/api/v1/grants/{grant_id}", headers=owner.headers).json()["active"] is True
    assert http.get("/api/v1/grants").status_code == 401


BAD_TOKENS = [
    ({"signals": []}, 422, "validation_failed"),
    ({"signals": ["Vehicle.CarVault.Camera"]}, 403, "not_shareable"),
    ({"signals": ["Vehicle.Driver.HeartRate"]}, 403, "not_shareable"),
    ({"signals": ["Vehicle"]}, 403, "not_shareable"),
    ({"signals": ["Vehicle.NoSuchThing"]}, 422, "validation_failed"),
    ({"vins": []}, 422, "validation_failed"),
    ({"vins": ["LRWTEST9999999999"]}, 404, "not_found"),
    ({"label": ""}, 422, "validation_failed"),
    ({"label": "x" * 201}, 422, "validation_failed"),
    ({"expires": 1}, 422, "validation_failed"),
    ({"expires": "in a while"}, 400, "invalid_query"),
    ({"expires": "2099-01-01T00:00:00Z"}, 422, "validation_failed"),
    ({"history_from": "2025-02-01T00:00:00Z", "history_to": "2025-01-01T00:00:00Z"}, 422, "validation_failed"),
    ({"live": "sometimes"}, 422, "validation_failed"),
    ({"signals": "Vehicle.Speed"}, 422, "validation_failed"),
]


@pytest.mark.parametrize(("change", "status", "code"), BAD_TOKENS)
def test_bad_token_requests_get_a_stable_code_and_store_nothing(
    http: httpx.Client,
    region: Region,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    change: dict[str, Any],
    status: int,
    code: str,
) -> None:
    claim(http, owner, vehicle)
    r = http.post("/api/v1/grants/tokens", headers=owner.headers, json={**token_body(vehicle.vin), **change})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    with region.db.session() as s:
        assert s.scalars(select(Grant)).all() == []
        assert s.scalars(select(Credential).where(Credential.grant_id.is_not(None))).all() == []
    # ... and the service keeps serving.
    assert http.post("/api/v1/grants/tokens", headers=owner.headers, json=token_body(vehicle.vin)).status_code == 201


def test_grant_ids_out_of_range_are_refused(http: httpx.Client, owner: OwnerClient) -> None:
    for path in ("/api/v1/grants/0", "/api/v1/grants/99999999999999999999"):
        r = http.get(path, headers=owner.headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", path
    for path in ("/api/v1/grants/abc", "/api/v1/grants/12345"):
        assert http.get(path, headers=owner.headers).status_code == 404, path
    # /grants/tokens is not read as a grant id: it only creates tokens.
    r = http.get("/api/v1/grants/tokens", headers=owner.headers)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
