"""One error shape for every endpoint: ``{"success": false, "error": "...", "code": "..."}``.

:class:`ErrorBody` is that shape for the OpenAPI schema, and :func:`error_answers` the one table of
error statuses a route lists in ``responses=``: what each status means and the headers it carries.
The route kinds (:data:`PUBLIC_ROUTE`, :data:`COMPANY_ROUTE`, :data:`ADMIN_ROUTE`) are the statuses
every route of that kind can answer; a route adds the ones of its own (404 no session, 409, 429…).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

log = logging.getLogger("waorch.api")


class ApiError(Exception):
    """Raise anywhere in a route: becomes the error shape with this status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": message, "code": code, **extra}


class FieldProblem(BaseModel):
    field: str = Field(description="the field, dotted for nested ones (options.quoted), or 'request'")
    message: str


class ErrorBody(BaseModel):
    """Every refusal and failure: ``error`` says what is wrong in words, ``code`` is stable for programs."""

    model_config = ConfigDict(extra="allow")

    success: Literal[False]
    error: str = Field(description="what went wrong, naming the field or the state")
    code: str = Field(description="stable machine-readable reason: unauthorized, forbidden, validation_error, "
                                  "session_not_found, not_connected, rate_limited, temporal_unavailable…")
    details: list[FieldProblem] | None = Field(default=None, description="422: every problem found")
    company_id: str | None = Field(default=None, alias="companyId", description="the company concerned")
    state: str | None = Field(default=None, description="409: the session's state")
    retry_after: float | None = Field(default=None, alias="retryAfter", description="429: seconds to wait")


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}}
# What each error status means on any route; a route may say more with ``why``.
_ERRORS: dict[int, tuple[str, dict[str, Any] | None]] = {
    401: ("no API key, or an unknown, revoked or expired one",
          {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}),
    403: ("the key may not do this: a company key on another company, or on an admin-only route", None),
    404: ("not found: the path matches no route, or what it names does not exist", None),
    409: ("conflicts with the current state (e.g. the session is not connected)", None),
    413: ("the media is larger than its kind's limit (MEDIA_MAX_*_BYTES)", None),
    422: ("a parameter or the body is invalid: `error` names the field, `details` lists each problem", None),
    429: ("rate limited: wait Retry-After seconds", _RETRY_AFTER),
    502: ("the connector or WhatsApp refused or failed the request", None),
    503: ("a dependency is unavailable now (Temporal, or PostgreSQL for a company key): retry later", _RETRY_AFTER),
    504: ("the connector or the worker did not answer in time; the same request may be retried", None),
}

ErrorTable = dict[int | str, dict[str, Any]]


def error_answers(*statuses: int, why: Mapping[int, str] | None = None) -> ErrorTable:
    """``responses=`` entries for these error statuses, each with :class:`ErrorBody` and its headers."""
    table: ErrorTable = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        if why and status in why:
            description = why[status]
        entry: dict[str, Any] = {"model": ErrorBody, "description": description}
        if headers:
            entry["headers"] = headers
        table[status] = entry
    return table


def with_errors(base: ErrorTable, *statuses: int, why: Mapping[int, str] | None = None) -> ErrorTable:
    """``base`` plus these statuses (or ``why`` alone: new words for statuses ``base`` has)."""
    extra = error_answers(*statuses, *(s for s in (why or {}) if s not in statuses), why=why)
    return {**base, **extra}


# Every route: a bad parameter (422); a path that matches no route (404).
PUBLIC_ROUTE = error_answers(404, 422)
# Routes that need a key: no or bad key (401); the key store (company keys) or Temporal down (503).
_AUTHENTICATED = error_answers(401, 404, 422, 503)
# The admin and the company's own credentials (403 for another company's key).
COMPANY_ROUTE = with_errors(_AUTHENTICATED, 403, why={403: "this key may not access that company"})
# The admin key only (403 for a company key).
ADMIN_ROUTE = with_errors(_AUTHENTICATED, 403, why={403: "this endpoint needs the admin key"})


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in errors]
        first = details[0] if details else {"field": "request", "message": "invalid"}
        return JSONResponse(
            error_body("validation_error", f"{first['field']}: {first['message']}", details=details), 422
        )

    @app.exception_handler(RPCError)
    async def _temporal(_: Request, exc: RPCError) -> JSONResponse:
        # Temporal unreachable or overloaded: the caller may retry; nothing was half-done by us.
        log.warning("temporal call failed status=%s error=%s", exc.status.name, exc.message[:200])
        return JSONResponse(error_body("temporal_unavailable", f"Temporal: {exc.message[:200]}"), 503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", f"internal error: {type(exc).__name__}"), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # A body that is not JSON at all (not UTF-8, cut short): a bad input like any other.
            return JSONResponse(error_body("validation_error", "body: not valid JSON",
                                           details=[{"field": "body", "message": "not valid JSON"}]), 422)
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)


def route_answers(model: Any, errors: ErrorTable, *, status: int = 200, description: str = "done",
                  **more: dict[str, Any]) -> ErrorTable:
    """A route's whole ``responses=``: its answer's model under ``status`` (a model, or None for a
    non-JSON answer described by ``more``), its error table, and further answers (``more``, by status)."""
    ok: dict[str, Any] = {"description": description}
    if model is not None:
        ok["model"] = model
    table: ErrorTable = {status: ok, **errors}
    for key, value in more.items():
        code = int(key.removeprefix("s"))
        table[code] = {**table.get(code, {}), **value}
    return table
