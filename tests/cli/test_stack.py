"""`waorch up` on a fresh data dir: healthy, UI up, search attributes, survives a restart (SPEC O1, O2)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from cli.embedded import port_open, venv_binary
from tests.stack_harness import StackProcess

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def stack(tmp_path: Path):
    s = StackProcess(tmp_path / "data")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.kill()


async def test_up_is_healthy_persistent_and_stops_cleanly(stack: StackProcess) -> None:
    took = stack.start()
    assert took < 60
    banner = "".join(stack.output)
    assert stack.api in banner and "Temporal UI" in banner and "admin key" in banner

    async with httpx.AsyncClient(timeout=10) as http:
        # Up means healthy: every check ok once the connector polls (the launcher waits for the API only).
        deadline = time.monotonic() + 20
        while True:
            health = await http.get(f"{stack.api}/health")
            assert health.status_code == 200, health.text
            if health.json()["status"] == "ok" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert health.json()["status"] == "ok", health.text
        assert {c["name"]: c["status"] for c in health.json()["checks"]} == {
            "temporal": "ok", "postgres": "ok", "redis": "ok", "worker": "ok", "connector": "ok", "whatsapp": "ok",
            "pending": "ok", "inbox": "ok", "media": "ok"}
        ui = await http.get(f"http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}/")
        assert ui.status_code == 200
        docs = await http.get(f"{stack.api}/docs")
        assert docs.status_code == 200

    listed = subprocess.run(
        [venv_binary("temporal"), "operator", "search-attribute", "list", "--address", stack.temporal],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "CompanyId" in listed and "SessionState" in listed
    ns = subprocess.run(
        [venv_binary("temporal"), "operator", "namespace", "describe", "--address", stack.temporal,
         "-o", "json", "default"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert '"workflowExecutionRetentionTtl": "86400s"' in ns.replace(" ", "").replace('":"', '": "')

    # Leave a trace in both stores: a row, and a running workflow (no worker needed for it to exist).
    key_file = stack.data_dir / "admin.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    dsn = f"postgresql://postgres@127.0.0.1:{stack.ports['POSTGRES_PORT']}/waorch"
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO companies (company_id) VALUES ('company_persist')")
    await conn.close()
    client = await Client.connect(stack.temporal)
    wf_id = f"persist-{uuid.uuid4()}"
    await client.start_workflow("NoSuchWorkflow", id=wf_id, task_queue="nobody-polls-this")

    assert stack.stop() == 0
    for port in stack.ports.values():
        assert not port_open(port), f"port {port} still open after stop"

    took_again = stack.start()
    assert took_again < 60
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT count(*) FROM companies WHERE company_id = 'company_persist'") == 1
    await conn.close()
    client = await Client.connect(stack.temporal)
    desc = await client.get_workflow_handle(wf_id).describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING
    assert "admin key (new" not in "".join(stack.output)  # the key is printed only once
    assert stack.stop() == 0


async def test_launcher_restarts_a_child_that_dies(stack: StackProcess) -> None:
    stack.start()
    import psutil

    launcher = psutil.Process(stack.proc.pid)  # type: ignore[union-attr]

    def worker_pids() -> list[int]:
        pids = []
        for child in launcher.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                    pids.append(child.pid)
            except psutil.Error:
                pass  # exited between listing and reading
        return pids

    [first] = worker_pids()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = worker_pids()
        if pids and first not in pids:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("worker was not restarted")
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{stack.api}/health")).status_code == 200
    assert stack.stop() == 0
