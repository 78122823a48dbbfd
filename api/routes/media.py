"""``GET /api/whatsapp/sessions/{company_id}/media/{media_id}``: a stored media's bytes (issue #11).

Authenticated like every company route (the admin key, or that company's key: 403 otherwise); a
media of another company is as unknown as one that never existed (404). The bytes stream from the
blob store with the type and length the media table records. They came from outside (a customer's
upload, a URL): the answer forbids sniffing and scripts (``nosniff``, a sandboxing CSP) and offers
anything but images, video and audio as a download, so a hostile file cannot run on the API's origin.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from api.deps import CompanyDep, CtxDep
from api.errors import COMPANY_ROUTE, ApiError, route_answers, with_errors
from domain.media import MediaState
from storage.blobs import BlobMissing
from storage.media import MediaRows

log = logging.getLogger("waorch.api.media")

router = APIRouter(prefix="/api/whatsapp", tags=["media"])
INLINE = ("image/", "video/", "audio/")


@router.get("/sessions/{company_id:path}/media/{media_id}", summary="A stored media (sent or received)",
            response_class=StreamingResponse,
            responses=route_answers(None, with_errors(COMPANY_ROUTE, 409, why={
                404: "no such media for this company (or removed by the cleanup), or its bytes are not in the store",
                409: "the media is not stored (still downloading, or its download failed)"}),
                description="the media's bytes, with the Content-Type and Content-Length it was stored with",
                s200={"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                      "headers": {"Content-Disposition": {"description": "inline for images, video and audio, "
                                                          "otherwise attachment (with the filename)",
                                                          "schema": {"type": "string"}},
                                  "ETag": {"description": "the bytes' sha256", "schema": {"type": "string"}}}}))
async def get_media(
    ctx: CtxDep,
    company_id: CompanyDep,
    media_id: Annotated[str, Path(pattern=r"^[a-z0-9]{1,64}$", description="the media id of an event or a send")],
) -> StreamingResponse:
    row = await MediaRows(ctx.db).get(company_id, media_id)
    if row is None:
        raise ApiError(404, "media_not_found",
                       f"no media {media_id} for {company_id} (unknown, or removed by the cleanup after "
                       f"{ctx.settings.media_max_age_days} days: MEDIA_MAX_AGE_DAYS)", companyId=company_id)
    if row.state is not MediaState.STORED or row.sha256 is None:
        why = f": {row.error}" if row.error else ""
        raise ApiError(409, "media_not_stored", f"media {media_id} is not stored (state: {row.state.value}){why}",
                       state=row.state.value, companyId=company_id)
    chunks = ctx.blob_store().stream(row.sha256)
    try:
        first = await anext(chunks)
    except (BlobMissing, StopAsyncIteration):
        log.warning("media blob missing company_id=%s media_id=%s store=%s", company_id, media_id,
                    ctx.blob_store().where)
        raise ApiError(404, "media_not_found", f"media {media_id} is recorded but its bytes are not in the store "
                       "(a store not shared between hosts? see MEDIA_STORE)", companyId=company_id) from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    mimetype = row.mimetype or "application/octet-stream"
    disposition = "inline" if mimetype.startswith(INLINE) else "attachment"
    if row.filename:
        disposition += f"; filename*=UTF-8''{quote(row.filename, safe='')}"
    headers = {
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=86400",
        "ETag": f'"{row.sha256}"',
    }
    if row.size is not None:
        headers["Content-Length"] = str(row.size)
    return StreamingResponse(body(), media_type=mimetype, headers=headers)
