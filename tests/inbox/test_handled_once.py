"""A handler that ran is not run again when the workflow task that recorded it is lost.

The inbox runs the company's handler as a local activity: its result reaches Temporal's history only
with the workflow task that ran it. If a worker or the Temporal server dies before that task is
recorded, the task runs again; the handler must then not be called a second time (a webhook the
company already got, twice), and its answer (the reply) must not be lost either.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.testing import ActivityEnvironment

from activities.inbox import InboxActivities
from domain.inbox import HandleRequest, IncomingMessage
from tests.inbox.conftest import SECRET, inbox_settings, pydantic_client, serve_receiver

pytestmark = pytest.mark.timeout(60)


async def test_the_same_chain_running_a_handled_message_again_gets_its_first_answer(
    dev_env, make_settings, db, redis_client
):
    client = pydantic_client(dev_env.client)
    settings = inbox_settings(make_settings, client)
    async with serve_receiver() as receiver:
        await db.execute(
            "INSERT INTO companies (company_id, handler, webhook_url, webhook_secret) VALUES ($1, 'webhook', $2, $3)",
            "company_once", receiver.url, SECRET,
        )
        acts = InboxActivities(settings, db, redis_client, client)
        msg = IncomingMessage(company_id="company_once", message_id="3EB0ONCE", chat="79990000001@s.whatsapp.net",
                              sender="79990000001@s.whatsapp.net", timestamp=datetime.now(UTC), text="hi")
        env = ActivityEnvironment()
        try:
            first = await env.run(acts.handle_incoming, HandleRequest(msg, "inbox-x/run-1"))
            again = await env.run(acts.handle_incoming, HandleRequest(msg, "inbox-x/run-1"))
            other = await env.run(acts.handle_incoming, HandleRequest(msg, "inbox-y/run-9"))
        finally:
            await acts.aclose()
        assert len(receiver.hook()) == 1  # the company's webhook got it once
        assert (first.handler, first.reply) == ("webhook", "re: hi")
        assert (again.handler, again.reply) == ("webhook", "re: hi")  # the reply is not lost
        assert other.handler == "duplicate"  # another chain never handles a claimed id
