"""PostgreSQL over TLS: DATABASE_URL's sslmode / sslrootcert (or DB_SSLMODE / DB_SSLROOTCERT) reach
asyncpg and the libpq tools (psql, pg_dump, pg_restore) alike. The embedded PostgreSQL is built
without OpenSSL, so a proxy that speaks PostgreSQL's SSLRequest and TLS stands in front of it and
refuses plaintext, as a ``hostssl``-only server would."""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from activities.jobs_common import Target
from domain.settings import Settings
from storage import Database
from storage.db import RetryPolicy
from tests.conftest import PgServer
from tests.production.tls import ThrowawayCA


def with_port(dsn: str, port: int, query: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}", query=query).geturl()


def libpq_psql() -> str:
    """A psql whose libpq has TLS (Debian's postgresql-client; the embedded one has none)."""
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True):
        return path
    pytest.skip("no psql built with OpenSSL here (apt-get install postgresql-client; .ci/run does)")


async def test_asyncpg_follows_sslmode_and_sslrootcert(
    pg_server: PgServer, database_dsn: str, tls_proxy: Callable[..., Any], ca: ThrowawayCA, other_ca: ThrowawayCA
) -> None:
    upstream = urlsplit(database_dsn).port
    proxy = await tls_proxy(upstream, postgres=True)
    no_retry = RetryPolicy(tries=0)

    db = Database(with_port(database_dsn, proxy.port, f"sslmode=verify-full&sslrootcert={ca.cert_path}"))
    try:
        assert await db.fetchval("SELECT current_database()") == urlsplit(database_dsn).path.lstrip("/")
    finally:
        await db.close()
    assert proxy.handshakes >= 1

    # A certificate from a CA the URL does not name is refused by the client …
    bad = Database(with_port(database_dsn, proxy.port, f"sslmode=verify-full&sslrootcert={other_ca.cert_path}"),
                   retry=no_retry)
    with pytest.raises(Exception, match="certificate verify failed"):
        await bad.ping()
    await bad.close()
    # … and sslmode=disable really sends plaintext, which the TLS-only server refuses.
    refused_before = proxy.refused
    plain = Database(with_port(database_dsn, proxy.port, "sslmode=disable"), retry=no_retry)
    with pytest.raises((asyncpg.PostgresError, ConnectionError, OSError, asyncpg.InterfaceError)):
        await asyncio.wait_for(plain.ping(), 15)
    await plain.close()
    assert proxy.refused > refused_before


async def test_db_parts_carry_sslmode_and_root_cert(
    database_dsn: str, tls_proxy: Callable[..., Any], ca: ThrowawayCA, other_ca: ThrowawayCA
) -> None:
    parts = urlsplit(database_dsn)
    proxy = await tls_proxy(parts.port, postgres=True)

    def settings(root: ThrowawayCA) -> Settings:
        return Settings(
            _env_file=None, environment="test", db_host="localhost", db_port=proxy.port, db_user="postgres",
            db_name=parts.path.lstrip("/"), db_sslmode="verify-full", db_sslrootcert=root.cert_path,
        )

    db = Database(settings(ca).database_dsn)
    try:
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()
    assert proxy.handshakes >= 1
    # verify-full with a root the server's certificate does not chain to: refused.
    bad = Database(settings(other_ca).database_dsn, retry=RetryPolicy(tries=0))
    with pytest.raises(Exception, match="certificate verify failed"):
        await bad.ping()
    await bad.close()


async def test_libpq_tools_get_the_urls_tls_parameters(
    database_dsn: str, tls_proxy: Callable[..., Any], ca: ThrowawayCA, other_ca: ThrowawayCA
) -> None:
    psql = libpq_psql()
    proxy = await tls_proxy(urlsplit(database_dsn).port, postgres=True)

    def run(root: str) -> subprocess.CompletedProcess[str]:
        target = Target.from_dsn(with_port(database_dsn, proxy.port, f"sslmode=verify-full&sslrootcert={root}"))
        return subprocess.run([psql, "-X", "-tAc", "SELECT 42"], env={**os.environ, **target.env},
                              capture_output=True, text=True, timeout=30)

    ok = await asyncio.to_thread(run, str(ca.cert_path))
    assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr
    refused = await asyncio.to_thread(run, str(other_ca.cert_path))
    assert refused.returncode != 0
    assert "certificate verify failed" in refused.stderr
