"""Session lifecycle (SPEC S2): list, initialize, status, health, QR, relink/pause/resume, logout, remove."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Annotated, Any, Literal

import segno
from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from temporalio.api.enums.v1 import TaskQueueType

from api.deps import AdminDep, AppContext, CompanyDep, CtxDep, PrincipalDep
from api.errors import ApiError
from domain.addresses import InvalidAddress, normalize_phone
from domain.session import ACTIVITY_RESTART_CONNECTOR, SIGNAL_PAUSE, SIGNAL_RELINK, SIGNAL_RESUME, SessionStatus
from domain.states import SessionState
from infra.metrics import ConnectorFigures, MetricsSnapshot, job_figures, read_connector_figures
from infra.qr import qr_png_data_url, qr_terminal_text
from infra.sessions import (
    SessionNotFound,
    initialize_session,
    list_sessions,
    logout_session,
    remove_session,
    session_status,
    signal_session,
)
from storage import failed_messages

log = logging.getLogger("waorch.api.sessions")

router = APIRouter(prefix="/api/whatsapp", tags=["sessions"])
LIST_QUERY_TIMEOUT_S = 2.0

# ``:path`` so that a company id carrying "/" or ".." reaches validation (422), not a 404.
CID = "/sessions/{company_id:path}"
# The workflow answers initialize within its own wait (30 s by default); this bounds a missing worker.
INITIALIZE_TIMEOUT_S = 45.0


class InitializeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pairing_phone: StrictStr | None = Field(
        default=None, alias="pairingPhone", max_length=256, description="link by pairing code instead of QR"
    )

    def pairing_number(self, default_region: str | None) -> str | None:
        """The pairing phone as E.164 digits; raises ApiError 422 naming the field and the region tried."""
        if self.pairing_phone is None:
            return None
        try:
            return normalize_phone(self.pairing_phone, default_region)
        except InvalidAddress as exc:
            raise ApiError(422, "validation_error", f"pairingPhone: {exc}",
                           details=[{"field": "pairingPhone", "message": str(exc)}]) from None


def status_body(status: SessionStatus) -> dict[str, Any]:
    connected = status.state is SessionState.CONNECTED
    return {
        "success": True,
        "companyId": status.company_id,
        "connected": connected,
        "status": status.state.value,
        "since": status.since.isoformat() if status.since else None,
        "phone": status.phone,
        "jid": status.jid,
        "reconnectAttempts": status.attempt,
        "reconnects": status.reconnects,
        "nextRetryAt": status.next_retry_at.isoformat() if status.next_retry_at else None,
        "lastError": status.last_error,
        "qrAvailable": status.qr is not None,
        "qrSequence": status.qr_sequence,
        "pairingCode": status.pairing_code,
        "holder": status.holder_queue,
        "health": {"healthy": connected, "phoneNumber": status.jid},
    }


async def require_status(ctx: AppContext, company_id: str) -> SessionStatus:
    status = await session_status(ctx.client, company_id)
    if status is None:
        raise ApiError(404, "session_not_found", f"company {company_id} has no session; initialize it first",
                       companyId=company_id)
    return status


async def audit(ctx: AppContext, actor: str, company_id: str | None, action: str) -> None:
    try:
        await ctx.db.execute(
            "INSERT INTO audit (actor, company_id, action) VALUES ($1, $2, $3)", actor, company_id, action
        )
    except Exception as exc:  # the audit trail never blocks an operator action
        log.warning("audit not written action=%s company_id=%s error=%s", action, company_id, type(exc).__name__)


async def metrics_snapshot(ctx: AppContext, states: list[tuple[str, SessionState]] | None = None) -> MetricsSnapshot:
    if states is None:
        states = await list_sessions(ctx.client)
    by_state: dict[str, int] = {}
    for _, state in states:
        by_state[state.value] = by_state.get(state.value, 0) + 1
    counters: dict[str, int] = {}
    local = {"rate_limited": ctx.limiter.local_rejections} if ctx.limiter else {}
    if ctx.counters is not None:
        counters = await ctx.counters.read(local)
    else:
        counters = dict(local)
    last_error = ctx.counters.last_error if ctx.counters is not None else None
    try:
        failed: int | None = (await failed_messages.summary(ctx.db)).total
    except Exception as exc:  # metrics report, they never fail the request
        log.warning("failed-message count unavailable error=%s", type(exc).__name__)
        failed = None
    backlog = ctx.watchdog.backlog_count if ctx.watchdog is not None else None
    return MetricsSnapshot(by_state, counters, await job_figures(ctx.job_metrics), last_error=last_error,
                           failed_messages=failed, inbox_backlog=backlog,
                           connectors=await live_connector_figures(ctx))


async def live_connector_figures(ctx: AppContext) -> list[ConnectorFigures]:
    """Figures of the connectors that poll their queue now (a killed one's are left out)."""
    figures = await read_connector_figures(ctx.redis, ctx.settings.redis_prefix)
    if not figures or ctx.probes is None:
        return figures
    try:
        live = set((await asyncio.wait_for(ctx.probes.pollers(
            ctx.settings.temporal_connector_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY), LIST_QUERY_TIMEOUT_S
        ))["pollers"])
    except Exception:  # metrics report, they never fail the request
        return figures
    return [f for f in figures if f"connector@{f.connector_id}" in live]


async def session_rows(ctx: AppContext, visible: list[tuple[str, SessionState]]) -> list[dict[str, Any]]:
    """One row per session for the lists (``GET /sessions``, the operator page): the workflow's own
    status, or, for a session whose worker answers no query in time, its state from visibility."""
    limit = asyncio.Semaphore(20)
    last_events = await ctx.last_events.read([cid for cid, _ in visible]) if ctx.last_events else {}

    async def row(cid: str, state: SessionState) -> dict[str, Any]:
        async with limit:
            try:
                # Bounded: a session whose worker is down answers no query, and one such
                # session must not stall the whole list; visibility still knows its state.
                status = await asyncio.wait_for(session_status(ctx.client, cid), LIST_QUERY_TIMEOUT_S)
            except Exception:
                status = None
        if status is None:
            return {"companyId": cid, "connected": state is SessionState.CONNECTED, "status": state.value,
                    "health": "healthy" if state is SessionState.CONNECTED else "unhealthy", "phone": None,
                    "statusSource": "visibility", "lastEvent": last_events.get(cid)}
        connected = status.state is SessionState.CONNECTED
        return {"companyId": cid, "connected": connected, "status": status.state.value,
                "health": "healthy" if connected else "unhealthy", "phone": status.phone, "jid": status.jid,
                "reconnectAttempts": status.attempt, "reconnects": status.reconnects,
                "since": status.since.isoformat() if status.since else None, "lastError": status.last_error,
                "nextRetryAt": status.next_retry_at.isoformat() if status.next_retry_at else None,
                "statusSource": "workflow", "lastEvent": last_events.get(cid)}

    return list(await asyncio.gather(*(row(cid, st) for cid, st in visible)))


@router.get("/sessions", summary="Every session (admin) or the caller's own, with a metrics summary")
async def list_all(ctx: CtxDep, principal: PrincipalDep) -> dict[str, Any]:
    states = await list_sessions(ctx.client)
    sessions = await session_rows(ctx, [(cid, st) for cid, st in states if principal.can_access(cid)])
    body: dict[str, Any] = {"success": True, "count": len(sessions), "sessions": sessions}
    if principal.is_admin:
        body["metrics"] = (await metrics_snapshot(ctx, states)).to_json()
    return body


@router.post(CID + "/initialize", summary="Start (or return) the session: QR, pairing code or connected")
async def initialize(
    ctx: CtxDep,
    company_id: CompanyDep,
    principal: PrincipalDep,
    body: Annotated[InitializeBody | None, Body()] = None,
) -> dict[str, Any]:
    pairing_phone = body.pairing_number(ctx.settings.default_phone_region) if body else None
    try:
        result = await asyncio.wait_for(
            initialize_session(ctx.client, ctx.settings, company_id, pairing_phone), INITIALIZE_TIMEOUT_S
        )
    except TimeoutError:
        raise ApiError(504, "initialize_timeout", "the session did not answer in time (is the worker running?); "
                       "the session keeps starting, ask its status or initialize again", companyId=company_id) from None
    await audit(ctx, principal.name, company_id, "initialize")
    out: dict[str, Any] = {"success": True, "companyId": company_id, "status": result.state.value}
    if result.state is SessionState.CONNECTED:
        out.update(connected=True, phone=result.phone, jid=result.jid, message="already connected")
    elif result.state is SessionState.DEGRADED:
        out.update(connected=False, phone=result.phone, jid=result.jid,
                   message="linked, but WhatsApp's server does not acknowledge sent messages (degraded): "
                           "no QR needed; see its status")
    elif result.pairing_code:
        out.update(pairingCode=result.pairing_code,
                   message="On the phone: Linked devices → Link with phone number, enter this code")
    elif result.qr:
        out.update(qr=result.qr, qrDataUrl=qr_png_data_url(result.qr), qrTerminal=qr_terminal_text(result.qr),
                   message="Please scan the QR code with WhatsApp")
    else:
        out["message"] = f"session is {result.state.value}; no QR yet, ask again shortly"
    return out


@router.get(CID + "/status", summary="The session's state, phone and reconnect figures")
async def status(ctx: CtxDep, company_id: CompanyDep) -> dict[str, Any]:
    st = await ctx.holders.current(ctx.db, ctx.settings.connector_pool, await require_status(ctx, company_id))
    if ctx.events is not None and st.state is not SessionState.CONNECTED:
        ctx.events.connected.invalidate(company_id)
    return status_body(st)


@router.get(CID + "/health", summary="200 when connected, 503 otherwise")
async def health(ctx: CtxDep, company_id: CompanyDep) -> JSONResponse:
    st = await session_status(ctx.client, company_id)
    if st is not None:
        st = await ctx.holders.current(ctx.db, ctx.settings.connector_pool, st)
    healthy = st is not None and st.state is SessionState.CONNECTED
    body = {
        "success": True,
        "companyId": company_id,
        "healthy": healthy,
        "status": st.state.value if st else "none",
        "phoneNumber": st.jid if st else None,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get(CID + "/qr", summary="The current QR code (JSON, or ?format=png)", response_model=None)
async def qr(
    ctx: CtxDep, company_id: CompanyDep, format: Annotated[Literal["json", "png"], Query()] = "json"
) -> Response | dict[str, Any]:
    st = await require_status(ctx, company_id)
    if st.qr is None:
        raise ApiError(404, "no_qr", f"no QR code: the session is {st.state.value}", state=st.state.value)
    if format == "png":
        buf = io.BytesIO()
        segno.make(st.qr, error="l").save(buf, kind="png", scale=8, border=2)
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})
    return {"success": True, "companyId": company_id, "status": st.state.value, "qr": st.qr,
            "sequence": st.qr_sequence, "qrDataUrl": qr_png_data_url(st.qr), "qrTerminal": qr_terminal_text(st.qr)}


def _no_session(company_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"company {company_id} has no session", companyId=company_id)


async def _signal(ctx: AppContext, company_id: str, actor: str, name: str) -> dict[str, Any]:
    try:
        await signal_session(ctx.client, company_id, name)
    except SessionNotFound:
        raise _no_session(company_id) from None
    await audit(ctx, actor, company_id, name)
    return {"success": True, "companyId": company_id, "signal": name}


@router.post(CID + "/restart-connector",
             summary="Restart the connector that holds the session (admin): it drains like a SIGTERM and exits "
                     "for its supervisor (waorch up) to start it again")
async def restart_connector(ctx: CtxDep, company_id: CompanyDep, _: AdminDep) -> dict[str, Any]:
    from api.routes.transport_controls import run_connector_activity

    st = await require_status(ctx, company_id)
    if not st.holder_queue:
        raise ApiError(409, "not_held", f"no connector holds {company_id} now (state: {st.state.value})",
                       state=st.state.value)
    restarted = await run_connector_activity(ctx, st.holder_queue, ACTIVITY_RESTART_CONNECTOR,
                                             f"operator, via {company_id}", bool)
    return {"success": bool(restarted), "companyId": company_id, "holder": st.holder_queue}


@router.post(CID + "/relink", summary="Reconnect with the stored credentials (after 440 / failed)")
async def relink(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_RELINK)


@router.post(CID + "/pause", summary="Close the connection, keep credentials")
async def pause(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_PAUSE)


@router.post(CID + "/resume", summary="Reconnect a paused session")
async def resume(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_RESUME)


@router.post(CID + "/logout", summary="Unlink the device and delete its credentials")
async def logout(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    try:
        st = await logout_session(ctx.client, company_id)
    except SessionNotFound:
        raise _no_session(company_id) from None
    await audit(ctx, principal.name, company_id, "logout")
    return status_body(st)


@router.delete(CID, summary="Log out, delete credentials and end the session workflow")
async def remove(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    try:
        st = await remove_session(ctx.client, company_id)
    except SessionNotFound:
        raise _no_session(company_id) from None
    await audit(ctx, principal.name, company_id, "remove")
    return status_body(st)
