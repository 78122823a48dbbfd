"""`waorch up` supervises its embedded servers (issue #14.2): SIGKILL Temporal, PostgreSQL and Redis in
turn; /health names the one that is down while it is down, and the stack is healthy again by itself,
with what each server held (a row, a running workflow) still there."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.stack_harness import StackProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[StackProcess]:
    s = StackProcess(tmp_path / "data")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.kill()


def _child_pid(stack: StackProcess, marker: str) -> int:
    assert stack.proc is not None
    for child in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                return int(child.pid)
        except psutil.Error:
            continue
    raise AssertionError(f"no process of the stack runs {marker!r}")


def _postmaster_pid(stack: StackProcess) -> int:
    return int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


async def _health(http: httpx.AsyncClient, stack: StackProcess) -> dict[str, Any]:
    try:
        resp = await http.get(f"{stack.api}/health")
    except httpx.HTTPError as exc:
        return {"status": "unreachable", "error": type(exc).__name__, "down": [], "checks": []}
    body: dict[str, Any] = resp.json()
    body["code"] = resp.status_code
    return body


def _status_of(body: dict[str, Any], name: str) -> str | None:
    return next((c["status"] for c in body.get("checks", []) if c["name"] == name), None)


async def _kill_and_watch(http: httpx.AsyncClient, stack: StackProcess, name: str, pid: int) -> list[str]:
    """SIGKILL ``pid``; return what /health said while it was down; wait for ``name`` back to ok."""
    os.kill(pid, signal.SIGKILL)
    named_down: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        body = await _health(http, stack)
        if name in body.get("down", []):
            named_down.append(name)
        if named_down and _status_of(body, name) == "ok" and body["status"] in ("ok", "degraded"):
            return named_down
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not back after 90 s: {await _health(http, stack)}\n"
                         + stack.log.read_text()[-3000:])


async def _healthy(http: httpx.AsyncClient, stack: StackProcess, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = await _health(http, stack)
        if body.get("code") == 200 and all(_status_of(body, n) == "ok" for n in
                                           ("temporal", "postgres", "redis", "worker", "connector")):
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"stack not healthy: {body}")


async def test_killed_servers_come_back_on_their_data_and_health_names_them_meanwhile(
        stack: StackProcess) -> None:
    stack.start()
    dsn = f"postgresql://postgres@127.0.0.1:{stack.ports['POSTGRES_PORT']}/waorch"
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO companies (company_id) VALUES ('company_survivor')")
    await conn.close()
    client = await Client.connect(stack.temporal)
    wf_id = f"survivor-{uuid.uuid4()}"
    await client.start_workflow("NoSuchWorkflow", id=wf_id, task_queue="nobody-polls-this")

    async with httpx.AsyncClient(timeout=10) as http:
        await _healthy(http, stack)
        for name, pid in (
            ("temporal", _child_pid(stack, "start-dev")),
            ("postgres", _postmaster_pid(stack)),
            ("redis", _child_pid(stack, "redis-server")),
        ):
            named = await _kill_and_watch(http, stack, name, pid)
            assert named, f"/health never named {name} while it was down"
            await _healthy(http, stack, timeout=90)

    conn = await asyncpg.connect(dsn)  # PostgreSQL came back through crash recovery, data intact
    assert await conn.fetchval("SELECT count(*) FROM companies WHERE company_id = 'company_survivor'") == 1
    await conn.close()
    client = await Client.connect(stack.temporal)  # Temporal came back on its database file
    assert (await client.get_workflow_handle(wf_id).describe()).status == WorkflowExecutionStatus.RUNNING
    launcher_log = stack.log.read_text()
    for name in ("temporal", "postgres", "redis"):
        assert f"server down name={name}" in launcher_log  # the launcher saw it and restarted it
    assert stack.stop() == 0, launcher_log[-3000:]
