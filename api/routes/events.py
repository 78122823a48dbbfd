"""``WS /api/whatsapp/events`` (SPEC E1, X3): live events from every process, per caller's rights.

Auth like REST (``Authorization: Bearer``/``X-API-Key`` headers), or ``?apiKey=``
for browsers, which cannot set WebSocket headers. ``?company=`` filters; a
company key sees only its own company (403 for another). A refused handshake
answers with the REST error shape and status (401/403/422).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from api.deps import AppContext, Principal, extract_key, principal_for_key
from api.errors import ApiError, error_body
from domain.company import InvalidCompanyId, normalize_company_id

log = logging.getLogger("waorch.api.ws")

router = APIRouter(tags=["events"])


async def _refuse(ws: WebSocket, status: int, code: str, message: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(error_body(code, message), status_code=status))
    else:
        await ws.close(code=4000 + status, reason=message[:120])


async def _authorize(ws: WebSocket, ctx: AppContext) -> tuple[Principal, frozenset[str] | None]:
    key = extract_key(ws.headers.get("authorization"), ws.headers.get("x-api-key")) or ws.query_params.get("apiKey")
    principal = await principal_for_key(ctx, key)
    wanted = ws.query_params.get("company")
    if wanted is not None:
        try:
            cid = normalize_company_id(wanted)
        except InvalidCompanyId as exc:
            raise ApiError(422, "validation_error", f"company: {exc}") from None
        if not principal.can_access(cid):
            raise ApiError(403, "forbidden", f"this key may not access company {cid}")
        return principal, frozenset({cid})
    if principal.is_admin:
        return principal, None
    assert principal.company_id is not None
    return principal, frozenset({principal.company_id})


@router.websocket("/api/whatsapp/events")
async def events(ws: WebSocket) -> None:
    ctx: AppContext = ws.app.state.ctx
    try:
        principal, companies = await _authorize(ws, ctx)
    except ApiError as exc:
        await _refuse(ws, exc.status, exc.code, exc.message)
        return
    hub = ctx.events
    if hub is None:
        await _refuse(ws, 503, "unavailable", "events are not available")
        return
    sub = hub.add(companies)
    try:
        await ws.accept()
        log.info("ws connected principal=%s companies=%s", principal.name, sorted(companies or ["*"]))
        receiver = asyncio.create_task(_drain(ws))
        try:
            while not receiver.done():
                getter = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await ws.send_text(getter.result())
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.remove(sub)


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
