"""The contract of media in both directions (issue #11): kinds, descriptors, what crosses Temporal.

Media bytes never travel through Temporal: the API (sends) and the connector (downloads) keep them
in the blob store (storage/blobs.py), content-addressed by sha256, and a row of ``media``
(storage/media.py) describes each one. Workflows and activities carry a :class:`MediaRef` or a
:class:`MediaDescriptor`: ids, sizes, hashes, the caption — never the bytes, and never the
transport's download key (it stays in PostgreSQL).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class MediaKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    VOICE = "voice"  # a voice note: audio sent with PTT (push to talk), shown with a waveform
    DOCUMENT = "document"
    STICKER = "sticker"


class MediaState(StrEnum):
    PENDING = "pending"  # incoming: not downloaded yet
    STORED = "stored"  # the bytes are in the blob store and served by GET …/media/{id}
    FAILED = "failed"  # incoming: the download finally failed; ``error`` names why


# What WhatsApp accepts per kind, as read from the bytes (libmagic's names, see MIME_ALIASES).
# Documents carry any type.
ALLOWED_MIMETYPES: dict[MediaKind, tuple[str, ...]] = {
    MediaKind.IMAGE: ("image/jpeg", "image/png", "image/webp"),
    MediaKind.VIDEO: ("video/mp4", "video/3gpp"),
    MediaKind.AUDIO: ("audio/ogg", "audio/mpeg", "audio/mp4", "audio/aac", "audio/amr"),
    MediaKind.VOICE: ("audio/ogg",),  # WhatsApp plays voice notes as Ogg Opus only
    MediaKind.STICKER: ("image/webp",),
}
# Names of the same type that callers or libmagic use.
MIME_ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4", "audio/m4a": "audio/mp4", "audio/x-aac": "audio/aac", "audio/opus": "audio/ogg",
    "application/ogg": "audio/ogg", "video/3gp": "video/3gpp", "audio/x-wav": "audio/wav",
}
# Sniffed types that say too little to contradict a declared type (CSV is text/plain to libmagic,
# an .xlsx a zip, an old .doc an OLE container).
GENERIC_MIMETYPES = frozenset({
    "application/octet-stream", "text/plain", "application/zip", "application/x-ole-storage", "application/cdfv2",
})
# Kinds that carry a caption on WhatsApp (audio, voice notes and stickers do not).
CAPTIONED = frozenset({MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.DOCUMENT})
MAX_CAPTION = 1024

# Activities. download_media runs on the holder's own queue (the connector with the company's
# client); the other two on the core queue (the worker).
ACTIVITY_DOWNLOAD_MEDIA = "download_media"  # MediaDownload -> MediaDescriptor (stored)
ACTIVITY_MEDIA_HOLDER = "media_download_queue"  # company_id -> str (holder queue; NotConnected until there)
ACTIVITY_MEDIA_FAILED = "mark_media_failed"  # MediaFailure -> MediaDescriptor (failed)
# ApplicationError types.
ERROR_MEDIA_GONE = "MediaGone"  # WhatsApp no longer has it (404/410), or it is over the size limit: not retried
ERROR_MEDIA_UNAVAILABLE = "MediaUnavailable"  # this connector cannot handle the kind (ffmpeg/ffprobe missing)
ERROR_MEDIA_MISSING = "MediaMissing"  # the blob of a send is not in the store (several hosts, no shared store?)


def normalize_mimetype(value: str | None) -> str | None:
    """``"Audio/OGG; codecs=opus"`` → ``"audio/ogg"``; aliases to one name."""
    if not value:
        return None
    base = value.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(base, base) or None


def media_id(company_id: str, direction: str, key: str) -> str:
    """The stable id of one media (an incoming message id, or a send's idempotency key).

    Stable so that a message handed over twice, or a send retried with its key, names the same row.
    """
    digest = hashlib.sha256(f"{company_id}\n{direction}\n{key}".encode()).hexdigest()
    return f"{direction[0]}{digest[:31]}"


def media_path(company_id: str, media_id_: str) -> str:
    """The API route that serves one media (prefix it with the API's public base URL)."""
    return f"/api/whatsapp/sessions/{company_id}/media/{media_id_}"


@dataclass
class MediaRef:
    """A stored media a send carries (``SendRequest.media``): the connector reads its bytes from the blob store."""

    id: str
    kind: MediaKind
    mimetype: str
    sha256: str
    size: int
    caption: str | None = None
    filename: str | None = None


@dataclass
class MediaDescriptor:
    """An incoming message's media as events and webhooks describe it (``IncomingMessage.media``)."""

    id: str
    kind: MediaKind
    state: MediaState = MediaState.PENDING
    mimetype: str | None = None
    size: int | None = None  # declared by WhatsApp until stored, then the stored size
    sha256: str | None = None  # hex; declared by WhatsApp until stored
    caption: str | None = None
    filename: str | None = None
    error: str | None = None
    # The transport's download key (neonize: the serialized media message). Spooled with the message,
    # moved into the media row at hand-off and never sent to Temporal.
    source: str | None = None

    def to_wire(self, base_url: str, company_id: str) -> dict[str, Any]:
        """The ``media`` object of message events and webhooks."""
        return {
            "id": self.id, "type": self.kind.value, "state": self.state.value, "mimetype": self.mimetype,
            "size": self.size, "sha256": self.sha256, "caption": self.caption, "filename": self.filename,
            "url": base_url.rstrip("/") + media_path(company_id, self.id), "error": self.error,
        }


@dataclass
class MediaDownload:
    company_id: str
    media_id: str


@dataclass
class MediaFailure:
    company_id: str
    media_id: str
    error: str
