"""Which media kinds this machine can send through neonize (issue #11).

neonize reads a video's length and thumbnail, an audio's or voice note's length with ffprobe and
ffmpeg, and converts stickers with ffmpeg (Debian's ``ffmpeg`` package has both). Photos and
documents need neither. Without them neonize only logs a warning at its first client and the send
fails deep inside; the connector says at start which kinds are unavailable, publishes it for
``/health``, and refuses those sends at once (503 naming the missing tool).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from domain.media import MediaKind

# The tools each kind needs (neonize 0.5.2: build_video_message, build_audio_message, build_sticker_message).
NEEDS: dict[MediaKind, tuple[str, ...]] = {
    MediaKind.VIDEO: ("ffmpeg", "ffprobe"),
    MediaKind.AUDIO: ("ffprobe",),
    MediaKind.VOICE: ("ffprobe",),
    MediaKind.STICKER: ("ffmpeg",),
}


def unavailable_media_kinds(which: Callable[[str], str | None] = shutil.which) -> dict[str, str]:
    """Kind → why it cannot be sent here ("ffprobe not found on PATH"); empty when every kind can."""
    found = {tool: which(tool) is not None for tools in NEEDS.values() for tool in tools}
    out: dict[str, str] = {}
    for kind, tools in NEEDS.items():
        missing = [t for t in tools if not found[t]]
        if missing:
            out[kind.value] = f"{' and '.join(missing)} not found on PATH (install the ffmpeg package)"
    return out
