"""Media through the neonize transport, on the model of neonize's client (issue #11).

The model runs neonize's own media builders (``send_image`` … ``send_sticker``: Pillow thumbnails,
ffprobe lengths, sticker conversion) over a modelled upload and send, so what reaches "WhatsApp" is
the protobuf neonize really builds from the transport's call. Incoming media arrive as neonize's
``MessageEv`` carrying ImageMessage, VideoMessage, AudioMessage (PTT), DocumentMessage or
StickerMessage, and are downloaded back through the model's ``download_any``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
from typing import Any

import pytest
from neonize.client import NewClient as NeonizeClient
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

from connector import whatsmeow_model
from connector.media_tools import unavailable_media_kinds
from connector.neonize_transport import NeonizeTransport
from connector.transport import MediaGoneError, MediaUnavailableError
from domain.media import MediaKind, MediaRef, MediaState, media_id
from tests import media_samples as samples
from tests.connector.test_neonize_model import pair, wait_for

pytestmark = [pytest.mark.timeout(60), samples.needs_ffmpeg]

TO = "79990000006@s.whatsapp.net"


def _ref(kind: MediaKind, data: bytes, mimetype: str, caption: str | None = None,
         filename: str | None = None) -> MediaRef:
    return MediaRef("o1", kind, mimetype, hashlib.sha256(data).hexdigest(), len(data), caption, filename)


async def _outbox_media(db: Any, message_id: str) -> dict[str, Any]:
    raw = await db.fetchval("SELECT media::text FROM transport_outbox WHERE message_id = $1", message_id)
    assert raw is not None, message_id
    value: dict[str, Any] = json.loads(raw)
    return value


def test_the_model_keeps_neonizes_media_code_and_signatures() -> None:
    for name in ("send_image", "send_video", "send_audio", "send_document", "send_sticker",
                 "build_image_message", "build_audio_message"):
        assert getattr(whatsmeow_model.NewClient, name) is getattr(NeonizeClient, name), name
    for name in ("upload", "download_any"):
        ours = list(inspect.signature(getattr(whatsmeow_model.NewClient, name)).parameters)
        theirs = list(inspect.signature(getattr(NeonizeClient, name)).parameters)
        assert ours == theirs, (name, ours, theirs)


async def test_each_kind_goes_out_as_the_protobuf_neonize_builds(model_transport: NeonizeTransport, model: Any,
                                                                 db: Any) -> None:
    await pair(model_transport, "company_m1")
    cases = [
        (MediaKind.IMAGE, samples.image("JPEG", (300, 200)), "image/jpeg", "the photo", None),
        (MediaKind.VIDEO, samples.mp4(), "video/mp4", "the clip", None),
        (MediaKind.AUDIO, samples.mp3(), "audio/mpeg", None, None),
        (MediaKind.VOICE, samples.ogg_opus(), "audio/ogg", None, None),
        (MediaKind.DOCUMENT, samples.PDF, "application/pdf", "the bill", "bill.pdf"),
        (MediaKind.STICKER, samples.image("WEBP", (512, 512)), "image/webp", None, None),
    ]
    for kind, data, mimetype, caption, filename in cases:
        sent = await model_transport.send_media("company_m1", TO, _ref(kind, data, mimetype, caption, filename), data)
        got = await _outbox_media(db, sent.message_id)
        assert got["kind"] == kind.value and got["mimetype"] == mimetype, got
        assert got["url"].startswith("https://mmg.whatsapp.net/") and got["media_key"], got
        uploaded = model.server.media[got["direct_path"]]
        assert got["sha256"] == hashlib.sha256(uploaded).hexdigest() and got["size"] == len(uploaded)
        if kind is not MediaKind.STICKER:  # neonize converts stickers (size, EXIF); everything else goes as given
            assert uploaded == data, kind
        assert got["caption"] == caption and got["filename"] == filename, got
        assert got["ptt"] is (True if kind is MediaKind.VOICE else False if kind is MediaKind.AUDIO else None)
    assert model.fatal_errors == []


async def test_incoming_media_events_become_descriptors_and_download_through_the_model(
    model_transport: NeonizeTransport, model: Any
) -> None:
    _jid, listener = await pair(model_transport, "company_m2")
    phone = model_transport._clients["company_m2"].client.phone
    files = {"image": samples.image("PNG"), "video": samples.mp4(), "audio": samples.mp3(),
             "voice": samples.ogg_opus(), "document": samples.PDF, "sticker": samples.image("WEBP")}
    for kind, data in files.items():
        phone.incoming_media(kind, data, sender="79990000001@s.whatsapp.net", message_id=f"IN-{kind}",
                             caption="look" if kind in ("image", "video", "document") else None,
                             filename="bill.pdf" if kind == "document" else None)
    await wait_for(lambda: len(listener.messages) == len(files), what="every media message")
    for msg, (kind, data) in zip(listener.messages, files.items(), strict=True):
        media = msg.media
        assert media is not None and msg.message_type == kind and media.kind.value == kind, msg
        assert media.id == media_id("company_m2", "in", f"IN-{kind}") and media.state is MediaState.PENDING
        assert media.sha256 == hashlib.sha256(data).hexdigest() and media.size == len(data)
        assert media.caption == msg.text == ("look" if kind in ("image", "video", "document") else None)
        assert media.filename == ("bill.pdf" if kind == "document" else None)
        assert media.source is not None
        kept = Message.FromString(base64.b64decode(media.source))
        part = next(getattr(kept, f.name) for f, _ in kept.ListFields())
        assert not getattr(part, "JPEGThumbnail", b""), kind  # the download key leaves the thumbnail out
        assert await model_transport.download_media("company_m2", media.source) == data
    voice = listener.messages[3].media
    assert voice.kind is MediaKind.VOICE and voice.mimetype == "audio/ogg; codecs=opus"


async def test_a_failing_download_fails_then_succeeds_and_an_expired_one_is_gone(
    model_transport: NeonizeTransport, model: Any
) -> None:
    _jid, listener = await pair(model_transport, "company_m3")
    phone = model_transport._clients["company_m3"].client.phone
    data = samples.image("JPEG")
    phone.incoming_media("image", data, sender="79990000001@s.whatsapp.net", failures=1)
    phone.incoming_media("image", data, sender="79990000001@s.whatsapp.net", failures=-1)
    await wait_for(lambda: len(listener.messages) == 2)
    flaky, expired = (m.media.source for m in listener.messages)
    with pytest.raises(Exception, match="503") as first:
        await model_transport.download_media("company_m3", flaky)
    assert not isinstance(first.value, MediaGoneError)  # worth another attempt
    assert await model_transport.download_media("company_m3", flaky) == data
    with pytest.raises(MediaGoneError, match="410"):
        await model_transport.download_media("company_m3", expired)


async def test_kinds_that_need_ffmpeg_are_refused_at_once_without_it(
    model_transport: NeonizeTransport, monkeypatch: pytest.MonkeyPatch, db: Any
) -> None:
    assert unavailable_media_kinds(lambda tool: None).keys() == {"video", "audio", "voice", "sticker"}
    assert unavailable_media_kinds(lambda tool: None if tool == "ffprobe" else "/usr/bin/" + tool).keys() == {
        "video", "audio", "voice"}
    await pair(model_transport, "company_m4")
    monkeypatch.setattr("connector.neonize_transport.unavailable_media_kinds",
                        lambda: unavailable_media_kinds(lambda tool: None))
    video = samples.mp4()
    with pytest.raises(MediaUnavailableError, match="ffmpeg"):
        await model_transport.send_media("company_m4", TO, _ref(MediaKind.VIDEO, video, "video/mp4"), video)
    jpeg = samples.image("JPEG")
    sent = await model_transport.send_media("company_m4", TO, _ref(MediaKind.IMAGE, jpeg, "image/jpeg"), jpeg)
    assert (await _outbox_media(db, sent.message_id))["kind"] == "image"  # photos need neither tool
    assert await db.fetchval("SELECT count(*) FROM transport_outbox WHERE media->>'kind' = 'video'") == 0


async def test_media_sends_never_overlap_a_client_start_or_stop(model_transport: NeonizeTransport,
                                                                model: Any) -> None:
    await pair(model_transport, "company_m5")
    model.timing.map_write_s = 0.04
    photo = samples.image("JPEG", (800, 600))  # a thumbnail to make first: Go is called well after the start

    async def sends() -> None:
        for _ in range(6):
            await model_transport.send_media("company_m5", TO, _ref(MediaKind.IMAGE, photo, "image/jpeg"), photo)

    async def starts() -> None:
        for n in range(3):
            await model_transport.start(f"company_m5{n}", jid=None, pairing_phone=None, listener=_Quiet())
            await model_transport.stop(f"company_m5{n}")

    await asyncio.gather(sends(), starts())
    assert model.fatal_errors == []


class _Quiet:
    async def qr(self, *_: Any) -> None: ...
    async def pairing_code(self, *_: Any) -> None: ...
    async def connected(self, *_: Any) -> None: ...
    async def disconnected(self, *_: Any) -> None: ...
    async def message(self, *_: Any) -> None: ...
    async def receipt(self, *_: Any) -> None: ...
