"""A company's outbound proxy (issue 11.7), set by the admin.

``PUT /api/companies/{id}/proxy`` with ``{"url": "socks5://user:password@host:1080"}`` (``http://``,
``https://`` or ``socks5://``, a host and a port), ``GET`` shows it, ``DELETE`` removes it. It is
stored with the company in PostgreSQL and used from the session's next connect on (a connection that
is up keeps its route until it reconnects: ``POST …/relink`` after a pause, or the next drop). The URL
is a secret: every answer and log line shows it with the password as ``***``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from api.deps import AdminDep, CompanyIdPath, CtxDep, parse_company_id
from api.errors import ADMIN_ROUTE, ApiError, route_answers
from api.routes.sessions import audit
from domain.proxy import MAX_PROXY_URL, InvalidProxy, masked_proxy, parse_proxy_url

router = APIRouter(prefix="/api/companies", tags=["proxy"])

APPLIES = "used from the session's next connect on"


class ProxyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(max_length=MAX_PROXY_URL,
                           description="http://, https:// or socks5://[user[:password]@]host:port")


class ProxyView(BaseModel):
    url: str | None = Field(description="the proxy URL with its password as ***; null when none is set")
    set: bool
    applies_to: str = Field(alias="appliesTo")


class ProxyAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    proxy: ProxyView


PROXY_ANSWERS = route_answers(ProxyAnswer, ADMIN_ROUTE)


def _view(cid: str, url: str | None) -> dict[str, Any]:
    return {"success": True, "companyId": cid, "proxy": {"url": masked_proxy(url), "set": url is not None,
                                                          "appliesTo": APPLIES}}


@router.get("/{company_id}/proxy", summary="The company's outbound proxy (password masked)", response_model=None,
            responses=PROXY_ANSWERS)
async def get_proxy(ctx: CtxDep, _: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    url = await ctx.db.fetchval("SELECT proxy_url FROM companies WHERE company_id = $1", cid)
    return _view(cid, url)


@router.put("/{company_id}/proxy", summary="Set the company's outbound proxy (HTTP or SOCKS5)", response_model=None,
            responses=PROXY_ANSWERS)
async def put_proxy(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath, body: ProxyBody) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    try:
        url = parse_proxy_url(body.url)
    except InvalidProxy as exc:
        raise ApiError(422, "validation_error", f"url: {exc}", details=[{"field": "url", "message": str(exc)}]
                       ) from None
    await ctx.db.execute(
        """INSERT INTO companies (company_id, proxy_url) VALUES ($1, $2)
           ON CONFLICT (company_id) DO UPDATE SET proxy_url = EXCLUDED.proxy_url, updated_at = now()""",
        cid, url,
    )
    await audit(ctx, principal.name, cid, "proxy_set")
    return _view(cid, url)


@router.delete("/{company_id}/proxy", summary="Remove the company's proxy: its next connect is direct",
               response_model=None, responses=PROXY_ANSWERS)
async def delete_proxy(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    await ctx.db.execute("UPDATE companies SET proxy_url = NULL, updated_at = now() WHERE company_id = $1", cid)
    await audit(ctx, principal.name, cid, "proxy_removed")
    return _view(cid, None)
