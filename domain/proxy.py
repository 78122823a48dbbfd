"""A company's outbound proxy (issue 11.7): which URLs are accepted, and how one is shown.

whatsmeow dials WhatsApp through an ``http://``, ``https://`` or ``socks5://`` proxy
(``SetProxyAddress``); anything else it refuses at connect time, so it is refused here, when the admin
sets it, with the reason. The URL may carry a user and password: it is a secret. Every answer and log
line shows :func:`masked_proxy` instead (the password as ``***``).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote, urlsplit

PROXY_SCHEMES = ("http", "https", "socks5")
MAX_PROXY_URL = 1024
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class InvalidProxy(ValueError):
    """A proxy URL the connector could not dial through; the message says why."""


def parse_proxy_url(text: str) -> str:
    """Check ``scheme://[user[:password]@]host:port`` and return it normalised (scheme in lower case).

    Raises:
        InvalidProxy: an unsupported scheme, no host, no port or one out of range, a path, query or
            fragment, whitespace, or a URL longer than 1024 characters.
    """
    raw = text.strip()
    if not raw:
        raise InvalidProxy("must not be empty (DELETE the proxy to connect directly)")
    if len(raw) > MAX_PROXY_URL:
        raise InvalidProxy(f"is longer than {MAX_PROXY_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in raw):
        raise InvalidProxy("must not contain whitespace or control characters")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise InvalidProxy("port is out of range 1-65535 or not a number") from None
        raise InvalidProxy(f"is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        shown = f"{scheme!r}" if scheme else "none"
        raise InvalidProxy(f"scheme {shown} is not supported: use http://, https:// or socks5://")
    host = parts.hostname
    if not host:
        raise InvalidProxy("has no host (scheme://host:port)")
    if not _valid_host(host):
        raise InvalidProxy(f"host {host!r} is not a host name or an IP address")
    if port is None:
        raise InvalidProxy("has no port (scheme://host:port)")
    if not 1 <= port <= 65535:
        raise InvalidProxy(f"port {port} is out of range 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidProxy("must not have a path, query or fragment")
    auth = ""
    if parts.username is not None:
        auth = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            auth += ":" + quote(unquote(parts.password), safe="")
        auth += "@"
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{auth}{shown_host}:{port}"


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def masked_proxy(url: str | None) -> str | None:
    """The URL with its password replaced by ``***`` (user, host and port stay: they say which proxy)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "***"
    auth = ""
    if parts.username is not None:
        auth = parts.username + (":***" if parts.password is not None else "") + "@"
    shown_host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{auth}{shown_host}" + (f":{port}" if port else "")
