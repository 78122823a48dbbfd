"""A small asyncpg wrapper with the retry policy of SPEC D2.

Transient errors (connection refused/reset, server shutting down, timeouts)
are retried with exponential backoff, 100 → 200 → 400 ms by default; any other
error (a constraint, a syntax error, bad input) fails at once. The DSN is
never logged: errors name the host and database only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

log = logging.getLogger("waorch.db")
T = TypeVar("T")

# SQLSTATE classes/codes that mean "the server or the link is not there right now".
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the database is unreachable or restarting."""
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
        return isinstance(exc, asyncpg.PostgresConnectionError) or "connection" in str(exc).lower()
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 3  # retries after the first attempt
    first_delay_s: float = 0.1
    factor: float = 2.0

    def delays(self) -> list[float]:
        return [self.first_delay_s * self.factor**i for i in range(self.tries)]


def describe_dsn(dsn: str) -> str:
    """``host:port/db`` of a DSN, safe to log (no user, no password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


class Database:
    """A lazily connecting pool; every call goes through the retry policy."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 10,
        retry: RetryPolicy | None = None,
        command_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._retry = retry or RetryPolicy()
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self.where = describe_dsn(dsn)

    def __repr__(self) -> str:
        return f"Database({self.where})"

    @property
    def dsn(self) -> str:
        """The DSN this pool connects with (a secret: never log it; ``where`` is the loggable form)."""
        return self._dsn

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    # min_size=0: creating the pool opens no connection, so a
                    # database that is down now is retried per call, not fatal here.
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._max_size,
                        command_timeout=self._command_timeout,
                        max_inactive_connection_lifetime=60,
                    )
        return self._pool

    async def retrying(self, op: Callable[[], Awaitable[T]], what: str = "query") -> T:
        """Run ``op`` under the retry policy."""
        delays = self._retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                return await op()
            except Exception as exc:
                if not is_transient(exc) or attempt == len(delays):
                    raise
                log.warning(
                    "db transient error where=%s op=%s attempt=%d retry_in_ms=%d error=%s",
                    self.where, what, attempt + 1, int(delays[attempt] * 1000), type(exc).__name__,
                )
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """One pooled connection (acquiring it is retried; the body is not)."""
        pool = await self._get_pool()
        conn = await self.retrying(lambda: pool.acquire(), "acquire")
        try:
            yield conn
        finally:
            await pool.release(conn)

    async def _run(self, method: str, query: str, args: Sequence[Any]) -> Any:
        async def op() -> Any:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                return await getattr(conn, method)(query, *args)

        return await self.retrying(op, method)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self._run("execute", query, args)
        return result

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = await self._run("fetch", query, args)
        return result

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        result: asyncpg.Record | None = await self._run("fetchrow", query, args)
        return result

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except TimeoutError:
                pool.terminate()
