"""SPEC H1–H3: /health from real checks (PostgreSQL down → 503), Prometheus and JSON metrics that move."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from cli.embedded import EmbeddedPostgres, TemporalDevConfig, TemporalDevServer, free_port, wait_until
from domain.settings import Settings
from tests.api.conftest import ADMIN, Api, company, serve_asgi

pytestmark = pytest.mark.timeout(120)


def _check(body: dict[str, object], name: str) -> dict[str, object]:
    checks = body["checks"]
    assert isinstance(checks, list)
    found: dict[str, object] = next(c for c in checks if c["name"] == name)
    return found


async def test_health_is_down_503_when_postgres_stops(
    client: Client, api_settings: Settings, tmp_path: Path
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    await asyncio.to_thread(pg.start)
    try:
        settings = api_settings.model_copy(update={"database_url": SecretStr(pg.dsn)})
        async with serve_asgi(settings, client) as api:
            key = await api.issue_key(company())
            before = await api.http.get("/health")
            assert before.status_code == 200, before.text
            assert _check(before.json(), "postgres")["status"] == "ok"
            assert _check(before.json(), "temporal")["status"] == "ok"
            # No connector polls this test's queue: degraded, not ok.
            assert before.json()["status"] == "degraded" and _check(before.json(), "connector")["status"] == "down"

            await asyncio.to_thread(pg.stop, "immediate")
            after = await api.http.get("/health")
            assert after.status_code == 503 and after.json()["status"] == "down", after.text
            assert _check(after.json(), "postgres")["status"] == "down"
            assert _check(after.json(), "redis")["status"] == "ok"
            # The API still answers: the admin key needs no database, a company key gets 503, not 500.
            status = await api.http.get(f"/api/whatsapp/sessions/{company()}/status", headers=ADMIN)
            assert status.status_code == 404
            keyed = await api.http.get("/api/whatsapp/sessions", headers={"X-API-Key": key})
            assert keyed.status_code == 503 and keyed.json()["code"] == "unavailable"
    finally:
        await asyncio.to_thread(pg.stop, "immediate")


async def test_health_is_down_503_when_temporal_stops(api_settings: Settings, tmp_path: Path) -> None:
    config = TemporalDevConfig(port=free_port(), ui_port=free_port(), db_filename="temporal.db")
    server = TemporalDevServer(config, tmp_path / "temporal", ui=False)
    await asyncio.to_thread(server.start)
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        settings = api_settings.model_copy(update={"temporal_address": server.address})
        async with serve_asgi(settings, client) as api:
            before = await api.http.get("/health")
            assert before.status_code == 200, before.text
            assert _check(before.json(), "temporal")["status"] == "ok"

            await asyncio.to_thread(server.stop)
            started = time.monotonic()
            after = await api.http.get("/health")
            assert time.monotonic() - started < 15  # each check is bounded: health answers, it does not hang
            assert after.status_code == 503 and after.json()["status"] == "down", after.text
            assert _check(after.json(), "temporal")["status"] == "down"
            assert _check(after.json(), "postgres")["status"] == "ok"
            assert _check(after.json(), "redis")["status"] == "ok"
    finally:
        await asyncio.to_thread(server.stop)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_parse_and_move_when_messages_flow(stack: Api, database_dsn: str) -> None:
    api = stack
    before = _samples((await api.http.get("/metrics")).text)
    assert ("whatsapp_messages_sent_total", ()) in before
    assert ("whatsapp_last_backup_size_bytes", ()) not in before  # no backup ever ran
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(
            """INSERT INTO job_runs (kind, status, finished_at, duration_s, details)
               VALUES ('backup', 'succeeded', now(), 1.5, '{"size_bytes": 123456}'::jsonb)"""
        )
    finally:
        await conn.close()
    cid = company()
    await api.connect(cid)
    url = f"/api/whatsapp/sessions/{cid}/send"
    for i in range(3):
        resp = await api.http.post(url, json={"phone": "79001234567", "message": f"m{i}"}, headers=ADMIN)
        assert resp.status_code == 200, resp.text
    incoming = await api.http.post(f"/api/simulator/{cid}/incoming", json={"text": "hi"}, headers=ADMIN)
    assert incoming.status_code == 200

    after: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def moved() -> bool:
        nonlocal after
        resp = await api.http.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        after = _samples(resp.text)
        return (
            after[("whatsapp_messages_sent_total", ())] - before[("whatsapp_messages_sent_total", ())] >= 3
            and after[("whatsapp_messages_received_total", ())] > before[("whatsapp_messages_received_total", ())]
            and after[("whatsapp_sessions", (("state", "connected"),))] >= 1
        )

    await wait_until(moved, 15)
    assert after[("whatsapp_qr_codes_generated_total", ())] >= 1
    assert after[("whatsapp_active_connections", ())] >= 1
    assert after[("whatsapp_last_backup_size_bytes", ())] == 123456
    assert after[("whatsapp_last_backup_success", ())] == 1
    body = (await api.http.get("/api/whatsapp/metrics", headers=ADMIN)).json()
    assert body["success"] is True
    assert body["metrics"]["messagesSent"] >= 3 and body["metrics"]["activeConnections"] >= 1
    assert body["sessions"]["connected"] >= 1


async def test_spooled_incoming_messages_show_in_metrics_and_health(api: Api, database_dsn: str) -> None:
    """Messages WhatsApp delivered that Temporal does not have yet are counted where an operator looks:
    /metrics (count and the oldest one's age), the JSON metrics and /health's inbox report."""

    def figures(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
        return (samples[("whatsapp_incoming_spool_messages", ())],
                samples[("whatsapp_incoming_spool_oldest_seconds", ())])

    assert figures(_samples((await api.http.get("/metrics")).text)) == (0, 0)
    conn = await asyncpg.connect(database_dsn)
    try:
        for i, age_s in enumerate((90, 30, 5)):
            await conn.execute(
                """INSERT INTO incoming_spool (owner, company_id, chat, message_id, payload, received_at)
                   VALUES ('c-gone', 'company_1', '79990000001@s.whatsapp.net', $1, '{}'::jsonb,
                           now() - make_interval(secs => $2))""", f"M{i}", age_s)
    finally:
        await conn.close()
    count, oldest = figures(_samples((await api.http.get("/metrics")).text))
    assert count == 3 and 90 <= oldest < 120, (count, oldest)
    body = (await api.http.get("/api/whatsapp/metrics", headers=ADMIN)).json()
    assert body["metrics"]["incomingSpool"]["messages"] == 3
    health = (await api.http.get("/health")).json()
    spool = _check(health, "inbox")["spool"]
    assert isinstance(spool, dict) and spool["messages"] == 3 and spool["oldestSeconds"] >= 90
