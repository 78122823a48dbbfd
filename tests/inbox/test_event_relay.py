"""State events reach a company's event webhook (SPEC E2): relayed from Redis by the worker into
the company's CompanyEvents workflow, then posted durably, signed, in order, once."""

from __future__ import annotations

import json

import pytest

from activities.event_relay import EventRelay
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
            s.sim.replace(s.company_id)  # 440: the connector and the workflow publish "replaced"
            await s.wait(lambda: s.receiver.refused >= 1, 30, "a refused delivery")
            s.receiver.status = 200
            await s.wait(lambda: any(d.body["type"] == "replaced" for d in s.receiver.deliveries), 45,
                         "the replaced event")
            got = [d for d in s.receiver.deliveries if d.body["companyId"] == s.company_id]
            assert all(signed(d) and d.path == "/events" for d in got)
            assert all(d.body["type"] not in ("message", "message_sent") for d in got)  # the inbox's own

            # The same published event seen by two workers' relays is delivered once.
            before = len(s.receiver.deliveries)
            raw = Event(type=EventType.PAUSED, company_id=s.company_id).to_json()
            assert await relay.relay(raw) and await relay.relay(raw)
            await s.wait(lambda: len(s.receiver.deliveries) > before, 30, "the paused event")
            handle = s.client.get_workflow_handle(company_events_workflow_id(s.company_id))
            status = await handle.query("status")
            assert status["pending"] == 0
            assert [d.body["type"] for d in s.receiver.deliveries[before:]] == ["paused"]
            assert json.loads(s.receiver.deliveries[-1].raw)["id"] == s.receiver.deliveries[-1].event_id

            # A company without an event webhook: nothing relayed, no workflow.
            other = Event(type=EventType.CONNECTED, company_id="company_no_hook").to_json()
            assert not await relay.relay(other)
            # And events published by any process go the same way.
            await EventPublisher(redis_client, s.settings.events_channel).publish(
                Event(type=EventType.RESUMED, company_id=s.company_id))
            await s.wait(lambda: s.receiver.deliveries[-1].body["type"] == "resumed", 30, "the resumed event")
        finally:
            await relay.stop()
