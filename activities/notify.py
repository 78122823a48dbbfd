"""The worker's ``send_alert`` activity: workflows' alerts (SPEC H4) through the one alert path."""

from __future__ import annotations

from temporalio import activity

from infra.alerts import Alert, AlertSender


class Notifier(AlertSender):
    @activity.defn(name="send_alert")
    async def send_alert(self, alert: Alert) -> str:
        """Deliver one alert; returns the channel used. Telegram errors raise, so Temporal retries."""
        return await self.deliver(alert)
