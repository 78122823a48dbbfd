"""The model of neonize's client keeps its store container across a PostgreSQL restart, as Go's
database/sql pool does: the query that meets the dead connection fails, the next one dials anew.
(Without it, every send of a modelled client failed for good after the outage bench restarted
PostgreSQL, which no real whatsmeow client does.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from cli.embedded import EmbeddedPostgres, free_port
from connector.whatsmeow_model import GoSqlDB

pytestmark = pytest.mark.timeout(120)


async def test_store_container_dials_again_after_a_postgres_restart(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    await asyncio.to_thread(pg.start)
    try:
        db = GoSqlDB(pg.dsn, psycopg.connect(pg.dsn, autocommit=True))
        assert db.execute("SELECT 1").fetchone() == (1,)
        await asyncio.to_thread(pg.stop, "immediate")
        with pytest.raises(psycopg.OperationalError):  # down: the query fails, as Go's would
            db.execute("SELECT 1")
        await asyncio.to_thread(pg.start)
        answers = []
        for _ in range(2):  # at most the first query after the restart meets the dead connection
            try:
                answers.append(db.execute("SELECT 2").fetchone())
            except psycopg.OperationalError:
                answers.append(None)
        assert answers[-1] == (2,), answers
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
