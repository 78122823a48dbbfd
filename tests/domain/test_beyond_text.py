"""Issue 11.4 and 11.7 rules without I/O: which proxy URLs a connector can dial through and how one is
shown, and how long the send option "typing" types."""

from __future__ import annotations

import pytest

from domain.proxy import InvalidProxy, masked_proxy, parse_proxy_url
from domain.settings import Settings


@pytest.mark.parametrize(("raw", "stored", "shown"), [
    ("socks5://user:p%40ss@proxy.example.com:1080", "socks5://user:p%40ss@proxy.example.com:1080",
     "socks5://user:***@proxy.example.com:1080"),
    (" HTTP://10.0.0.1:3128 ", "http://10.0.0.1:3128", "http://10.0.0.1:3128"),
    ("https://only-user@proxy.example.com:443/", "https://only-user@proxy.example.com:443",
     "https://only-user@proxy.example.com:443"),
    ("http://[2001:db8::1]:8080", "http://[2001:db8::1]:8080", "http://[2001:db8::1]:8080"),
])
def test_proxy_urls_are_normalised_and_shown_without_their_password(raw: str, stored: str, shown: str) -> None:
    assert parse_proxy_url(raw) == stored
    assert masked_proxy(stored) == shown
    assert masked_proxy(None) is None


@pytest.mark.parametrize(("raw", "why"), [
    ("socks4://h:1080", "scheme 'socks4' is not supported"),
    ("//h:1080", "scheme none is not supported"),
    ("http://h", "has no port"),
    ("http://h:65536", "port is out of range"),
    ("http://:80", "has no host"),
    ("http://-bad-.example:80", "is not a host name"),
    ("http://h:80?x=1", "path, query or fragment"),
    ("http://h\n:80", "whitespace"),
    ("http://" + "a" * 1100 + ":80", "longer than 1024"),
])
def test_proxy_urls_a_connector_cannot_use_are_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidProxy, match=why):
        parse_proxy_url(raw)


def test_typing_time_grows_with_the_text_and_is_bounded() -> None:
    s = Settings(_env_file=None, send_typing_chars_per_s=10, send_typing_min_s=1, send_typing_max_s=5)
    assert s.typing_seconds("hi") == 1  # at least the minimum
    assert s.typing_seconds("x" * 30) == 3
    assert s.typing_seconds("x" * 4096) == 5  # at most the maximum
    with pytest.raises(ValueError, match="SEND_TYPING_MAX_S"):
        Settings(_env_file=None, send_typing_min_s=6, send_typing_max_s=5)
