"""The operator page (``GET /dashboard``) and the admin call that feeds it.

The page is static and carries no secret: it asks for the admin key, keeps it in the tab's
``sessionStorage`` and sends it with every call (``Authorization`` for REST, ``?apiKey=`` for the
WebSocket, which browsers cannot give headers). A key in the page's own URL is not accepted: it
would stay in the browser history, bookmarks and screenshots. ``GET /api/whatsapp/dashboard``
(admin only) answers every session with its state, phone, reconnects and last event, the counts
by state, and where the Temporal Web UI is, so each row can open its session workflow there.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from api.deps import AdminDep, CtxDep
from api.errors import ADMIN_ROUTE, route_answers
from api.routes.sessions import SessionRow, session_rows
from domain.session import session_workflow_id
from domain.settings import Settings
from infra.sessions import list_sessions

router = APIRouter(tags=["dashboard"])


@cache
def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: only its own inline script may run (by hash), and it
    may talk only to this origin, so nothing injected into a row can read the key or send it away."""
    html = resources.files("api").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts
    )
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


def workflow_url(settings: Settings, company_id: str) -> str | None:
    """The session workflow's page in the Temporal Web UI (None when its address is not known).

    Company ids are ``[A-Za-z0-9_-]`` (domain.company), safe in a URL as they are; so is the
    ``{companyId}`` placeholder of the template the page fills in for sessions that appear live.
    """
    base = settings.temporal_ui_base_url
    if base is None:
        return None
    namespace = quote(settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{namespace}/workflows/{session_workflow_id(company_id)}"


class DashboardRow(SessionRow):
    workflow_url: str | None = Field(alias="workflowUrl", description="the session workflow in the Temporal UI")


class TemporalUi(BaseModel):
    url: str
    namespace: str
    workflow_url_template: str | None = Field(alias="workflowUrlTemplate")


class DashboardAnswer(BaseModel):
    success: Literal[True]
    generated_at: str = Field(alias="generatedAt")
    count: int
    counts: dict[str, int] = Field(description="sessions by state")
    sessions: list[DashboardRow]
    temporal_ui: TemporalUi | None = Field(alias="temporalUi")


@router.get("/dashboard", response_class=HTMLResponse,
            summary="The operator page: every session live, relink / pause / resume / logout (asks for the admin key)",
            responses=route_answers(None, {}, description="the page (HTML)",
                                    s200={"content": {"text/html": {"schema": {"type": "string"}}}}))
async def dashboard_page() -> HTMLResponse:
    html, csp = _page()
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                       "X-Frame-Options": "DENY", "Content-Security-Policy": csp})


@router.get("/api/whatsapp/dashboard",
            summary="Every session with state, phone, reconnects and last event; counts by state; the Temporal UI",
            response_model=None, responses=route_answers(DashboardAnswer, ADMIN_ROUTE))
async def dashboard_data(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    rows = await session_rows(ctx, await list_sessions(ctx.client))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        row["workflowUrl"] = workflow_url(ctx.settings, row["companyId"])
    base = ctx.settings.temporal_ui_base_url
    return {
        "success": True,
        "generatedAt": datetime.now(UTC).isoformat(),
        "count": len(rows),
        "counts": counts,
        "sessions": rows,
        "temporalUi": None if base is None else {
            "url": base, "namespace": ctx.settings.temporal_namespace,
            "workflowUrlTemplate": workflow_url(ctx.settings, "{companyId}"),
        },
    }
