"""Alerts (SPEC H4): Telegram bot API when configured, else a log line.

Workflows send them through the ``send_alert`` activity; the API's infrastructure
watchdog, which must work when the worker does not, calls :meth:`Notifier.deliver`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from temporalio import activity

from domain.settings import Settings

log = logging.getLogger("waorch.alerts")


@dataclass
class Alert:
    text: str
    company_id: str | None = None
    severity: str = "warning"  # "warning" | "critical" | "info"


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @activity.defn(name="send_alert")
    async def send_alert(self, alert: Alert) -> str:
        """Deliver one alert; returns the channel used. Telegram errors raise, so Temporal retries."""
        return await self.deliver(alert)

    async def deliver(self, alert: Alert) -> str:
        """The one alert path, also for processes without a worker (the API's watchdog): returns the
        channel used; raises when Telegram refuses, so the caller retries."""
        token = self._settings.telegram_bot_token
        chat = self._settings.telegram_chat_id
        log.warning("alert severity=%s company_id=%s text=%s", alert.severity, alert.company_id, alert.text)
        if token is None or not chat:
            return "log"
        prefix = {"critical": "🔴", "warning": "🟠", "info": "🟢"}.get(alert.severity, "")
        text = f"{prefix} {alert.text}" + (f"\ncompany: {alert.company_id}" if alert.company_id else "")
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(
                f"https://api.telegram.org/bot{token.get_secret_value()}/sendMessage",
                json={"chat_id": chat, "text": text, "disable_web_page_preview": True},
            )
        if resp.status_code >= 400:
            # The URL holds the token: report only the status.
            raise RuntimeError(f"telegram answered {resp.status_code}")
        return "telegram"
