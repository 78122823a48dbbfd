"""The infrastructure watchdog (issue #15.2): one alert when PostgreSQL, Redis, the worker, every connector,
Temporal or the inbox backlog has been in trouble longer than the grace, one when it is back, and
silence otherwise (everything up, a restart shorter than the grace, an outage that goes on).

Real servers are stopped and started; the watchdog runs its loop with short settings, and its alerts
go through a recording sender in place of Telegram."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, TemporalDevConfig, TemporalDevServer, free_port
from domain.settings import Settings
from infra.alerts import Alert
from infra.probes import InfraProbes, probe_redis_client
from infra.watchdog import Watchdog
from storage import Database, migrate
from tests.api.conftest import run_connector_inprocess, run_worker
from tests.inbox.conftest import inbox_stack

pytestmark = pytest.mark.timeout(240)

FAST: dict[str, Any] = {"watchdog_interval_s": 0.3, "watchdog_grace_s": 2.0, "poller_stale_s": 3.0,
        "health_probe_timeout_s": 1.0, "health_probe_slow_s": 0.8}


def pydantic(client: Client) -> Client:
    config = client.config()
    config["data_converter"] = pydantic_data_converter
    return Client(**config)


class Recorded:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def send(self, text: str, severity: str) -> str:
        self.alerts.append(Alert(text=text, severity=severity))
        return "test"

    def about(self, word: str) -> list[Alert]:
        return [a for a in self.alerts if word in a.text]

    async def wait_for(self, count: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while len(self.alerts) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no alert for {what} within {timeout} s: {self.texts()}")
            await asyncio.sleep(0.1)

    def texts(self) -> list[str]:
        return [f"{a.severity}: {a.text}" for a in self.alerts]


@contextlib.asynccontextmanager
async def watching(settings: Settings, client: Client) -> AsyncIterator[tuple[Watchdog, Recorded]]:
    recorded = Recorded()
    db = Database(settings.database_dsn)
    redis = probe_redis_client(settings)
    dog = Watchdog(settings, InfraProbes(settings, client, db, redis), recorded.send, lease_redis=redis)
    await dog.start()
    try:
        yield dog, recorded
    finally:
        await dog.stop()
        await db.close()
        await redis.aclose()


async def _quiet(recorded: Recorded, seconds: float) -> None:
    before = recorded.texts()
    await asyncio.sleep(seconds)
    assert recorded.texts() == before, "unexpected alerts"


@pytest.fixture
async def own_servers(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, EmbeddedRedis]]:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    redis = EmbeddedRedis(tmp_path / "redis", free_port())
    await asyncio.to_thread(pg.start)
    await asyncio.to_thread(pg.create_database, "waorch")
    await asyncio.to_thread(redis.start)
    try:
        yield pg, redis
    finally:
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(pg.stop, "immediate")


async def test_postgres_redis_worker_and_connector_outages_alert_once_each_way(
    ops_env: Any, make_settings: Callable[..., Settings], own_servers: tuple[EmbeddedPostgres, EmbeddedRedis],
) -> None:
    pg, redis = own_servers
    client = pydantic(ops_env.client)
    settings = make_settings(client, database_url=pg.dsn_for("waorch"), redis_url=redis.url,
                             temporal_address=client.service_client.config.target_host, **FAST)
    db = Database(settings.database_dsn)
    await migrate(db)
    await db.close()
    worker = run_worker(settings, client)
    connector = run_connector_inprocess(settings)
    await worker.__aenter__()
    await connector.__aenter__()
    try:
        async with watching(settings, client) as (_, recorded):
            await _quiet(recorded, 4.0)  # everything up: silence

            await asyncio.to_thread(redis.restart)  # a restart shorter than the grace: silence
            await _quiet(recorded, 3.0)

            await asyncio.to_thread(pg.stop, "immediate")
            await recorded.wait_for(1, 20, "PostgreSQL down")
            (down,) = recorded.alerts
            assert down.severity == "critical" and "PostgreSQL down for" in down.text
            await _quiet(recorded, 2.0)  # still down: no second alert
            await asyncio.to_thread(pg.start)
            await recorded.wait_for(2, 20, "PostgreSQL back")
            assert recorded.alerts[1].severity == "info" and "PostgreSQL back after" in recorded.alerts[1].text

            await worker.__aexit__(None, None, None)
            await recorded.wait_for(3, 30, "the worker down")
            assert "the worker" in recorded.alerts[2].text and recorded.alerts[2].severity == "critical"
            worker = run_worker(settings, client)
            await worker.__aenter__()
            await recorded.wait_for(4, 30, "the worker back")
            assert "the worker" in recorded.alerts[3].text and "back" in recorded.alerts[3].text

            await connector.__aexit__(None, None, None)
            await recorded.wait_for(5, 30, "every connector down")
            assert "every connector" in recorded.alerts[4].text
            connector = run_connector_inprocess(settings)
            await connector.__aenter__()
            await recorded.wait_for(6, 30, "a connector back")
            assert "every connector" in recorded.alerts[5].text and "back" in recorded.alerts[5].text
            await _quiet(recorded, 2.0)
            assert [a.severity for a in recorded.alerts] == ["critical", "info"] * 3, recorded.texts()
            assert recorded.about("Redis") == []  # its short restart above stayed silent

            await asyncio.to_thread(redis.stop)  # down past the grace this time
            await recorded.wait_for(7, 20, "Redis down")
            assert recorded.alerts[6].severity == "critical" and "Redis down for" in recorded.alerts[6].text
            await asyncio.to_thread(redis.start)
            await recorded.wait_for(8, 20, "Redis back")
            assert recorded.alerts[7].severity == "info" and "Redis back after" in recorded.alerts[7].text
            await _quiet(recorded, 2.0)
            assert len(recorded.alerts) == 8, recorded.texts()
    finally:
        with contextlib.suppress(Exception):
            await connector.__aexit__(None, None, None)
        with contextlib.suppress(Exception):
            await worker.__aexit__(None, None, None)


async def test_temporal_down_is_one_alert_not_one_per_thing_that_needs_it(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    config = TemporalDevConfig(port=free_port(), ui_port=free_port(), metrics_port=None, retention="24h",
                               search_attributes={"CompanyId": "Keyword", "SessionState": "Keyword"},
                               dynamic_config={"matching.longPollExpirationInterval": "2s",
                                               "frontend.enableUpdateWorkflowExecution": True})
    server = TemporalDevServer(config, tmp_path / "temporal", ui=False)
    await asyncio.to_thread(server.start)
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        settings = make_settings(client, temporal_address=server.address, **FAST)
        async with run_worker(settings, client), run_connector_inprocess(settings), \
                watching(settings, client) as (_, recorded):
            await _quiet(recorded, 4.0)
            assert server.proc is not None
            server.proc.kill()
            await recorded.wait_for(1, 20, "Temporal down")
            await _quiet(recorded, 2.0)
            (down,) = recorded.alerts  # not also "worker" and "connector": they need Temporal to be seen
            assert down.severity == "critical" and "Temporal down for" in down.text
            await asyncio.to_thread(server.restart)
            await recorded.wait_for(2, 30, "Temporal back")
            assert "Temporal back after" in recorded.alerts[1].text
            await _quiet(recorded, 5.0)  # worker and connector poll again by themselves: nothing more
            assert len(recorded.alerts) == 2, recorded.texts()
    finally:
        await asyncio.to_thread(server.stop)


async def test_inbox_backlog_alerts_once_and_clears(ops_env: Any, make_settings: Any, db: Any, redis_client: Any):
    async with inbox_stack(ops_env, make_settings, db, redis_client, inbox_backlog_alert_s=2.0,
                           inbox_retry_window_s=120.0, **FAST) as s:
        await s.set_handler("webhook", url=s.receiver.url)
        async with watching(s.settings, s.client) as (dog, recorded):
            for i in range(3):  # a healthy handler: messages flow, no backlog
                await s.inject(f"ok {i}")
            await s.wait(lambda: len(s.outbox()) >= 3, 30, "3 replies")
            await _quiet(recorded, 3.0)
            assert dog.backlog is not None and dog.backlog.messages == 0

            s.receiver.status = 500  # the company's handler is down: messages queue in the chat
            for i in range(3):
                await s.inject(f"queued {i}")
            await recorded.wait_for(1, 30, "the backlog")
            (behind,) = recorded.alerts
            assert behind.severity == "critical" and "inbox backlog: 3 message(s) in 1 chat(s)" in behind.text
            await _quiet(recorded, 1.5)

            s.receiver.status = 200
            await recorded.wait_for(2, 30, "the backlog cleared")
            assert "inbox backlog cleared" in recorded.alerts[1].text
            assert len(s.outbox()) >= 6 and dog.backlog is not None and dog.backlog.messages == 0


def test_watchdog_settings_have_production_defaults() -> None:
    s = Settings(_env_file=None)
    assert (s.watchdog_enabled, s.watchdog_interval_s, s.watchdog_grace_s, s.inbox_backlog_alert_s) == (
        True, 15.0, 60.0, 600.0)


async def test_the_api_process_runs_the_watchdog_and_alerts_through_the_one_alert_path(
    ops_env: Any, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.api.conftest import ADMIN_KEY, serve_asgi

    client = pydantic(ops_env.client)
    settings = make_settings(client, api_admin_key=ADMIN_KEY, **FAST)  # no worker, no connector on its queues
    caplog.set_level("WARNING", logger="waorch.alerts")
    async with serve_asgi(settings, client) as api:
        deadline = time.monotonic() + 30
        while not [r for r in caplog.records if r.name == "waorch.alerts" and "the worker" in r.getMessage()]:
            assert time.monotonic() < deadline, "the API's watchdog sent no alert"
            await asyncio.sleep(0.2)
        inbox = next(c for c in (await api.http.get("/health")).json()["checks"] if c["name"] == "inbox")
        assert inbox["backlog"] == {"messages": 0, "chats": 0, "oldestSeconds": 0.0}  # the watchdog's last look
    alerts = [r.getMessage() for r in caplog.records if r.name == "waorch.alerts"]
    assert len([a for a in alerts if "the worker" in a]) == 1 and all("severity=critical" in a for a in alerts)
