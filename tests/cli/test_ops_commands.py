"""The on-call's commands against a running stack (simulator): failed messages listed, redelivered and
discarded from the shell (issue #15.1), and the cut-over's onboarding links as one CSV (issue #15.8)."""

from __future__ import annotations

import csv
import io
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack_harness import StackProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    s = StackProcess(tmp_path_factory.mktemp("ops-cli") / "data", INBOX_RETRY_WINDOW_S="1",
                     INBOX_RETRY_INITIAL_S="0.2", INBOX_RETRY_MAX_INTERVAL_S="0.5")
    s.start()
    yield s
    s.kill()


def waorch(stack: StackProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=stack.cli_env(), capture_output=True,
                          text=True, timeout=180, input=stdin)


def api(stack: StackProcess, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.request(method, f"{stack.api}{path}", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {stack.admin_key}"})


def _connected(stack: StackProcess, company: str) -> None:
    assert api(stack, "POST", f"/api/whatsapp/sessions/{company}/initialize").status_code == 200
    assert api(stack, "POST", f"/api/simulator/{company}/scan").status_code == 200
    deadline = time.monotonic() + 30
    while api(stack, "GET", f"/api/whatsapp/sessions/{company}/status").json().get("status") != "connected":
        assert time.monotonic() < deadline, "never connected"
        time.sleep(0.2)


def _failed(stack: StackProcess, company: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        res = waorch(stack, "inbox", "failed", "list", "--company", company, "--json")
        assert res.returncode == 0, res.stderr
        messages: list[dict[str, Any]] = json.loads(res.stdout)["messages"]
        if len(messages) >= n:
            return messages
        assert time.monotonic() < deadline, f"{len(messages)} failed messages, wanted {n}"
        time.sleep(0.3)


def test_failed_messages_from_the_shell(stack: StackProcess) -> None:
    company = "company_4200042"
    _connected(stack, company)
    down = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s" * 16}  # nothing listens there
    assert api(stack, "PUT", f"/api/companies/{company}/handler", down).status_code == 200
    for text in ("первое", "второе", "третье"):
        assert api(stack, "POST", f"/api/simulator/{company}/incoming", {"text": text}).status_code == 200
    ids = [m["messageId"] for m in _failed(stack, company, 3)]

    table = waorch(stack, "inbox", "failed", "list")
    assert table.returncode == 0 and ids[0] in table.stdout and "3 shown of 3 waiting" in table.stdout

    still_down = waorch(stack, "inbox", "failed", "redeliver", "4200042", ids[0])
    assert still_down.returncode == 1 and "handler failed again" in still_down.stderr

    assert api(stack, "PUT", f"/api/companies/{company}/handler", {"type": "echo"}).status_code == 200
    one = waorch(stack, "inbox", "failed", "discard", "4200042", ids[2])
    assert one.returncode == 0 and f"{ids[2]}: discarded" in one.stdout
    rest = waorch(stack, "inbox", "failed", "redeliver", "4200042", "--all")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert f"{ids[0]}: redelivered" in rest.stdout and f"{ids[1]}: redelivered" in rest.stdout
    assert _failed(stack, company, 0) == []
    outbox = api(stack, "GET", f"/api/simulator/{company}/outbox").json()["messages"]
    assert sorted(m["text"] for m in outbox) == ["echo: второе", "echo: первое"]  # the discarded one: no reply

    usage = waorch(stack, "inbox", "failed", "redeliver", "4200042")
    assert usage.returncode == 2 and "one message id, or --all" in usage.stderr


def test_cut_over_links_for_a_list_of_companies_as_csv(stack: StackProcess, tmp_path: Path) -> None:
    listing = tmp_path / "companies.csv"
    listing.write_text("company_id,email\n962302,salon@example.com\ncompany_77,second@example.com\n"
                       "bad id!,third@example.com\n\n", encoding="utf-8")
    out = tmp_path / "links.csv"
    res = waorch(stack, "onboarding-links", str(listing), "--output", str(out), "--ttl-hours", "72")
    assert res.returncode == 1, res.stdout + res.stderr  # one row failed; every row is still written
    assert "2 link(s) written" in res.stdout and "1 of 3 companies got no link" in res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["company_id"] for r in rows] == ["company_962302", "company_77", "bad id!"]
    assert [r["email"] for r in rows] == ["salon@example.com", "second@example.com", "third@example.com"]
    assert rows[0]["onboarding_url"].startswith(f"{stack.api}/onboarding/company_962302?token=obt_")
    assert rows[2]["onboarding_url"] == "" and "422" in rows[2]["error"] and "invalid" in rows[2]["error"]
    page = httpx.get(rows[1]["onboarding_url"], timeout=30)  # the link works as the company gets it
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]

    piped = waorch(stack, "onboarding-links", "-", stdin="company_5\n6\n")  # plain ids, to stdout
    assert piped.returncode == 0, piped.stderr
    lines = list(csv.reader(io.StringIO(piped.stdout)))
    assert lines[0] == ["company_id", "onboarding_url", "expires_at", "error"]
    assert [line[0] for line in lines[1:]] == ["company_5", "company_6"] and all(line[1] for line in lines[1:])
