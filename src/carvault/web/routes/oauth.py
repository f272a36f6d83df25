"""OAuth 2.0 endpoints for apps (docs/sharing.md §3): token, device authorization, revocation, introspection, and
the server metadata document (RFC 8414).

The protocol is authlib's, wrapped in ``carvault.access.oauth.OAuthServer``; these routes only read the request,
hand it over, and send back what the server answers. Their errors follow RFC 6749 §5.2 (``{"error",
"error_description"}``, and ``carvault_code`` when CarVault refuses the recipient) rather than CarVault's own
error shape, because every OAuth client library reads that shape; so they are described by the metadata
document, not by the OpenAPI document of ``/api/v1``. The consent screen and the device page are portal pages
(web/views/oauth.py).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from carvault.access.oauth import METADATA_PATH, PATHS, HttpRequest, OAuthResponse, OAuthServer
from carvault.web.deps import read_body

router = APIRouter(tags=["oauth"], include_in_schema=False)
FORM_LIMIT = 64 * 1024  # an OAuth request is a handful of short parameters
FORM_TYPE = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Without a configured public URL the issuer is the request's base URL, which the Host header names: keep servers
# for a few issuers only, so that clients inventing Host names cannot grow memory without bound.
MAX_ISSUERS = 8


def issuer_of(request: Request) -> str:
    """The issuer: this region's configured public URL, else the base URL the request came to."""
    region = request.app.state.region
    return (region.settings.endpoint_of(region.name) or str(request.base_url)).rstrip("/")


def oauth_server(request: Request) -> OAuthServer:
    """The authorization server of this app and issuer (built once per issuer)."""
    issuer = issuer_of(request)
    servers: dict[str, OAuthServer] | None = getattr(request.app.state, "oauth_servers", None)
    if servers is None:
        servers = request.app.state.oauth_servers = {}
    server = servers.get(issuer)
    if server is None:
        region = request.app.state.region
        server = OAuthServer(
            db=region.db,
            apps=region.apps,
            accounts=region.accounts,
            grants_=region.grants,
            catalogue=region.catalogue,
            region=region.name,
            issuer=issuer,
        )
        if len(servers) < MAX_ISSUERS:  # beyond that, built per request (it holds no state of its own)
            servers[issuer] = server
    return server


def http_request(request: Request, issuer: str, form: list[tuple[str, str]]) -> HttpRequest:
    """The request as the server reads it, its URL spelled with the issuer's scheme and host."""
    query = request.url.query
    return HttpRequest(
        method=request.method,
        url=issuer + request.url.path + (f"?{query}" if query else ""),
        headers=request.headers,
        query=parse_qsl(query, keep_blank_values=True),
        form=form,
    )


async def read_form(request: Request) -> list[tuple[str, str]]:
    """The urlencoded body's pairs (an OAuth request has no other body type; anything else reads as empty)."""
    body = await read_body(request, FORM_LIMIT, "the OAuth request")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return []
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def to_response(answer: OAuthResponse) -> Response:
    """The server's answer as an HTTP response (JSON, never cached)."""
    headers = {k: v for k, v in answer.headers if k.lower() != "content-type"} | NO_STORE
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)
    return Response(answer.body, status_code=answer.status, headers=headers)


async def _answer(request: Request, endpoint: str | None) -> Response:
    server = oauth_server(request)
    http = http_request(request, server.issuer, await read_form(request))
    if endpoint is None:
        answer = await run_in_threadpool(server.token, http)
    else:
        answer = await run_in_threadpool(server.endpoint, endpoint, http)
    return to_response(answer)


@router.post(PATHS["token_endpoint"], summary="Token endpoint (RFC 6749 §3.2; code + PKCE, refresh, device code)")
async def token(request: Request) -> Response:
    return await _answer(request, None)


@router.post(PATHS["device_authorization_endpoint"], summary="Device authorization (RFC 8628 §3.1)")
async def device_authorization(request: Request) -> Response:
    return await _answer(request, "device_authorization")


@router.post(PATHS["revocation_endpoint"], summary="Token revocation (RFC 7009)")
async def revoke(request: Request) -> Response:
    return await _answer(request, "revocation")


@router.post(PATHS["introspection_endpoint"], summary="Token introspection (RFC 7662)")
async def introspect(request: Request) -> Response:
    return await _answer(request, "introspection")


@router.get(METADATA_PATH, summary="Authorization server metadata (RFC 8414)")
def metadata(request: Request) -> JSONResponse:
    return JSONResponse(oauth_server(request).metadata(), headers={"Cache-Control": "max-age=300"})
