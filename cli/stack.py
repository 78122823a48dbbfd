"""``waorch up``: the whole stack on one machine (SPEC O2, DESIGN "Processes").

Order: Temporal dev server, PostgreSQL, Redis (each embedded unless its URL
is set), then connector, worker and api as child processes. Waits for
``/health``, prints the URLs, restarts a child or an embedded server that dies
(with a growing pause, so a crash loop does not spin; a server on its own data),
and on Ctrl-C / SIGTERM stops the children first (the connector closes WhatsApp
clients without logging out), then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from cli.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    TemporalDevConfig,
    TemporalDevServer,
    default_dev_config_path,
    die_with_parent,
)
from cli.logfiles import RotatingLogFile
from domain.settings import Settings
from infra.admin_key import load_or_create_admin_key
from infra.process import stop_event_on_signals
from storage import Database, migrate

log = logging.getLogger("waorch.stack")

CHILDREN = ("connector", "worker", "api")


@dataclass
class Child:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    log: RotatingLogFile | None = None

    @property
    def log_path(self) -> Path | None:
        return self.log.path if self.log is not None else None

    def start(self) -> None:
        assert self.log is not None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", self.name], env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        self.log.follow(self.proc.stdout, self.name)  # rotated by size (LOG_MAX_BYTES, LOG_BACKUP_COUNT)
        self.started_at = time.monotonic()

    def stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time, killing name=%s", self.name)
            self.proc.kill()
            self.proc.wait(5)


class EmbeddedServer(Protocol):
    def alive(self) -> bool: ...

    def restart(self) -> None: ...


@dataclass(eq=False)
class ServerWatch:
    """An embedded server under supervision: found dead → restarted on its own data, with a growing
    pause (1 s, 2 s, … 30 s) while restarts keep failing or it keeps dying."""

    name: str
    server: EmbeddedServer
    restarts: int = 0
    up_since: float = field(default_factory=time.monotonic)
    next_start_at: float | None = None  # set while it is down
    restarting: asyncio.Task[None] | None = None

    def check(self, now: float) -> None:
        if self.restarting is not None:
            if not self.restarting.done():
                return
            failed = self.restarting.exception()
            self.restarting = None
            if failed is None:
                self.up_since, self.next_start_at = now, None
                log.info("server restarted name=%s restarts=%d", self.name, self.restarts)
                return
            log.warning("server restart failed name=%s error=%s", self.name, str(failed)[:300])
            self._schedule(now)
            return
        if self.next_start_at is None:
            if not self.server.alive():
                if now - self.up_since > 60:
                    self.restarts = 0  # it ran fine for a while: a new failure, not a loop
                self._schedule(now)
        elif now >= self.next_start_at:
            self.restarting = asyncio.create_task(asyncio.to_thread(self.server.restart))

    def _schedule(self, now: float) -> None:
        pause = min(30.0, 2.0**self.restarts)
        self.restarts += 1
        self.next_start_at = now + pause
        log.warning("server down name=%s restart_in_s=%.0f", self.name, pause)

    async def settle(self) -> None:
        """Wait for a restart in progress (so stopping does not race it)."""
        if self.restarting is not None:
            with contextlib.suppress(Exception):
                await self.restarting


@dataclass
class Stack:
    settings: Settings
    temporal: TemporalDevServer | None = None
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)

    def watches(self) -> list[ServerWatch]:
        """The embedded servers to supervise (none for a server given by URL)."""
        servers: list[tuple[str, EmbeddedServer | None]] = [
            ("temporal", self.temporal), ("postgres", self.postgres), ("redis", self.redis)]
        return [ServerWatch(name, server) for name, server in servers if server is not None]

    def start_servers(self, env: dict[str, str]) -> None:
        s = self.settings
        data = s.data_dir.resolve()
        if s.uses_embedded_temporal:
            cfg = TemporalDevConfig.load(default_dev_config_path())
            cfg.port = s.temporal_port or cfg.port
            cfg.ui_port = s.temporal_ui_port or cfg.ui_port
            if s.temporal_port:
                cfg.metrics_port = None  # a second stack must not collide on the server's metrics port
            self.temporal = TemporalDevServer(cfg, data / "temporal",
                                              log=log_file(s, data / "logs" / "temporal.log"))
            self.temporal.start()
            env["TEMPORAL_ADDRESS"] = self.temporal.address
            env["TEMPORAL_NAMESPACE"] = cfg.namespace
            if s.temporal_ui_url is None:  # the operator page links each session to this UI
                env["TEMPORAL_UI_URL"] = self.temporal.ui_url
            log.info("temporal dev server up address=%s ui=%s", self.temporal.address, self.temporal.ui_url)
        if s.uses_embedded_postgres:
            self.postgres = EmbeddedPostgres(data / "postgres", s.postgres_port)
            self.postgres.start()
            self.postgres.create_database(s.db_name)
            env["DATABASE_URL"] = self.postgres.dsn_for(s.db_name)
            log.info("postgres up port=%d db=%s", s.postgres_port, s.db_name)
        if s.uses_embedded_redis:
            self.redis = EmbeddedRedis(data / "redis", s.redis_port)
            self.redis.start()
            env["REDIS_URL"] = self.redis.url
            log.info("redis up port=%d", s.redis_port)

    def stop_servers(self) -> None:
        for server in (self.redis, self.postgres, self.temporal):
            if server is not None:
                try:
                    server.stop()
                except Exception:
                    log.exception("failed to stop %s", type(server).__name__)


def log_file(settings: Settings, path: Path) -> RotatingLogFile:
    return RotatingLogFile(path, settings.log_max_bytes, settings.log_backup_count)


async def _wait_healthy(url: str, timeout: float, children: list[Child]) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}; see {child.log_path}")
            try:
                resp = await http.get(url)
                if resp.status_code == 200:
                    body: dict[str, object] = resp.json()
                    return body
                last = f"{resp.status_code} {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.2)
    raise TimeoutError(f"api not healthy after {timeout:.0f}s: {last}")


async def run_stack(settings: Settings) -> int:
    started = time.monotonic()
    data = settings.data_dir.resolve()
    (data / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["DATA_DIR"] = str(data)
    stack = Stack(settings)
    stop = stop_event_on_signals()
    try:
        await asyncio.to_thread(stack.start_servers, env)
        db = Database(env.get("DATABASE_URL") or settings.database_dsn)
        await migrate(db)
        await db.close()

        admin_note = ""
        if settings.api_admin_key is None:
            key, created = load_or_create_admin_key(data)
            env["API_ADMIN_KEY"] = key
            admin_note = (
                f"admin key (new, shown once; kept in {data / 'admin.key'}): {key}"
                if created
                else f"admin key: in {data / 'admin.key'} (mode 0600)"
            )

        for offset, name in enumerate(CHILDREN):
            child_env = dict(env)
            if settings.temporal_sdk_metrics_port:  # one SDK metrics port each: connector, worker+1, api+2
                child_env["TEMPORAL_SDK_METRICS_PORT"] = str(settings.temporal_sdk_metrics_port + offset)
            child = Child(name, child_env, log=log_file(settings, data / "logs" / f"{name}.log"))
            child.start()
            stack.children.append(child)

        api = f"http://{settings.api_host}:{settings.api_port}"
        body = await _wait_healthy(f"{api}/health", 60, stack.children)
        took = time.monotonic() - started
        ui = stack.temporal.ui_url if stack.temporal else settings.temporal_ui_url or "(external Temporal: its own UI)"
        print(
            "\n".join([
                f"waorch stack is up in {took:.1f}s (health: {body.get('status')})",
                f"  API            {api}",
                f"  API docs       {api}/docs",
                f"  onboarding     {api}/onboarding/<company_id>",
                f"  operator page  {api}/dashboard   (asks for the admin key)",
                f"  health         {api}/health    metrics {api}/metrics",
                f"  Temporal UI    {ui}",
                f"  transport      {settings.wa_transport}",
                *_media_note(settings),
                f"  logs           {data / 'logs'}",
                *([f"  {admin_note}"] if admin_note else []),
                "Ctrl-C stops everything.",
            ]),
            flush=True,
        )
        watches = stack.watches()
        try:
            await _supervise(stack.children, watches, stop)
        finally:
            for watch in watches:
                await watch.settle()
        return 0
    finally:
        log.info("stopping stack")
        for child in reversed(stack.children):
            await asyncio.to_thread(child.stop, 25.0)
        await asyncio.to_thread(stack.stop_servers)
        log.info("stack stopped")


async def _supervise(children: list[Child], servers: list[ServerWatch], stop: asyncio.Event) -> None:
    """Restart a child or an embedded server that dies; pause 1 s, 2 s, … 30 s between restarts of
    a crash-looping one. A server restarts on its own data (Temporal on its database file,
    PostgreSQL through crash recovery); the children reconnect to it by themselves."""
    while not stop.is_set():
        now = time.monotonic()
        for server in servers:
            server.check(now)
        for child in children:
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                child.proc = None
                if now - child.started_at > 60:
                    child.restarts = 0  # it ran fine for a while: this is a new failure, not a loop
                pause = min(30.0, 2.0**child.restarts)
                child.restarts += 1
                child.next_start_at = now + pause
                log.warning("child died name=%s code=%s restart_in_s=%.0f", child.name, code, pause)
            elif child.proc is None and now >= child.next_start_at:
                child.start()
                log.info("child restarted name=%s restarts=%d", child.name, child.restarts)
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass


def _media_note(settings: Settings) -> list[str]:
    """The media kinds neonize cannot send on this machine (ffmpeg/ffprobe missing), said at start."""
    if settings.wa_transport != "neonize":
        return []
    from connector.media_tools import unavailable_media_kinds

    unavailable = unavailable_media_kinds()
    if not unavailable:
        return []
    why = sorted(set(unavailable.values()))
    return [f"  media          cannot send {', '.join(sorted(unavailable))}: {'; '.join(why)}"]
