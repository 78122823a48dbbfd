"""Per-client cost of the real neonize library in a connector process, and the store-connection bound.

Run: ``.venv/bin/python -m bench.neonize_clients --clients 500 --attempts 300``

1. **Per client** — a child process ("the connector") builds the connector's own
   :class:`~connector.neonize_transport.NeonizeTransport` with neonize's real
   ``NewClient`` and starts ``--clients`` new-device clients that dial a local
   proxy which accepts each connection and holds it open without an answer
   (WhatsApp cannot be reached from a test machine). The parent reads the child's
   RSS and OS threads from ``/proc`` before the first client and once all are
   started, and counts the store's PostgreSQL connections. The same child
   harness then runs the simulator transport with as many connected sessions:
   its per-session figure, in the same run.
2. **Store connections** — ``--attempts`` hold attempts against a proxy that
   refuses every connection, through a transport with the default cap
   (``NEONIZE_STORE_MAX_CONNECTIONS``): how many connections each attempt
   leaves open, and that the count stays under the cap (attempts past it are
   refused, and the connector would drain and restart).

Prints JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit
from cli.embedded import EmbeddedPostgres, free_port
from cli.processes import REPO


def proc_figures(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"])}


async def pg_connections(dsn: str, application_name: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        # The transport names each client's store connection <connector's name>-c<n>.
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 OR application_name LIKE $2",
            application_name, application_name + "-c%")
        return count
    finally:
        await conn.close()


async def holding_proxy(held: list[asyncio.StreamWriter]) -> tuple[asyncio.Server, str]:
    """An HTTP proxy that accepts every connection and never answers: each client stays dialling."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


# --------------------------------------------------------------------------- the child ("connector")


class _Quiet:
    async def qr(self, *a: Any) -> None: ...
    async def pairing_code(self, *a: Any) -> None: ...
    async def connected(self, *a: Any) -> None: ...
    async def disconnected(self, *a: Any) -> None: ...
    async def message(self, *a: Any) -> None: ...
    async def receipt(self, *a: Any) -> None: ...


async def child(kind: str, dsn: str, proxy: str, clients: int) -> None:
    from connector.devices import DeviceDirectory
    from connector.neonize_transport import NeonizeTransport
    from connector.simulator import SimulatorTransport
    from storage import Database

    db = Database(dsn)
    devices = DeviceDirectory(db)
    transport: Any
    if kind == "neonize":
        import neonize.client  # noqa: F401  (the library's own cost belongs to the baseline)

        transport = NeonizeTransport(dsn, devices, proxy=proxy, connector_id="bench")
    else:
        transport = SimulatorTransport(devices)
    await db.fetchval("SELECT 1")
    print(json.dumps({"phase": "baseline"}), flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    outcomes = []
    for n in range(clients):
        cid = f"company_{n}"
        jid = f"7999{n:09d}:1@s.whatsapp.net" if kind == "simulator" else None
        outcomes.append(await transport.start(cid, jid=jid, pairing_phone=None, listener=_Quiet()))
    await asyncio.sleep(3)
    ended = sum(1 for o in outcomes if o.done())
    connected = sum(1 for n in range(clients) if (st := transport.status(f"company_{n}")) and st.connected)
    print(json.dumps({"phase": "started", "seconds": round(time.monotonic() - started, 1), "ended": ended,
                      "connected": connected}), flush=True)
    sys.stdin.readline()
    os._exit(0)  # neonize's client threads do not return; the bench is done with them


# --------------------------------------------------------------------------- the parent


async def measure_clients(kind: str, dsn: str, proxy: str, clients: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.neonize_clients", "--child", kind, "--dsn", dsn, "--proxy", proxy,
        "--clients", str(clients), cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, LOG_LEVEL="ERROR", PYTHONPATH=str(REPO)),
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def line() -> dict[str, Any]:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), 1200)
        while raw and not raw.startswith(b"{"):
            raw = await proc.stdout.readline()
        return dict(json.loads(raw))

    await line()
    base = proc_figures(proc.pid)
    conns_before = await pg_connections(dsn, "waorch-store-bench") if kind == "neonize" else 0
    proc.stdin.write(b"go\n")
    started = await line()
    after = proc_figures(proc.pid)
    conns_after = await pg_connections(dsn, "waorch-store-bench") if kind == "neonize" else 0
    proc.stdin.write(b"done\n")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 30)
    return {
        "transport": kind, "clients": clients, "start_seconds": started["seconds"],
        "ended_before_measure": started["ended"], "connected": started["connected"],
        "baseline_rss_mb": round(base["rss_mb"], 1), "rss_mb": round(after["rss_mb"], 1),
        "rss_per_client_kb": round((after["rss_mb"] - base["rss_mb"]) * 1024 / clients, 1),
        "baseline_threads": base["threads"], "threads": after["threads"],
        "threads_per_client": round((after["threads"] - base["threads"]) / clients, 2),
        "store_connections": conns_after - conns_before,
    }


async def store_cap(dsn: str, attempts: int) -> dict[str, Any]:
    """``attempts`` hold attempts against a refusing proxy, in this process, with the default cap."""
    from connector.devices import DeviceDirectory
    from connector.neonize_transport import NeonizeTransport
    from domain.settings import Settings
    from storage import Database

    settings = Settings(_env_file=None, connector_id="cap", database_url=dsn)
    db = Database(dsn)
    refused_port = free_port()
    transport = NeonizeTransport(dsn, DeviceDirectory(db), settings=settings, proxy=f"http://127.0.0.1:{refused_port}")
    before = await pg_connections(dsn, "waorch-store-cap")
    peak, refused, created = before, 0, 0
    started = time.monotonic()
    for n in range(attempts):
        outcome = await transport.start(f"company_{n}", jid=None, pairing_phone=None, listener=_Quiet())
        result = await asyncio.wait_for(outcome, 60)
        if "store connection cap" in result.detail:
            refused += 1
        else:
            created += 1
        peak = max(peak, await pg_connections(dsn, "waorch-store-cap"))
    after = await pg_connections(dsn, "waorch-store-cap")
    await transport.close()
    await db.close()
    return {
        "figure": "store_connections_after_hold_attempts", "attempts": attempts, "clients_created": created,
        "refused_at_cap": refused, "cap": settings.neonize_store_max_connections,
        "connections_before": before, "connections_after": after, "connections_peak": peak,
        "connections_per_attempt": round((after - before) / max(created, 1), 2),
        "seconds": round(time.monotonic() - started, 1),
    }


async def main(args: argparse.Namespace) -> None:
    if args.child:
        await child(args.child, args.dsn, args.proxy, args.clients)
        return
    from connector.neonize_store import ensure_store_schema
    from storage import Database, migrate

    root = Path(tempfile.mkdtemp(prefix="bench-neonize-"))
    pg = EmbeddedPostgres(root / "pg", free_port(), max_connections=args.clients + args.attempts + 100)
    await asyncio.to_thread(pg.start)
    held: list[asyncio.StreamWriter] = []
    server, proxy = await holding_proxy(held)
    try:
        pg.create_database("bench")
        dsn = pg.dsn_for("bench")
        db = Database(dsn)
        await migrate(db)
        await ensure_store_schema(dsn)
        for n in range(args.clients):  # the simulator's sessions resume stored devices: connected at once
            jid = f"7999{n:09d}:1@s.whatsapp.net"
            await db.execute("INSERT INTO sim_devices (company_id, jid, phone) VALUES ($1, $2, $3)",
                             f"company_{n}", jid, jid.split(":")[0])
        await db.close()
        emit(figure="per_client", **await measure_clients("neonize", dsn, proxy, args.clients),
             proxy_connections_held=len(held))
        emit(figure="per_client", **await measure_clients("simulator", dsn, proxy, args.clients))
        emit(await store_cap(dsn, args.attempts))
    finally:
        server.close()
        for w in held:
            w.close()
        await asyncio.to_thread(pg.stop, "immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--attempts", type=int, default=300)
    parser.add_argument("--child", choices=["neonize", "simulator"])
    parser.add_argument("--dsn")
    parser.add_argument("--proxy")
    asyncio.run(main(parser.parse_args()))
