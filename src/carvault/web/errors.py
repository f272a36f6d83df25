"""The one place where errors become HTTP answers: ``{"error": {"code", "message", ...}}``.

Every code comes from the error classes in ``carvault.errors``: framework errors (routing's 404 and 405, a body
that fails the schema) are answered as the class of their status, and storage failures (disk full, database
gone) that escape a store are answered ``Unavailable`` (503), never as a dropped connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvault.errors import (
    AppNotApproved,
    BadRequest,
    BadSignature,
    BrokenChain,
    CarVaultError,
    ConsentNotGiven,
    CrossBorderTransfer,
    DeIdentificationMissing,
    Forbidden,
    GatekeeperRefused,
    LiveRootMismatch,
    MalformedBatch,
    NotFound,
    NotShareable,
    OutOfScope,
    OwnerOnly,
    PayloadTooLarge,
    RegionMismatch,
    RoleForbidden,
    SeqConflict,
    TimestampInFuture,
    TimestampOutOfSpan,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    UnknownSignal,
    UnknownVehicle,
    UnsupportedMediaType,
    ValidationFailed,
    ValueOutOfRange,
    WrongRegion,
    WrongSignalType,
    all_error_classes,
)
from carvault.store.metadata import storage_failure
from carvault.web.deps import current_caller, current_owner, current_staff

log = logging.getLogger("carvault.web")

# The most general class of each status (the direct children of the root), for errors the framework raises.
ERROR_FOR_STATUS: dict[int, type[CarVaultError]] = {
    c.status: c for c in CarVaultError.__subclasses__() if c.__module__ == CarVaultError.__module__
} | {ValidationFailed.status: ValidationFailed}


def error_for_status(status: int, message: str) -> CarVaultError:
    """The CarVault error answering a framework error of this HTTP status."""
    cls = ERROR_FOR_STATUS.get(status) or (BadRequest if status < 500 else CarVaultError)
    return cls(message)


def error_response(e: CarVaultError) -> JSONResponse:
    """JSON answer for a CarVault error, with the headers its status calls for."""
    headers = {}
    if isinstance(e, TooManyRequests) and "retry_after_s" in e.details:
        headers["Retry-After"] = str(e.details["retry_after_s"])
    if isinstance(e, WrongRegion) and e.details.get("endpoint"):
        headers["CarVault-Region-Endpoint"] = str(e.details["endpoint"])
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="carvault"'
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)


# ----------------------------------------------------------------------------- the OpenAPI contract
ERROR_SCHEMA = "Error"
CODES_KEY = "x-carvault-codes"  # the codes ``raises`` declares, read (and kept) by ``declare``
# Headers an error answer of a status carries (set in ``error_response``).
ERROR_HEADERS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": "the scheme to use: Bearer"},
    421: {"CarVault-Region-Endpoint": "base URL of the vehicle's home region"},
    429: {"Retry-After": "seconds to wait before trying again"},
}
# What a dependency answers, whichever route uses it (the owner: no or bad credentials; a cookie write without the
# CSRF header).
# What the gateway can refuse a batch with (carvault.ingest): framing, catalogue, signature, consent, chain, size.
INGEST_ERRORS: tuple[type[CarVaultError], ...] = (
    MalformedBatch,
    LiveRootMismatch,
    UnknownSignal,
    WrongSignalType,
    ValueOutOfRange,
    TimestampOutOfSpan,
    TimestampInFuture,
    RegionMismatch,
    DeIdentificationMissing,
    BadSignature,
    UnknownVehicle,
    ConsentNotGiven,
    SeqConflict,
    BrokenChain,
    PayloadTooLarge,
    UnsupportedMediaType,
    WrongRegion,
)
# A grant holder's request can be refused for any part of its grant (compliance/sharing.py).
DEPENDENCY_ERRORS: dict[Any, tuple[type[CarVaultError], ...]] = {
    current_caller: (
        Unauthenticated,
        Forbidden,
        OutOfScope,
        NotShareable,
        GatekeeperRefused,
        CrossBorderTransfer,
        AppNotApproved,
    ),
    current_owner: (OwnerOnly,),
    # Staff routes (issue 11): a staff session, and a role carrying the route's permission (deps.staff_with).
    current_staff: (Unauthenticated, Forbidden, RoleForbidden),
}


def error_component() -> dict[str, Any]:
    """The JSON schema of every error answer, with every stable code the region uses."""
    codes = sorted({c.code for c in all_error_classes()})
    detail = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": codes, "description": "stable machine code"},
            "message": {"type": "string", "description": "for people"},
        },
        "additionalProperties": True,
    }
    return {"type": "object", "required": ["error"], "properties": {"error": detail}, "title": ERROR_SCHEMA}


def raises(*classes: type[CarVaultError]) -> dict[int | str, dict[str, Any]]:
    """Route ``responses`` for the errors its service can raise (completed by ``declare``)."""
    by_status: dict[int, list[str]] = {}
    for c in classes:
        by_status.setdefault(c.status, []).append(c.code)
    return {status: {"description": ", ".join(codes), CODES_KEY: codes} for status, codes in by_status.items()}


def route_errors(route: APIRoute) -> set[type[CarVaultError]]:
    """The errors a route can answer because of its dependencies and parameters."""
    found: set[type[CarVaultError]] = {Unavailable}  # any store may be full or gone
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        found.update(DEPENDENCY_ERRORS.get(dep.call, ()))
        stack.extend(dep.dependencies)
    flat = route.dependant
    if flat.path_params:
        found.add(NotFound)
    if flat.path_params or flat.query_params or flat.header_params or flat.body_params:
        found.update((BadRequest, ValidationFailed))
    return found


def _codes_by_status(declared: dict[str, Any], classes: Iterable[type[CarVaultError]]) -> dict[int, set[str]]:
    by_status: dict[int, set[str]] = {}
    for status, answer in declared.items():
        if status.isdigit() and int(status) >= 400:
            by_status.setdefault(int(status), set()).update(answer.get(CODES_KEY, ()))
    for c in classes:
        by_status.setdefault(c.status, set()).add(c.code)
    return by_status


def _error_answer(status: int, codes: set[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": "error codes: " + ", ".join(sorted(codes)),
        CODES_KEY: sorted(codes),
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
    }
    if status in ERROR_HEADERS:
        answer["headers"] = {
            h: {"description": d, "schema": {"type": "string"}} for h, d in ERROR_HEADERS[status].items()
        }
    return answer


def declare(schema: dict[str, Any], routes: Iterable[APIRoute]) -> dict[str, Any]:
    """Complete the OpenAPI document: every error status each operation can answer, all with the error schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components[ERROR_SCHEMA] = error_component()
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape; ours is the error schema
        components.pop(name, None)
    for route in routes:
        item = schema["paths"].get(route.path_format, {})
        for method in route.methods or ():
            op = item.get(method.lower())
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            for status, codes in _codes_by_status(responses, route_errors(route)).items():
                responses[str(status)] = _error_answer(status, codes)
    return schema


def allowed_methods(routes: Iterable[APIRoute], path: str) -> list[str]:
    """Every method some route takes at ``path`` (for the ``Allow`` header of a 405)."""
    return sorted({m for r in routes if r.path_regex.match(path) for m in r.methods or ()})


def _storage_or_raise(e: Exception) -> JSONResponse:
    """503 for a storage failure; anything else is a bug and goes on to the internal-error answer."""
    failure = storage_failure(e)
    if failure is None:
        raise e
    log.error("%s: %s", failure.code, failure.message)
    return error_response(failure)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""

    def refused(request: Request, code: str) -> None:
        """Count the refusal by code and entry point (metrics.py: carvault_refusals_total)."""
        region = getattr(request.app.state, "region", None)
        if region is not None:
            region.metrics.refused(code, request.url.path)

    @app.exception_handler(CarVaultError)
    async def _carvault(request: Request, e: CarVaultError) -> JSONResponse:
        if e.status >= 500:
            log.error("%s: %s", e.code, e.message)
        refused(request, e.code)
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        refused(request, ValidationFailed.code)
        problems = [
            {"where": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")} for err in e.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        loc: tuple[Any, ...] = tuple(e.errors()[0].get("loc", ())) if problems else ()
        # Like the services' own ValidationFailed: name the body field at fault, so forms can point at it.
        field = {"field": str(loc[-1])} if len(loc) > 1 and loc[0] == "body" else {}
        return error_response(ValidationFailed(f"{first['where']}: {first['problem']}", problems=problems, **field))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Response:
        html_error = getattr(request.app.state, "html_error", None)
        if html_error is not None and not request.url.path.startswith(("/api/", "/tlog/")):
            return await html_error(request, e.status_code, str(e.detail))  # people browsing get a page (programs:
            # the API and the log's tiles, read by tlog clients, get JSON errors)
        body = error_for_status(e.status_code, str(e.detail)).to_json()
        headers = dict(e.headers or {})
        if e.status_code == 405:  # every method of the path, not only those of the first route that matched it
            headers["Allow"] = ", ".join(allowed_methods(request.app.state.api_routes, request.url.path))
        return JSONResponse(body, status_code=e.status_code, headers=headers)

    @app.exception_handler(OSError)
    async def _os(_: Request, e: OSError) -> JSONResponse:
        return _storage_or_raise(e)

    @app.exception_handler(DBAPIError)
    async def _db(_: Request, e: DBAPIError) -> JSONResponse:
        return _storage_or_raise(e)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        body = CarVaultError("the server failed to handle this request").to_json()
        return JSONResponse(body, status_code=CarVaultError.status)
