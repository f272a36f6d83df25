"""The region's OAuth 2.0 authorization server (docs/sharing.md §3), built on authlib's server classes.

authlib does the protocol: request validation, client authentication (RFC 6749 §2.3), the authorization code
grant with PKCE (RFC 7636, ``S256`` only and required of every client), refresh tokens (RFC 6749 §6), the device
authorization grant (RFC 8628), revocation (RFC 7009) and introspection (RFC 7662). This module gives it
CarVault's models and rules:

- **Clients** are registered apps (access/apps.py). Who may receive data at all is decided by
  ``compliance.sharing.check_recipient`` at the authorization request, at every token request and at
  introspection, never by a copy of that rule here.
- **Grants** are what the owner approved on the consent screen (access/grants.py); every token carries its
  grant's id, and its scope is the grant's, so a token can never claim more than the owner approved.
- **Tokens** are ``Credential`` rows issued through ``Accounts.issue`` (kind ``access``: 1 hour; ``refresh``:
  30 days; neither outlives the grant). Codes, device codes and tokens are stored as SHA-256 only.
- **Rotation** (RFC 9700 §4.14.2): each refresh spends the old refresh token and issues a new one in the same
  family; a spent refresh token presented again revokes the whole family, and the grant with it. A code presented
  twice revokes what it issued (RFC 6749 §4.1.2) the same way.

The web layer hands requests over as ``HttpRequest`` (method, URL, headers, query and form pairs) and turns the
``OAuthResponse`` it gets back into an HTTP answer, so this module imports no web framework.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    JsonPayload,
    JsonRequest,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE, DeviceAuthorizationEndpoint, DeviceCodeGrant
from authlib.oauth2.rfc9207 import IssuerParameter
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from carvault.access.accounts import Accounts, token_hash
from carvault.access.apps import Apps, app_purposes, app_redirect_uris
from carvault.access.audit import Actor
from carvault.access.grants import Grants
from carvault.compliance.sharing import (
    DAY_MS,
    PURPOSES,
    Scope,
    ScopeRequest,
    check_purpose,
    check_recipient,
    parse_scope,
    shareable_signals,
)
from carvault.errors import CarVaultError, Unauthenticated
from carvault.signals import Catalogue, Signal
from carvault.store.metadata import App, Credential, Database, DeviceAuthorization, Grant, OAuthCode, now_ms

log = logging.getLogger("carvault.oauth")

CODE_TTL_MS = 60_000  # authorization codes: one use, one minute
ACCESS_TTL_MS = 3_600_000  # access tokens: one hour
REFRESH_TTL_MS = 30 * DAY_MS  # refresh tokens: 30 days
DEVICE_TTL_S = 600  # device and user codes: ten minutes
DEVICE_INTERVAL_S = 5  # the least time between polls (RFC 8628 §3.2); slow_down adds 5 s each time
USER_CODE_LENGTH = 9  # XXXX-XXXX
GRANT_TYPES = ("authorization_code", "refresh_token", DEVICE_CODE_GRANT_TYPE)
CONFIDENTIAL_METHODS = ("client_secret_basic", "client_secret_post")
AUTH_METHODS = (*CONFIDENTIAL_METHODS, "none")
CHALLENGE_METHOD = "S256"
# Where each endpoint lives, relative to the issuer (the server's base URL).
PATHS = {
    "authorization_endpoint": "/oauth/authorize",
    "token_endpoint": "/oauth/token",
    "revocation_endpoint": "/oauth/revoke",
    "introspection_endpoint": "/oauth/introspect",
    "device_authorization_endpoint": "/oauth/device_authorization",
}
VERIFICATION_PATH = "/device"
METADATA_PATH = "/.well-known/oauth-authorization-server"


def oauth_text(message: str) -> str:
    """A message as an OAuth ``error_description`` may carry it (RFC 6749 §5.2: printable ASCII, no ``"`` or ``\\``)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in message)[:500]


def normal_user_code(typed: str) -> str:
    """A user code as stored (``WDJB-MJHT``) from what an owner typed (any case, spaces or dashes)."""
    letters = "".join(c for c in typed.upper() if c.isascii() and c.isalpha())
    return f"{letters[:4]}-{letters[4:8]}" if len(letters) == 8 else ""


# --------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class HttpRequest:
    """What the web layer passes in: one HTTP request, its query and (form) body as ordered pairs."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Sequence[tuple[str, str]] = ()
    form: Sequence[tuple[str, str]] = ()


@dataclass
class OAuthResponse:
    """What the server answers: status, a JSON object (or empty body) and headers."""

    status: int
    body: dict[str, Any] | str
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        """Where a redirect goes, if this is one."""
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, uri: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"] + [("Location", uri)]


class Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: every redirect back to the app names this server, so an app talking to several cannot mix them up."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class _Payload(OAuth2Payload):
    """The request's parameters: form fields, then query parameters."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    @property
    def data(self) -> dict[str, str]:
        first: dict[str, str] = {}
        for k, v in self._pairs:
            first.setdefault(k, v)
        return first

    @property
    def datalist(self) -> dict[str, list[str]]:
        many: dict[str, list[str]] = {}
        for k, v in self._pairs:
            many.setdefault(k, []).append(v)
        return many


# authlib repeats these parameters in error descriptions, which refuse characters outside RFC 6749 §5.2's set
# (a ValueError, not an OAuth error); such a value can never match a registered one anyway.
_ECHOED = frozenset({"response_type", "redirect_uri"})


def _echoable(name: str, value: str) -> str:
    return oauth_text(value) if name in _ECHOED else value


class _Request(OAuth2Request):
    """An ``HttpRequest`` as authlib reads it."""

    def __init__(self, http: HttpRequest) -> None:
        super().__init__(http.method, http.url, headers=http.headers)
        self._http = http
        self.payload = _Payload([(k, _echoable(k, v)) for k, v in (*http.form, *http.query)])

    @property
    def args(self) -> dict[str, str]:
        return _Payload(list(self._http.query)).data

    @property
    def form(self) -> dict[str, str]:
        return _Payload(list(self._http.form)).data


class _JsonPayload(JsonPayload):
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


# ----------------------------------------------------------------------------------------------- models
class OAuthClient(ClientMixin):  # type: ignore[misc]
    """A registered app as an OAuth client: exact redirect URIs, a secret for confidential apps, PKCE for all."""

    def __init__(self, app: App, apps: Apps) -> None:
        self.app = app
        self._apps = apps

    @property
    def confidential(self) -> bool:
        """True for an app with a client secret."""
        return self.app.client_secret_hash is not None

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # every authorization request names its redirect URI, compared exactly

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""  # what a scope may name is the server's rule (validate_requested_scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in app_redirect_uris(self.app)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.confidential and self._apps.check_secret(self.app, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in CONFIDENTIAL_METHODS if self.confidential else method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass(frozen=True)
class Approval:
    """The owner's approval a token is issued for (authlib's "user"): whose, which grant, which token family."""

    owner_id: int
    grant_id: int
    family: str


class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """A stored authorization code (only its hash is kept)."""

    def __init__(self, row: OAuthCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class Token(TokenMixin):  # type: ignore[misc]
    """An access or refresh token's credential row."""

    def __init__(self, cred: Credential) -> None:
        self.cred = cred

    def check_client(self, client: OAuthClient) -> bool:
        return self.cred.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.cred.scope or ""

    def get_expires_in(self) -> int:
        return max(0, (self.cred.expires_ms - now_ms()) // 1000)

    def is_expired(self) -> bool:
        return self.cred.expires_ms <= now_ms()

    def is_revoked(self) -> bool:
        return self.cred.revoked_ms is not None

    def get_user(self) -> int:
        return self.cred.owner_id

    def get_client(self) -> None:
        return None


class DeviceCredential:
    """A pending device authorization (RFC 8628 §3.2) as authlib reads it."""

    def __init__(self, row: DeviceAuthorization) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_user_code(self) -> str:
        return self.row.user_code

    def is_expired(self) -> bool:
        return self.row.expires_ms <= now_ms()


class RecipientRefused(OAuth2Error):  # type: ignore[misc]
    """The app may not receive data (compliance.sharing.check_recipient): carries CarVault's code too."""

    error = "access_denied"

    def __init__(self, refusal: CarVaultError, error: str = "access_denied", **kwargs: Any) -> None:
        super().__init__(description=oauth_text(refusal.message), error=error, **kwargs)
        self.refusal = refusal

    def get_body(self) -> list[tuple[str, str]]:
        return [*super().get_body(), ("carvault_code", self.refusal.code)]


# ----------------------------------------------------------------------------------------------- grants
class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE required of every client at the authorization request, ``S256`` only (RFC 9700 §2.1.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = [CHALLENGE_METHOD]
    DEFAULT_CODE_CHALLENGE_METHOD = CHALLENGE_METHOD

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != CHALLENGE_METHOD:
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    """Authorization code grant; codes are hashed, one-time, 60 s, bound to client, redirect URI and grant."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)
    server: OAuthServer

    def save_authorization_code(self, code: str, request: Any) -> None:
        approval: Approval = request.user
        self.server.save_code(code, request, approval)

    def query_authorization_code(self, code: str, client: OAuthClient) -> AuthorizationCode | None:
        return self.server.redeem_code(code, client)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Codes are spent when redeemed and kept as spent, so a second use is recognised and revokes."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Approval:
        row = authorization_code.row
        return self.server.approval_of(row.grant_id, family=row.code_hash)


class RotatingRefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    """Refresh with rotation: the old refresh token is spent, a new one issued; a spent one reused ends the family."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: OAuthServer

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        return self.server.spend_refresh_token(refresh_token, self.request.client, self.request.payload.scope)

    def _validate_token_scope(self, token: Token) -> None:
        """Checked before the token is spent (``spend_refresh_token``), so a refused scope costs the app nothing."""

    def authenticate_user(self, refresh_token: Token) -> Approval:
        cred = refresh_token.cred
        assert cred.grant_id is not None and cred.family is not None
        return Approval(cred.owner_id, cred.grant_id, cred.family)

    def revoke_old_credential(self, refresh_token: Token) -> None:
        """Spent already in ``authenticate_refresh_token`` (one atomic update: two racing refreshes cannot both win)."""


class DeviceGrant(DeviceCodeGrant):  # type: ignore[misc]
    """The device's polls (RFC 8628 §3.4–3.5): pending, slow_down, access_denied, expired_token, or its tokens."""

    server: OAuthServer

    def query_device_credential(self, device_code: str) -> DeviceCredential | None:
        return self.server.device_credential(device_code)

    def query_user_grant(self, user_code: str) -> tuple[Approval | None, bool] | None:
        return self.server.device_decision(self.request.payload.data.get("device_code", ""))

    def should_slow_down(self, credential: DeviceCredential) -> bool:
        return self.server.polled_too_fast(credential.row)


class DeviceEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    """``POST /oauth/device_authorization`` (RFC 8628 §3.1–3.2)."""

    CLIENT_AUTH_METHODS = list(AUTH_METHODS)
    EXPIRES_IN = DEVICE_TTL_S
    INTERVAL = DEVICE_INTERVAL_S
    server: OAuthServer

    def get_verification_uri(self) -> str:
        return self.server.issuer + VERIFICATION_PATH

    def create_endpoint_response(self, request: _Request) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client: OAuthClient = self.authenticate_client(request)
        self.server.check_client_may_receive(client, error="unauthorized_client")
        scope = request.payload.scope
        self.server.validate_requested_scope(scope)
        purpose = self.server.purpose_of(client.app, request.payload.data.get("purpose"))
        device_code = self.generate_device_code()
        for _ in range(5):  # 20^8 codes: a collision is rare, and retried
            user_code = self.generate_user_code()
            if self.server.save_device(device_code, user_code, client.get_client_id(), scope, purpose):
                break
        else:
            raise InvalidRequestError("could not make a unique user code; try again")
        uri = self.get_verification_uri()
        body = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?{urlencode({'user_code': user_code})}",
            "expires_in": self.EXPIRES_IN,
            "interval": self.INTERVAL,
        }
        return 200, body, [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """``POST /oauth/revoke`` (RFC 7009): an access token ends alone; a refresh token ends its whole family."""

    CLIENT_AUTH_METHODS = list(AUTH_METHODS)
    server: OAuthServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return self.server.find_token(token_string)

    def revoke_token(self, token: Token, request: Any) -> None:
        self.server.revoke(token)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """``POST /oauth/introspect`` (RFC 7662): an authenticated app learns about its own tokens only."""

    CLIENT_AUTH_METHODS = list(CONFIDENTIAL_METHODS)
    server: OAuthServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return self.server.find_token(token_string)

    def check_permission(self, token: Token, client: OAuthClient, request: Any) -> bool:
        return bool(token.check_client(client))

    def introspect_token(self, token: Token) -> dict[str, Any]:
        return self.server.introspect(token)


# ----------------------------------------------------------------------------------------------- server
@dataclass(frozen=True)
class ConsentRequest:
    """A validated authorization request, as the consent screen shows it."""

    app: App
    scope: ScopeRequest
    signals: list[Signal]
    purpose: str
    redirect_uri: str | None = None
    state: str | None = None


class OAuthServer(AuthorizationServer):  # type: ignore[misc]
    """The authorization server of one region and issuer (its public base URL)."""

    def __init__(
        self,
        *,
        db: Database,
        apps: Apps,
        accounts: Accounts,
        grants_: Grants,
        catalogue: Catalogue,
        region: str,
        issuer: str,
    ) -> None:
        super().__init__(scopes_supported=None)
        self.db = db
        self.apps = apps
        self.accounts = accounts
        self.grants = grants_
        self.catalogue = catalogue
        self.region = region
        self.issuer = issuer.rstrip("/")
        self.register_token_generator("default", self._issue_tokens)
        self.register_grant(CodeGrant, [S256Challenge(required=True)])
        self.register_grant(RotatingRefreshGrant)
        self.register_grant(DeviceGrant)
        self.register_endpoint(DeviceEndpoint)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_extension(Issuer(self.issuer))

    # ---------------------------------------------------------------- framework glue (authlib's integration API)
    def query_client(self, client_id: str) -> OAuthClient | None:
        app = self.apps.find(client_id) if isinstance(client_id, str) and len(client_id) <= 64 else None
        return OAuthClient(app, self.apps) if app else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Nothing left to do: ``_issue_tokens`` stored each token's hash as it made the token."""

    def create_oauth2_request(self, request: HttpRequest | _Request) -> _Request:
        return request if isinstance(request, _Request) else _Request(request)

    def create_json_request(self, request: HttpRequest) -> JsonRequest:
        json_request = JsonRequest(request.method, request.url, request.headers)
        json_request.payload = _JsonPayload(dict(request.form))
        return json_request

    def handle_response(self, status: int, body: Any, headers: Sequence[tuple[str, str]]) -> OAuthResponse:
        return OAuthResponse(status, body if isinstance(body, dict | str) else dict(body), list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        log.debug("oauth %s", name)

    def validate_requested_scope(self, scope: str | None) -> None:
        """Scope tokens are ``vss:<branch or path>`` (at least one), ``history``, ``live``, ``location:precise``."""
        self.requested_scope(scope)

    # ---------------------------------------------------------------------------------- rules applied to requests
    def requested_scope(self, scope: str | None) -> tuple[ScopeRequest, list[Signal]]:
        """The request a scope string makes and the signals it names; ``invalid_scope`` for anything else."""
        asked = parse_scope(scope)
        if asked.unknown:
            raise InvalidScopeError(oauth_text(f"unknown scope token(s): {' '.join(asked.unknown)}"))
        if not asked.signals:
            raise InvalidScopeError("name at least one VSS branch or path as vss:<branch>")
        try:
            return asked, shareable_signals(self.catalogue, asked.signals)
        except CarVaultError as e:
            raise InvalidScopeError(oauth_text(f"{e.code}: {e.message}")) from None

    def purpose_of(self, app: App, purpose: str | None) -> str:
        """The request's ``purpose``, one of the app's declared purposes (implied when it declared only one)."""
        declared = app_purposes(app)
        if not purpose and len(declared) == 1:
            return declared[0]
        try:
            return check_purpose(purpose or "", declared)
        except CarVaultError as e:
            raise InvalidRequestError(oauth_text(f"purpose: {e.message}")) from None

    def check_client_may_receive(self, client: OAuthClient, error: str = "access_denied", **kwargs: Any) -> None:
        """``RecipientRefused`` unless the app may receive this region's data (approved, no gatekeeper, local)."""
        try:
            check_recipient(client.app, self.region, self.grants.transfers)
        except CarVaultError as e:
            raise RecipientRefused(e, error=error, **kwargs) from None

    def consent_request(self, http: HttpRequest) -> tuple[ConsentRequest, Any]:
        """Validate an authorization request (authlib) and CarVault's rules; ``OAuth2Error`` when it fails.

        An error with ``redirect_uri`` set may be sent back to the app; one without must be shown to the person
        (unknown app, or a redirect URI the app did not register).
        """
        grant = self.get_consent_grant(http)
        client: OAuthClient = grant.request.client
        redirect = grant.redirect_uri
        state = grant.request.payload.state
        self.check_client_may_receive(client, redirect_uri=redirect, state=state)
        try:
            purpose = self.purpose_of(client.app, grant.request.payload.data.get("purpose"))
        except OAuth2Error as e:
            e.redirect_uri, e.state = redirect, state
            raise
        asked, signals = self.requested_scope(grant.request.payload.scope)
        return ConsentRequest(client.app, asked, signals, purpose, redirect, state), grant

    def redirect_error(self, error: OAuth2Error) -> OAuthResponse:
        """An authorization error sent back to the app's (checked) redirect URI, naming this server (RFC 9207)."""
        response: OAuthResponse = self.handle_error_response(None, error)
        Issuer(self.issuer).add_issuer_parameter(self, response)
        return response

    def authorize(self, http: HttpRequest, grant: Any, approval: Approval | None) -> OAuthResponse:
        """The redirect back to the app: a code for the owner's approval, ``access_denied`` when ``None``."""
        response: OAuthResponse = self.create_authorization_response(http, grant_user=approval, grant=grant)
        return response

    # --------------------------------------------------------------------------------------------- tokens
    def approval_of(self, grant_id: int, family: str) -> Approval:
        """The approval behind a grant id."""
        with self.db.session() as s:
            g = s.get(Grant, grant_id)
        if g is None:
            raise InvalidGrantError("the grant behind this code no longer exists")
        return Approval(g.owner_id, g.id, family)

    def _grant_in_force(self, grant_id: int, client: OAuthClient) -> Grant:
        try:
            grant = self.grants.live(grant_id)
        except Unauthenticated as e:
            raise InvalidGrantError(oauth_text(e.message)) from None
        if grant.client_id != client.get_client_id():
            raise InvalidGrantError("this grant belongs to another app")
        self.check_client_may_receive(client, error="unauthorized_client")
        return grant

    def _issue_tokens(
        self,
        grant_type: str,
        client: OAuthClient,
        user: Approval | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """authlib's token generator: an access token (and a refresh token) for the approval's grant, stored hashed.

        The scope is the grant's (what the owner approved, perhaps narrower than the app asked), and no token
        outlives its grant.
        """
        if user is None:
            raise InvalidGrantError("there is no approval behind this request")
        grant = self._grant_in_force(user.grant_id, client)
        granted = Scope.of_grant(grant).oauth_scope()
        common: dict[str, Any] = {
            "grant_id": grant.id,
            "client_id": client.get_client_id(),
            "family": user.family,
            "scope": granted,
            "expires_ms": grant.expires_ms,
            "label": client.app.name,
        }
        access, cred = self.accounts.issue(grant.owner_id, "access", ttl_ms=ACCESS_TTL_MS, **common)
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": max(1, (cred.expires_ms - now_ms()) // 1000),
            "scope": granted,
        }
        if include_refresh_token:
            token["refresh_token"], _ = self.accounts.issue(grant.owner_id, "refresh", ttl_ms=REFRESH_TTL_MS, **common)
        return token

    def save_code(self, code: str, request: Any, approval: Approval) -> None:
        """Store a new authorization code's hash with its grant, redirect URI, scope and PKCE challenge."""
        with self.db.session() as s:
            g = s.get(Grant, approval.grant_id)
            assert g is not None
            s.add(
                OAuthCode(
                    code_hash=token_hash(code),
                    client_id=request.client.get_client_id(),
                    grant_id=approval.grant_id,
                    redirect_uri=request.payload.redirect_uri,
                    scope=Scope.of_grant(g).oauth_scope(),
                    code_challenge=request.payload.data["code_challenge"],
                    code_challenge_method=request.payload.data["code_challenge_method"],
                    expires_ms=now_ms() + CODE_TTL_MS,
                )
            )

    def redeem_code(self, code: str, client: OAuthClient) -> AuthorizationCode | None:
        """Spend a code (one atomic update); a code seen before revokes every token it issued."""
        self.check_client_may_receive(client, error="unauthorized_client")  # refused: nothing spent
        h = token_hash(code)
        now = now_ms()
        with self.db.session() as s:
            row = s.get(OAuthCode, h)
            if row is None or row.client_id != client.get_client_id():
                return None
            spent = s.execute(
                update(OAuthCode).where(OAuthCode.code_hash == h, OAuthCode.used_ms.is_(None)).values(used_ms=now)
            )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            self.reuse_detected(h, row.grant_id)
            raise InvalidGrantError("this code was already used; the tokens issued for it are revoked")
        if row.expires_ms <= now:
            raise InvalidGrantError("this code has expired (codes live 60 seconds)")
        return AuthorizationCode(row)

    def spend_refresh_token(self, secret: str, client: OAuthClient, scope: str | None = None) -> Token | None:
        """A live refresh token of this client, spent now; a spent one presented again revokes its family.

        A refreshed token carries its grant's scope: asking for another one is ``invalid_scope`` (and spends
        nothing).
        """
        if not isinstance(secret, str) or len(secret) > 200:
            return None
        # Checked before the token is spent: a suspension is reversible, and a refresh refused during it must
        # leave the token usable afterwards (spent, it would later look like a replay and end the grant).
        self.check_client_may_receive(client, error="unauthorized_client")
        now = now_ms()
        with self.db.session() as s:
            cred = s.scalar(select(Credential).where(Credential.token_hash == token_hash(secret)))
            if cred is None or cred.kind != "refresh" or cred.client_id != client.get_client_id():
                return None
            asked = set((scope or "").split())
            if asked and asked != set((cred.scope or "").split()):
                raise InvalidScopeError("a refreshed token carries its grant's scope; ask the owner for a new grant")
            spent = s.execute(
                update(Credential)
                .where(Credential.id == cred.id, Credential.revoked_ms.is_(None))
                .values(revoked_ms=now)
            )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            self.reuse_detected(cred.family, cred.grant_id)
            raise InvalidGrantError("this refresh token was already used or revoked; its token family is revoked")
        if cred.expires_ms <= now:
            raise InvalidGrantError("this refresh token has expired")
        return Token(cred)

    def reuse_detected(self, family: str | None, grant_id: int | None) -> None:
        """A spent code or refresh token came back: end its token family and the grant it acts for.

        Ending the grant closes the race a family sweep alone leaves open (a refresh that spent its token just
        before the replay may issue new tokens just after the sweep): every request re-reads the grant.
        """
        if family:
            self.revoke_family(family)
        if grant_id is None:
            return
        with self.db.session() as s:
            grant = s.get(Grant, grant_id)
        if grant is not None:
            self.grants.revoke(grant.owner_id, grant.id, by=Actor("system", "oauth"))

    def revoke_family(self, family: str) -> int:
        """Revoke every live token of one family (one code's or one device authorization's descendants)."""
        with self.db.session() as s:
            done = s.execute(
                update(Credential)
                .where(Credential.family == family, Credential.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )
        return int(done.rowcount or 0)  # type: ignore[attr-defined]

    def find_token(self, secret: str) -> Token | None:
        """An app's access or refresh token by its secret."""
        if not isinstance(secret, str) or len(secret) > 200:
            return None
        with self.db.session() as s:
            cred = s.scalar(select(Credential).where(Credential.token_hash == token_hash(secret)))
        if cred is None or cred.kind not in ("access", "refresh") or cred.client_id is None:
            return None
        return Token(cred)

    def revoke(self, token: Token) -> None:
        """Revoke one access token, or a refresh token together with its whole family."""
        if token.cred.kind == "refresh" and token.cred.family:
            self.revoke_family(token.cred.family)
        with self.db.session() as s:
            s.execute(
                update(Credential)
                .where(Credential.id == token.cred.id, Credential.revoked_ms.is_(None))
                .values(revoked_ms=now_ms())
            )

    def introspect(self, token: Token) -> dict[str, Any]:
        """RFC 7662 §2.2 answer with CarVault's grant id, vehicles and purpose; inactive once the grant is not."""
        cred = token.cred
        assert cred.grant_id is not None
        try:
            grant = self.grants.live(cred.grant_id)
            app = self.apps.get(cred.client_id or "")
            check_recipient(app, self.region, self.grants.transfers)
        except CarVaultError:
            return {"active": False}
        return {
            "active": True,
            "scope": cred.scope or "",
            "client_id": cred.client_id,
            "token_type": "Bearer" if cred.kind == "access" else "refresh_token",
            "exp": cred.expires_ms // 1000,
            "iat": cred.created_ms // 1000,
            "sub": str(cred.owner_id),
            "iss": self.issuer,
            "grant_id": grant.id,
            "vins": json.loads(grant.vins),
            "purpose": grant.purpose,
        }

    # ------------------------------------------------------------------------------------------ device flow
    def save_device(self, device_code: str, user_code: str, client_id: str, scope: str, purpose: str) -> bool:
        """Store a new device authorization; False when the user code is taken."""
        try:
            with self.db.session() as s:
                s.add(
                    DeviceAuthorization(
                        device_code_hash=token_hash(device_code),
                        user_code=user_code,
                        client_id=client_id,
                        scope=scope,
                        purpose=purpose,
                        expires_ms=now_ms() + DEVICE_TTL_S * 1000,
                        interval_s=DEVICE_INTERVAL_S,
                    )
                )
        except IntegrityError:
            return False
        return True

    def device_credential(self, device_code: str) -> DeviceCredential | None:
        """The device authorization a polling device names."""
        if not isinstance(device_code, str) or len(device_code) > 200:
            return None
        with self.db.session() as s:
            row = s.get(DeviceAuthorization, token_hash(device_code))
        if row is not None and row.status == "used":
            raise InvalidGrantError("this device code was already exchanged for tokens")
        return DeviceCredential(row) if row else None

    def device_decision(self, device_code: str) -> tuple[Approval | None, bool] | None:
        """The owner's decision: ``None`` while pending; the approval (spent now, once) or a denial."""
        h = token_hash(device_code)
        with self.db.session() as s:
            row = s.get(DeviceAuthorization, h)
            if row is None or row.status == "pending":
                return None
            if row.status == "denied":
                return None, False
            client = self.query_client(row.client_id)
            if client is None:
                raise InvalidClientError(description="the app of this device code no longer exists")
            self.check_client_may_receive(client, error="unauthorized_client")  # refused: the approval is kept
            spent = s.execute(
                update(DeviceAuthorization)
                .where(DeviceAuthorization.device_code_hash == h, DeviceAuthorization.status == "approved")
                .values(status="used")
            )
        if spent.rowcount != 1 or row.grant_id is None:  # type: ignore[attr-defined]
            raise InvalidGrantError("this device code was already exchanged for tokens")
        return self.approval_of(row.grant_id, family=h), True

    def polled_too_fast(self, row: DeviceAuthorization) -> bool:
        """RFC 8628 §3.5 ``slow_down``: a poll sooner than the interval adds 5 s to it, for good."""
        now = now_ms()
        too_fast = row.last_poll_ms is not None and now - row.last_poll_ms < row.interval_s * 1000
        with self.db.session() as s:
            s.execute(
                update(DeviceAuthorization)
                .where(DeviceAuthorization.device_code_hash == row.device_code_hash)
                .values(last_poll_ms=now, interval_s=row.interval_s + (5 if too_fast else 0))
            )
        return too_fast

    def pending_device(self, user_code: str) -> DeviceAuthorization | None:
        """The pending, unexpired device authorization an owner's typed code names."""
        code = normal_user_code(user_code)
        if not code:
            return None
        with self.db.session() as s:
            row = s.scalar(select(DeviceAuthorization).where(DeviceAuthorization.user_code == code))
        if row is None or row.status != "pending" or row.expires_ms <= now_ms():
            return None
        return row

    def device_request(self, row: DeviceAuthorization) -> ConsentRequest:
        """A pending device authorization as the consent screen shows it; ``RecipientRefused`` for a barred app."""
        client = self.query_client(row.client_id)
        if client is None:
            raise InvalidClientError(description="the app of this code no longer exists")
        self.check_client_may_receive(client)
        asked, signals = self.requested_scope(row.scope)
        return ConsentRequest(client.app, asked, signals, row.purpose)

    def decide_device(self, user_code: str, grant_id: int | None) -> bool:
        """Record the owner's decision on a pending device authorization (a grant id approves, ``None`` denies)."""
        with self.db.session() as s:
            done = s.execute(
                update(DeviceAuthorization)
                .where(
                    DeviceAuthorization.user_code == normal_user_code(user_code),
                    DeviceAuthorization.status == "pending",
                    DeviceAuthorization.expires_ms > now_ms(),
                )
                .values(status="approved" if grant_id else "denied", grant_id=grant_id)
            )
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    # --------------------------------------------------------------------------------------------- endpoints
    def token(self, http: HttpRequest) -> OAuthResponse:
        """``POST /oauth/token``."""
        return self._guard(http, lambda r: self.create_token_response(r))

    def endpoint(self, name: str, http: HttpRequest) -> OAuthResponse:
        """``device_authorization``, ``revocation`` or ``introspection``."""
        return self._guard(http, lambda r: self.create_endpoint_response(name, r))

    def _guard(self, http: HttpRequest, run: Any) -> OAuthResponse:
        try:
            request = self.create_oauth2_request(http)
        except OAuth2Error as e:
            return self.handle_error_response(None, e)  # type: ignore[no-any-return]
        response: OAuthResponse = run(request)
        return response

    def _barred_branches(self) -> set[str]:
        barred = set()
        for s in self.catalogue:
            branch = ".".join(s.path.split(".")[:2])
            try:
                shareable_signals(self.catalogue, [branch])
            except CarVaultError:
                barred.add(branch)
        return barred

    def metadata(self) -> dict[str, Any]:
        """The server's RFC 8414 metadata document."""
        branches = sorted({".".join(s.path.split(".")[:2]) for s in self.catalogue} - self._barred_branches())
        return {
            "issuer": self.issuer,
            **{name: self.issuer + path for name, path in PATHS.items()},
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "authorization_response_iss_parameter_supported": True,
            "grant_types_supported": list(GRANT_TYPES),
            "code_challenge_methods_supported": [CHALLENGE_METHOD],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_METHODS),
            "scopes_supported": ["history", "live", "location:precise", *(f"vss:{b}" for b in branches)],
            "ui_locales_supported": ["en", "zh-CN"],
            "service_documentation": self.issuer + "/api/v1/docs",
            "carvault_purposes_supported": list(PURPOSES),
        }
