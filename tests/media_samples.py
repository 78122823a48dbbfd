"""Small real media files for the media tests: made once per test session with Pillow and ffmpeg.

Real files, because the API reads their type from the bytes and neonize's own builders (which the
model of neonize's client runs) open images with Pillow and read lengths with ffprobe.
"""

from __future__ import annotations

import base64
import functools
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed (apt-get install ffmpeg)")


def image(fmt: str = "JPEG", size: tuple[int, int] = (32, 24), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def noise_jpeg(nbytes: int) -> bytes:
    """A JPEG of about ``nbytes`` (random pixels barely compress): the benchmark's 1 MB photo."""
    import os

    side = 64
    while True:
        img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=95)
        if len(out.getvalue()) >= nbytes:
            return out.getvalue()
        side = int(side * 1.4)


@functools.cache
def _ffmpeg(name: str, *args: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args, str(path)], check=True, timeout=60)
        return path.read_bytes()


def ogg_opus() -> bytes:
    return _ffmpeg("voice.ogg", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libopus")


def mp3() -> bytes:
    return _ffmpeg("song.mp3", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libmp3lame")


def mp4() -> bytes:
    return _ffmpeg("clip.mp4", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=10", "-pix_fmt", "yuv420p",
                   "-c:v", "libx264")


PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
