"""Per-company send rate limit (SPEC M2): a sliding window in Redis, in-process when Redis is down.

The window is a sorted set per company (member = request id, score = time in
ms); one Lua script trims, counts and admits atomically, so any number of API
processes share one limit. A request carrying an ``Idempotency-Key`` uses the
key as its member: a retry of an admitted request is admitted again without
using up another slot (it will not send a second message either).

When Redis is unreachable the limiter keeps enforcing the same window in this
process (per API process, so N processes admit up to N× the limit during an
outage) and retries Redis after a short pause instead of on every request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis

from infra.sentry import capture_warning

log = logging.getLogger("waorch.ratelimit")

# KEYS[1] window zset, KEYS[2] counters hash. ARGV: window_ms, limit, member.
# Returns {admitted (0/1), retry_after_ms, used}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return {1, 0, redis.call('ZCARD', KEYS[1])}
end
local used = redis.call('ZCARD', KEYS[1])
if used < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0, used + 1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
return {0, tonumber(oldest[2]) + window - now, used}
"""

REDIS_RETRY_AFTER_S = 2.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    used: int
    limit: int
    backend: str  # "redis" | "memory"

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds)."""
        return str(max(1, int(-(-self.retry_after_s // 1))))


class RateLimiter:
    """Sliding-window limiter: ``limit`` requests per ``window_s`` per company."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, limit: int, window_s: float,
                 counters_key: str, name: str = "ratelimit") -> None:
        self._redis = redis
        self._prefix = prefix
        self._name = name  # the window's own keys: sends use "ratelimit", number checks "contact-checks"
        self.limit = limit
        self.window_s = window_s
        self._counters_key = counters_key
        self._script = redis.register_script(_SCRIPT)
        self._local: dict[str, deque[tuple[float, str]]] = {}
        self._redis_down_until = 0.0
        self.local_rejections = 0  # rejections counted while Redis was down

    def _key(self, company_id: str) -> str:
        return f"{self._prefix}whatsapp:{self._name}:{company_id}"

    async def check(self, company_id: str, member: str | None = None) -> Decision:
        """Admit or refuse one request of ``company_id`` (``member``: its idempotency key, if any)."""
        member = member or uuid.uuid4().hex
        if time.monotonic() >= self._redis_down_until:
            try:
                admitted, retry_ms, used = await self._script(
                    keys=[self._key(company_id), self._counters_key],
                    args=[int(self.window_s * 1000), self.limit, member],
                )
                if admitted:
                    self._remember_local(company_id, member)
                return Decision(bool(admitted), int(retry_ms) / 1000, int(used), self.limit, "redis")
            except (aioredis.RedisError, OSError) as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_S
                log.warning("rate limiter falls back to memory company_id=%s error=%s",
                            company_id, type(exc).__name__)
                capture_warning("rate limiter: Redis unreachable, in-process fallback", operation="rate_limit",
                                company_id=company_id)
        return self._check_local(company_id, member)

    def _trim(self, company_id: str, now: float) -> deque[tuple[float, str]]:
        window = self._local.setdefault(company_id, deque())
        while window and window[0][0] <= now - self.window_s:
            window.popleft()
        return window

    def _remember_local(self, company_id: str, member: str) -> None:
        # Mirror admitted requests locally, so a Redis outage starts from the real recent count.
        now = time.monotonic()
        window = self._trim(company_id, now)
        if all(m != member for _, m in window):
            window.append((now, member))
        while len(window) > self.limit:
            window.popleft()

    def _check_local(self, company_id: str, member: str) -> Decision:
        now = time.monotonic()
        window = self._trim(company_id, now)
        if any(m == member for _, m in window):
            return Decision(True, 0.0, len(window), self.limit, "memory")
        if len(window) < self.limit:
            window.append((now, member))
            return Decision(True, 0.0, len(window), self.limit, "memory")
        self.local_rejections += 1
        return Decision(False, window[0][0] + self.window_s - now, len(window), self.limit, "memory")
