"""What every nightly job shares (SPEC B1-B3): its ``job_runs`` row, its metrics,
and running the PostgreSQL client tools with heartbeats and without secrets in argv.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import sentry_sdk
from prometheus_client import CollectorRegistry, Counter, Gauge
from temporalio import activity

from domain.jobs import JobFinish, JobStart
from storage import Database

log = logging.getLogger("waorch.jobs")

# A registry of its own: the API process may export the same figures (read from
# job_runs) in the default registry, and tests run both in one process.
JOB_METRICS = CollectorRegistry(auto_describe=True)
LAST_SUCCESS = Gauge(
    "waorch_job_last_success_timestamp_seconds", "Unix time of the last successful run", ["kind"], registry=JOB_METRICS
)
LAST_STATUS = Gauge(
    "waorch_job_last_status", "1 when the last run succeeded, 0 when it failed", ["kind"], registry=JOB_METRICS
)
LAST_DURATION = Gauge("waorch_job_last_duration_seconds", "Duration of the last run", ["kind"], registry=JOB_METRICS)
BACKUP_SIZE = Gauge("waorch_backup_last_size_bytes", "Size of the last verified backup", registry=JOB_METRICS)
RESTORE_RTO = Gauge("waorch_restore_test_last_rto_seconds", "RTO of the last restore test", registry=JOB_METRICS)
ROWS_DELETED = Counter("waorch_cleanup_rows_deleted", "Store rows deleted by cleanup", registry=JOB_METRICS)


# Longer than any job may run (the workflows give their activity at most 2 h).
ABANDONED_AFTER_H = 3


class JobRecorder:
    """The ``job_runs`` rows of every run, and the worker's metrics."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn(name="record_job_start")
    async def record_job_start(self, start: JobStart) -> int:
        # A run whose workflow was terminated never closed its row: say so instead of "running" forever.
        await self._db.execute(
            """UPDATE job_runs SET status = 'abandoned', finished_at = now(),
                   error = 'no result recorded: the workflow was terminated or timed out'
               WHERE kind = $1 AND status = 'running' AND started_at < now() - make_interval(hours => $2)""",
            start.kind, ABANDONED_AFTER_H,
        )
        run_id: int = await self._db.fetchval(
            "INSERT INTO job_runs (kind, workflow_id, status, dry_run) VALUES ($1, $2, 'running', $3) RETURNING id",
            start.kind, start.workflow_id, start.dry_run,
        )
        log.info("job started kind=%s run_id=%d workflow_id=%s dry_run=%s",
                 start.kind, run_id, start.workflow_id, start.dry_run)
        return run_id

    @activity.defn(name="record_job_finish")
    async def record_job_finish(self, finish: JobFinish) -> float:
        """Close the row; returns its duration in seconds."""
        row = await self._db.fetchrow(
            """UPDATE job_runs SET status = $2, finished_at = now(),
                   duration_s = extract(epoch FROM now() - started_at), details = $3::jsonb, error = $4
               WHERE id = $1 RETURNING kind, duration_s, dry_run""",
            finish.run_id, finish.status, json.dumps(finish.details, default=str), finish.error,
        )
        if row is None:
            raise RuntimeError(f"job_runs row {finish.run_id} is missing")
        kind, duration = row["kind"], float(row["duration_s"])
        log.info("job finished kind=%s run_id=%d status=%s duration_s=%.2f",
                 kind, finish.run_id, finish.status, duration)
        if not row["dry_run"]:
            update_metrics(kind, finish.status, duration, finish.details)
        return duration


def update_metrics(kind: str, status: str, duration_s: float, details: dict[str, Any]) -> None:
    ok = status == "succeeded"
    LAST_STATUS.labels(kind).set(1 if ok else 0)
    LAST_DURATION.labels(kind).set(duration_s)
    if not ok:
        return
    LAST_SUCCESS.labels(kind).set(time.time())
    if kind == "backup" and isinstance(details.get("size_bytes"), int):
        BACKUP_SIZE.set(details["size_bytes"])
    if kind == "restore-test" and isinstance(details.get("rto_s"), int | float):
        RESTORE_RTO.set(details["rto_s"])
    if kind == "cleanup" and isinstance(details.get("rows_deleted"), int):
        ROWS_DELETED.inc(details["rows_deleted"])


def report_failure(exc: BaseException, kind: str) -> None:
    """Sentry (a no-op without a DSN) for a job's failure, tagged as SPEC H5 asks."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("component", "worker")
        scope.set_tag("operation", kind)
        sentry_sdk.capture_exception(exc)


# --------------------------------------------------------------------------- client tools


class ToolFailed(Exception):
    """A PostgreSQL client tool exited non-zero."""


@dataclass(frozen=True)
class PgTools:
    bin_dir: Path

    @property
    def pg_dump(self) -> str:
        return str(self.bin_dir / "pg_dump")

    @property
    def pg_restore(self) -> str:
        return str(self.bin_dir / "pg_restore")

    @classmethod
    def from_setting(cls, bin_dir: Path | None) -> PgTools:
        if bin_dir is not None:
            return cls(bin_dir)
        from storage.pg_tools import pg_bin_dir

        return cls(pg_bin_dir())


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def parse_tool_version(output: str) -> tuple[int, str]:
    """``pg_dump (PostgreSQL) 16.2`` → ``(16, "16.2")``."""
    match = _VERSION_RE.search(output)
    if match is None:
        raise ToolFailed(f"cannot read a PostgreSQL version from {output.strip()[:100]!r}")
    return int(match.group(1)), match.group(0).split()[-1]


# libpq connection parameters of a URL's query string → the environment variable libpq reads for each.
LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "channel_binding": "PGCHANNELBINDING", "sslmode": "PGSSLMODE", "requiressl": "PGREQUIRESSL",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcertmode": "PGSSLCERTMODE", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION", "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
}


@dataclass(frozen=True)
class Target:
    """A database as the libpq environment (PGHOST, PGPASSWORD, …): nothing secret in argv."""

    env: dict[str, str] = field(repr=False)
    database: str

    @classmethod
    def from_dsn(cls, dsn: str) -> Target:
        parts = urlsplit(dsn)
        env = {
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "PGUSER": unquote(parts.username or "postgres"),
            "PGDATABASE": unquote(parts.path.lstrip("/")) or "postgres",
            "PGCONNECT_TIMEOUT": "10",
        }
        if parts.password:
            env["PGPASSWORD"] = unquote(parts.password)
        # The URL's parameters (sslmode, sslrootcert, … as in DATABASE_URL) mean to pg_dump, pg_restore
        # and psql what they mean to asyncpg: TLS settings reach every client of the database.
        for key, value in parse_qsl(parts.query):
            if key in LIBPQ_ENV:
                env[LIBPQ_ENV[key]] = value
        return cls(env, env["PGDATABASE"])

    def with_database(self, name: str) -> Target:
        return Target({**self.env, "PGDATABASE": name}, name)


async def run_tool(args: Sequence[str], *, env: dict[str, str] | None = None, what: str,
                   heartbeat_every_s: float = 5.0) -> str:
    """Run a client tool to completion, heartbeating while it runs; return its stderr.

    Cancellation (the activity's heartbeat reports it) kills the tool.
    """
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    try:
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), heartbeat_every_s)
                break
            except TimeoutError:
                heartbeat(what)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    err = (await stderr_task).decode(errors="replace")
    if proc.returncode != 0:
        raise ToolFailed(f"{what} failed (exit {proc.returncode}): {err.strip()[-800:]}")
    return err


def heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


def utcnow() -> datetime:
    return datetime.now(UTC)
