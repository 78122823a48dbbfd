"""Company API keys (SPEC X1): the admin issues them (shown once, stored hashed) and revokes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from api.deps import AdminDep, CompanyIdPath, CtxDep, hash_key, new_company_key, parse_company_id
from api.errors import ADMIN_ROUTE, ApiError, route_answers, with_errors
from api.routes.sessions import audit

router = APIRouter(prefix="/api/companies", tags=["companies"])

KeyIdPath = Annotated[int, Path(description="the key's id (keyId of the issue or the list)", ge=1, le=2**63 - 1)]


class IssuedKey(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    key_id: int = Field(alias="keyId")
    key: str = Field(description="the key itself: shown only now")
    key_prefix: str = Field(alias="keyPrefix")
    created_at: str = Field(alias="createdAt")
    message: str


class KeyRow(BaseModel):
    key_id: int = Field(alias="keyId")
    key_prefix: str = Field(alias="keyPrefix")
    created_at: str = Field(alias="createdAt")
    revoked_at: str | None = Field(alias="revokedAt")


class KeyList(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    keys: list[KeyRow]


class Revoked(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    revoked: int = Field(description="how many keys this revoked")


@router.post("/{company_id:path}/keys", status_code=201, summary="Issue a company key (shown once)",
             response_model=None, responses=route_answers(IssuedKey, ADMIN_ROUTE, status=201, description="issued"))
async def issue_key(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    key = new_company_key(cid)
    prefix = key[: len(f"wa_{cid}_") + 6]
    row = await ctx.db.fetchrow(
        """WITH c AS (INSERT INTO companies (company_id) VALUES ($1) ON CONFLICT (company_id) DO NOTHING)
           INSERT INTO api_keys (company_id, key_hash, key_prefix) VALUES ($1, $2, $3)
           RETURNING id, created_at""",
        cid, hash_key(key), prefix,
    )
    assert row is not None
    await audit(ctx, principal.name, cid, "key_issued")
    return {"success": True, "companyId": cid, "keyId": row["id"], "key": key, "keyPrefix": prefix,
            "createdAt": row["created_at"].isoformat(),
            "message": "store this key now: it is shown only once"}


@router.get("/{company_id:path}/keys", summary="The company's keys (prefixes only)", response_model=None,
            responses=route_answers(KeyList, ADMIN_ROUTE))
async def list_keys(ctx: CtxDep, _: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    cid = parse_company_id(company_id)
    rows = await ctx.db.fetch(
        "SELECT id, key_prefix, created_at, revoked_at FROM api_keys WHERE company_id = $1 ORDER BY id", cid
    )
    return {"success": True, "companyId": cid, "keys": [
        {"keyId": r["id"], "keyPrefix": r["key_prefix"], "createdAt": r["created_at"].isoformat(),
         "revokedAt": r["revoked_at"].isoformat() if r["revoked_at"] else None} for r in rows
    ]}


async def _revoke(ctx: CtxDep, actor: str, cid: str, key_id: int | None) -> dict[str, Any]:
    if key_id is None:
        result = await ctx.db.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE company_id = $1 AND revoked_at IS NULL", cid
        )
    else:
        result = await ctx.db.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE company_id = $1 AND id = $2 AND revoked_at IS NULL",
            cid, key_id,
        )
    revoked = int(result.split()[-1])
    if key_id is not None and revoked == 0:
        raise ApiError(404, "key_not_found", f"no active key {key_id} for company {cid}")
    await audit(ctx, actor, cid, "key_revoked")
    return {"success": True, "companyId": cid, "revoked": revoked}


@router.delete("/{company_id}/keys/{key_id}", summary="Revoke one key", response_model=None,
               responses=route_answers(Revoked, with_errors(ADMIN_ROUTE, why={
                   404: "the company has no active key with this id"})))
async def revoke_key(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath, key_id: KeyIdPath) -> dict[str, Any]:
    return await _revoke(ctx, principal.name, parse_company_id(company_id), key_id)


@router.delete("/{company_id:path}/keys", summary="Revoke every key of the company", response_model=None,
               responses=route_answers(Revoked, ADMIN_ROUTE))
async def revoke_all(ctx: CtxDep, principal: AdminDep, company_id: CompanyIdPath) -> dict[str, Any]:
    return await _revoke(ctx, principal.name, parse_company_id(company_id), None)
