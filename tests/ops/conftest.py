"""Operations tests: a dev server of their own, tuned so that what takes hours in production takes seconds.

* Namespace retention 3 s (Temporal refuses less than 1 h unless ``system.namespaceMinRetentionLocal`` is
  lowered, and spreads deletions over ``history.retentionTimerJitterDuration``): closed workflows really
  disappear while a test watches.
* Idle pollers re-poll every 2 s (``matching.longPollExpirationInterval``), so a worker that died is
  seen gone within seconds instead of after its last minute-long poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.namespace.v1 import NamespaceConfig
from temporalio.api.workflowservice.v1 import UpdateNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from cli.embedded import venv_binary
from tests.conftest import COMPANY_ID_KEY, SESSION_STATE_KEY

SHORT_RETENTION = timedelta(seconds=3)
POLL_EXPIRY_S = 2


@pytest.fixture(scope="session")
async def ops_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"),
        search_attributes=[COMPANY_ID_KEY, SESSION_STATE_KEY],
        dev_server_extra_args=[
            "--dynamic-config-value", 'system.namespaceMinRetentionLocal="1s"',
            "--dynamic-config-value", 'history.retentionTimerJitterDuration="1s"',
            "--dynamic-config-value", f'matching.longPollExpirationInterval="{POLL_EXPIRY_S}s"',
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
            "--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=true",
        ],
    )
    await env.client.workflow_service.update_namespace(UpdateNamespaceRequest(
        namespace=env.client.namespace,
        config=NamespaceConfig(workflow_execution_retention_ttl=Duration(seconds=int(SHORT_RETENTION.total_seconds()))),
    ))
    yield env
    await env.shutdown()
