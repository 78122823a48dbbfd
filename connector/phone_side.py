"""The phone side of a simulated WhatsApp, reached directly over loopback HTTP (tests and fault runs).

WhatsApp's servers talk to the connector over its own socket, not through Temporal, Redis or
PostgreSQL: a phone's message arrives while any of those is down. To load a connector the same way,
a process running the simulator transport can serve its controls (scan, incoming, drop, 440, …) on
``PHONE_SIDE_PORT`` (unset: off; never in production):

    POST /phone/{company_id}/{action}   JSON params → the transport's answer (404: not held here)
    GET  /phone/held                    the companies this connector holds
    GET  /phone/stats                   connection attempts per company (every dial, as WhatsApp counts them)

The same controls also reach the connector through Temporal (the ``transport_control`` activity);
this path exists for what must work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connector.transport import Transport, TransportControlError

log = logging.getLogger("waorch.phone_side")


def phone_side_app(transport: Transport) -> Starlette:
    async def control(request: Request) -> JSONResponse:
        company_id = request.path_params["company_id"]
        action = request.path_params["action"]
        try:
            params: dict[str, Any] = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"error": "body must be a JSON object"}, status_code=422)
        if transport.status(company_id) is None:
            return JSONResponse({"error": f"{company_id} is not held by this connector"}, status_code=404)
        try:
            answer: dict[str, Any] = await transport.control(company_id, action, params)
        except TransportControlError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(answer)

    async def held(_request: Request) -> JSONResponse:
        return JSONResponse({"held": sorted(getattr(transport, "held", []))})

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse({"dials": dict(getattr(transport, "dials", {}))})

    return Starlette(routes=[
        Route("/phone/held", held, methods=["GET"]),
        Route("/phone/stats", stats, methods=["GET"]),
        Route("/phone/{company_id}/{action}", control, methods=["POST"]),
    ])


@contextlib.asynccontextmanager
async def serve_phone_side(transport: Transport, port: int | None) -> Any:
    """Serve the phone side on 127.0.0.1:``port`` for the duration of the block (no-op without a port)."""
    if not port:
        yield
        return
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(phone_side_app(transport), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve())
    log.info("phone side listening port=%d", port)
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
