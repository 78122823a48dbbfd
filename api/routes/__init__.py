"""Routers, one module per noun. ``api.app`` includes every router listed here."""

from __future__ import annotations

from fastapi import APIRouter

from domain.settings import Settings


def all_routers(settings: Settings | None = None) -> list[APIRouter]:
    # Imported here so a route module can import api.deps without a cycle.
    from api.routes import (
        chats,
        companies,
        dashboard,
        events,
        handlers,
        health,
        inbox,
        jobs,
        media,
        messages,
        metrics,
        onboarding,
        proxy,
        schedules,
        sessions,
        transport_controls,
    )

    routers = [health.router, metrics.router, sessions.router, messages.router, events.router, companies.router,
               handlers.router, jobs.router, schedules.router, onboarding.router, inbox.router, dashboard.router,
               media.router, chats.router, proxy.router]
    if settings is not None and (settings.wa_transport == "simulator" or settings.neonize_client == "model"):
        routers.append(transport_controls.router)
    return routers
