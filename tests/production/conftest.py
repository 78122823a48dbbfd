"""A throwaway CA per test, and TLS-terminating proxies in front of the test servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.production.tls import ThrowawayCA, TlsProxy


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path / "pki")


@pytest.fixture
def other_ca(tmp_path: Path) -> ThrowawayCA:
    """A CA nobody trusts: certificates from it must be refused."""
    return ThrowawayCA(tmp_path / "pki-other", "untrusted CA")


@pytest.fixture
async def tls_proxy(ca: ThrowawayCA) -> AsyncIterator[Callable[..., Any]]:
    """``await tls_proxy(upstream_port, **options)``: a started proxy, stopped after the test."""
    proxies: list[TlsProxy] = []

    async def start(
        upstream_port: int, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), **options: Any
    ) -> TlsProxy:
        proxy = await TlsProxy(upstream_port, ca.issue(f"server{len(proxies)}", hosts=hosts), **options).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()
