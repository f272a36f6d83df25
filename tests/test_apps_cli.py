"""`carvault apps …` against a real region folder, while the region serves: decisions take effect at once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from carvault.cli import app as cli
from carvault.errors import AppNotApproved
from carvault.region import Region
from carvault.store.metadata import App, AuditEvent
from carvault.vehicle.identity import VehicleIdentity
from tests.conftest import OwnerClient
from tests.web.test_grants_api import app_token, bearer, claim

runner = CliRunner()


def run(region: Region, *args: str) -> str:
    """Run a `carvault apps` command on the region's folder; its output (fails the test on a non-zero exit)."""
    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    result = runner.invoke(cli, ["apps", *args, *where], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def add(region: Region, *more: str) -> tuple[str, str | None]:
    out = run(
        region,
        "add",
        "--name",
        "Fleetwise",
        "--legal-entity",
        "Fleetwise Logistics Ltd.",
        "--jurisdiction",
        "CN",
        "--contact",
        "ops@fleetwise.example.cn",
        "--purpose",
        "fleet",
        "--purpose",
        "repair",
        "--redirect-uri",
        "https://fleetwise.example.cn/cb",
        "--by",
        "ops-alice",
        *more,
    )
    client_id = re.search(r"client id:\s+(app_\S+)", out)
    secret = re.search(r"client secret:\s+(cvs_\S+)", out)
    assert client_id, out
    return client_id[1], secret[1] if secret else None


def region_events(region: Region, action: str) -> list[dict[str, object]]:
    with region.db.session() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.chain == "region", AuditEvent.action == action))
        return [{"actor": e.actor, **json.loads(e.detail)} for e in rows]


def test_add_prints_the_secret_once_and_list_show_filter(region: Region) -> None:
    client_id, secret = add(region)
    assert secret is not None
    with region.db.session() as s:
        stored = s.get(App, client_id)
    assert stored is not None and stored.status == "pending" and stored.jurisdiction == "cn"
    assert stored.client_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    public_id, public_secret = add(region, "--public", "--gatekeeper")
    assert public_secret is None

    listed = run(region, "list")
    assert client_id in listed and public_id in listed and "apps: 2" in listed and "gatekeeper" in listed
    assert secret not in listed
    assert "apps (approved): 0" in run(region, "list", "--status", "approved")
    shown = run(region, "show", client_id)
    for fact in ("Fleetwise Logistics Ltd.", "ops@fleetwise.example.cn", "fleet, repair", "pending", "0 live of 0"):
        assert fact in shown, fact
    assert secret not in shown and (stored.client_secret_hash or "") not in shown
    (event, _) = region_events(region, "app.register")
    assert event["actor"] == "operator:ops-alice" and event["client_id"] == client_id and event["via"] == "operator"


def test_bad_input_exits_non_zero_with_a_message(region: Region) -> None:
    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    bad = runner.invoke(cli, ["apps", "list", "--status", "maybe", *where])
    assert bad.exit_code == 2 and "--status is one of" in bad.output
    long_name = runner.invoke(cli, ["apps", "approve", "app_nope", "--by", "x" * 101, *where])
    assert long_name.exit_code == 2 and "--by names the operator" in long_name.output
    unknown = runner.invoke(cli, ["apps", "approve", "app_nope", *where])
    assert unknown.exit_code == 1 and "not_found" in unknown.output
    purpose = runner.invoke(
        cli,
        ["apps", "add", "--name", "X", "--legal-entity", "X Ltd", "--jurisdiction", "cn"]
        + ["--contact", "x@example.com", "--purpose", "advertising", *where],
    )
    assert purpose.exit_code == 1 and "validation_failed" in purpose.output
    with region.db.session() as s:
        assert s.scalars(select(App)).all() == []


def test_suspending_an_app_stops_its_tokens_at_once(
    http: httpx.Client, region: Region, owner: OwnerClient, vehicle: VehicleIdentity
) -> None:
    claim(http, owner, vehicle)
    client_id, _ = add(region)
    # Pending: no owner can grant it anything yet.
    with pytest.raises(AppNotApproved):
        app_token(region, owner.owner_id, vehicle.vin, client_id, purpose="fleet")
    assert "pending → approved" in run(region, "approve", client_id, "--by", "ops-alice", "--reason", "checked")
    secret = app_token(region, owner.owner_id, vehicle.vin, client_id, purpose="fleet")
    url = f"/api/v1/vehicles/{vehicle.vin}"
    assert http.get(url, headers=bearer(secret)).status_code == 200

    assert "approved → suspended" in run(region, "suspend", client_id, "--reason", "complaint")
    r = http.get(url, headers=bearer(secret))
    assert r.status_code == 403 and r.json()["error"]["code"] == "app_not_approved"
    run(region, "approve", client_id)
    assert http.get(url, headers=bearer(secret)).status_code == 200

    out = run(region, "grants", client_id)
    assert "live grants:   1 (from 1 owners)" in out and "reads:         2" in out and "last access:   20" in out
    run(region, "reject", client_id)
    assert http.get(url, headers=bearer(secret)).status_code == 403
    again = runner.invoke(
        cli, ["apps", "approve", client_id, "--data-dir", str(region.settings.data_dir), "--region", region.name]
    )
    assert again.exit_code == 1 and "conflict" in again.output

    decisions = region_events(region, "app.decide")
    assert [(e["previous"], e["status"]) for e in decisions] == [
        ("pending", "approved"),
        ("approved", "suspended"),
        ("suspended", "approved"),
        ("approved", "rejected"),
    ]
    assert decisions[0]["actor"] == "operator:ops-alice" and decisions[1]["reason"] == "complaint"
    assert region.audit.verify_chain(None) >= 5


def test_runs_as_a_module_too(region: Region) -> None:
    """`python -m carvault.cli` imports carvault.cli twice (as __main__ and by this sub-app): both must load."""
    add(region)
    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    done = subprocess.run(
        [sys.executable, "-m", "carvault.cli", "apps", "list", "--status", "pending", *where],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "Fleetwise" in done.stdout and "apps (pending): 1" in done.stdout
