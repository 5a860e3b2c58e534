"""One JSON error shape everywhere: {"error": {"code", "message", "field"?}}. No stack traces to clients."""

from __future__ import annotations

import logging

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("xraysynth.api")

# Seconds a client is asked to wait when the database is down or its pool exhausted: a restart or
# a burst passes in that order of time, and /v1/health says which part is failing meanwhile.
DB_RETRY_AFTER_S = 5


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class Gone(ApiError):
    status_code, code = 410, "gone"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    status_code, code = 422, "validation_error"


class RateLimited(ApiError):
    status_code, code = 429, "rate_limited"


def error_body(code: str, message: str, field: str | None = None) -> dict:
    err: dict = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


def _field_of(loc: tuple) -> str:
    # ("body", "conditions", "Mass") -> "conditions.Mass"; ("query", "expires_in") -> "expires_in";
    # a refused dict key, ("body", "conditions", "<key>", "[key]"), is named by its dict, not echoed.
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def database_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached or used right now (down, restarting, connection lost, pool
    exhausted), as opposed to a bug or a refused statement: the client should retry, not report."""
    if isinstance(exc, PoolTimeout | OperationalError | InterfaceError):
        return True
    # The asyncio reads (service.datasets.reads) use psycopg's own pool and errors.
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def database_unavailable_response() -> JSONResponse:
    return JSONResponse(
        error_body("database_unavailable", f"the database is unavailable; retry in {DB_RETRY_AFTER_S}s"),
        status_code=503, headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


def _internal_error(request: Request, exc: BaseException) -> JSONResponse:
    # Logged with its type only: exception text could carry data we must not leak into logs.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = _field_of(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif first.get("type") == "json_invalid":
            field, msg = "body", "request body is not valid JSON"
        return JSONResponse(error_body("validation_error", f"{field}: {msg}", field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # Keep the framework's headers (e.g. Allow on 405).
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.Error)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _database_error(request: Request, exc: Exception):
        if not database_unavailable(exc):
            return _internal_error(request, exc)
        log.warning("database unavailable (%s) on %s %s", type(exc).__name__, request.method, request.url.path)
        return database_unavailable_response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _internal_error(request, exc)
