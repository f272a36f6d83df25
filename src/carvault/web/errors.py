"""The one place where errors become HTTP answers: ``{"error": {"code", "message", ...}}``.

Every code comes from the error classes in ``carvault.errors``: framework errors (routing's 404 and 405, a body
that fails the schema) are answered as the class of their status, and storage failures (disk full, database
gone) that escape a store are answered ``Unavailable`` (503), never as a dropped connection.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvault.errors import (
    BadRequest,
    CarVaultError,
    TooManyRequests,
    ValidationFailed,
    WrongRegion,
)
from carvault.store.metadata import storage_failure

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


def _storage_or_raise(e: Exception) -> JSONResponse:
    """503 for a storage failure; anything else is a bug and goes on to the internal-error answer."""
    failure = storage_failure(e)
    if failure is None:
        raise e
    log.error("%s: %s", failure.code, failure.message)
    return error_response(failure)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""

    @app.exception_handler(CarVaultError)
    async def _carvault(_: Request, e: CarVaultError) -> JSONResponse:
        if e.status >= 500:
            log.error("%s: %s", e.code, e.message)
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")} for err in e.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        return error_response(ValidationFailed(f"{first['where']}: {first['problem']}", problems=problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Response:
        html_error = getattr(request.app.state, "html_error", None)
        if html_error is not None and not request.url.path.startswith("/api/"):
            return await html_error(request, e.status_code, str(e.detail))  # people browsing get a page
        body = error_for_status(e.status_code, str(e.detail)).to_json()
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)  # 405 keeps its Allow header

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
