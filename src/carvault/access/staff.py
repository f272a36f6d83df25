"""The operator's staff accounts: argon2id passwords, a mandatory TOTP second factor, short sessions.

A staff member has one role (compliance/roles.py) and a jurisdiction (the region they work from). Logging in takes
username, password and the current six-digit code of their authenticator (RFC 6238, 30-second steps, one step of
clock drift either way); a code is accepted once, so a code seen over someone's shoulder cannot be replayed within
its window. Failures are limited per account and per client address like owners' log-ins. Sessions are ``cvs_``
secrets of 256 bits kept only as SHA-256, ending after 30 idle minutes or 8 hours, whichever comes first; disabling
an account ends its sessions at once. The TOTP secret must be kept readable to check codes, so it is sealed with
the region's data key (AES-256-GCM, the username as associated data) rather than stored in the clear.
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
from dataclasses import dataclass

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from carvault.access.accounts import MIN_PASSWORD, FailureLimiter, hash_password, token_hash, verify_password
from carvault.access.audit import LEGAL_OBLIGATION, Actor, AuditAction, AuditLog
from carvault.compliance.roles import Role
from carvault.errors import AlreadyExists, Conflict, NotFound, Unauthenticated, Unavailable, ValidationFailed
from carvault.store.metadata import Database, StaffMember, StaffSession, now_ms, rowcount

STAFF_TOKEN_PREFIX = "cvs_"
IDLE_MS = 30 * 60 * 1000
MAX_SESSION_MS = 8 * 3600 * 1000
TOTP_STEP_S = 30
TOTP_DRIFT_STEPS = 1
ISSUER = "CarVault"
USERNAME_RE = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
JURISDICTION_RE = re.compile(r"^[a-z]{2,16}$")
_SEAL_MAGIC = b"cvtotp1"
_NONCE_LEN = 12
# The basis of recording what staff do: the operator's duty to account for access to personal data.
STAFF_BASIS = LEGAL_OBLIGATION


_ACTIVE_ADMIN = (StaffMember.role == Role.REGION_ADMIN.value, StaffMember.disabled_ms.is_(None))


@dataclass(frozen=True)
class StaffPrincipal:
    """The authenticated staff member behind a request."""

    staff_id: int
    username: str
    role: Role
    jurisdiction: str
    credential_id: int

    @property
    def actor(self) -> Actor:
        """How this staff member appears in audit logs: ``staff:<role>:<username>``."""
        return staff_actor(self.role, self.username)


def staff_actor(role: Role | str, username: str) -> Actor:
    """The audit actor of a staff member."""
    return Actor("staff", f"{Role(role).value}:{username}")


def _aad(username: str) -> bytes:
    return b"carvault staff totp\n" + username.encode()


def seal_totp(data_key: bytes, username: str, secret: str) -> bytes:
    """A TOTP secret sealed with the data key, bound to its username."""
    nonce = os.urandom(_NONCE_LEN)
    return _SEAL_MAGIC + nonce + AESGCM(data_key).encrypt(nonce, secret.encode(), _aad(username))


def open_totp(data_key: bytes, username: str, sealed: bytes) -> str:
    """The TOTP secret back from its sealed form; ``Unavailable`` if it does not open with this key."""
    if not sealed.startswith(_SEAL_MAGIC):
        raise Unavailable(f"the second-factor secret of {username} is not sealed in a known form")
    body = sealed[len(_SEAL_MAGIC) :]
    try:
        return AESGCM(data_key).decrypt(body[:_NONCE_LEN], body[_NONCE_LEN:], _aad(username)).decode()
    except InvalidTag:
        raise Unavailable(f"the second-factor secret of {username} does not open with this region's key") from None


def check_role(role: str) -> Role:
    """A role from its name, or ``ValidationFailed`` naming the roles there are."""
    try:
        return Role(role.strip())
    except ValueError:
        raise ValidationFailed(f"role must be one of {', '.join(r.value for r in Role)}", field="role") from None


def check_jurisdiction(jurisdiction: str) -> str:
    """A jurisdiction: a region name of 2-16 lowercase letters (cn, eu, us)."""
    j = jurisdiction.strip().lower()
    if not JURISDICTION_RE.match(j):
        raise ValidationFailed("jurisdiction must be a region name such as cn, eu or us", field="jurisdiction")
    return j


class Staff:
    """Staff accounts, their second factor, their sessions."""

    def __init__(self, db: Database, audit: AuditLog, region: str) -> None:
        self.db = db
        self.audit = audit
        self.region = region
        self.limiter = FailureLimiter(db)

    # ------------------------------------------------------------- accounts
    def create(
        self,
        username: str,
        password: str,
        role: Role | str,
        jurisdiction: str | None = None,
        display_name: str = "",
        *,
        by: Actor | None = None,
    ) -> tuple[StaffMember, str]:
        """A new staff member and their TOTP secret (returned once: the member enrols it in an authenticator)."""
        username = username.strip().lower()
        if not USERNAME_RE.match(username):
            raise ValidationFailed(
                "usernames are 2-64 characters: a lowercase letter, then letters, digits, '.', '_' or '-'",
                field="username",
            )
        if len(password) < MIN_PASSWORD:
            raise ValidationFailed(f"passwords need at least {MIN_PASSWORD} characters", field="password")
        role = check_role(str(role))
        jurisdiction = check_jurisdiction(jurisdiction or self.region)
        secret = pyotp.random_base32()
        member = StaffMember(
            username=username,
            display_name=display_name.strip()[:200],
            role=role.value,
            jurisdiction=jurisdiction,
            password_hash=hash_password(password),
            totp_sealed=seal_totp(self._key(), username, secret),
            created_by=str(by) if by else "",
        )
        try:
            with self.db.session() as s:
                s.add(member)
        except IntegrityError:
            raise AlreadyExists(f"a staff member {username} already exists", field="username") from None
        self._record(by, AuditAction.STAFF_CREATE, member, role=role.value, jurisdiction=jurisdiction)
        return member, secret

    def totp_uri(self, member: StaffMember, secret: str) -> str:
        """The otpauth:// URI an authenticator app enrols (shown as a QR code or typed in)."""
        return pyotp.TOTP(secret, interval=TOTP_STEP_S).provisioning_uri(
            name=f"{member.username}@{self.region}", issuer_name=ISSUER
        )

    def get(self, staff_id: int) -> StaffMember:
        """One staff member, or ``NotFound``."""
        with self.db.session() as s:
            m = s.get(StaffMember, staff_id)
        if m is None:
            raise NotFound("no such staff member", staff_id=staff_id)
        return m

    def by_username(self, username: str) -> StaffMember:
        """A staff member by username, or ``NotFound``."""
        with self.db.session() as s:
            m = s.scalar(select(StaffMember).where(StaffMember.username == username.strip().lower()))
        if m is None:
            raise NotFound(f"no staff member {username}", username=username)
        return m

    def list(self, *, include_disabled: bool = True) -> list[StaffMember]:
        """Every staff member, by username."""
        q = select(StaffMember).order_by(StaffMember.username)
        if not include_disabled:
            q = q.where(StaffMember.disabled_ms.is_(None))
        with self.db.session() as s:
            return list(s.scalars(q))

    def set_role(self, staff_id: int, role: Role | str, *, by: Actor | None = None) -> StaffMember:
        """Change a member's role; the last active region admin keeps theirs. Their sessions end (new role, new
        log-in)."""
        role = check_role(str(role))
        with self.db.session() as s:
            old = s.scalar(select(StaffMember.role).where(StaffMember.id == staff_id))
            changed = self._change_keeping_an_admin(s, staff_id, StaffMember.role != role.value, role=role.value)
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            if not changed:
                if m.role == role.value:
                    return m
                raise Conflict("this is the last active region admin; name another one first")
            self._end_sessions(s, staff_id)
        self._record(by, AuditAction.STAFF_ROLE, m, role=role.value, previous=old)
        return m

    def disable(self, staff_id: int, *, by: Actor | None = None) -> StaffMember:
        """Disable an account: every session ends at once; the last active region admin cannot be disabled."""
        with self.db.session() as s:
            changed = self._change_keeping_an_admin(
                s, staff_id, StaffMember.disabled_ms.is_(None), disabled_ms=now_ms()
            )
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            if not changed:
                if m.disabled_ms is not None:
                    return m
                raise Conflict("this is the last active region admin; name another one first")
            self._end_sessions(s, staff_id)
        self._record(by, AuditAction.STAFF_DISABLE, m)
        return m

    def enable(self, staff_id: int, *, by: Actor | None = None) -> StaffMember:
        """Enable a disabled account again (it logs in afresh)."""
        with self.db.session() as s:
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            if m.disabled_ms is None:
                return m
            m.disabled_ms = None
        self._record(by, AuditAction.STAFF_ENABLE, m)
        return m

    def reset_totp(self, staff_id: int, *, by: Actor | None = None) -> tuple[StaffMember, str]:
        """A new TOTP secret (the old authenticator stops working, sessions end); returned once for enrolment."""
        secret = pyotp.random_base32()
        with self.db.session() as s:
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            m.totp_sealed = seal_totp(self._key(), m.username, secret)
            m.totp_last_step = None
            self._end_sessions(s, staff_id)
        self._record(by, AuditAction.STAFF_TOTP_RESET, m)
        return m, secret

    def set_password(self, staff_id: int, password: str, *, by: Actor | None = None) -> StaffMember:
        """Set a new password; every session of the member ends."""
        if len(password) < MIN_PASSWORD:
            raise ValidationFailed(f"passwords need at least {MIN_PASSWORD} characters", field="password")
        with self.db.session() as s:
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            m.password_hash = hash_password(password)
            self._end_sessions(s, staff_id)
        self._record(by, AuditAction.STAFF_PASSWORD, m)
        return m

    def end_sessions(self, staff_id: int, *, by: Actor | None = None) -> int:
        """End every live session of a member at once (a lost laptop); the number ended."""
        with self.db.session() as s:
            m = s.get(StaffMember, staff_id)
            if m is None:
                raise NotFound("no such staff member", staff_id=staff_id)
            ended = self._end_sessions(s, staff_id)
        self._record(by, AuditAction.STAFF_SESSIONS_END, m, sessions=ended)
        return ended

    # -------------------------------------------------------------- log-in
    def login(self, username: str, password: str, code: str, client: str = "") -> tuple[str, StaffPrincipal]:
        """Check password and TOTP code (rate-limited per account and per address); a new session's secret."""
        username = username.strip().lower()
        keys = [f"staff:{username}"] + ([f"staff-client:{client}"] if client else [])
        # Recorded as a failure before the check and given back on success, so guesses sent in parallel cannot
        # all pass the count before any is recorded (accounts.FailureLimiter.reserve).
        attempt = self.limiter.reserve(keys, "too many failed staff log-ins")
        with self.db.session() as s:
            m = s.scalar(select(StaffMember).where(StaffMember.username == username))
        ok = verify_password(m.password_hash if m else _DUMMY_HASH, password)
        if m is None or not ok or m.disabled_ms is not None or not self._take_code(m, code):
            raise Unauthenticated("wrong username, password or code, or the account is disabled")
        self.limiter.release(attempt)
        secret = STAFF_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = now_ms()
        sess = StaffSession(
            staff_id=m.id,
            token_hash=token_hash(secret),
            client=client[:100],
            created_ms=now,
            last_used_ms=now,
            expires_ms=now + MAX_SESSION_MS,
        )
        with self.db.session() as s:
            s.add(sess)
        principal = StaffPrincipal(m.id, m.username, Role(m.role), m.jurisdiction, sess.id)
        self.audit.record(
            owner_id=None,
            actor=principal.actor,
            action=AuditAction.STAFF_LOGIN,
            legal_basis=STAFF_BASIS,
            detail={"staff_id": m.id, "session_id": sess.id, "client": client[:100]},
        )
        return secret, principal

    def _take_code(self, m: StaffMember, code: str) -> bool:
        """Whether ``code`` is the member's current code (±1 step) and was not used before; marks it used."""
        code = code.strip().replace(" ", "")
        if not (code.isascii() and code.isdigit() and len(code) == 6):
            return False
        totp = pyotp.TOTP(open_totp(self._key(), m.username, m.totp_sealed), interval=TOTP_STEP_S)
        now_step = now_ms() // 1000 // TOTP_STEP_S
        for step in range(now_step - TOTP_DRIFT_STEPS, now_step + TOTP_DRIFT_STEPS + 1):
            if secrets.compare_digest(totp.at(step * TOTP_STEP_S), code):
                # Accept a step only once, and never one older than the last accepted (conditional, so two
                # concurrent log-ins with one code cannot both win).
                with self.db.session() as s:
                    won = rowcount(
                        s.execute(
                            update(StaffMember)
                            .where(
                                StaffMember.id == m.id,
                                or_(StaffMember.totp_last_step.is_(None), StaffMember.totp_last_step < step),
                            )
                            .values(totp_last_step=step)
                        )
                    )
                return bool(won)
        return False

    def resolve(self, secret: str) -> StaffPrincipal:
        """The staff member behind a session secret, if it is live (not revoked, idle or past its end)."""
        if not secret.startswith(STAFF_TOKEN_PREFIX):
            raise Unauthenticated("this is not a staff session")
        now = now_ms()
        with self.db.session() as s:
            row = s.execute(
                select(StaffSession, StaffMember)
                .join(StaffMember, StaffMember.id == StaffSession.staff_id)
                .where(StaffSession.token_hash == token_hash(secret))
            ).first()
            if row is None:
                raise Unauthenticated("the staff session is not valid")
            sess, m = row
            if sess.revoked_ms is not None or m.disabled_ms is not None:
                raise Unauthenticated("the staff session has ended")
            if sess.expires_ms <= now or now - sess.last_used_ms > IDLE_MS:
                raise Unauthenticated("the staff session has expired; log in again")
            if now - sess.last_used_ms > 10_000:
                s.execute(update(StaffSession).where(StaffSession.id == sess.id).values(last_used_ms=now))
        return StaffPrincipal(m.id, m.username, Role(m.role), m.jurisdiction, sess.id)

    def logout(self, principal: StaffPrincipal) -> None:
        """End the caller's session."""
        with self.db.session() as s:
            s.execute(
                update(StaffSession)
                .where(StaffSession.id == principal.credential_id, StaffSession.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )
        self.audit.record(
            owner_id=None,
            actor=principal.actor,
            action=AuditAction.STAFF_LOGOUT,
            legal_basis=STAFF_BASIS,
            detail={"staff_id": principal.staff_id, "session_id": principal.credential_id},
        )

    def sessions(self, staff_id: int) -> builtins.list[StaffSession]:
        """A member's live sessions, oldest first."""
        now = now_ms()
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(StaffSession)
                    .where(
                        StaffSession.staff_id == staff_id,
                        StaffSession.revoked_ms.is_(None),
                        StaffSession.expires_ms > now,
                        StaffSession.last_used_ms > now - IDLE_MS,
                    )
                    .order_by(StaffSession.id)
                )
            )

    # ------------------------------------------------------------- helpers
    def _key(self) -> bytes:
        if self.db.data_key is None:
            raise Unavailable("the region's data key is not loaded: staff second factors cannot be sealed")
        return self.db.data_key

    def _change_keeping_an_admin(
        self, s: Session, staff_id: int, needed: ColumnElement[bool], **values: object
    ) -> bool:
        """Apply ``values`` to a member if ``needed`` holds and an active region admin other than them remains
        (or they are none themselves); whether it was applied.

        One conditional UPDATE decides, so two admins disabling each other at once cannot leave none: SQLite runs
        it under its one write lock; on PostgreSQL the active admins' rows are locked first, so the second
        statement counts after the first commits.
        """
        if not self.db.is_sqlite:
            s.execute(select(StaffMember.id).where(*_ACTIVE_ADMIN).with_for_update())
        others = aliased(StaffMember)
        remaining = (
            select(func.count())
            .select_from(others)
            .where(others.role == Role.REGION_ADMIN.value, others.disabled_ms.is_(None), others.id != staff_id)
            .scalar_subquery()
        )
        not_the_last = or_(
            StaffMember.role != Role.REGION_ADMIN.value, StaffMember.disabled_ms.is_not(None), remaining > 0
        )
        done = s.execute(update(StaffMember).where(StaffMember.id == staff_id, needed, not_the_last).values(**values))
        return rowcount(done) == 1

    @staticmethod
    def _end_sessions(s: Session, staff_id: int) -> int:
        return rowcount(
            s.execute(
                update(StaffSession)
                .where(StaffSession.staff_id == staff_id, StaffSession.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )
        )

    def _record(self, by: Actor | None, action: AuditAction, m: StaffMember, **detail: object) -> None:
        self.audit.record(
            owner_id=None,
            actor=by or Actor("system", "staff"),
            action=action,
            legal_basis=STAFF_BASIS,
            detail={"staff_id": m.id, "username": m.username, **detail},
        )


def staff_json(m: StaffMember) -> dict[str, object]:
    """A staff member as the operator's API shows them (never a secret or hash)."""
    return {
        "id": m.id,
        "username": m.username,
        "display_name": m.display_name,
        "role": m.role,
        "jurisdiction": m.jurisdiction,
        "created_ms": m.created_ms,
        "created_by": m.created_by,
        "disabled_ms": m.disabled_ms,
        "active": m.disabled_ms is None,
    }


_DUMMY_HASH = hash_password("carvault-staff-timing-equaliser")
