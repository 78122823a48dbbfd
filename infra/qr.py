"""QR rendering for the API and CLI (SPEC S2): a PNG data URL and terminal text, via segno. Pure."""

from __future__ import annotations

import io
from dataclasses import dataclass

import segno


@dataclass(frozen=True)
class RenderedQr:
    raw: str
    png_data_url: str
    terminal: str


def qr_png_data_url(code: str, scale: int = 6) -> str:
    return segno.make(code, error="l").png_data_uri(scale=scale, border=2)


def qr_terminal_text(code: str) -> str:
    """The QR as text (two modules per character row), printable on a terminal."""
    qr = segno.make(code, error="l")
    out = io.StringIO()
    qr.terminal(out=out, compact=True, border=2)
    return out.getvalue()


def render_qr(code: str) -> RenderedQr:
    return RenderedQr(raw=code, png_data_url=qr_png_data_url(code), terminal=qr_terminal_text(code))
