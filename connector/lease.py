"""How a connector proves it is alive: a lease per process, not a Temporal action per session.

Every connector process is an *incarnation* (``CONNECTOR_ID`` plus a random suffix). It keeps a
lease in two stores at once, renewed every ``LEASE_RENEW_S`` by a thread of its own (its own event
loop and connections, so a busy main loop cannot starve it):

* PostgreSQL: ``connector_leases.expires_at = now() + LEASE_TTL_S`` (database time);
* Redis: the key ``connector-lease:<incarnation>`` with a TTL of ``LEASE_TTL_S``.

**Fencing.** A renewal that succeeds in either store keeps the lease. If neither succeeded for
``LEASE_FENCE_S``, the process exits at once (``os._exit``): the kernel closes every WhatsApp socket
it had, so nothing it held can still be connected.

**Declaring a peer dead** (:class:`PeerWatch`, run by every live connector): only when its lease has
been expired in *both* stores, continuously, for ``LEASE_FENCE_S + DECLARE_MARGIN_S`` as seen by the
watcher, or at once when the peer ran on this machine and its process is gone (the kernel has closed
its sockets: a restarted connector knows its predecessor is dead). Why that is safe: a renewal of the
peer in either store would have made one of them unexpired during the window (a Redis key that
expired is not re-created unless the PostgreSQL renewal of the same round succeeded), so the peer's
last renewal is older than the window's start, and it has fenced itself ``LEASE_FENCE_S`` after it.

So one store down, for any time, touches no connection (the other carries the lease), a SIGKILLed
connector is declared dead about ``LEASE_TTL_S + LEASE_FENCE_S + 2.5`` s after it died (~10.5 s with
the defaults), and a connector cut off from both stores is gone before any peer may take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from domain.settings import Settings
from infra.process import process_start_ticks

log = logging.getLogger("waorch.lease")

DECLARE_MARGIN_S = 1.5
_STORE_TIMEOUT_FRACTION = 0.8


def lease_key(settings: Settings, incarnation: str) -> str:
    return f"{settings.redis_prefix}connector-lease:{incarnation}"


def _boot_and_pidns() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"
    return f"{boot}/{pidns}"


def this_process() -> str:
    """``<boot id>/<pid namespace>/<pid>/<start ticks>``: names this process uniquely on this machine."""
    return f"{_boot_and_pidns()}/{os.getpid()}/{process_start_ticks(os.getpid())}"


def process_gone(process: str) -> bool:
    """True only when ``process`` ran in this machine's current boot and PID namespace and is gone."""
    parts = process.split("/")
    if len(parts) < 4 or "unknown" in parts:
        return False
    scope, pid, ticks = "/".join(parts[:-2]), parts[-2], parts[-1]
    if scope != _boot_and_pidns():
        return False
    return str(process_start_ticks(int(pid))) != ticks


@dataclass(frozen=True)
class Incarnation:
    pool: str  # the connectors that may adopt each other's holds: "<namespace>/<connector queue>"
    connector_id: str
    incarnation: str
    own_queue: str
    host: str
    process: str

    @classmethod
    def new(cls, settings: Settings) -> Incarnation:
        return cls(
            pool=settings.connector_pool,
            connector_id=settings.connector_id,
            incarnation=f"{settings.connector_id}:{secrets.token_hex(4)}",
            own_queue=settings.connector_own_queue,
            host=socket.gethostname(),
            process=this_process(),
        )


class ConnectorIdInUse(RuntimeError):
    """Another live connector process runs with the same CONNECTOR_ID."""


def _default_fence(reason: str) -> None:
    log.critical("lease lost, exiting so that no connection outlives it reason=%s", reason)
    logging.shutdown()
    os._exit(75)


class LeaseKeeper:
    """Registers this incarnation and renews its lease from a dedicated thread; fences on loss."""

    def __init__(self, settings: Settings, me: Incarnation, *,
                 fence: Callable[[str], None] = _default_fence) -> None:
        self._s = settings
        self.me = me
        self._fence = fence
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_success = time.monotonic()
        self.pg_ok = False
        self.redis_ok = False
        self.fenced = False
        self.registered = False
        self._released = False

    # ------------------------------------------------------------------ registration (main loop)

    async def register(self, db_dsn: str, redis: aioredis.Redis) -> None:
        """Insert the lease (refusing a CONNECTOR_ID that a live process uses) and start renewing."""
        s, me = self._s, self.me
        conn = await asyncpg.connect(db_dsn, timeout=10)
        try:
            clash = await conn.fetchrow(
                """SELECT incarnation, host, process FROM connector_leases
                   WHERE pool = $1 AND connector_id = $2 AND dead_at IS NULL AND released_at IS NULL
                     AND expires_at > now() ORDER BY started_at DESC LIMIT 1""",
                me.pool, me.connector_id,
            )
            if clash is not None:
                if s.lease_local_process_check and process_gone(clash["process"]):
                    await conn.execute(
                        "UPDATE connector_leases SET dead_at = now(), dead_reason = $2 WHERE incarnation = $1 "
                        "AND dead_at IS NULL", clash["incarnation"], "process gone (restarted on the same host)",
                    )
                    log.info("predecessor gone incarnation=%s", clash["incarnation"])
                else:
                    raise ConnectorIdInUse(
                        f"CONNECTOR_ID {me.connector_id!r} is in use by a live connector on {clash['host']} "
                        f"({clash['incarnation']}); give each connector its own CONNECTOR_ID"
                    )
            await conn.execute(
                """INSERT INTO connector_leases (incarnation, pool, connector_id, own_queue, host, process, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))""",
                me.incarnation, me.pool, me.connector_id, me.own_queue, me.host, me.process, s.lease_ttl_s,
            )
        finally:
            await conn.close()
        with contextlib.suppress(aioredis.RedisError, OSError):
            await redis.set(lease_key(s, me.incarnation), me.own_queue, px=int(s.lease_ttl_s * 1000))
        self.last_success = time.monotonic()
        self.registered = True
        self._thread = threading.Thread(target=self._run, args=(db_dsn,), name="lease-keeper", daemon=True)
        self._thread.start()
        log.info("lease registered incarnation=%s ttl_s=%.1f fence_s=%.1f", me.incarnation, s.lease_ttl_s,
                 s.lease_fence_s)

    async def release(self, db_dsn: str, redis: aioredis.Redis) -> None:
        """Graceful stop: the connections are closed; peers may adopt the holds at once."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._released = True
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(db_dsn, timeout=5)
            try:
                await conn.execute("UPDATE connector_leases SET released_at = now() WHERE incarnation = $1",
                                   self.me.incarnation)
            finally:
                await conn.close()
        with contextlib.suppress(aioredis.RedisError, OSError):
            await redis.delete(lease_key(self._s, self.me.incarnation))
        log.info("lease released incarnation=%s", self.me.incarnation)

    def stop(self) -> None:
        """Stop renewing without releasing (tests: the lease then expires like a killed process's)."""
        self._stop.set()

    # ------------------------------------------------------------------ the renewal thread

    def _run(self, db_dsn: str) -> None:
        asyncio.run(self._renew_forever(db_dsn))

    async def _renew_forever(self, db_dsn: str) -> None:
        s = self._s
        redis = aioredis.from_url(s.redis_dsn, socket_connect_timeout=s.lease_renew_s,
                                  socket_timeout=s.lease_renew_s)
        conn: asyncpg.Connection | None = None
        timeout = s.lease_renew_s * _STORE_TIMEOUT_FRACTION
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                conn, pg = await self._renew_pg(conn, db_dsn, timeout)
                if pg == "dead":
                    self._do_fence("declared dead by a peer")
                    return
                self.pg_ok = pg == "ok"
                self.redis_ok = await self._renew_redis(redis, timeout, recreate=self.pg_ok)
                if self.pg_ok or self.redis_ok:
                    self.last_success = started
                silent = time.monotonic() - self.last_success
                if silent >= s.lease_fence_s:
                    self._do_fence(f"no lease renewal in PostgreSQL or Redis for {silent:.1f}s")
                    return
                # Wake at the next renewal, or at the fence deadline if that comes first.
                wait = min(s.lease_renew_s - (time.monotonic() - started),
                           s.lease_fence_s - (time.monotonic() - self.last_success))
                await asyncio.to_thread(self._stop.wait, max(wait, 0.01))
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1)

    async def _renew_pg(self, conn: asyncpg.Connection | None, dsn: str,
                        timeout: float) -> tuple[asyncpg.Connection | None, str]:
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(dsn, timeout=timeout)
            row = await conn.fetchrow(
                """UPDATE connector_leases SET renewed_at = now(), expires_at = now() + make_interval(secs => $2)
                   WHERE incarnation = $1 RETURNING dead_at""",
                self.me.incarnation, self._s.lease_ttl_s, timeout=timeout,
            )
        except Exception as exc:
            if conn is not None:
                conn.terminate()
            if self.pg_ok:
                log.warning("lease renewal failed store=postgresql error=%s", type(exc).__name__)
            return None, "failed"
        if row is None:
            # No row: nobody declared this incarnation dead (that sets dead_at); the store lost it.
            await conn.execute(
                """INSERT INTO connector_leases (incarnation, pool, connector_id, own_queue, host, process,
                                                 expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) ON CONFLICT DO NOTHING""",
                self.me.incarnation, self.me.pool, self.me.connector_id, self.me.own_queue, self.me.host,
                self.me.process, self._s.lease_ttl_s,
            )
            return conn, "ok"
        return conn, "dead" if row["dead_at"] is not None else "ok"

    async def _renew_redis(self, redis: aioredis.Redis, timeout: float, *, recreate: bool) -> bool:
        key = lease_key(self._s, self.me.incarnation)
        ttl_ms = int(self._s.lease_ttl_s * 1000)
        try:
            # XX: an expired key is not brought back by Redis alone (see the module docstring) ...
            renewed = await asyncio.wait_for(redis.set(key, self.me.own_queue, px=ttl_ms, xx=True), timeout)
            if not renewed and recreate:
                # ... only together with a PostgreSQL renewal that just succeeded (e.g. after a Redis restart).
                renewed = await asyncio.wait_for(redis.set(key, self.me.own_queue, px=ttl_ms), timeout)
        except Exception as exc:
            if self.redis_ok:
                log.warning("lease renewal failed store=redis error=%s", type(exc).__name__)
            return False
        return bool(renewed)

    def _do_fence(self, reason: str) -> None:
        if self._released:
            return
        self.fenced = True
        self._fence(reason)


@dataclass
class DeadPeer:
    incarnation: str
    connector_id: str
    own_queue: str
    reason: str
    holds: int


class PeerWatch:
    """Declares peers dead (see the module docstring); run by every live connector every second."""

    def __init__(self, settings: Settings, me: Incarnation) -> None:
        self._s = settings
        self._me = me
        self._expired_since: dict[str, float] = {}

    async def check(self, db: object, redis: aioredis.Redis) -> list[DeadPeer]:
        from storage import Database

        assert isinstance(db, Database)
        rows = await db.fetch(
            """SELECT incarnation, connector_id, process FROM connector_leases
               WHERE pool = $2 AND dead_at IS NULL AND released_at IS NULL AND expires_at < now()
                 AND incarnation <> $1""",
            self._me.incarnation, self._me.pool,
        )
        now = time.monotonic()
        window = self._s.lease_fence_s + DECLARE_MARGIN_S
        seen = set()
        declared: list[DeadPeer] = []
        for row in rows:
            inc = row["incarnation"]
            seen.add(inc)
            reason: str | None = None
            if self._s.lease_local_process_check and process_gone(row["process"]):
                reason = "its process is gone"
            else:
                try:
                    alive_in_redis = bool(await redis.exists(lease_key(self._s, inc)))
                except (aioredis.RedisError, OSError):
                    self._expired_since.pop(inc, None)  # unknown: Redis may still carry it
                    continue
                if alive_in_redis:
                    self._expired_since.pop(inc, None)
                    continue
                first = self._expired_since.setdefault(inc, now)
                if now - first >= window:
                    reason = f"lease expired in PostgreSQL and Redis for {now - first:.1f}s"
            if reason is None:
                continue
            dead = await db.fetchrow(
                """UPDATE connector_leases SET dead_at = now(), dead_reason = $2
                   WHERE incarnation = $1 AND dead_at IS NULL AND released_at IS NULL AND expires_at < now()
                   RETURNING connector_id, own_queue,
                             (SELECT count(*) FROM session_holds WHERE holder = $1) AS holds""",
                inc, reason,
            )
            self._expired_since.pop(inc, None)
            if dead is not None:
                declared.append(DeadPeer(inc, dead["connector_id"], dead["own_queue"], reason, dead["holds"]))
                log.warning("connector declared dead incarnation=%s reason=%s holds=%d", inc, reason, dead["holds"])
        for inc in list(self._expired_since):
            if inc not in seen:
                del self._expired_since[inc]
        return declared
