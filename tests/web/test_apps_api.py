"""Developer self-service sign-up and apps' public metadata, over real HTTP."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from carvault.access.audit import AuditAction
from carvault.region import Region
from carvault.store.metadata import App, AuditEvent
from carvault.web.routes.apps import SIGNUPS_PER_ADDRESS

SIGNUP: dict[str, Any] = {
    "name": "Volt Home Charging",
    "legal_entity": "Volt Energy (Shanghai) Co., Ltd.",
    "jurisdiction": "cn",
    "contact": "Dev@Volt.example.cn",
    "purposes": ["charging", "home_automation"],
    "redirect_uris": ["https://volt.example.cn/oauth/callback", "http://127.0.0.1:8765/cb"],
    "description": "Charges when power is cheap.",
    "website": "https://volt.example.cn",
}


def apps_in(region: Region) -> list[App]:
    with region.db.session() as s:
        return list(s.scalars(select(App)))


def test_sign_up_creates_a_pending_app_whose_secret_is_shown_once(http: httpx.Client, region: Region) -> None:
    r = http.post("/api/v1/apps", json=SIGNUP)
    assert r.status_code == 201, r.text
    body = r.json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert client_id.startswith("app_") and secret.startswith("cvs_")
    assert body["status"] == "pending" and body["purposes"] == ["charging", "home_automation"]
    (stored,) = apps_in(region)
    assert stored.client_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.contact == "dev@volt.example.cn"

    public = http.get(f"/api/v1/apps/{client_id}")
    assert public.status_code == 200
    assert public.json() == {
        "client_id": client_id,
        "name": "Volt Home Charging",
        "legal_entity": "Volt Energy (Shanghai) Co., Ltd.",
        "jurisdiction": "cn",
        "purposes": ["charging", "home_automation"],
        "status": "pending",
        "description": "Charges when power is cheap.",
        "website": "https://volt.example.cn",
        "public_client": False,
        "created_ms": stored.created_ms,
    }
    for private in (secret, "dev@volt.example.cn", "oauth/callback", stored.client_secret_hash):
        assert private not in public.text

    # The registration is in the region's audit chain; a pending app can receive nothing.
    with region.db.session() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == AuditAction.APP_REGISTER.value))
    assert event.chain == "region" and event.owner_id is None and event.actor == f"developer:{client_id}"
    detail = json.loads(event.detail)
    assert detail["client_id"] == client_id and detail["via"] == "self-service"
    assert detail["contact"] == "dev@volt.example.cn"
    region.audit.verify_chain(None)

    region.apps.decide(client_id, "approved", "test operator")
    assert http.get(f"/api/v1/apps/{client_id}").json()["status"] == "approved"


def test_a_public_client_gets_no_secret(http: httpx.Client, region: Region) -> None:
    r = http.post("/api/v1/apps", json={**SIGNUP, "confidential": False})
    assert r.status_code == 201 and r.json()["client_secret"] is None and r.json()["public_client"] is True
    assert apps_in(region)[0].client_secret_hash is None


BAD_SIGNUPS = [
    {"name": ""},
    {"name": "x" * 201},
    {"legal_entity": "  "},
    {"jurisdiction": "e-u"},
    {"contact": "not an email"},
    {"purposes": []},
    {"purposes": ["advertising"]},
    {"purposes": "charging"},
    {"redirect_uris": ["http://volt.example.cn/cb"]},
    {"redirect_uris": ["https://volt.example.cn/cb#frag"]},
    {"redirect_uris": ["volt://cb"]},
    {"redirect_uris": [f"https://volt.example.cn/{i}" for i in range(11)]},
    {"gatekeeper": "perhaps"},
    {"description": "x" * 2001},
]


@pytest.mark.parametrize("change", BAD_SIGNUPS)
def test_bad_sign_ups_are_refused_with_a_field_and_store_nothing(
    http: httpx.Client, region: Region, change: dict[str, Any]
) -> None:
    r = http.post("/api/v1/apps", json={**SIGNUP, **change})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_failed" and r.json()["error"]["message"]
    assert apps_in(region) == []
    assert http.post("/api/v1/apps", json=SIGNUP).status_code == 201


def test_sign_ups_are_limited_per_address(http: httpx.Client, region: Region) -> None:
    for _ in range(SIGNUPS_PER_ADDRESS):
        assert http.post("/api/v1/apps", json=SIGNUP).status_code == 201
    r = http.post("/api/v1/apps", json=SIGNUP)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
    assert int(r.headers["Retry-After"]) > 0
    assert len(apps_in(region)) == SIGNUPS_PER_ADDRESS
    # Refused forms do not count; reading metadata is not limited.
    assert http.get(f"/api/v1/apps/{apps_in(region)[0].client_id}").status_code == 200


def test_unknown_or_malformed_client_ids(http: httpx.Client) -> None:
    r = http.get("/api/v1/apps/app_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get("/api/v1/apps/" + "a" * 65)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
