"""Dependencies shared by the routes: app context, authentication (SPEC X1), company access."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.errors import ApiError
from api.events import HolderLiveness
from api.onboarding import InvalidOnboardingToken, is_onboarding_token, verify_token
from domain.company import COMPANY_ID_MAX, COMPANY_ID_PATTERN, InvalidCompanyId, normalize_company_id
from domain.settings import Settings
from storage import Database

if TYPE_CHECKING:
    from api.events import EventHub, LastEvents
    from infra.metrics import EventCounters, JobMetricsProvider
    from infra.probes import InfraProbes
    from infra.ratelimit import RateLimiter
    from infra.redis import EventPublisher
    from infra.watchdog import Watchdog
    from storage.blobs import BlobStore


@dataclass
class AppContext:
    settings: Settings
    client: Client
    db: Database
    redis: aioredis.Redis
    admin_key: str
    # Set by the app's lifespan (api.app); None only in contexts built by hand.
    limiter: RateLimiter | None = None
    contact_limiter: RateLimiter | None = None  # number checks: a window of their own (issue 11.5)
    counters: EventCounters | None = None
    events: EventHub | None = None
    publisher: EventPublisher | None = None
    job_metrics: JobMetricsProvider | None = None
    last_events: LastEvents | None = None
    holders: HolderLiveness = field(default_factory=HolderLiveness)
    probes: InfraProbes | None = None
    watchdog: Watchdog | None = None
    extra: dict[str, object] = field(default_factory=dict)
    blobs: BlobStore | None = None  # media bytes (storage/blobs.py); made on first use when None

    def blob_store(self) -> BlobStore:
        if self.blobs is None:
            from storage.blobs import blob_store

            self.blobs = blob_store(self.settings)
        return self.blobs


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, or one company's key."""

    is_admin: bool
    company_id: str | None = None
    key_prefix: str | None = None

    @property
    def name(self) -> str:
        return "admin" if self.is_admin else f"company:{self.company_id}"

    def can_access(self, company_id: str) -> bool:
        return self.is_admin or self.company_id == company_id


def hash_key(key: str) -> str:
    """Company keys are 256-bit random tokens: a plain SHA-256 is a safe, fast lookup hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_company_key(company_id: str) -> str:
    return f"wa_{company_id}_{secrets.token_urlsafe(24)}"


def extract_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


async def principal_for_key(ctx: AppContext, key: str | None) -> Principal:
    """Resolve an API key; raises 401 when missing or unknown (also used by the WebSocket)."""
    if not key:
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
                       headers={"WWW-Authenticate": "Bearer"})
    if len(key) <= 200 and hmac.compare_digest(key.encode(), ctx.admin_key.encode()):
        return Principal(is_admin=True)
    if is_onboarding_token(key):  # a signed, short-lived onboarding link: that company only
        try:
            return Principal(is_admin=False, company_id=verify_token(ctx.admin_key, key), key_prefix="onboarding")
        except InvalidOnboardingToken as exc:
            raise ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    try:
        row = await ctx.db.fetchrow(
            "SELECT company_id, key_prefix FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
        )
    except Exception as exc:  # the key store is down: say so, do not turn it into a 500 or a 401
        raise ApiError(503, "unavailable", f"cannot check the API key now: {type(exc).__name__}",
                       headers={"Retry-After": "5"}) from None
    if row is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return Principal(is_admin=False, company_id=row["company_id"], key_prefix=row["key_prefix"])


# The two ways to present a key, as the schema's security schemes (either one). The key itself is
# read from the request's headers by ``extract_key``: these only tell the schema (and /docs) about them.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>: the admin key, a company "
                                                         "key, or an onboarding link's token")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key in X-API-Key")


async def get_principal(
    ctx: CtxDep,
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
    _api_key: Annotated[str | None, Security(api_key_scheme)] = None,
) -> Principal:
    return await principal_for_key(ctx, extract_key(request.headers.get("authorization"),
                                                    request.headers.get("x-api-key")))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs the admin key")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def parse_company_id(raw: str) -> str:
    try:
        return normalize_company_id(raw)
    except InvalidCompanyId as exc:
        raise ApiError(422, "validation_error", f"company_id: {exc}") from None


# The company id of a path: what ``parse_company_id`` accepts, for the schema. The route reads the
# raw text and normalises it itself (surrounding spaces are trimmed, a bare number gains "company_"),
# so a refused id is a 422 naming the rule, not a pattern mismatch.
CompanyIdPath = Annotated[str, Path(
    description="company id: 962302 (a bare number, read as company_962302) or company_962302; "
                f"1-{COMPANY_ID_MAX} characters of A-Z, a-z, 0-9, '_' or '-'",
    json_schema_extra={"pattern": COMPANY_ID_PATTERN, "minLength": 1, "maxLength": COMPANY_ID_MAX,
                       "examples": ["962302", "company_962302"]},
)]


async def company_access(principal: PrincipalDep, company_id: CompanyIdPath) -> str:
    """The normalised company id of the path, after checking the caller may reach it (403 otherwise)."""
    cid = parse_company_id(company_id)
    if not principal.can_access(cid):
        raise ApiError(403, "forbidden", f"this key may not access company {cid}")
    return cid


CompanyDep = Annotated[str, Depends(company_access)]
