"""``waorch doctor --live``: walk a first real phone through the whole path and print a pass/fail table.

Against a running stack (``waorch up``), for one company:

1. **pairing** — initialize; the QR is drawn in the terminal (or the pairing
   code printed with ``--pairing-phone``), then wait for "connected";
2. **send** — a text to the number ``--to`` (the operator's own phone);
3. **reply** — wait for a message from that number (reply to the text);
4. **restart** — restart the connector that holds the session (it drains like
   a SIGTERM and exits; its supervisor starts it again), then wait for the
   session to come back with the stored credentials: connected, no new QR.

Each step has a deadline; a failed step fails the ones that need it (shown as
``skipped``). Exit code 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cli.commands import Api, CommandError, seg, table
from domain.addresses import InvalidAddress, recipient_jid

DOCTOR_TEXT = "waorch doctor: this is a test message. Please reply to it (any text)."


@dataclass
class Step:
    name: str
    result: str = "skipped"
    detail: str = ""
    seconds: float = 0.0


def add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    doctor = sub.add_parser("doctor", parents=[common], help="check a real phone end to end (--live)")
    doctor.add_argument("--live", action="store_true", required=True,
                        help="pair a real phone, send, wait for a reply, restart the connector")
    doctor.add_argument("company_id")
    doctor.add_argument("--to", required=True, help="a phone number to send to and wait for a reply from")
    doctor.add_argument("--pairing-phone", help="link by pairing code to this phone instead of a QR")
    doctor.add_argument("--pair-timeout-s", type=float, default=180.0)
    doctor.add_argument("--reply-timeout-s", type=float, default=300.0)
    doctor.add_argument("--restart-timeout-s", type=float, default=120.0)


def _wait(check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


class ReplyListener:
    """The company's events over the API's WebSocket, opened before the send so no reply is missed."""

    def __init__(self, api: Api, key: str, company_id: str) -> None:
        from websockets.sync.client import connect

        ws_base = api.base.replace("http://", "ws://").replace("https://", "wss://")
        self._ws = connect(f"{ws_base}/api/whatsapp/events?company={quote(company_id)}",
                           additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10)

    def wait_for_message(self, from_user: str, after: float, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = self._ws.recv(timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                return None
            event = json.loads(raw)
            if event.get("type") != "message":
                continue
            sender = str(event.get("sender") or "")
            chat = str(event.get("chat") or "")
            if from_user in (sender.split("@")[0], chat.split("@")[0]) or sender.endswith("@lid"):
                return dict(event)
        return None

    def close(self) -> None:
        self._ws.close()


def run_doctor(api: Api, key: str, args: argparse.Namespace, out: Callable[[str], None] = print) -> tuple[int, str]:
    cid = str(args.company_id)
    base = f"/api/whatsapp/sessions/{seg(cid)}"
    try:
        to_user = recipient_jid(str(args.to)).user
    except InvalidAddress as exc:
        raise CommandError(f"--to: {exc}", 2) from None
    steps = [Step("pairing"), Step("send"), Step("reply"), Step("restart without QR")]
    pairing, send, reply, restart = steps

    # 1. pairing
    started = time.monotonic()
    payload = {"pairingPhone": args.pairing_phone} if args.pairing_phone else None
    body = api.call("POST", f"{base}/initialize", json_body=payload, timeout=120)
    if body.get("status") != "connected":
        if body.get("pairingCode"):
            out(f"Enter this pairing code on the phone (WhatsApp → Linked devices): {body['pairingCode']}")
        elif body.get("qrTerminal"):
            out(body["qrTerminal"])
            out("Scan this QR with the phone (WhatsApp → Linked devices → Link a device).")
        else:
            out(f"waiting for a QR or pairing code (state: {body.get('status')}, {body.get('lastError') or ''})")
    status = _wait(lambda: _connected(api, base), args.pair_timeout_s)
    pairing.seconds = time.monotonic() - started
    if status:
        pairing.result, pairing.detail = "pass", f"connected as {status.get('phone') or status.get('jid')}"
    else:
        last = api.call("GET", f"{base}/status")
        pairing.result, pairing.detail = "fail", f"not connected in {args.pair_timeout_s:.0f}s " \
                                                 f"(state {last.get('status')}: {last.get('lastError') or '-'})"

    # 2. send, with the reply listener already open
    listener: ReplyListener | None = None
    if pairing.result == "pass":
        started = time.monotonic()
        try:
            listener = ReplyListener(api, key, cid)
            sent = api.call("POST", f"{base}/send", json_body={"to": str(args.to), "message": DOCTOR_TEXT},
                            headers={"Idempotency-Key": f"doctor-{time.time_ns()}"})
            send.result, send.detail = "pass", f"message {sent.get('messageId')} to {args.to}"
        except (CommandError, OSError) as exc:
            send.result, send.detail = "fail", str(exc)[:200]
        send.seconds = time.monotonic() - started

    # 3. reply
    if send.result == "pass" and listener is not None:
        started = time.monotonic()
        out(f"Now reply to the message on {args.to} (waiting up to {args.reply_timeout_s:.0f}s) …")
        event = listener.wait_for_message(to_user, started, args.reply_timeout_s)
        reply.seconds = time.monotonic() - started
        if event:
            reply.result, reply.detail = "pass", f"message {event.get('messageId')} from {event.get('sender')}"
        else:
            reply.result, reply.detail = "fail", f"no message from {args.to} in {args.reply_timeout_s:.0f}s"
    if listener is not None:
        listener.close()

    # 4. restart the connector; the session must come back from stored credentials
    if pairing.result == "pass":
        started = time.monotonic()
        before = api.call("GET", f"{base}/status")
        try:
            api.call("POST", f"{base}/restart-connector", timeout=60)
            # Down first (the holder drains), then back: connected, and not through a new QR.
            went_down = _wait(lambda: api.call("GET", f"{base}/status").get("status") != "connected", 30, 0.2)
            back = _wait(lambda: _connected(api, base), args.restart_timeout_s)
            restart.seconds = time.monotonic() - started
            if not went_down:
                restart.result, restart.detail = "fail", "the connector did not let the session go: not restarted"
            elif not back:
                restart.result, restart.detail = "fail", (
                    f"not connected {args.restart_timeout_s:.0f}s after the restart: is the connector supervised "
                    "(waorch up, systemd Restart=always)?")
            elif back.get("qrSequence") != before.get("qrSequence") or back.get("qrAvailable"):
                restart.result, restart.detail = "fail", "came back through a new QR: stored credentials lost"
            else:
                restart.result, restart.detail = "pass", f"connected again in {restart.seconds:.1f}s, no QR"
        except CommandError as exc:
            restart.result, restart.detail = "fail", str(exc)[:200]

    rows = [{"check": s.name, "result": s.result.upper(), "seconds": f"{s.seconds:.1f}", "detail": s.detail}
            for s in steps]
    text = table(rows, [("check", "check"), ("result", "result"), ("seconds", "seconds"), ("detail", "detail")])
    return (0 if all(s.result == "pass" for s in steps) else 1), text


def _connected(api: Api, base: str) -> dict[str, Any] | None:
    body = api.call("GET", f"{base}/status")
    return body if body.get("status") == "connected" else None
