"""Media older than MEDIA_MAX_AGE_DAYS go with the nightly cleanup (issue #11), with the key cleanup's
dry-run and report: rows first, then the files no remaining row needs; files shared with a newer row,
and files just written, stay."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.cleanup import cleanup_media
from domain.jobs import JobInput
from domain.media import MediaKind, MediaRef
from storage import Database
from storage.blobs import LocalBlobStore
from storage.media import MediaRows
from tests.jobs.conftest import running_worker
from workflows.jobs import CleanupWorkflow, _summary

pytestmark = pytest.mark.timeout(90)


async def _seed(db: Database, store: LocalBlobStore) -> dict[str, str]:
    rows = MediaRows(db)
    shas = {name: await store.put(f"{name} bytes".encode() * 100) for name in ("old", "new", "shared", "orphan",
                                                                               "fresh_orphan")}
    for mid, name in (("o1", "old"), ("o2", "shared"), ("n1", "new"), ("n2", "shared")):
        await rows.add_outgoing("company_a", MediaRef(mid, MediaKind.IMAGE, "image/jpeg", shas[name], 500))
    await db.execute("UPDATE media SET created_at = now() - interval '40 days' WHERE id IN ('o1', 'o2')")
    past = time.time() - 7200  # written two hours ago (the fresh orphan was just written: a send on its way)
    for name in ("old", "new", "shared", "orphan"):
        path = store.root / shas[name][:2] / shas[name]
        os.utime(path, (past, past))
    return shas


async def test_dry_run_counts_then_cleanup_removes_old_media_and_unreferenced_files(
    db: Database, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(media_max_age_days=30)
    store = LocalBlobStore(tmp_path / "media")
    shas = await _seed(db, store)

    dry = await cleanup_media(settings, db, store, dry_run=True)
    assert dry["rows_to_delete"] == 2 and dry["rows_deleted"] == 0 and dry["blobs_to_delete"] == 2, dry
    assert dry["deleted"] == {"media_sent": 2, "media_blobs": 2}
    assert dry["age_distribution"]["media"]["buckets"][">30d"] == 2
    assert await db.fetchval("SELECT count(*) FROM media") == 4
    assert None not in [await store.size(sha) for sha in shas.values()]  # nothing deleted

    done = await cleanup_media(settings, db, store, dry_run=False)
    assert {k: done[k] for k in ("rows_deleted", "blobs_deleted")} == {"rows_deleted": 2, "blobs_deleted": 2}
    assert done["bytes_freed"] == done["bytes_to_free"] == dry["bytes_to_free"] > 0
    assert sorted(r["id"] for r in await db.fetch("SELECT id FROM media")) == ["n1", "n2"]
    kept = {name for name, sha in shas.items() if await store.size(sha) is not None}
    assert kept == {"new", "shared", "fresh_orphan"}  # the shared file is still n2's


async def test_the_cleanup_job_reports_media_beside_keys(dev_env: WorkflowEnvironment, store_dsn: str,
                                                         jobs_settings) -> None:
    settings = jobs_settings(dev_env.client)
    db = Database(store_dsn)
    try:
        await _seed(db, LocalBlobStore(settings.resolved_media_dir))
        async with running_worker(settings, dev_env.client):
            result = await dev_env.client.execute_workflow(
                CleanupWorkflow.run, JobInput(dry_run=False, trigger="test"), id=f"cleanup-media-{uuid.uuid4()}",
                task_queue=settings.temporal_core_queue, execution_timeout=timedelta(seconds=60))
        assert await db.fetchval("SELECT count(*) FROM media") == 2
    finally:
        await db.close()
    media = result.details["media"]
    assert media["rows_deleted"] == 2 and media["blobs_deleted"] == 2, media
    assert "media: 2 older than 30 days, 2 files" in (await _job_summary(store_dsn))


async def _job_summary(dsn: str) -> str:
    db = Database(dsn)
    try:
        details = await db.fetchval("SELECT details::text FROM job_runs WHERE kind = 'cleanup' ORDER BY id DESC")
    finally:
        await db.close()
    import json

    return _summary("cleanup", json.loads(details))
