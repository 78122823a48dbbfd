"""The operator CLI end to end against a running stack with the simulator (SPEC O7)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack_harness import StackProcess

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    s = StackProcess(tmp_path_factory.mktemp("cli") / "data")
    s.start()
    yield s
    s.kill()


def waorch(
    stack: StackProcess, *args: str, ok: bool = True, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", *args] + (["--key", key] if key else [])
    res = subprocess.run(cmd, env=stack.cli_env(), capture_output=True, text=True, timeout=120)
    if ok:
        assert res.returncode == 0, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def as_json(stack: StackProcess, *args: str, key: str | None = None) -> Any:
    return json.loads(waorch(stack, *args, "--json", key=key).stdout)


def simulator(stack: StackProcess, company: str, action: str, body: dict[str, Any] | None = None) -> None:
    resp = httpx.post(f"{stack.api}/api/simulator/{company}/{action}", json=body,
                      headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def wait_state(stack: StackProcess, company: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = as_json(stack, "sessions", "status", company)
        if last["status"] == state:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{company} never reached {state}: {last}")


def test_session_lifecycle_and_send_from_the_shell(stack: StackProcess) -> None:
    out = waorch(stack, "sessions", "init", "962302").stdout
    assert "█" in out or "▀" in out or "▄" in out  # the QR drawn in the terminal
    assert "scan" in out.lower()

    simulator(stack, "company_962302", "scan")
    status = wait_state(stack, "962302", "connected")
    assert status["companyId"] == "company_962302"

    table = waorch(stack, "sessions", "list").stdout
    assert "company_962302" in table and "connected" in table
    assert table.splitlines()[0].split()[:2] == ["COMPANY", "STATE"]

    sent = as_json(stack, "send", "962302", "+7 999 123-45-67", "hello from the shell", "--idempotency-key", "k-1")
    again = as_json(stack, "send", "962302", "+7 999 123-45-67", "hello from the shell", "--idempotency-key", "k-1")
    assert sent["messageId"] == again["messageId"]
    outbox = httpx.get(f"{stack.api}/api/simulator/company_962302/outbox",
                       headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30).json()
    assert [m["text"] for m in outbox["messages"]].count("hello from the shell") == 1

    waorch(stack, "sessions", "pause", "962302")
    wait_state(stack, "962302", "paused")
    waorch(stack, "sessions", "resume", "962302")
    wait_state(stack, "962302", "connected")

    simulator(stack, "company_962302", "replace")
    wait_state(stack, "962302", "replaced")
    waorch(stack, "sessions", "relink", "962302")
    wait_state(stack, "962302", "connected")

    waorch(stack, "sessions", "logout", "962302")
    wait_state(stack, "962302", "logged_out")
    removed = as_json(stack, "sessions", "remove", "962302")
    assert removed["status"] == "stopped"


def test_refusals_are_clear_and_exit_non_zero(stack: StackProcess) -> None:
    res = waorch(stack, "sessions", "status", "../etc/passwd", ok=False)
    assert res.returncode == 1 and "422" in res.stderr and "company_id" in res.stderr
    res = waorch(stack, "send", "company_nobody", "+79991234567", "hi", ok=False)
    assert res.returncode == 1 and "409" in res.stderr
    res = waorch(stack, "sessions", "list", ok=False, key="not-a-key")
    assert res.returncode == 1 and "401" in res.stderr
    env_down = stack.cli_env() | {"API_PORT": "1"}
    down = subprocess.run([sys.executable, "-m", "cli.main", "sessions", "list"], env=env_down,
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "cannot reach the API" in down.stderr


def test_keys_issue_use_and_revoke(stack: StackProcess) -> None:
    issued = as_json(stack, "keys", "issue", "acme")
    key = issued["key"]
    assert issued["companyId"] == "acme"
    mine = waorch(stack, "sessions", "list", key=key).stdout
    assert "company_962302" not in mine  # a company key sees only its own company
    res = waorch(stack, "sessions", "status", "company_962302", ok=False, key=key)
    assert "403" in res.stderr
    waorch(stack, "keys", "revoke", "acme")
    res = waorch(stack, "sessions", "list", ok=False, key=key)
    assert "401" in res.stderr


def test_jobs_and_schedules_from_the_shell(stack: StackProcess, tmp_path: Path) -> None:
    schedules = as_json(stack, "schedules", "list")["schedules"]
    ids = {s["id"] for s in schedules}
    assert ids == {"wa-core-backup", "wa-core-cleanup", "wa-core-restore-test", "wa-core-failed-messages"}
    some = sorted(ids)[0]
    assert some in waorch(stack, "schedules", "list").stdout
    waorch(stack, "schedules", "pause", some)
    assert next(s for s in as_json(stack, "schedules", "list")["schedules"] if s["id"] == some)["paused"] is True
    waorch(stack, "schedules", "unpause", some)
    assert next(s for s in as_json(stack, "schedules", "list")["schedules"] if s["id"] == some)["paused"] is False

    backup = as_json(stack, "jobs", "run", "backup")
    assert backup["status"] == "succeeded", backup
    text = waorch(stack, "jobs", "run", "cleanup").stdout  # dry run by default
    assert "dryRun" in text and "True" in text
    runs = as_json(stack, "jobs", "runs", "backup")["runs"]
    assert runs and runs[0]["status"] == "succeeded"
    assert "succeeded" in waorch(stack, "jobs", "runs", "backup").stdout
