"""A company's incoming-message handler (SPEC M4, E2), set by the admin.

``PUT /api/companies/{id}/handler`` with ``{"type": "webhook"|"callable"|"echo"|"none"|"default",
"url", "secret", "callable", "eventWebhookUrl"}``; ``GET`` shows it. The secret
signs webhook and event-webhook bodies (``X-Signature-256``) and is never returned, only whether
one is set and its last four characters. ``default`` clears the company's own
choice: the settings' ``INBOX_DEFAULT_HANDLER`` applies. The inbox reads the row
for every message, so a change applies to the next one.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from api.deps import AdminDep, CompanyIdPath, CtxDep, parse_company_id
from api.errors import ADMIN_ROUTE, ApiError, route_answers
from api.routes.sessions import audit
from domain.inbox import CALLABLE_PATH

router = APIRouter(prefix="/api/companies", tags=["handlers"])


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


class HandlerBody(BaseModel):
    """``webhook`` needs ``url`` and (the first time) ``secret``; ``callable`` needs ``callable``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"anyOf": [
        {"properties": {"type": {"enum": ["echo", "none", "default"]}}},
        {"allOf": [{"properties": {"type": {"const": "webhook"}}}, _given("url"), _given("secret")]},
        {"allOf": [{"properties": {"type": {"const": "callable"}}}, _given("callable")]},
    ]})

    type: Literal["webhook", "callable", "echo", "none", "default"]
    url: StrictStr | None = Field(default=None, max_length=2048, description="webhook URL (http/https)")
    secret: StrictStr | None = Field(default=None, min_length=16, max_length=256,
                                     description="HMAC-SHA256 key of X-Signature-256; kept if omitted")
    callable: StrictStr | None = Field(default=None, max_length=200, description="package.module:function",
                                       json_schema_extra={"pattern": f"^{CALLABLE_PATH.pattern}$"})
    event_webhook_url: StrictStr | None = Field(default=None, alias="eventWebhookUrl", max_length=2048,
                                                description="URL that receives the company's events (E2)")

    @field_validator("url", "event_webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("callable")
    @classmethod
    def _callable(cls, value: str | None) -> str | None:
        if value is not None and not CALLABLE_PATH.fullmatch(value):
            raise ValueError("must be an import path like package.module:function")
        return value


class HandlerView(BaseModel):
    type: Literal["webhook", "callable", "echo", "none", "default"]
    url: str | None
    callable: str | None
    event_webhook_url: str | None = Field(alias="eventWebhookUrl")
    secret_set: bool = Field(alias="secretSet")
    secret_hint: str | None = Field(alias="secretHint", description="the secret's last four characters")


class HandlerAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    handler: HandlerView


def _view(cid: str, row: Any) -> dict[str, Any]:
    secret: str | None = row["webhook_secret"] if row else None
    return {
        "success": True,
        "companyId": cid,
        "handler": {
            "type": (row["handler"] if row else None) or "default",
            "url": row["webhook_url"] if row else None,
            "callable": row["handler_callable"] if row else None,
            "eventWebhookUrl": row["event_webhook_url"] if row else None,
            "secretSet": bool(secret),
            "secretHint": f"…{secret[-4:]}" if secret else None,
        },
    }


_COLUMNS = "handler, webhook_url, webhook_secret, handler_callable, event_webhook_url"


@router.get("/{company_id}/handler", summary="The company's incoming-message handler (secret not shown)",
            response_model=None, responses=route_answers(HandlerAnswer, ADMIN_ROUTE))
async def get_handler(ctx: CtxDep, _: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    row = await ctx.db.fetchrow(f"SELECT {_COLUMNS} FROM companies WHERE company_id = $1", cid)
    return _view(cid, row)


@router.put("/{company_id}/handler", summary="Set the company's incoming-message handler", response_model=None,
            responses=route_answers(HandlerAnswer, ADMIN_ROUTE))
async def put_handler(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath, body: HandlerBody) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    if body.type == "webhook" and body.url is None:
        raise ApiError(422, "validation_error", "url: required for the webhook handler")
    if body.type == "callable" and body.callable is None:
        raise ApiError(422, "validation_error", "callable: required for the callable handler")
    if body.type == "webhook" and body.secret is None:
        stored = await ctx.db.fetchval("SELECT webhook_secret FROM companies WHERE company_id = $1", cid)
        if not stored:
            raise ApiError(422, "validation_error", "secret: required for the webhook handler (16+ characters)")
    row = await ctx.db.fetchrow(
        f"""INSERT INTO companies (company_id, {_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (company_id) DO UPDATE SET
                handler = EXCLUDED.handler, webhook_url = EXCLUDED.webhook_url,
                webhook_secret = COALESCE(EXCLUDED.webhook_secret, companies.webhook_secret),
                handler_callable = EXCLUDED.handler_callable, event_webhook_url = EXCLUDED.event_webhook_url,
                updated_at = now()
            RETURNING {_COLUMNS}""",
        cid, None if body.type == "default" else body.type, body.url, body.secret, body.callable,
        body.event_webhook_url,
    )
    await audit(ctx, principal.name, cid, f"handler_set:{body.type}")
    return _view(cid, row)
