"""The operator CLI end to end against a running stack with the simulator (SPEC O7), and what
that stack's processes log meanwhile (SPEC D4: never a secret; never a message body at INFO)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench.store_data import fill_device
from connector.neonize_store import ensure_store_schema
from tests.conftest import PgServer
from tests.stack_harness import StackProcess
from tests.telegram_standin import TelegramStandIn

pytestmark = pytest.mark.timeout(240)

# Secrets the stack is given: none may ever reach a log line.
BOT_TOKEN = f"555777:cli-telegram-token-{uuid.uuid4().hex}"
SENTRY_KEY = f"sentrykey{uuid.uuid4().hex}"
DB_PASSWORD = f"db-pass-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"webhook-secret-{uuid.uuid4().hex}"
CHAT_ID = "-100777"


@pytest.fixture(scope="module")
def telegram() -> Iterator[TelegramStandIn]:
    with TelegramStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def stack_dsn(pg_server: PgServer) -> Iterator[str]:
    """The stack's database on the tests' PostgreSQL, with a password in its URL (trust auth ignores it)."""
    name = asyncio.run(pg_server.create_database())
    dsn = pg_server.dsn_for(name)
    if pg_server.embedded is not None:
        dsn = dsn.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    yield dsn
    asyncio.run(pg_server.drop_database(name))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, telegram: TelegramStandIn, stack_dsn: str
          ) -> Iterator[StackProcess]:
    s = StackProcess(
        tmp_path_factory.mktemp("cli") / "data", LOG_LEVEL="INFO", DATABASE_URL=stack_dsn,
        TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID=CHAT_ID, TELEGRAM_API_URL=telegram.url,
        SENTRY_DSN=f"http://{SENTRY_KEY}@127.0.0.1:9/1", INBOX_RETRY_WINDOW_S="3", INBOX_RETRY_INITIAL_S="0.5",
    )
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


def fields(text: str) -> dict[str, str]:
    """The ``name  value`` lines a command prints, as a dict."""
    return dict(line.split(None, 1) for line in text.strip().splitlines() if " " in line.strip())


def admin(stack: StackProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_key}"}


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
    cleanup = fields(waorch(stack, "jobs", "run", "cleanup").stdout)  # dry run by default
    assert (cleanup["status"], cleanup["dryRun"]) == ("succeeded", "True"), cleanup
    runs = as_json(stack, "jobs", "runs", "backup")["runs"]
    assert runs and runs[0]["status"] == "succeeded"
    assert "succeeded" in waorch(stack, "jobs", "runs", "backup").stdout


def test_init_with_a_pairing_phone_links_by_code(stack: StackProcess) -> None:
    out = waorch(stack, "sessions", "init", "962303", "--pairing-phone", "+7 999 123-45-68").stdout
    assert re.fullmatch(r"pairing code: [A-Z0-9]{4}-[A-Z0-9]{4}", out.splitlines()[0]), out
    assert as_json(stack, "sessions", "status", "962303")["status"] == "qr"
    simulator(stack, "company_962303", "scan")  # the phone enters the code
    status = wait_state(stack, "962303", "connected")
    assert status["phone"] == "79991234568"  # the number given on the command line
    assert as_json(stack, "sessions", "remove", "962303")["status"] == "stopped"


def test_cleanup_deletes_only_without_dry_run(stack: StackProcess, stack_dsn: str) -> None:
    jid = "79990007777:3@s.whatsapp.net"

    async def store_with_old_secrets() -> None:
        await ensure_store_schema(f"{stack_dsn}?sslmode=disable")  # lib/pq requires TLS unless told
        conn = await asyncpg.connect(stack_dsn)
        try:
            await conn.execute("INSERT INTO companies (company_id, device_jid) VALUES ('company_962304', $1)", jid)
            await fill_device(conn, jid, secrets=3)
            await conn.execute("UPDATE whatsmeow_message_secrets SET first_seen = now() - interval '40 days' "
                               "WHERE our_jid = $1 AND message_id IN (SELECT message_id FROM whatsmeow_message_secrets "
                               "WHERE our_jid = $1 ORDER BY message_id LIMIT 2)", jid)
        finally:
            await conn.close()

    async def secrets_left() -> int:
        conn = await asyncpg.connect(stack_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM whatsmeow_message_secrets WHERE our_jid = $1", jid))
        finally:
            await conn.close()

    asyncio.run(store_with_old_secrets())
    for dry in ([], ["--dry-run"]):
        report = as_json(stack, "jobs", "run", "cleanup", *dry)
        assert (report["status"], report["dryRun"], report["details"]["rows_to_delete"]) == ("succeeded", True, 2)
        assert asyncio.run(secrets_left()) == 3
    report = as_json(stack, "jobs", "run", "cleanup", "--no-dry-run")
    assert (report["status"], report["dryRun"], report["details"]["rows_deleted"]) == ("succeeded", False, 2)
    assert asyncio.run(secrets_left()) == 1  # the 40-day-old ones went, the fresh one stays
    runs = as_json(stack, "jobs", "runs", "cleanup")["runs"]
    assert [r["dry_run"] for r in runs[:3]] == [False, True, True]


def test_usage_errors_exit_2(stack: StackProcess, tmp_path: Path) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env or stack.cli_env(),
                              capture_output=True, text=True, timeout=60)

    for args, says in (
        (["sessions"], "required"),
        (["jobs", "run", "vacuum"], "invalid choice"),
        (["jobs", "run", "cleanup", "--dry-run", "--no-dry-run"], "not allowed with"),
        (["send", "962302"], "required"),
    ):
        res = run(*args)
        assert res.returncode == 2 and "usage: waorch" in res.stderr and says in res.stderr, (args, res.stderr)
        assert res.stdout == ""
    # No key on the command line, in the environment or in the data dir: a usage error that says where.
    keyless = run("sessions", "list", env=stack.cli_env() | {"DATA_DIR": str(tmp_path)})
    assert keyless.returncode == 2 and "no API key" in keyless.stderr and "--key" in keyless.stderr, keyless.stderr


def test_no_log_line_holds_a_secret_or_a_message_body(stack: StackProcess, telegram: TelegramStandIn) -> None:
    company = "company_962399"
    sent_body, incoming_body = f"sent body {uuid.uuid4().hex}", f"incoming body {uuid.uuid4().hex}"
    key = as_json(stack, "keys", "issue", company)["key"]
    link = httpx.post(f"{stack.api}/api/companies/{company}/onboarding-link", headers=admin(stack), timeout=30)
    token = link.json()["token"]
    assert httpx.get(f"{stack.api}/onboarding/{company}", params={"token": token}, timeout=30).status_code == 200
    # A webhook handler with a secret, at a URL that refuses: the message fails for the (3 s) window.
    handler = httpx.put(f"{stack.api}/api/companies/{company}/handler", headers=admin(stack), timeout=30,
                        json={"type": "webhook", "url": f"{telegram.url}/hook", "secret": WEBHOOK_SECRET})
    assert handler.status_code == 200, handler.text
    waorch(stack, "sessions", "init", company, key=key)
    simulator(stack, company, "scan")
    wait_state(stack, company, "connected")
    waorch(stack, "send", company, "+79991234567", sent_body, key=key)
    simulator(stack, company, "incoming", {"text": incoming_body})
    simulator(stack, company, "replace")  # 440: a critical alert, at once

    def alerted(*words: str) -> bool:
        return any(all(w in m.body["text"] for w in words) for m in telegram.messages)

    deadline = time.monotonic() + 60
    while not (alerted("440", company) and alerted("not handled", company)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alerted("440", company) and alerted("not handled", company), [m.body for m in telegram.messages]
    assert {m.token for m in telegram.messages} == {BOT_TOKEN}
    assert {m.body["chat_id"] for m in telegram.messages} == {CHAT_ID}

    secrets = {"admin key": stack.admin_key, "company key": key, "onboarding token": token,
               "telegram token": BOT_TOKEN, "sentry key": SENTRY_KEY, "webhook secret": WEBHOOK_SECRET}
    if DB_PASSWORD in stack.extra_env["DATABASE_URL"]:
        secrets["database password"] = DB_PASSWORD
    logs = {path.name: path.read_text(errors="replace") for path in (stack.data_dir / "logs").glob("*.log")}
    assert {"connector.log", "worker.log", "api.log"} <= set(logs), sorted(logs)
    assert "level=INFO" in logs["worker.log"] and "level=INFO" in logs["connector.log"]  # INFO is on
    # The launcher prints the generated admin key once, on purpose (README); nothing else may.
    logs["launcher"] = "".join(line for line in stack.log.read_text(errors="replace").splitlines(keepends=True)
                               if "admin key (new, shown once" not in line)
    for name, text in logs.items():
        for what, secret in secrets.items():
            leaks = [line for line in text.splitlines() if secret in line]
            assert not leaks, f"{what} in {name}: {leaks[:3]}"
        info = [line for line in text.splitlines() if "level=INFO" in line or "level=DEBUG" in line]
        for body in (sent_body, incoming_body):
            assert not [line for line in info if body in line], f"message body at INFO in {name}"
