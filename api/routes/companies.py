"""Company API keys (SPEC X1): the admin issues them (shown once, stored hashed) and revokes them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminDep, CtxDep, hash_key, new_company_key, parse_company_id
from api.errors import ApiError
from api.routes.sessions import audit

router = APIRouter(prefix="/api/companies", tags=["companies"])


@router.post("/{company_id:path}/keys", status_code=201, summary="Issue a company key (shown once)")
async def issue_key(ctx: CtxDep, principal: AdminDep, company_id: str) -> dict[str, Any]:
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


@router.get("/{company_id:path}/keys", summary="The company's keys (prefixes only)")
async def list_keys(ctx: CtxDep, _: AdminDep, company_id: str) -> dict[str, Any]:
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


@router.delete("/{company_id}/keys/{key_id}", summary="Revoke one key")
async def revoke_key(ctx: CtxDep, principal: AdminDep, company_id: str, key_id: int) -> dict[str, Any]:
    return await _revoke(ctx, principal.name, parse_company_id(company_id), key_id)


@router.delete("/{company_id:path}/keys", summary="Revoke every key of the company")
async def revoke_all(ctx: CtxDep, principal: AdminDep, company_id: str) -> dict[str, Any]:
    return await _revoke(ctx, principal.name, parse_company_id(company_id), None)
