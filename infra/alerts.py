"""Alerts (SPEC H4): the Telegram Bot API when configured, else a log line. The one alert path.

Workflows send alerts through the worker's ``send_alert`` activity (activities/notify.py); the
processes that must alert when the worker cannot (the API's infrastructure watchdog, a connector
that finds a peer dead) call :meth:`AlertSender.deliver` themselves.
"""

from __future__ import annotations

import logging

import httpx

from domain.session import SessionAlert as Alert
from domain.settings import Settings

__all__ = ["Alert", "AlertSender"]

log = logging.getLogger("waorch.alerts")


class AlertSender:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def deliver(self, alert: Alert) -> str:
        """Deliver one alert; returns the channel used. Raises when Telegram refuses, so the caller
        (Temporal's retry, the watchdog's next round) tries again."""
        token = self._settings.telegram_bot_token
        chat = self._settings.telegram_chat_id
        log.warning("alert severity=%s company_id=%s text=%s", alert.severity, alert.company_id, alert.text)
        if token is None or not chat:
            return "log"
        prefix = {"critical": "🔴", "warning": "🟠", "info": "🟢"}.get(alert.severity, "")
        text = f"{prefix} {alert.text}" + (f"\ncompany: {alert.company_id}" if alert.company_id else "")
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(
                f"{self._settings.telegram_api_url.rstrip('/')}/bot{token.get_secret_value()}/sendMessage",
                json={"chat_id": chat, "text": text, "disable_web_page_preview": True},
            )
        if resp.status_code >= 400:
            # The URL holds the token: report only the status.
            raise RuntimeError(f"telegram answered {resp.status_code}")
        return "telegram"
