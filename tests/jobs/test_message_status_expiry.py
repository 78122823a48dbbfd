"""Message status rows expire (issue 11.3): the cleanup job deletes rows unchanged for
MESSAGE_STATUS_MAX_AGE_DAYS, counts them in a dry run without deleting, and reports them apart from
the key cleanup; also where there is no whatsmeow store (the simulator)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from activities.cleanup import cleanup_store
from domain.receipts import MessageStatus
from storage import Database
from storage.message_status import message_status, record_status

pytestmark = pytest.mark.timeout(60)


async def test_old_status_rows_are_expired_by_the_cleanup_job(db: Database, make_settings) -> None:
    settings = make_settings(message_status_max_age_days=30, cleanup_warn_rows=0)
    now = datetime.now(UTC)
    await record_status(db, "company_1", ["OLD1", "OLD2", "FRESH"], MessageStatus.SERVER, "79001234567@s.whatsapp.net",
                        now)
    await db.execute("UPDATE message_status SET updated_at = now() - interval '31 days' WHERE message_id LIKE 'OLD%'")
    # A receipt today keeps a message sent long ago: its age counts from its last change.
    await db.execute("UPDATE message_status SET updated_at = now() - interval '40 days' WHERE message_id = 'FRESH'")
    await record_status(db, "company_1", ["FRESH"], MessageStatus.READ, None, now)

    dry = await cleanup_store(settings, db, dry_run=True)
    assert dry["message_status"] == {"max_age_days": 30, "rows_to_delete": 2, "rows_deleted": 0}
    assert await db.fetchval("SELECT count(*) FROM message_status") == 3
    assert dry["warnings"] == []  # status rows are not the key cleanup's concern (one per message sent)

    done = await cleanup_store(settings, db, dry_run=False)
    assert done["message_status"] == {"max_age_days": 30, "rows_to_delete": 2, "rows_deleted": 2}
    assert await db.fetchval("SELECT count(*) FROM message_status") == 1
    kept = await message_status(db, "company_1", "FRESH")
    assert kept is not None and kept.status is MessageStatus.READ and kept.server_at is not None
    assert await message_status(db, "company_1", "OLD1") is None
