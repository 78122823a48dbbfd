"""Media a send brings (issue #11): base64 decoded, or a URL fetched, then checked against its kind.

Every refusal is a :class:`MediaRejected` with the status the API answers (413 over a size limit,
422 for anything else wrong with it) and a message that names the problem.

A URL is fetched with connect/read timeouts, an overall deadline and a size cap (the body is
streamed and dropped at the cap). Its host is resolved here and every address it resolves to must
be public: private, loopback, link-local, multicast, reserved and other non-global addresses are
refused unless they are in ``MEDIA_FETCH_ALLOWED_NETWORKS``. The connection then goes to an address
that was checked (no second lookup an attacker's DNS could answer differently), TLS still checks the
host's name, and each redirect is checked the same way. Environment proxies are not used.

The type is read from the bytes (libmagic, the same library neonize names the type with), never
from a name: a photo must be JPEG, PNG or WebP, a voice note Ogg Opus, and so on
(``domain.media.ALLOWED_MIMETYPES``); a declared ``mimetype`` that the bytes contradict is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore

from domain.media import ALLOWED_MIMETYPES, GENERIC_MIMETYPES, MediaKind, normalize_mimetype
from domain.settings import Settings

REDIRECTS = frozenset({301, 302, 303, 307, 308})
SNIFF_BYTES = 1024 * 1024


class MediaRejected(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class FetchedMedia:
    data: bytes
    content_type: str | None


def too_large(kind: MediaKind, limit: int, seen: str) -> MediaRejected:
    setting = f"MEDIA_MAX_{kind.value.upper()}_BYTES"
    return MediaRejected(413, "media_too_large",
                         f"media: a {kind.value} may be at most {limit} bytes ({setting}); {seen}")


def decode_base64(text: str, kind: MediaKind, limit: int) -> tuple[bytes, str | None]:
    """Standard base64 (whitespace ignored), or a ``data:<type>;base64,…`` URI; returns (bytes, its type)."""
    declared = None
    payload = text
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise MediaRejected(422, "validation_error", "media.base64: a data: URI must be data:<type>;base64,<data>")
        declared = normalize_mimetype(header[5:-7])
    payload = "".join(payload.split())
    if not payload:
        raise MediaRejected(422, "validation_error", "media.base64: empty")
    estimated = len(payload) * 3 // 4 - payload[-2:].count("=")
    if estimated > limit:
        raise too_large(kind, limit, f"this one is {estimated} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaRejected(422, "validation_error",
                            f"media.base64: not valid standard base64 ({exc})") from None
    return data, declared


def sniff_mimetype(data: bytes) -> str | None:
    import magic

    return normalize_mimetype(magic.from_buffer(data[:SNIFF_BYTES], mime=True))


def check_content(kind: MediaKind, data: bytes, declared: str | None, limit: int) -> str:
    """The media's type as read from its bytes; refuses what WhatsApp would not take as ``kind``."""
    if len(data) > limit:
        raise too_large(kind, limit, f"this one is {len(data)} bytes")
    if not data:
        raise MediaRejected(422, "validation_error", "media: the file is empty")
    sniffed = sniff_mimetype(data)
    declared = normalize_mimetype(declared)
    if kind is MediaKind.DOCUMENT:
        if declared and sniffed and sniffed not in GENERIC_MIMETYPES and sniffed != declared:
            raise MediaRejected(422, "media_type_mismatch",
                                f"media.mimetype: declared {declared}, but the bytes are {sniffed}")
        return declared or sniffed or "application/octet-stream"
    allowed = ALLOWED_MIMETYPES[kind]
    if sniffed not in allowed:
        raise MediaRejected(422, "media_type_mismatch",
                            f"media: a {kind.value} must be {' or '.join(allowed)}; the bytes are "
                            f"{sniffed or 'of no type libmagic knows'}")
    if declared and declared != sniffed:
        raise MediaRejected(422, "media_type_mismatch",
                            f"media.mimetype: declared {declared}, but the bytes are {sniffed}")
    return sniffed


def address_refusal(address: str, allowed: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """Why ``address`` may not be fetched from (None: it may)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return None
    for test, what in ((ip.is_loopback, "a loopback"), (ip.is_link_local, "a link-local"),
                       (ip.is_multicast, "a multicast"), (ip.is_unspecified, "an unspecified"),
                       (ip.is_private, "a private"), (ip.is_reserved, "a reserved"),
                       (not ip.is_global, "a non-public")):
        if test:
            return f"{ip} is {what} address"
    return None


class AddressRefused(ConnectionError):
    pass


class _CheckedAddresses(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses it when any address is not allowed, connects to a checked one."""

    def __init__(self, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._allowed = allowed
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (socket.gaierror, TimeoutError) as exc:
            raise AddressRefused(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            why = address_refusal(address, self._allowed)
            if why is not None:
                raise AddressRefused(f"{host} resolves to {why}; fetching from private, loopback, link-local "
                                     "and multicast addresses is off (MEDIA_FETCH_ALLOWED_NETWORKS)")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or AddressRefused(f"{host} has no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def fetch_media(url: str, kind: MediaKind, limit: int, settings: Settings) -> FetchedMedia:
    """GET ``url`` (following checked redirects) into memory, at most ``limit`` bytes."""
    try:
        async with asyncio.timeout(settings.media_fetch_timeout_s):
            return await _fetch(url, kind, limit, settings)
    except TimeoutError:
        raise MediaRejected(422, "media_fetch_failed",
                            f"media.url: {urlsplit(url).hostname} did not send the file within "
                            f"{settings.media_fetch_timeout_s:g} s (MEDIA_FETCH_TIMEOUT_S)") from None


async def _fetch(url: str, kind: MediaKind, limit: int, settings: Settings) -> FetchedMedia:
    timeouts = {"connect": settings.media_fetch_connect_timeout_s, "read": settings.media_fetch_timeout_s,
                "write": settings.media_fetch_timeout_s, "pool": settings.media_fetch_connect_timeout_s}
    async with httpcore.AsyncConnectionPool(network_backend=_CheckedAddresses(settings.media_fetch_networks),
                                            max_connections=2, retries=0) as pool:
        for _hop in range(settings.media_fetch_max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise MediaRejected(422, "validation_error", f"media.url: {url[:200]!r} is not an http(s) URL")
            host = parts.hostname
            try:
                async with pool.stream("GET", url, headers=[(b"User-Agent", b"waorch-media/1"), (b"Accept", b"*/*")],
                                       extensions={"timeout": timeouts}) as resp:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
                    if resp.status in REDIRECTS and "location" in headers:
                        url = urljoin(url, headers["location"])
                        continue
                    if not 200 <= resp.status < 300:
                        raise MediaRejected(422, "media_fetch_failed", f"media.url: {host} answered HTTP {resp.status}")
                    declared_length = headers.get("content-length", "")
                    if declared_length.isdigit() and int(declared_length) > limit:
                        raise too_large(kind, limit, f"{host} says this one is {declared_length} bytes")
                    chunks: list[bytes] = []
                    total = 0
                    async for chunk in resp.aiter_stream():
                        total += len(chunk)
                        if total > limit:
                            raise too_large(kind, limit, f"{host} sent more (stopped at {total} bytes)")
                        chunks.append(chunk)
                    return FetchedMedia(b"".join(chunks), normalize_mimetype(headers.get("content-type")))
            except AddressRefused as exc:
                raise MediaRejected(422, "media_url_refused", f"media.url: {exc}") from None
            except httpcore.TimeoutException as exc:
                raise MediaRejected(422, "media_fetch_failed",
                                    f"media.url: no answer from {host} in time ({type(exc).__name__})") from None
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
                raise MediaRejected(422, "media_fetch_failed",
                                    f"media.url: cannot fetch from {host}: {type(exc).__name__} {exc}"[:300]) from None
        raise MediaRejected(422, "media_fetch_failed",
                            f"media.url: more than {settings.media_fetch_max_redirects} redirects "
                            "(MEDIA_FETCH_MAX_REDIRECTS)")
