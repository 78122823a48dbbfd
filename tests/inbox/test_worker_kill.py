"""A worker SIGKILLed in the middle of an inbox: processing resumes on another worker (SPEC M4)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cli.embedded import wait_until
from tests.inbox.conftest import REPO, WORKER_MAIN, connect, core_worker, worker_env
from tests.inbox.test_inbox import summary


@pytest.mark.timeout(240)
async def test_worker_killed_mid_processing_resumes_nothing_lost_or_doubled(make_inbox, redis_client):
    async with make_inbox(worker=False) as s:
        proc = await asyncio.create_subprocess_exec(
            *WORKER_MAIN, cwd=REPO, env=worker_env(s.settings, s.client),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert b"worker ready" in line, line
            await connect(s)
            await s.set_handler("webhook", url=s.receiver.url)
            s.receiver.delay_s = 0.15  # a receiver that takes a while: the kill lands mid-request
            ids = [await s.inject(f"k{i}") for i in range(20)]
            await s.wait(lambda: len(s.receiver.hook()) >= 6, 60, "a few deliveries before the kill")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        killed_at = len(s.receiver.hook())
        assert killed_at < 20
        async with core_worker(s.settings, s.client, s.db, redis_client, s.alerts):
            await s.wait(lambda: len(s.outbox()) >= 20, 90, "every reply after the restart")

            async def all_handled() -> bool:
                info = await summary(s)
                return info.handled == 20 and info.pending == 0

            await wait_until(all_handled, 30)  # a reply is sent before its message counts as handled
        hook = s.receiver.hook()
        assert s.receiver.first_seen() == ids  # nothing lost, order kept
        # At least once at the receiver: only a request in flight at the kill may come again, with the
        # same X-Event-Id (the receiver de-duplicates on it); never a message twice otherwise.
        doubled = [eid for eid, n in Counter(d.event_id for d in hook).items() if n > 1]
        assert len(doubled) <= 1 and len(hook) == 20 + len(doubled)
        # Replies exactly once each, in order.
        assert [e.quoted for e in s.outbox()] == ids
        assert s.alerts == []
