"""No incoming message lost to a connector crash (SPEC M4).

WhatsApp counts a message delivered once whatsmeow has it, so the connector makes each one durable
(the spool in PostgreSQL) before the transport's callback returns, and hands it to Temporal later.
Here Temporal is unreachable for the connector (a cut TCP proxy) while 500 messages arrive from the
phone side, the connector is SIGKILLed, and then both come back: every message reaches the
company's webhook exactly once, in per-chat order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from contextlib import AsyncExitStack

import httpx
import pytest

from bench.faults import TcpProxy
from cli.embedded import free_port, wait_until
from cli.processes import ConnectorProcess
from domain.inbox import QUERY_INBOX, InboxSummary, inbox_workflow_id
from domain.states import SessionState
from infra.sessions import initialize_session, session_status
from tests.inbox.conftest import SECRET, core_worker, inbox_settings, pydantic_client, serve_receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHATS = [f"7999100000{i}@s.whatsapp.net" for i in range(5)]
N = 500


async def test_500_messages_while_temporal_is_unreachable_then_sigkill_lose_nothing(
    dev_env, make_settings, db, redis_client, tmp_path
):
    client = pydantic_client(dev_env.client)
    settings = inbox_settings(make_settings, client, inbox_idle_s=120.0)
    company = f"company_s{uuid.uuid4().hex[:10]}"
    temporal_port = int(client.service_client.config.target_host.rsplit(":", 1)[1])
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(serve_receiver())
        receiver.reply = False
        await stack.enter_async_context(core_worker(settings, client, db, redis_client, []))
        await db.execute(
            "INSERT INTO companies (company_id, handler, webhook_url, webhook_secret) VALUES ($1, 'webhook', $2, $3)",
            company, receiver.url, SECRET,
        )
        proxy = await TcpProxy(temporal_port).start()
        stack.push_async_callback(proxy.cut)
        phone_port = free_port()

        def connector() -> ConnectorProcess:
            proc = ConnectorProcess(settings, "spool-c1", tmp_path, f"127.0.0.1:{proxy.port}",
                                    PHONE_SIDE_PORT=str(phone_port)).start()
            stack.callback(proc.stop)
            return proc

        first = connector()
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://127.0.0.1:{phone_port}",
                                                                 timeout=30))
        await initialize_session(client, settings, company)

        async def phone(action: str, **params: object) -> httpx.Response:
            return await http.post(f"/phone/{company}/{action}", json=params)

        async def scanned() -> bool:
            return (await phone("scan")).status_code == 200

        await wait_until(scanned, 30, interval=0.2)

        async def connected() -> bool:
            st = await session_status(client, company)
            return st is not None and st.state is SessionState.CONNECTED

        await wait_until(connected, 30, interval=0.1)

        await proxy.cut()  # the connector loses Temporal; PostgreSQL and the phone side stay
        sent: dict[str, list[str]] = defaultdict(list)
        for i in range(N):
            chat = CHATS[i % len(CHATS)]
            mid = f"SPOOL{i:04d}"
            resp = await phone("incoming", text=f"message {i}", chat=chat, sender=chat, message_id=mid)
            assert resp.status_code == 200, resp.text  # answered only once the message is durable
            sent[chat].append(mid)
        assert await db.fetchval("SELECT count(*) FROM incoming_spool") == N
        assert receiver.hook() == []
        first.kill()

        await proxy.restore()
        connector()  # the same connector, started again (as the launcher does)

        async def all_delivered() -> bool:
            return len({d.body["messageId"] for d in receiver.hook()}) >= N

        await wait_until(all_delivered, 120, interval=0.2)

        async def spool_empty() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM incoming_spool") == 0)

        await wait_until(spool_empty, 30, interval=0.2)

        async def inboxes_done() -> bool:  # every chat's inbox has handled its messages and has none left
            sums = [await client.get_workflow_handle(inbox_workflow_id(company, c)).query(
                QUERY_INBOX, result_type=InboxSummary) for c in CHATS]
            return all(s.pending == 0 and s.handled + s.duplicates >= N // len(CHATS) for s in sums)

        await wait_until(inboxes_done, 30, interval=0.2)
        ids = [d.body["messageId"] for d in receiver.hook()]
        assert len(ids) == N and len(set(ids)) == N  # each exactly once
        for chat, order in sent.items():
            got = [d.body["messageId"] for d in receiver.hook() if d.body["chat"] == chat]
            assert got == order, chat  # per-chat arrival order
