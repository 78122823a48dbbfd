"""The onboarding page (SPEC O6) and the admin call that issues its link.

``POST /api/companies/{company_id}/onboarding-link`` (admin) returns a URL
with a short-lived signed token; ``GET /onboarding/{company_id}?token=…``
serves a static page that uses that token as the company's key for REST and
for the WebSocket (``?apiKey=``, browsers cannot set WebSocket headers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep, CompanyIdPath, CtxDep, parse_company_id
from api.errors import ADMIN_ROUTE, PUBLIC_ROUTE, ApiError, route_answers, with_errors
from api.onboarding import DEFAULT_TTL_S, MAX_TTL_S, InvalidOnboardingToken, issue_token, verify_token

router = APIRouter(tags=["onboarding"])


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=60, le=MAX_TTL_S, alias="ttlSeconds")


class OnboardingLink(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    url: str = Field(description="the page, with the token")
    token: str
    expires_at: str = Field(alias="expiresAt")


@router.post("/api/companies/{company_id}/onboarding-link", status_code=201,
             summary="A short-lived link to the onboarding page for one company", response_model=None,
             responses=route_answers(OnboardingLink, ADMIN_ROUTE, status=201, description="issued"))
async def onboarding_link(company_id: CompanyIdPath, request: Request, ctx: CtxDep, _: AdminDep,
                          body: LinkBody | None = None) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    token, expires = issue_token(ctx.admin_key, cid, (body or LinkBody()).ttl_s)
    base = (ctx.settings.public_url or str(request.base_url)).rstrip("/")
    return {"success": True, "companyId": cid, "url": f"{base}/onboarding/{cid}?token={token}",
            "token": token, "expiresAt": datetime.fromtimestamp(expires, UTC).isoformat()}


# Answered as HTMLResponse; the plain response_class keeps its errors documented as JSON (they are).
@router.get("/onboarding/{company_id}", response_class=Response, include_in_schema=True,
            summary="The page a company opens to link its WhatsApp",
            responses=route_answers(None, with_errors(PUBLIC_ROUTE, 401, 403, why={
                401: "the token is invalid or expired", 403: "the token is for another company"}),
                description="the page (HTML)", s200={"content": {"text/html": {"schema": {"type": "string"}}}}))
async def onboarding_page(company_id: CompanyIdPath, ctx: CtxDep,
                          token: Annotated[str, Query(min_length=1, max_length=300)]) -> HTMLResponse:
    cid = parse_company_id(company_id)
    try:
        token_company = verify_token(ctx.admin_key, token)
    except InvalidOnboardingToken as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    if token_company != cid:
        raise ApiError(403, "forbidden", f"this link is for another company, not {cid}")
    html = resources.files("api").joinpath("static/onboarding.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                       "X-Frame-Options": "DENY"})
