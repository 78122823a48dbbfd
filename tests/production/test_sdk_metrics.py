"""Each process exports the Temporal SDK's own Prometheus metrics when TEMPORAL_SDK_METRICS_PORT is set."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from cli.embedded import free_port, port_open
from domain.settings import Settings
from infra.temporal import connect_temporal
from tests.stack_harness import StackProcess


@activity.defn(name="sdk_metrics_probe")
async def probe_activity() -> str:
    return "ok"


@workflow.defn(name="SdkMetricsProbe")
class ProbeWorkflow:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(probe_activity, start_to_close_timeout=timedelta(seconds=10))


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_a_workers_sdk_metrics_show_task_slots_and_schedule_to_start(dev_env: WorkflowEnvironment) -> None:
    port = free_port()
    settings = Settings(
        _env_file=None, environment="test", temporal_address=dev_env.client.service_client.config.target_host,
        temporal_namespace=dev_env.client.namespace, temporal_sdk_metrics_port=port,
    )
    client = await connect_temporal(settings)
    queue = f"sdk-metrics-{uuid.uuid4()}"
    # Unsandboxed: the probe is trivial, and the metrics, not the sandbox, are under test here.
    async with Worker(client, task_queue=queue, workflows=[ProbeWorkflow], activities=[probe_activity],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        assert await client.execute_workflow(ProbeWorkflow.run, id=f"probe-{uuid.uuid4()}", task_queue=queue) == "ok"
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text

    slots = [s for s in series(text, "temporal_worker_task_slots_available") if f'task_queue="{queue}"' in s]
    assert any('worker_type="WorkflowWorker"' in s for s in slots), text[:2000]
    assert any('worker_type="ActivityWorker"' in s for s in slots), text[:2000]
    assert [s for s in series(text, "temporal_workflow_task_schedule_to_start_latency") if queue in s]
    assert [s for s in series(text, "temporal_activity_schedule_to_start_latency") if queue in s]
    assert [s for s in series(text, "temporal_num_pollers") if queue in s]


@pytest.mark.timeout(180)
async def test_waorch_up_gives_connector_worker_and_api_each_their_own_sdk_metrics_port(tmp_path: Path) -> None:
    base = free_port()
    while port_open(base + 1) or port_open(base + 2):
        base = free_port()
    stack = StackProcess(tmp_path / "data", TEMPORAL_SDK_METRICS_PORT=str(base))
    try:
        await asyncio.to_thread(stack.start)
        async with httpx.AsyncClient(timeout=10) as http:
            for port in (base, base + 1, base + 2):  # connector, worker, api
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                assert "temporal_request" in text, f"no SDK metrics on {port}"
            worker = (await http.get(f"http://127.0.0.1:{base + 1}/metrics")).text
            assert 'worker_type="WorkflowWorker"' in worker
    finally:
        if stack.proc is not None and stack.proc.poll() is None:
            await asyncio.to_thread(stack.stop)
