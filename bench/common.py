"""What every benchmark needs: real services on free ports, JSON-line output, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, venv_binary


def emit(line: dict[str, Any] | None = None, **fields: Any) -> None:
    """One JSON line per figure on stdout."""
    print(json.dumps({**(line or {}), **fields}, ensure_ascii=False, default=str), flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench_services(
    stack: contextlib.AsyncExitStack, root: Path
) -> tuple[EmbeddedPostgres, EmbeddedRedis, WorkflowEnvironment]:
    """PostgreSQL, Redis and a Temporal dev server (with the project's search attributes),
    all stopped when ``stack`` closes."""
    pg = EmbeddedPostgres(root / "pg", free_port())
    redis_server = EmbeddedRedis(root / "redis", free_port())
    await asyncio.to_thread(pg.start)
    stack.callback(pg.stop, "immediate")
    redis_server.start()
    stack.callback(redis_server.stop)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"),
        search_attributes=[],
        dev_server_extra_args=[
            "--search-attribute", "CompanyId=Keyword", "--search-attribute", "SessionState=Keyword",
            "--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=true",
        ],
        data_converter=pydantic_data_converter,
    )
    stack.push_async_callback(env.shutdown)
    return pg, redis_server, env
