"""Staff accounts: passwords, the TOTP second factor, sessions, lockout, the last region admin."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pyotp
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from carvault.access.staff import IDLE_MS, MAX_SESSION_MS, TOTP_STEP_S
from carvault.bench.pg_cluster import TemporaryPostgres
from carvault.cli import app
from carvault.compliance.roles import Role
from carvault.errors import AlreadyExists, Conflict, TooManyRequests, Unauthenticated, ValidationFailed
from carvault.region import Region
from carvault.settings import Settings
from carvault.store.metadata import AuditEvent, StaffMember, StaffSession, now_ms
from tests.factories import make_staff

PASSWORD = "a long staff password"


def _create(region: Region, username: str = "alice", role: Role = Role.SUPPORT) -> tuple[StaffMember, pyotp.TOTP]:
    member, secret = region.staff.create(username, PASSWORD, role, None, "Alice")
    return member, pyotp.TOTP(secret)


def test_create_and_login_with_password_and_code(region: Region) -> None:
    member, totp = _create(region)
    assert member.jurisdiction == "cn" and member.role == "support"
    assert member.password_hash.startswith("$argon2id$")
    assert totp.secret.encode() not in member.totp_sealed  # sealed with the data key, not in the clear
    uri = region.staff.totp_uri(member, totp.secret)
    assert uri.startswith("otpauth://totp/") and "issuer=CarVault" in uri
    secret, principal = region.staff.login("alice", PASSWORD, totp.now())
    assert secret.startswith("cvs_") and principal.role is Role.SUPPORT
    again = region.staff.resolve(secret)
    assert again == principal and str(again.actor) == "staff:support:alice"


def test_wrong_password_or_code_is_refused(region: Region) -> None:
    _, totp = _create(region)
    with pytest.raises(Unauthenticated):
        region.staff.login("alice", "not the password", totp.now())
    with pytest.raises(Unauthenticated):
        region.staff.login("alice", PASSWORD, "000000" if totp.now() != "000000" else "111111")
    with pytest.raises(Unauthenticated):
        region.staff.login("alice", PASSWORD, "")
    with pytest.raises(Unauthenticated):
        region.staff.login("nobody", PASSWORD, totp.now())


def test_a_code_is_accepted_once(region: Region) -> None:
    _, totp = _create(region)
    code = totp.now()
    region.staff.login("alice", PASSWORD, code)
    with pytest.raises(Unauthenticated):
        region.staff.login("alice", PASSWORD, code)


def test_an_older_code_after_a_newer_one_is_refused(region: Region) -> None:
    _, totp = _create(region)
    step = now_ms() // 1000 // TOTP_STEP_S
    region.staff.login("alice", PASSWORD, totp.at(step * TOTP_STEP_S))
    with pytest.raises(Unauthenticated):
        region.staff.login("alice", PASSWORD, totp.at((step - 1) * TOTP_STEP_S))


def test_repeated_failures_lock_the_account(region: Region) -> None:
    _, totp = _create(region)
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            region.staff.login("alice", "wrong password!!", totp.now(), client="10.0.0.1")
    with pytest.raises(TooManyRequests):
        region.staff.login("alice", PASSWORD, totp.now(), client="10.0.0.2")


def test_repeated_failures_lock_the_address(region: Region) -> None:
    _create(region, "bob")
    for n in range(10):
        with pytest.raises(Unauthenticated):
            region.staff.login(f"guess{n}", "wrong password!!", "123456", client="10.0.0.9")
    with pytest.raises(TooManyRequests):
        region.staff.login("bob", "wrong password!!", "123456", client="10.0.0.9")


def test_sessions_end_when_idle_or_too_old(region: Region) -> None:
    principal, secret = make_staff(region, Role.DPO)
    with region.db.session() as s:
        s.execute(
            update(StaffSession)
            .where(StaffSession.id == principal.credential_id)
            .values(last_used_ms=now_ms() - IDLE_MS - 1000)
        )
    with pytest.raises(Unauthenticated, match="expired"):
        region.staff.resolve(secret)
    principal, secret = make_staff(region, Role.DPO)
    with region.db.session() as s:
        s.execute(
            update(StaffSession)
            .where(StaffSession.id == principal.credential_id)
            .values(created_ms=now_ms() - MAX_SESSION_MS, expires_ms=now_ms() - 1)
        )
    with pytest.raises(Unauthenticated, match="expired"):
        region.staff.resolve(secret)


def test_logout_and_disable_end_sessions(region: Region) -> None:
    principal, secret = make_staff(region, Role.AUDITOR)
    region.staff.logout(principal)
    with pytest.raises(Unauthenticated):
        region.staff.resolve(secret)
    principal, secret = make_staff(region, Role.AUDITOR)
    region.staff.disable(principal.staff_id)
    with pytest.raises(Unauthenticated):
        region.staff.resolve(secret)


def test_owner_tokens_are_not_staff_sessions(region: Region) -> None:
    owner = region.accounts.register("o@example.com", "correct horse battery")
    token, _ = region.accounts.issue(owner.id, "session")
    with pytest.raises(Unauthenticated):
        region.staff.resolve(token)


def test_the_last_region_admin_stays(region: Region) -> None:
    admin, _ = make_staff(region, Role.REGION_ADMIN)
    with pytest.raises(Conflict):
        region.staff.disable(admin.staff_id)
    with pytest.raises(Conflict):
        region.staff.set_role(admin.staff_id, Role.AUDITOR)
    other, _ = make_staff(region, Role.REGION_ADMIN)
    region.staff.disable(admin.staff_id)
    with pytest.raises(Conflict):
        region.staff.set_role(other.staff_id, Role.DPO)


def test_role_change_and_totp_reset_end_sessions(region: Region) -> None:
    principal, secret = make_staff(region, Role.SUPPORT)
    region.staff.set_role(principal.staff_id, Role.DPO)
    with pytest.raises(Unauthenticated):
        region.staff.resolve(secret)
    principal, secret = make_staff(region, Role.SUPPORT)
    member, new_secret = region.staff.reset_totp(principal.staff_id)
    with pytest.raises(Unauthenticated):
        region.staff.resolve(secret)
    assert new_secret and member.totp_last_step is None


def test_bad_input_is_refused(region: Region) -> None:
    with pytest.raises(ValidationFailed):
        region.staff.create("Bad Name", PASSWORD, Role.DPO)
    with pytest.raises(ValidationFailed):
        region.staff.create("carol", "short", Role.DPO)
    with pytest.raises(ValidationFailed):
        region.staff.create("carol", PASSWORD, "superuser")
    with pytest.raises(ValidationFailed):
        region.staff.create("carol", PASSWORD, Role.DPO, "not a region!")
    region.staff.create("carol", PASSWORD, Role.DPO, "eu")
    with pytest.raises(AlreadyExists):
        region.staff.create("Carol", PASSWORD, Role.DPO)


def test_staff_actions_are_in_the_region_chain(region: Region) -> None:
    principal, _ = make_staff(region, Role.DPO)
    region.staff.logout(principal)
    assert region.audit.verify_chain(None) >= 3


runner = CliRunner()


def cli(region: Region, *args: str, password: str | None = PASSWORD, code: int = 0) -> str:
    """Run `carvault admin staff …` on the region's folder; its output."""
    where = ["--data-dir", str(region.settings.data_dir), "--region", region.name]
    env = {"COLUMNS": "200", **({"CARVAULT_STAFF_PASSWORD": password} if password is not None else {})}
    result = runner.invoke(app, ["admin", "staff", *args, *where], env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_the_command_line_manages_staff(region: Region) -> None:
    made = json.loads(cli(region, "add", "root", "--role", "region_admin", "--name", "Root", "--json"))
    assert made["role"] == "region_admin" and made["totp_uri"].startswith("otpauth://totp/")
    secret, principal = region.staff.login("root", PASSWORD, pyotp.TOTP(made["totp_secret"]).now())
    assert principal.role is Role.REGION_ADMIN
    out = cli(region, "add", "bob", "--role", "support", "--as", "root")
    assert "shown only once" in out
    listed = {m["username"]: m for m in json.loads(cli(region, "list", "--json"))}
    assert listed["bob"]["role"] == "support" and listed["bob"]["created_by"] == "staff:region_admin:root"
    assert "totp" not in json.dumps(listed) and "hash" not in json.dumps(listed)
    cli(region, "set-role", "bob", "dpo")
    assert region.staff.by_username("bob").role == "dpo"
    # bob (a DPO) may not manage staff: refused, nothing changes.
    assert "role_forbidden" in cli(region, "disable", "root", "--as", "bob", code=1)
    assert "conflict" in cli(region, "disable", "root", code=1)  # the last region admin
    cli(region, "disable", "bob")
    assert region.staff.by_username("bob").disabled_ms is not None
    cli(region, "enable", "bob")
    bob_secret, _ = region.staff.login("bob", PASSWORD, pyotp.TOTP(_secret_of(region, "bob")).now())
    cli(region, "set-password", "bob", password="another long password")
    with pytest.raises(Unauthenticated):
        region.staff.resolve(bob_secret)  # a new password ends the member's sessions
    reset = json.loads(cli(region, "reset-totp", "root", "--json"))
    assert reset["totp_secret"] != made["totp_secret"]
    with pytest.raises(Unauthenticated):
        region.staff.resolve(secret)  # the reset ended root's session
    assert "| `case.read` |" in runner.invoke(app, ["admin", "staff", "roles"], env={"COLUMNS": "200"}).output
    assert "validation_failed" in cli(region, "add", "x", "--role", "dpo", password="short", code=1)
    assert "already_exists" in cli(region, "add", "bob", "--role", "dpo", code=1)
    with region.db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.chain == "region"))]
    assert actions.count("staff.create") == 2 and "staff.role" in actions and "staff.totp_reset" in actions


def _secret_of(region: Region, username: str) -> str:
    """A member's TOTP secret, opened with the region's data key (what the authenticator app holds)."""
    from carvault.access.staff import open_totp

    member = region.staff.by_username(username)
    assert region.db.data_key is not None
    return open_totp(region.db.data_key, member.username, member.totp_sealed)


@pytest.mark.slow
def test_the_staff_api_logs_in_manages_and_logs_out(region: Region, http: httpx.Client) -> None:
    _, admin_secret = make_staff(region, Role.REGION_ADMIN)
    admin = {"Authorization": f"Bearer {admin_secret}"}
    r = http.post(
        "/api/v1/admin/staff",
        headers=admin,
        json={"username": "dora", "password": PASSWORD, "role": "dpo", "jurisdiction": "cn", "display_name": "Dora"},
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["role"] == "dpo" and made["totp_uri"].startswith("otpauth://") and "password" not in made
    totp = pyotp.TOTP(made["totp_secret"])
    # Log in: a wrong code is refused with no hint of which part was wrong; the right one sets the cookie.
    bad = http.post("/api/v1/admin/session", json={"username": "dora", "password": PASSWORD, "code": "12345x"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthenticated"
    r = http.post("/api/v1/admin/session", json={"username": "dora", "password": PASSWORD, "code": totp.now()})
    assert r.status_code == 200, r.text
    assert "samesite=strict" in r.headers["set-cookie"].lower() and "httponly" in r.headers["set-cookie"].lower()
    token = r.json()["token"]
    assert token.startswith("cvs_") and "cases.open" in r.json()["staff"]["permissions"]
    dora = {"Authorization": f"Bearer {token}"}
    me = http.get("/api/v1/admin/me", headers=dora).json()
    assert me["username"] == "dora" and me["role"] == "dpo" and "staff.manage" not in me["permissions"]
    # The console cookie works for reads; a cookie write without the CSRF header is refused.
    cookie = http.cookies.get("carvault_staff")
    http.cookies.clear()
    assert http.get("/api/v1/admin/me", headers={"Cookie": f"carvault_staff={cookie}"}).status_code == 200
    r = http.post("/api/v1/admin/cases", headers={"Cookie": f"carvault_staff={cookie}"}, json={})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # Management: bad input refused with a stable code; the list shows no secret.
    for body in ({"role": "boss"}, {}):
        r = http.patch(f"/api/v1/admin/staff/{made['id']}", headers=admin, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    listed = http.get("/api/v1/admin/staff", headers=admin).json()
    assert "dora" in {m["username"] for m in listed} and "totp" not in str(listed) and "$argon2" not in str(listed)
    shown = http.get(f"/api/v1/admin/staff/{made['id']}", headers=admin).json()
    assert len(shown["sessions"]) == 1
    r = http.delete(f"/api/v1/admin/staff/{made['id']}/sessions", headers=admin)
    assert r.json()["ended"] == 1
    assert http.get("/api/v1/admin/me", headers=dora).status_code == 401
    # A new log-in, then a role change and a disable each end it at once.
    step = now_ms() // 1000 // TOTP_STEP_S + 1  # the next step: the current one was used above
    r = http.post(
        "/api/v1/admin/session",
        json={"username": "dora", "password": PASSWORD, "code": totp.at(step * TOTP_STEP_S)},
    )
    dora = {"Authorization": f"Bearer {r.json()['token']}"}
    r = http.patch(f"/api/v1/admin/staff/{made['id']}", headers=admin, json={"role": "auditor", "active": False})
    assert r.json()["role"] == "auditor" and r.json()["active"] is False
    assert http.get("/api/v1/admin/me", headers=dora).status_code == 401
    # Logging out ends the admin's own session.
    assert http.delete("/api/v1/admin/session", headers=admin).status_code == 200
    assert http.get("/api/v1/admin/me", headers=admin).status_code == 401


def test_two_admins_removing_each_other_at_once_leave_one(region: Region) -> None:
    for _ in range(3):  # a few rounds: the race must never leave the region without an admin
        a, _ = make_staff(region, Role.REGION_ADMIN)
        b, _ = make_staff(region, Role.REGION_ADMIN)
        for other in region.staff.list(include_disabled=False):
            if other.role == Role.REGION_ADMIN and other.id not in (a.staff_id, b.staff_id):
                region.staff.disable(other.id)
        start = threading.Barrier(2)

        def remove(pair: tuple[int, bool], start: threading.Barrier = start) -> str:
            staff_id, by_role = pair
            start.wait()
            try:
                if by_role:
                    region.staff.set_role(staff_id, Role.AUDITOR)
                else:
                    region.staff.disable(staff_id)
                return "ok"
            except Conflict:
                return "conflict"

        with ThreadPoolExecutor(2) as pool:
            results = sorted(pool.map(remove, [(a.staff_id, False), (b.staff_id, True)]))
        assert results == ["conflict", "ok"]
        admins = [m for m in region.staff.list(include_disabled=False) if m.role == Role.REGION_ADMIN]
        assert len(admins) == 1


@pytest.mark.slow
@pytest.mark.postgres
def test_the_last_admin_stays_on_postgresql(settings: Settings) -> None:
    """On PostgreSQL (READ COMMITTED) two transactions each see the other admin active unless rows are locked."""
    with TemporaryPostgres(fsync=False) as pg, Region(settings.with_(database_url=pg.create_database("staff"))) as r:
        test_two_admins_removing_each_other_at_once_leave_one(r)
