"""The live-socket registry: at most one live WhatsApp socket per device, across connector processes.

Two sockets on one device is the incident this project exists to prevent
(SPEC S1, S4: WhatsApp answers with 440 *connection replaced*). The test
transports (the simulator and the model of neonize's client in
:mod:`connector.whatsmeow_model`) record every socket they open here, keyed by
device, and check the device has no other live one. A socket of a process that
died counts as closed, since the kernel closed it: an entry carries its
process's host, pid and start time, and an entry whose process is gone (same
host, pid missing or started at another time) is dropped. Entries of another
host are taken as live (nothing here can see that machine's processes).

A breach is recorded durably and loudly: a ``transport_breaches`` row and an
ERROR log line. The test suite fails any test during which one was recorded.

Synchronous on purpose (psycopg): the model calls it from its "Go" threads; the
simulator calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from functools import cache

import psycopg

from infra.process import process_start_ticks

log = logging.getLogger("waorch.sockets")

# Breaches seen by this process, also when the database could not take the row.
BREACHES_SEEN: list[str] = []


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    started: int  # /proc/<pid>/stat start time (clock ticks since boot): a reused pid differs


@cache
def this_process() -> ProcessIdentity:
    return ProcessIdentity(socket.gethostname(), os.getpid(), process_start_ticks(os.getpid()) or 0)


def process_alive(host: str, pid: int, started: int) -> bool:
    """Whether the process that owned an entry still runs (always True for another host)."""
    if host != this_process().host:
        return True
    return process_start_ticks(pid) == started


class LiveSockets:
    """One process's view of the registry in the project database (tables of migration 60)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._unremoved: list[str] = []  # closes that could not reach the database: retried first

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, application_name="waorch-live-sockets",
                                         connect_timeout=5)
        return self._conn

    def open(self, device: str, *, transport: str, company_id: str | None) -> str | None:
        """Record a socket that just opened for ``device``; a breach if another live one exists.

        Returns the entry's id, or None when the registry is unreachable: it checks a test
        transport, and a database outage must not take the (simulated) phone down with it.
        """
        try:
            return self._open(device, transport=transport, company_id=company_id)
        except psycopg.Error as exc:
            log.warning("live socket not recorded device=%s error=%s", device, type(exc).__name__)
            with self._lock:
                self._conn = None
            return None

    def _open(self, device: str, *, transport: str, company_id: str | None) -> str:
        me = this_process()
        socket_id = uuid.uuid4().hex
        others: list[tuple[str, str | None, str, int]] = []
        with self._lock:
            conn = self._connection()
            if self._unremoved:
                conn.execute("DELETE FROM live_sockets WHERE socket_id = ANY(%s)", (self._unremoved,))
                self._unremoved.clear()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (device,))
                rows = conn.execute(
                    "SELECT socket_id, company_id, host, pid, pid_started FROM live_sockets WHERE device = %s",
                    (device,),
                ).fetchall()
                for sid, cid, host, pid, started in rows:
                    if process_alive(host, pid, started):
                        others.append((sid, cid, host, pid))
                    else:
                        conn.execute("DELETE FROM live_sockets WHERE socket_id = %s", (sid,))
                conn.execute(
                    """INSERT INTO live_sockets (socket_id, device, transport, company_id, host, pid, pid_started)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                    (socket_id, device, transport, company_id, me.host, me.pid, me.started),
                )
        if others:
            where = ", ".join(f"{cid or '?'} on {host} pid {pid}" for _, cid, host, pid in others)
            self.breach("two_live_sockets", f"a second live socket for device {device} (already open: {where})",
                        device=device, company_id=company_id)
        return socket_id

    def close(self, socket_id: str) -> None:
        try:
            with self._lock:
                self._connection().execute("DELETE FROM live_sockets WHERE socket_id = %s", (socket_id,))
        except psycopg.Error as exc:  # unreachable: removed before the next open instead
            log.warning("live socket not removed yet error=%s", type(exc).__name__)
            with self._lock:
                self._conn = None
                self._unremoved.append(socket_id)

    def live(self, device: str) -> int:
        """How many live sockets the registry holds for ``device`` (dead processes' not counted)."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT host, pid, pid_started FROM live_sockets WHERE device = %s", (device,)
            ).fetchall()
        return sum(1 for host, pid, started in rows if process_alive(host, pid, started))

    def breach(self, kind: str, detail: str, *, device: str | None = None, company_id: str | None = None) -> None:
        """Record an invariant breach: an ERROR line and a row (kept in memory too if the row fails)."""
        log.error("transport invariant breached kind=%s company_id=%s detail=%s", kind, company_id, detail)
        BREACHES_SEEN.append(f"{kind}: {detail}")
        try:
            with self._lock:
                self._connection().execute(
                    "INSERT INTO transport_breaches (kind, device, company_id, detail) VALUES (%s, %s, %s, %s)",
                    (kind, device, company_id, detail[:1000]),
                )
        except psycopg.Error as exc:
            log.error("breach row not written kind=%s error=%s", kind, type(exc).__name__)

    def close_connection(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
