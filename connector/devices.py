"""Which device belongs to which company: ``companies.device_jid`` in the project's database.

whatsmeow (and the simulator) keep one shared device store; without an explicit
``jid`` a client would resume the *first* device in it, so the connector looks
the company's own device up here, checks the store still has it, and otherwise
pairs a fresh one.
"""

from __future__ import annotations

from storage import Database


class DeviceDirectory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def device_jid(self, company_id: str) -> str | None:
        jid: str | None = await self.db.fetchval(
            "SELECT device_jid FROM companies WHERE company_id = $1 AND removed_at IS NULL", company_id
        )
        return jid

    async def proxy_of(self, company_id: str) -> str | None:
        """The company's outbound proxy URL (issue 11.7), read at each connect. A secret: never log it."""
        url: str | None = await self.db.fetchval(
            "SELECT proxy_url FROM companies WHERE company_id = $1 AND removed_at IS NULL", company_id
        )
        return url

    async def remember(self, company_id: str, jid: str, phone: str | None, push_name: str | None) -> None:
        await self.db.execute(
            """INSERT INTO companies (company_id, device_jid, phone, push_name) VALUES ($1, $2, $3, $4)
               ON CONFLICT (company_id) DO UPDATE SET device_jid = EXCLUDED.device_jid,
                   phone = COALESCE(EXCLUDED.phone, companies.phone),
                   push_name = COALESCE(EXCLUDED.push_name, companies.push_name),
                   removed_at = NULL, updated_at = now()""",
            company_id, jid, phone, push_name,
        )

    async def forget(self, company_id: str) -> None:
        await self.db.execute(
            "UPDATE companies SET device_jid = NULL, updated_at = now() WHERE company_id = $1", company_id
        )

    async def companies_without_hold(self) -> list[tuple[str, str]]:
        """(company id, device jid) of every company with a stored device and no session hold."""
        rows = await self.db.fetch(
            """SELECT c.company_id, c.device_jid FROM companies c
               WHERE c.device_jid IS NOT NULL AND c.removed_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM session_holds h WHERE h.company_id = c.company_id)
               ORDER BY 1"""
        )
        return [(r["company_id"], r["device_jid"]) for r in rows]
