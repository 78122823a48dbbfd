"""``waorch doctor --live`` against a whole stack whose connector runs the model of neonize's client.

WhatsApp cannot be reached here, so the test plays the phone: it scans the QR the doctor shows,
watches for the doctor's message, and replies; the doctor restarts the connector through the API
and `waorch up` starts it again. The doctor's pass/fail table is what an operator would read.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.stack_harness import StackProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

COMPANY = "company_77"
OPERATOR_PHONE = "79990000009"


@pytest.fixture(scope="module")
def model_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    s = StackProcess(tmp_path_factory.mktemp("doctor") / "data", WA_TRANSPORT="neonize", NEONIZE_CLIENT="model",
                     LOG_LEVEL="INFO")
    s.start()
    yield s
    s.kill()


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen in {timeout}s")


def test_doctor_walks_pairing_send_reply_and_restart(model_stack: StackProcess) -> None:
    admin = {"Authorization": f"Bearer {model_stack.admin_key}"}
    http = httpx.Client(base_url=model_stack.api, headers=admin, timeout=30)
    doctor = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "doctor", "--live", COMPANY, "--to", f"+{OPERATOR_PHONE}",
         "--pair-timeout-s", "60", "--reply-timeout-s", "60", "--restart-timeout-s", "90"],
        env=model_stack.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # The phone: scan the QR the doctor shows, then answer its message.
        def qr_showing() -> bool:
            resp = http.get(f"/api/whatsapp/sessions/{COMPANY}/status")
            return resp.status_code == 200 and bool(resp.json().get("qrAvailable"))

        poll(qr_showing, 60, "a QR")
        assert http.post(f"/api/simulator/{COMPANY}/scan", json={"phone": "79991234567"}).status_code == 200

        def doctor_message() -> list[dict[str, Any]]:
            messages = http.get(f"/api/simulator/{COMPANY}/outbox").json().get("messages", [])
            return [m for m in messages if m["to"].startswith(OPERATOR_PHONE)]

        (sent,) = poll(doctor_message, 60, "the doctor's message")
        assert "waorch doctor" in sent["text"]
        reply = http.post(f"/api/simulator/{COMPANY}/incoming",
                          json={"text": "pong", "sender": f"{OPERATOR_PHONE}@s.whatsapp.net"})
        assert reply.status_code == 200, reply.text
        out, _ = doctor.communicate(timeout=200)
    finally:
        if doctor.poll() is None:
            doctor.kill()
    assert doctor.returncode == 0, out
    table = out[out.index("CHECK"):]
    for check in ("pairing", "send", "reply", "restart without QR"):
        (row,) = [line for line in table.splitlines() if line.startswith(check)]
        assert " PASS " in row, table
    assert "connected as 79991234567" in table
    # The connector really was restarted by its supervisor, and the session is held by the new one.
    assert "child restarted name=connector" in model_stack.log.read_text() or "child died name=connector" in \
        model_stack.log.read_text()
    status = http.get(f"/api/whatsapp/sessions/{COMPANY}/status").json()
    assert status["status"] == "connected" and status["qrSequence"] == 1
