"""Owner accounts and credentials: sign-up, log-in, sessions and API tokens.

Passwords are hashed with argon2id. Session cookies and bearer tokens are 256-bit random secrets;
the database keeps only their SHA-256 (a fast hash is right for high-entropy secrets and lets every
request be checked in microseconds). Credentials expire and revoke immediately: every request
re-reads the credential row.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from carvault.errors import (
    AlreadyExists,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    ValidationFailed,
)
from carvault.store.metadata import Credential, Database, LoginAttempt, Owner, now_ms

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10
LOGIN_WINDOW_MS = 15 * 60 * 1000
LOGIN_MAX_FAILURES = 10
TOKEN_PREFIX = "cvt_"


def hash_password(password: str) -> str:
    """argon2id hash of a password."""
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """True when the password matches the stored argon2 hash."""
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_hash(secret: str) -> str:
    """The stored form of a session or token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


# Credential kinds a request may authenticate with; a refresh token only ever goes to the token endpoint.
BEARER_KINDS = ("session", "token", "access")
# The credential behind a secret's hash, with what ``Accounts.resolve`` checks and its owner's e-mail.
# What decides whether a credential is in force and whom it speaks for (``Accounts.resolve``; VISS re-checks read the
# same in bulk: access/viss.py).
CREDENTIAL_COLUMNS = (
    Credential.id,
    Credential.owner_id,
    Credential.kind,
    Credential.grant_id,
    Credential.client_id,
    Credential.revoked_ms,
    Credential.expires_ms,
    Credential.last_used_ms,
)
_CREDENTIAL_BY_HASH = (
    select(*CREDENTIAL_COLUMNS, Owner.email)
    .join(Owner, Owner.id == Credential.owner_id)
    .where(Credential.token_hash == bindparam("token_hash"))
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request: the owner, or a holder of one of the owner's grants."""

    owner_id: int
    email: str
    credential_id: int
    kind: str
    grant_id: int | None = None  # set: the caller acts within this grant only (access/grants.py)
    client_id: str | None = None  # the app, for OAuth access tokens

    @property
    def is_owner(self) -> bool:
        """The owner's own, unscoped access (a session or an unscoped personal token)."""
        return self.grant_id is None


class FailureLimiter:
    """Counts failures (log-ins, pairing codes) per key in the shared DB, so every process sees them."""

    def __init__(self, db: Database, window_ms: int = LOGIN_WINDOW_MS, max_failures: int = LOGIN_MAX_FAILURES):
        self.db = db
        self.window_ms = window_ms
        self.max_failures = max_failures

    def check(self, keys: list[str], what: str) -> None:
        """Raise ``TooManyRequests`` if any key failed too often within the window."""
        since = now_ms() - self.window_ms
        with self.db.session() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.at_ms < since))
            for k in keys:
                n = (
                    s.scalar(
                        select(func.count())
                        .select_from(LoginAttempt)
                        .where(LoginAttempt.key == k, LoginAttempt.at_ms >= since)
                    )
                    or 0
                )
                if n >= self.max_failures:
                    raise TooManyRequests(
                        f"{what}; try again in {self.window_ms // 60000} minutes", retry_after_s=self.window_ms // 1000
                    )

    def fail(self, keys: list[str]) -> None:
        """Record one failure for each key."""
        with self.db.session() as s:
            s.add_all([LoginAttempt(key=k) for k in keys])

    def reserve(self, keys: list[str], what: str) -> list[int]:
        """Count this attempt as a failure *before* it is checked; ``TooManyRequests`` if that exceeds the limit.

        ``check`` then ``fail`` lets every attempt sent at once pass the count before any failure is recorded (a
        slow password hash makes the gap wide), so parallel guesses outrun the limit. Recording first and counting
        after (each count sees every attempt recorded before it) admits at most ``max_failures`` attempts per key
        within the window, however many arrive together. A refused attempt's rows are removed (it was not
        checked); an attempt that succeeds gives its rows back with ``release``.
        """
        since = now_ms() - self.window_ms
        with self.db.session() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.at_ms < since))
            rows = [LoginAttempt(key=k) for k in keys]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
        with self.db.session() as s:
            over = any(
                (
                    s.scalar(
                        select(func.count())
                        .select_from(LoginAttempt)
                        .where(LoginAttempt.key == k, LoginAttempt.at_ms >= since)
                    )
                    or 0
                )
                > self.max_failures
                for k in keys
            )
        if over:
            self.release(ids)
            raise TooManyRequests(
                f"{what}; try again in {self.window_ms // 60000} minutes", retry_after_s=self.window_ms // 1000
            )
        return ids

    def release(self, ids: list[int]) -> None:
        """Give back the attempts ``reserve`` recorded (the log-in succeeded, or it was refused unchecked)."""
        if ids:
            with self.db.session() as s:
                s.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))


class Accounts:
    """Owner sign-up, authentication and credential management."""

    def __init__(self, db: Database, session_ttl_s: int) -> None:
        self.db = db
        self.ttl_ms = session_ttl_s * 1000
        self.limiter = FailureLimiter(db)

    def register(self, email: str, password: str, display_name: str = "") -> Owner:
        """Create an owner account."""
        email = email.strip().lower()
        if not EMAIL_RE.match(email):
            raise ValidationFailed("that does not look like an email address", field="email")
        if len(password) < MIN_PASSWORD:
            raise ValidationFailed(f"passwords need at least {MIN_PASSWORD} characters", field="password")
        owner = Owner(email=email, password_hash=hash_password(password), display_name=display_name.strip())
        try:
            with self.db.session() as s:
                s.add(owner)
        except IntegrityError:
            raise AlreadyExists("an account with this email already exists", field="email") from None
        return owner

    def authenticate(self, email: str, password: str, client: str = "") -> Owner:
        """Check a password, rate-limited per email and per client address."""
        email = email.strip().lower()
        keys = [f"email:{email}"] + ([f"client:{client}"] if client else [])
        attempt = self.limiter.reserve(keys, "too many failed log-ins")  # parallel guesses cannot outrun it
        with self.db.session() as s:
            owner = s.scalar(select(Owner).where(Owner.email == email))
        # Verify against a dummy hash when the account is unknown so timing does not reveal it.
        ok = verify_password(owner.password_hash if owner else _DUMMY_HASH, password)
        if owner is None or not ok:
            raise Unauthenticated("wrong email or password")
        self.limiter.release(attempt)
        return owner

    def issue(
        self,
        owner_id: int,
        kind: str,
        label: str = "",
        ttl_ms: int | None = None,
        *,
        grant_id: int | None = None,
        client_id: str | None = None,
        family: str | None = None,
        scope: str | None = None,
        expires_ms: int | None = None,
    ) -> tuple[str, Credential]:
        """A new session, token, or OAuth access/refresh token; the secret is returned once and never stored.

        ``expires_ms`` (an absolute time) caps the lifetime: no credential outlives the grant it acts for.
        """
        if kind not in ("session", "token", "access", "refresh"):
            raise ValueError(kind)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        ends = now_ms() + (ttl_ms or self.ttl_ms)
        cred = Credential(
            owner_id=owner_id,
            kind=kind,
            token_hash=token_hash(secret),
            label=label[:200],
            expires_ms=min(ends, expires_ms) if expires_ms is not None else ends,
            grant_id=grant_id,
            client_id=client_id,
            family=family,
            scope=scope,
        )
        with self.db.session() as s:
            s.add(cred)
        return secret, cred

    def resolve(self, secret: str) -> Principal:
        """The principal behind a secret, if it is valid, unexpired and unrevoked.

        Every request asks this, so it is one prepared Core statement on a plain connection (no ORM session); the
        last-use time is written at most once a minute per credential.
        """
        now = now_ms()
        with self.db.connection() as conn:
            row = conn.execute(_CREDENTIAL_BY_HASH, {"token_hash": token_hash(secret)}).first()
        if row is None:
            raise Unauthenticated("the session or token is not valid")
        cred_id, owner_id, kind, grant_id, client_id, revoked_ms, expires_ms, last_used_ms, email = row
        if kind not in BEARER_KINDS:
            raise Unauthenticated("a refresh token is only accepted by the token endpoint")
        if kind == "access" and grant_id is None:  # an app's token never acts as the owner
            raise Unauthenticated("this access token names no grant")
        if revoked_ms is not None:
            raise Unauthenticated("the session or token was revoked")
        if expires_ms <= now:
            raise Unauthenticated("the session or token has expired")
        if last_used_ms is None or now - last_used_ms > 60_000:
            with self.db.connection(write=True) as conn:
                conn.execute(update(Credential).where(Credential.id == cred_id).values(last_used_ms=now))
        return Principal(
            owner_id=owner_id,
            email=email,
            credential_id=cred_id,
            kind=kind,
            grant_id=grant_id,
            client_id=client_id,
        )

    def credentials(self, owner_id: int) -> list[Credential]:
        """An owner's live sessions and personal tokens (apps' OAuth tokens are listed as grants)."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Credential)
                    .where(
                        Credential.owner_id == owner_id,
                        Credential.kind.in_(("session", "token")),
                        Credential.revoked_ms.is_(None),
                        Credential.expires_ms > now_ms(),
                    )
                    .order_by(Credential.id)
                )
            )

    def revoke(self, owner_id: int, credential_id: int) -> None:
        """Revoke one of the owner's credentials, effective on the next request."""
        with self.db.session() as s:
            cred = s.get(Credential, credential_id)
            if cred is None or cred.owner_id != owner_id:
                raise NotFound("no such session or token")
            if cred.revoked_ms is None:
                cred.revoked_ms = now_ms()

    def change_password(self, owner_id: int, old: str, new: str) -> None:
        """Change the password and revoke every other credential."""
        if len(new) < MIN_PASSWORD:
            raise ValidationFailed(f"passwords need at least {MIN_PASSWORD} characters", field="password")
        with self.db.session() as s:
            owner = s.get(Owner, owner_id)
            if owner is None or not verify_password(owner.password_hash, old):
                raise Forbidden("the current password is wrong")
            owner.password_hash = hash_password(new)
            s.execute(
                update(Credential)
                .where(Credential.owner_id == owner_id, Credential.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )


_DUMMY_HASH = hash_password("carvault-timing-equaliser")
