"""Media in both directions through the API, on the simulator (issue #11).

Sends: each kind by base64 and by URL, the size limits (413), the type read from the bytes (422),
private addresses refused (also behind a redirect), idempotency, rate limit and 409 as for text.
Receives: each kind stored, served at GET …/media/{id} (its company and the admin only) and described
in the webhook; a failing download retried and then named.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from temporalio.client import Client

from cli.embedded import free_port, wait_until
from domain.settings import Settings
from tests import media_samples as samples
from tests.api.conftest import ADMIN, Api, company, run_connector_inprocess, run_worker, serve_asgi
from tests.inbox.conftest import Receiver, serve_receiver

pytestmark = pytest.mark.timeout(120)


@dataclass
class FileServer:
    """Serves files on 127.0.0.1 (the "internet" of these tests); counts requests per path."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path.startswith("/redirect"):
            return RedirectResponse(request.query_params["to"], status_code=302)
        if path == "/endless":  # no Content-Length: the cap must stop the stream itself
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(1000):
                    yield b"\xff" * 65536
            return StreamingResponse(chunks(), media_type="application/octet-stream")
        if path not in self.files:
            return Response("not here", status_code=404)
        return Response(self.files[path], media_type="application/octet-stream")


@contextlib.asynccontextmanager
async def serve_files() -> AsyncIterator[FileServer]:
    server_state = FileServer(free_port())
    app = Starlette(routes=[Route("/{path:path}", server_state.handle)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=server_state.port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    try:
        await wait_until(started, 10)
        yield server_state
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def media_stack(client: Client, settings: Settings) -> AsyncIterator[Api]:
    async with (
        run_worker(settings, client),
        run_connector_inprocess(settings),
        serve_asgi(settings, client) as served,
    ):
        yield served


def tuned(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"media_fetch_allowed_networks": "127.0.0.1/32", "media_download_window_s": 4.0,
                              "inbox_retry_initial_s": 0.2, "inbox_retry_max_interval_s": 0.5}
    values.update(overrides)
    return Settings(_env_file=None, **{**settings.model_dump(), **values})


async def _outbox(api: Api, cid: str) -> list[dict[str, Any]]:
    resp = await api.http.get(f"/api/simulator/{cid}/outbox", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    messages: list[dict[str, Any]] = resp.json()["messages"]
    return messages


def _send(api: Api, cid: str, media: dict[str, Any], key: str | None = None) -> Any:
    headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
    return api.http.post(f"/api/whatsapp/sessions/{cid}/send", json={"to": "79001234567", "media": media},
                         headers=headers)


@samples.needs_ffmpeg
async def test_each_kind_is_sent_by_base64_and_by_url_and_served(client: Client, api_settings: Settings) -> None:
    files = {
        "image": (samples.image("JPEG"), "image/jpeg"), "video": (samples.mp4(), "video/mp4"),
        "audio": (samples.mp3(), "audio/mpeg"), "voice": (samples.ogg_opus(), "audio/ogg"),
        "document": (samples.PDF, "application/pdf"), "sticker": (samples.image("WEBP", (64, 64)), "image/webp"),
    }
    async with serve_files() as web, media_stack(client, tuned(api_settings)) as api:
        cid = company()
        await api.connect(cid)
        key = await api.issue_key(cid)
        sent: list[tuple[str, dict[str, Any], bytes]] = []
        for kind, (data, mimetype) in files.items():
            extra: dict[str, Any] = {"caption": f"a {kind}"} if kind in ("image", "video", "document") else {}
            if kind == "document":
                extra["filename"] = "Запись 12.05.pdf"
            by_b64 = await _send(api, cid, {"type": kind, "base64": samples.b64(data), **extra})
            web.files[f"/{kind}"] = data
            by_url = await _send(api, cid, {"type": kind, "url": web.url(f"/{kind}"), **extra})
            for resp in (by_b64, by_url):
                assert resp.status_code == 200, (kind, resp.text)
                media = resp.json()["media"]
                assert media["type"] == kind and media["mimetype"] == mimetype, media
                assert media["sha256"] == hashlib.sha256(data).hexdigest() and media["size"] == len(data)
                sent.append((kind, resp.json(), data))
        outbox = await _outbox(api, cid)
        assert len(outbox) == 12
        by_id = {m["messageId"]: m for m in outbox}
        for kind, answer, data in sent:
            entry = by_id[answer["messageId"]]["media"]
            assert entry["kind"] == kind and entry["sha256"] == hashlib.sha256(data).hexdigest(), entry
            if kind == "document":
                assert entry["filename"] == "Запись 12.05.pdf" and entry["caption"] == "a document"
            # What was sent is served to its company, with its type and length.
            got = await api.http.get(answer["media"]["url"].removeprefix(api.settings.api_base_url),
                                     headers={"X-API-Key": key})
            assert got.status_code == 200 and got.content == data, (kind, got.status_code)
            assert got.headers["content-type"].startswith(answer["media"]["mimetype"])
            assert int(got.headers["content-length"]) == len(data)
            assert got.headers["x-content-type-options"] == "nosniff"


async def test_limits_types_and_bodies_are_refused_with_the_problem_named(
    client: Client, api_settings: Settings
) -> None:
    settings = tuned(api_settings, media_max_image_bytes=4096, media_max_document_bytes=100_000)
    jpeg = samples.image("JPEG")
    big = samples.noise_jpeg(6000)
    async with serve_files() as web, media_stack(client, settings) as api:
        cid = company()
        await api.connect(cid)
        web.files["/big"] = big

        async def refused(media: dict[str, Any], status: int, *words: str, body: dict[str, Any] | None = None) -> None:
            payload = body if body is not None else {"to": "79001234567", "media": media}
            resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json=payload, headers=ADMIN)
            assert resp.status_code == status, (media, resp.text)
            assert resp.json()["success"] is False
            for word in words:
                assert word in resp.json()["error"], (word, resp.json()["error"])

        await refused({"type": "image", "base64": samples.b64(big)}, 413, "MEDIA_MAX_IMAGE_BYTES", "4096")
        await refused({"type": "image", "url": web.url("/big")}, 413, "MEDIA_MAX_IMAGE_BYTES")
        await refused({"type": "document", "url": web.url("/endless")}, 413, "MEDIA_MAX_DOCUMENT_BYTES", "stopped")
        await refused({"type": "image", "base64": "not base64 at all!"}, 422, "media.base64")
        await refused({"type": "image", "base64": samples.b64(jpeg), "mimetype": "image/png"}, 422,
                      "declared image/png", "image/jpeg")
        await refused({"type": "image", "base64": samples.b64(samples.PDF)}, 422, "image", "application/pdf")
        await refused({"type": "document", "base64": samples.b64(jpeg), "mimetype": "application/pdf"}, 422,
                      "declared application/pdf", "image/jpeg")
        await refused({"type": "sticker", "base64": samples.b64(jpeg)}, 422, "image/webp")
        await refused({"type": "audio", "base64": samples.b64(jpeg), "caption": "hi"}, 422, "caption")
        await refused({"type": "image", "base64": samples.b64(jpeg), "url": web.url("/big")}, 422, "url", "base64")
        await refused({"type": "image", "url": web.url("/missing")}, 422, "HTTP 404")
        both = {"to": "79001234567", "message": "hi", "media": {"type": "image", "base64": samples.b64(jpeg)}}
        await refused({}, 422, "message", "media", body=both)
        quoting = {"to": "79001234567", "media": {"type": "image", "base64": samples.b64(jpeg)},
                   "options": {"quoted": "3EB0AAAA"}}
        await refused({}, 422, "options.quoted", body=quoting)
        # Nothing refused reached the phone or the store.
        assert await _outbox(api, cid) == []
        assert not list(settings.resolved_media_dir.glob("*/*")) or all(
            p.stat().st_size <= 4096 for p in settings.resolved_media_dir.glob("*/*"))


async def test_private_and_loopback_urls_are_refused_also_behind_a_redirect(
    client: Client, api_settings: Settings
) -> None:
    jpeg = samples.image("JPEG")
    async with serve_files() as web:
        web.files["/photo.jpg"] = jpeg
        # Default settings: nothing but public addresses.
        async with media_stack(client, tuned(api_settings, media_fetch_allowed_networks="")) as api:
            cid = company()
            await api.connect(cid)
            for url in (web.url("/photo.jpg"), web.url("/photo.jpg", "localhost"), "http://169.254.169.254/latest/",
                        "http://10.1.2.3/x.jpg", "http://[::1]:9/x.jpg"):
                resp = await _send(api, cid, {"type": "image", "url": url})
                assert resp.status_code == 422 and resp.json()["code"] == "media_url_refused", (url, resp.text)
                assert "MEDIA_FETCH_ALLOWED_NETWORKS" in resp.json()["error"]
            loopback = await _send(api, cid, {"type": "image", "url": web.url("/photo.jpg")})
            assert "loopback" in loopback.json()["error"]
            assert "link-local" in (await _send(api, cid, {"type": "image",
                                                           "url": "http://169.254.169.254/x"})).json()["error"]
            assert web.hits == {}  # never connected
        # 127.0.0.1 allowed: a redirect from there to 127.0.0.2 (loopback, not allowed) is refused.
        async with media_stack(client, tuned(api_settings)) as api:
            cid = company()
            await api.connect(cid)
            hop = web.url("/redirect") + "?to=" + web.url("/photo.jpg", "127.0.0.2")
            resp = await _send(api, cid, {"type": "image", "url": hop})
            assert resp.status_code == 422 and "127.0.0.2 is a loopback address" in resp.json()["error"], resp.text
            ok = await _send(api, cid, {"type": "image", "url": web.url("/redirect") + "?to=/photo.jpg"})
            assert ok.status_code == 200, ok.text
            assert len(await _outbox(api, cid)) == 1


async def test_media_sends_keep_idempotency_rate_limit_and_409(client: Client, api_settings: Settings) -> None:
    jpeg = samples.image("JPEG")
    async with serve_files() as web, media_stack(client, tuned(api_settings, rate_limit_count=4)) as api:
        web.files["/p.jpg"] = jpeg
        cid = company()
        await api.connect(cid)
        key = f"photo-{uuid.uuid4().hex}"
        first = await _send(api, cid, {"type": "image", "url": web.url("/p.jpg"), "caption": "once"}, key)
        again = await asyncio.gather(*(_send(api, cid, {"type": "image", "url": web.url("/p.jpg"),
                                                        "caption": "once"}, key) for _ in range(3)))
        assert first.status_code == 200 and all(r.status_code == 200 for r in again), [r.text for r in again]
        assert {r.json()["messageId"] for r in again} == {first.json()["messageId"]}
        assert {r.json()["media"]["id"] for r in again} == {first.json()["media"]["id"]}
        assert len(await _outbox(api, cid)) == 1
        assert web.hits["/p.jpg"] == 1  # a retry with its key does not fetch again
        # The rate limit counts media sends like texts (the keyed ones above took one slot).
        codes = [(await _send(api, cid, {"type": "image", "base64": samples.b64(jpeg)})).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes
        # A company that is not connected gets 409, and nothing is fetched for it.
        other = company()
        refused = await _send(api, other, {"type": "image", "url": web.url("/p.jpg")})
        assert refused.status_code == 409 and refused.json()["code"] == "not_connected", refused.text
        assert web.hits["/p.jpg"] == 1


@samples.needs_ffmpeg
async def test_incoming_media_of_each_kind_is_stored_served_and_described_in_the_webhook(
    client: Client, api_settings: Settings
) -> None:
    files = {"image": samples.image("PNG"), "video": samples.mp4(), "audio": samples.mp3(),
             "voice": samples.ogg_opus(), "document": samples.PDF, "sticker": samples.image("WEBP")}
    async with serve_receiver() as receiver, media_stack(client, tuned(api_settings)) as api:
        cid = company()
        await api.connect(cid)
        await _webhook(api, cid, receiver)
        key, other_key = await api.issue_key(cid), await api.issue_key(company())
        ids = {}
        for kind, data in files.items():
            params: dict[str, Any] = {"mediaType": kind, "mediaBase64": samples.b64(data)}
            if kind in ("image", "document"):
                params["caption"] = f"my {kind}"
            if kind == "document":
                params["filename"] = "booking.pdf"
            resp = await api.http.post(f"/api/simulator/{cid}/incoming", json=params, headers=ADMIN)
            assert resp.status_code == 200, resp.text
            ids[kind] = resp.json()["result"]["message_id"]
        hooks = await _deliveries(receiver, len(files))
        for kind, data in files.items():
            body = hooks[ids[kind]]
            media = body["media"]
            assert body["messageType"] == kind and media["type"] == kind and media["state"] == "stored", body
            assert media["sha256"] == hashlib.sha256(data).hexdigest() and media["size"] == len(data)
            assert media["url"].startswith(api.settings.api_base_url + f"/api/whatsapp/sessions/{cid}/media/")
            if kind == "document":
                assert media["filename"] == "booking.pdf" and body["text"] == "my document"
            path = media["url"].removeprefix(api.settings.api_base_url)
            got = await api.http.get(path, headers={"X-API-Key": key})
            assert got.status_code == 200 and got.content == data, (kind, got.text[:200])
            assert got.headers["content-type"].startswith(media["mimetype"])
            assert (await api.http.get(path, headers={"X-API-Key": other_key})).status_code == 403
        assert hooks[ids["voice"]]["media"]["mimetype"] == "audio/ogg"
        missing = await api.http.get(f"/api/whatsapp/sessions/{cid}/media/i{'0' * 31}", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["code"] == "media_not_found"


async def test_a_failing_download_is_retried_and_then_named_and_the_message_still_delivered(
    client: Client, api_settings: Settings
) -> None:
    jpeg = samples.image("JPEG")
    async with serve_receiver() as receiver, media_stack(client, tuned(api_settings,
                                                                        media_download_window_s=2.5)) as api:
        cid = company()
        await api.connect(cid)
        await _webhook(api, cid, receiver)
        ids = {}
        for name, failures in (("flaky", 2), ("down", 1000), ("expired", -1)):
            resp = await api.http.post(f"/api/simulator/{cid}/incoming", headers=ADMIN, json={
                "mediaType": "image", "mediaBase64": samples.b64(jpeg), "caption": name,
                "downloadFailures": failures})
            assert resp.status_code == 200, resp.text
            ids[name] = resp.json()["result"]["message_id"]
        hooks = await _deliveries(receiver, 3, timeout=60)
        flaky, down, expired = (hooks[ids[n]]["media"] for n in ("flaky", "down", "expired"))
        assert flaky["state"] == "stored" and flaky["error"] is None, flaky
        assert down["state"] == "failed" and "HTTP 503" in down["error"], down
        assert expired["state"] == "failed" and "410" in expired["error"], expired
        assert hooks[ids["down"]]["text"] == "down"  # delivered all the same, with its caption
        row = await _media_row(api, cid, down["id"])
        assert row["attempts"] >= 3 and row["state"] == "failed", row  # retried within the window
        assert (await _media_row(api, cid, expired["id"]))["attempts"] == 0  # gone: not retried
        resp = await api.http.get(f"/api/whatsapp/sessions/{cid}/media/{down['id']}", headers=ADMIN)
        assert resp.status_code == 409 and "HTTP 503" in resp.json()["error"], resp.text


async def _webhook(api: Api, cid: str, receiver: Receiver) -> None:
    receiver.reply = False
    resp = await api.http.put(f"/api/companies/{cid}/handler", headers=ADMIN,
                              json={"type": "webhook", "url": receiver.url, "secret": "s" * 20})
    assert resp.status_code == 200, resp.text


async def _deliveries(receiver: Receiver, count: int, timeout: float = 45) -> dict[str, dict[str, Any]]:
    async def arrived() -> bool:
        return len({d.body.get("messageId") for d in receiver.hook()}) >= count

    await wait_until(arrived, timeout)
    return {d.body["messageId"]: d.body for d in receiver.hook()}


async def _media_row(api: Api, cid: str, media_id: str) -> dict[str, Any]:
    from storage import Database

    db = Database(api.settings.database_dsn)
    try:
        row = await db.fetchrow("SELECT state, attempts, error FROM media WHERE company_id = $1 AND id = $2",
                                cid, media_id)
    finally:
        await db.close()
    assert row is not None
    return dict(row)


async def test_message_events_carry_the_descriptor_pending_then_stored(
    client: Client, api_settings: Settings, redis_client: Any
) -> None:
    settings = tuned(api_settings)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(settings.events_channel)
    try:
        async with media_stack(client, settings) as api:
            cid = company()
            await api.connect(cid)
            jpeg = samples.image("JPEG")
            resp = await api.http.post(f"/api/simulator/{cid}/incoming", headers=ADMIN, json={
                "mediaType": "image", "mediaBase64": samples.b64(jpeg), "caption": "hi"})
            mid = resp.json()["result"]["message_id"]
            seen: dict[str, dict[str, Any]] = {}

            async def both() -> bool:
                message = await pubsub.get_message(timeout=0.2)
                if message is not None:
                    import json

                    event = json.loads(message["data"])
                    if event.get("messageId") == mid:
                        seen[event["type"]] = event
                return {"message", "message_media"} <= set(seen)

            await wait_until(both, 30)
            # The download key (the simulator's "sim:<ref>") stayed in PostgreSQL, out of Temporal.
            chat = seen["message"]["chat"]
            from temporalio.api.history.v1 import History

            history = await client.get_workflow_handle(f"inbox-{cid}-{chat}").fetch_history()
            raw = History(events=history.events).SerializeToString()  # payloads as the server keeps them
            assert b'"sim:' not in raw and b'"source":null' in raw
    finally:
        await pubsub.aclose()
    pending, stored = seen["message"]["media"], seen["message_media"]["media"]
    assert pending["state"] == "pending" and stored["state"] == "stored", (pending, stored)
    assert pending["id"] == stored["id"] and pending["url"] == stored["url"]
    assert stored["sha256"] == hashlib.sha256(jpeg).hexdigest() and seen["message"]["text"] == "hi"
    assert "source" not in pending  # the download key never leaves the connector's store


async def test_health_names_media_kinds_a_connector_cannot_send(
    client: Client, api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.simulator import SimulatorTransport

    monkeypatch.setattr(SimulatorTransport, "media_unavailable",
                        lambda self: {"video": "ffmpeg and ffprobe not found on PATH (install the ffmpeg package)"})
    async with media_stack(client, tuned(api_settings)) as api:
        async def reported() -> bool:
            checks = {c["name"]: c for c in (await api.http.get("/health", headers=ADMIN)).json()["checks"]}
            return bool(checks["media"]["status"] == "degraded")

        await wait_until(reported, 30)
        body = (await api.http.get("/health", headers=ADMIN)).json()
        media = next(c for c in body["checks"] if c["name"] == "media")
        assert body["status"] == "degraded" and "media" in body["degraded"]
        assert media["unavailable"] == ["video"] and "ffmpeg" in next(iter(media["connectors"].values()))["video"]
        public = next(c for c in (await api.http.get("/health")).json()["checks"] if c["name"] == "media")
        assert public["unavailable"] == ["video"] and "connectors" not in public  # hosts only for the admin
