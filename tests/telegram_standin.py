"""A local stand-in for the Telegram Bot API (``TELEGRAM_API_URL`` points at it), so the real alert
path — session workflow → ``send_alert`` activity → HTTP — is tested end to end."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SEND_MESSAGE = re.compile(r"^/bot(?P<token>[^/]+)/sendMessage$")


@dataclass
class SentMessage:
    token: str
    body: dict[str, Any]


class TelegramStandIn:
    """Records every ``sendMessage``; the first ``fail_first`` calls answer 500 (Telegram having a bad minute)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.refused = 0
        self.messages: list[SentMessage] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                match = SEND_MESSAGE.match(self.path)
                with standin._lock:
                    if match is None:
                        status, answer = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
                    elif standin.refused < standin.fail_first:
                        standin.refused += 1
                        status, answer = 500, {"ok": False, "error_code": 500, "description": "Internal"}
                    else:
                        standin.messages.append(SentMessage(match["token"], json.loads(raw)))
                        status, answer = 200, {"ok": True, "result": {"message_id": len(standin.messages)}}
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line holds the bot token

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> TelegramStandIn:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
