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
from api.errors import ADMIN_ROUTE, COMPANY_ROUTE, ApiError, ErrorBody, route_answers, with_errors
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
from storage import failed_messages, incoming_spool

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


class SessionHealthFlag(BaseModel):
    healthy: bool
    phone_number: str | None = Field(alias="phoneNumber", description="the linked JID")


class SessionStatusAnswer(BaseModel):
    """A session as its workflow knows it."""

    success: Literal[True]
    company_id: str = Field(alias="companyId")
    connected: bool
    status: SessionState
    since: str | None = Field(description="when it entered this state (ISO 8601)")
    phone: str | None
    jid: str | None
    reconnect_attempts: int = Field(alias="reconnectAttempts", description="failed attempts in the current run")
    reconnects: int = Field(description="connections re-established since the device first connected")
    next_retry_at: str | None = Field(alias="nextRetryAt")
    last_error: str | None = Field(alias="lastError")
    qr_available: bool = Field(alias="qrAvailable")
    qr_sequence: int = Field(alias="qrSequence")
    pairing_code: str | None = Field(alias="pairingCode")
    holder: str | None = Field(description="the task queue of the connector holding the connection")
    health: SessionHealthFlag


class LastEvent(BaseModel):
    type: str
    timestamp: str


class SessionRow(BaseModel):
    """One session in a list: from its workflow, or from Temporal's visibility when it answers no query."""

    company_id: str = Field(alias="companyId")
    connected: bool
    status: SessionState
    health: Literal["healthy", "unhealthy"]
    phone: str | None
    status_source: Literal["workflow", "visibility"] = Field(alias="statusSource")
    last_event: LastEvent | None = Field(alias="lastEvent")
    jid: str | None = None
    reconnect_attempts: int | None = Field(default=None, alias="reconnectAttempts")
    reconnects: int | None = None
    since: str | None = None
    last_error: str | None = Field(default=None, alias="lastError")
    next_retry_at: str | None = Field(default=None, alias="nextRetryAt")


class SessionList(BaseModel):
    success: Literal[True]
    count: int
    sessions: list[SessionRow]
    metrics: dict[str, Any] | None = Field(default=None, description="the admin only: the metrics summary")


class InitializeAnswer(BaseModel):
    """Connected already; a QR to scan; a pairing code to type; or a state to ask about again."""

    success: Literal[True]
    company_id: str = Field(alias="companyId")
    status: SessionState
    message: str
    connected: bool | None = None
    phone: str | None = None
    jid: str | None = None
    pairing_code: str | None = Field(default=None, alias="pairingCode")
    qr: str | None = None
    qr_data_url: str | None = Field(default=None, alias="qrDataUrl", description="the QR as a PNG data: URL")
    qr_terminal: str | None = Field(default=None, alias="qrTerminal", description="the QR drawn in text")


class SessionHealthAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    healthy: bool
    status: SessionState | Literal["none"]
    phone_number: str | None = Field(alias="phoneNumber")


class QrAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    status: SessionState
    qr: str
    sequence: int
    qr_data_url: str = Field(alias="qrDataUrl")
    qr_terminal: str = Field(alias="qrTerminal")


class SignalAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    signal: str


class RestartAnswer(BaseModel):
    success: bool = Field(description="whether the connector agreed to restart")
    company_id: str = Field(alias="companyId")
    holder: str


NO_SESSION = {404: "the company has no session (initialize it first), or the path matches no route"}
SESSION_ROUTE = with_errors(COMPANY_ROUTE, why=NO_SESSION)


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
    try:
        spool: incoming_spool.SpoolSummary | None = await incoming_spool.summary(ctx.db)
    except Exception as exc:  # metrics report, they never fail the request
        log.warning("incoming spool figures unavailable error=%s", type(exc).__name__)
        spool = None
    backlog = ctx.watchdog.backlog_count if ctx.watchdog is not None else None
    return MetricsSnapshot(by_state, counters, await job_figures(ctx.job_metrics), last_error=last_error,
                           failed_messages=failed, inbox_backlog=backlog,
                           spool=spool,
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


@router.get("/sessions", summary="Every session (admin) or the caller's own, with a metrics summary",
            response_model=None, responses=route_answers(SessionList, COMPANY_ROUTE))
async def list_all(ctx: CtxDep, principal: PrincipalDep) -> dict[str, Any]:
    states = await list_sessions(ctx.client)
    sessions = await session_rows(ctx, [(cid, st) for cid, st in states if principal.can_access(cid)])
    body: dict[str, Any] = {"success": True, "count": len(sessions), "sessions": sessions}
    if principal.is_admin:
        body["metrics"] = (await metrics_snapshot(ctx, states)).to_json()
    return body


@router.post(CID + "/initialize", summary="Start (or return) the session: QR, pairing code or connected",
             response_model=None, responses=route_answers(InitializeAnswer, with_errors(COMPANY_ROUTE, 504)))
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


@router.get(CID + "/status", summary="The session's state, phone and reconnect figures",
            response_model=None, responses=route_answers(SessionStatusAnswer, SESSION_ROUTE))
async def status(ctx: CtxDep, company_id: CompanyDep) -> dict[str, Any]:
    st = await ctx.holders.current(ctx.db, ctx.settings.connector_pool, await require_status(ctx, company_id))
    if ctx.events is not None and st.state is not SessionState.CONNECTED:
        ctx.events.connected.invalidate(company_id)
    return status_body(st)


@router.get(CID + "/health", summary="200 when connected, 503 otherwise", response_model=None,
            responses=route_answers(SessionHealthAnswer, COMPANY_ROUTE, description="connected", s503={
                "model": SessionHealthAnswer | ErrorBody,
                "description": "not connected (or no session: status none), with the same body; or Temporal "
                               "is unavailable (the error model)"}))
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


@router.get(CID + "/qr", summary="The current QR code (JSON, or ?format=png)", response_model=None,
            responses=route_answers(QrAnswer, with_errors(COMPANY_ROUTE, why={
                404: "no session, or no QR code now (the session is connected, connecting…)"}),
                description="the QR code: JSON, or with ?format=png the image",
                s200={"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}))
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
                     "for its supervisor (waorch up) to start it again",
             response_model=None, responses=route_answers(RestartAnswer, with_errors(
                 ADMIN_ROUTE, 409, 502, why={**NO_SESSION, 409: "no connector holds the session now"})))
async def restart_connector(ctx: CtxDep, company_id: CompanyDep, _: AdminDep) -> dict[str, Any]:
    from api.routes.transport_controls import run_connector_activity

    st = await require_status(ctx, company_id)
    if not st.holder_queue:
        raise ApiError(409, "not_held", f"no connector holds {company_id} now (state: {st.state.value})",
                       state=st.state.value)
    restarted = await run_connector_activity(ctx, st.holder_queue, ACTIVITY_RESTART_CONNECTOR,
                                             f"operator, via {company_id}", bool)
    return {"success": bool(restarted), "companyId": company_id, "holder": st.holder_queue}


@router.post(CID + "/relink", summary="Reconnect with the stored credentials (after 440 / failed)",
             response_model=None, responses=route_answers(SignalAnswer, SESSION_ROUTE))
async def relink(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_RELINK)


@router.post(CID + "/pause", summary="Close the connection, keep credentials",
             response_model=None, responses=route_answers(SignalAnswer, SESSION_ROUTE))
async def pause(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_PAUSE)


@router.post(CID + "/resume", summary="Reconnect a paused session",
             response_model=None, responses=route_answers(SignalAnswer, SESSION_ROUTE))
async def resume(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _signal(ctx, company_id, principal.name, SIGNAL_RESUME)


@router.post(CID + "/logout", summary="Unlink the device and delete its credentials",
             response_model=None, responses=route_answers(SessionStatusAnswer, SESSION_ROUTE))
async def logout(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    try:
        st = await logout_session(ctx.client, company_id)
    except SessionNotFound:
        raise _no_session(company_id) from None
    await audit(ctx, principal.name, company_id, "logout")
    return status_body(st)


@router.delete(CID, summary="Log out, delete credentials and end the session workflow",
             response_model=None, responses=route_answers(SessionStatusAnswer, SESSION_ROUTE))
async def remove(ctx: CtxDep, company_id: CompanyDep, principal: PrincipalDep) -> dict[str, Any]:
    try:
        st = await remove_session(ctx.client, company_id)
    except SessionNotFound:
        raise _no_session(company_id) from None
    await audit(ctx, principal.name, company_id, "remove")
    return status_body(st)
