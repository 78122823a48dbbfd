"""State events reach a company's event webhook (SPEC E2): relayed from Redis by the worker into
the company's CompanyEvents workflow, then posted durably, signed, in order, once."""

from __future__ import annotations

import json

import pytest

from activities.event_relay import EventRelay
from cli.embedded import wait_until
from domain.company_events import company_events_workflow_id
from domain.events import Event, EventType
from infra.redis import EventPublisher
from tests.inbox.test_inbox import signed


@pytest.mark.timeout(120)
async def test_state_events_reach_the_event_webhook_in_order(make_inbox, redis_client):
    async with make_inbox() as s:
        relay = EventRelay(s.settings, s.client, s.db)
        await relay.start()
        try:
            await relay.subscribed.wait()
            await s.set_handler("echo", event_url=s.receiver.url.replace("/hook", "/events"))
            s.receiver.status = 500  # down first: the deliveries wait and retry, nothing is lost
            s.sim.replace(s.company_id)  # 440: the connector publishes "replaced"
            await s.wait(lambda: s.receiver.refused >= 1, 30, "a refused delivery")
            # More events queue up behind the one being retried; they must leave in the order they came.
            publisher = EventPublisher(redis_client, s.settings.events_channel)
            later = [EventType.PAUSED, EventType.RESUMED, EventType.RECONNECTING, EventType.DISCONNECTED,
                     EventType.FAILED]
            for kind in later:
                await publisher.publish(Event(type=kind, company_id=s.company_id))
            handle = s.client.get_workflow_handle(company_events_workflow_id(s.company_id))

            async def queued() -> bool:
                return bool((await handle.query("status"))["pending"] == len(later))

            await wait_until(queued, 30)
            s.receiver.status = 200
            await s.wait(lambda: len({d.event_id for d in s.receiver.deliveries}) >= 1 + len(later), 45,
                         "the queued events")
            got = [d for d in s.receiver.deliveries if d.body["companyId"] == s.company_id]
            assert [d.body["type"] for d in got] == ["replaced", *later]  # in order, each once
            assert all(signed(d) and d.path == "/events" for d in got)

            # The same published event seen by two workers' relays is delivered once.
            before = len(s.receiver.deliveries)
            raw = Event(type=EventType.PAUSED, company_id=s.company_id).to_json()
            assert await relay.relay(raw) and await relay.relay(raw)
            await s.wait(lambda: len(s.receiver.deliveries) > before, 30, "the paused event")
            status = await handle.query("status")
            assert status["pending"] == 0
            assert [d.body["type"] for d in s.receiver.deliveries[before:]] == ["paused"]
            assert json.loads(s.receiver.deliveries[-1].raw)["id"] == s.receiver.deliveries[-1].event_id

            # A company without an event webhook: nothing relayed, no workflow.
            other = Event(type=EventType.CONNECTED, company_id="company_no_hook").to_json()
            assert not await relay.relay(other)
            # And events published by any process go the same way.
            await publisher.publish(Event(type=EventType.RESUMED, company_id=s.company_id))
            await s.wait(lambda: s.receiver.deliveries[-1].body["type"] == "resumed", 30, "the resumed event")
        finally:
            await relay.stop()
