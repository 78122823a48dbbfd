"""Realistic rows in a real whatsmeow store (schema from ensure_store_schema), for tests and bench."""

from __future__ import annotations

import asyncpg

_DEVICE = """
INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key, signed_pre_key_id,
    signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key, adv_device_sig,
    platform, business_name, push_name)
VALUES ($1, 7, decode(repeat('11', 32), 'hex'), decode(repeat('22', 32), 'hex'), decode(repeat('33', 32), 'hex'), 1,
    decode(repeat('44', 64), 'hex'), '\\x01', '\\x02', decode(repeat('55', 64), 'hex'),
    decode(repeat('66', 32), 'hex'), decode(repeat('77', 64), 'hex'), 'android', '', 'salon')
"""


def device_jid(n: int) -> str:
    return f"7999{n:07d}:12@s.whatsapp.net"


async def fill_device(conn: asyncpg.Connection, jid: str, *, pre_keys: int = 0, sessions: int = 0,
                      identity_keys: int = 0, secrets: int = 0, app_state_keys: int = 0,
                      privacy_tokens: int = 0) -> None:
    """One linked device with the given numbers of key rows (random 32-byte keys)."""
    await conn.execute(_DEVICE, jid)
    await conn.execute(
        """INSERT INTO whatsmeow_pre_keys (jid, key_id, key, uploaded)
           SELECT $1, g, decode(md5(g::text) || md5($1 || g), 'hex'), true FROM generate_series(1, $2) g""",
        jid, pre_keys,
    )
    await conn.execute(
        """INSERT INTO whatsmeow_sessions (our_jid, their_id, session)
           SELECT $1, '7000' || g || '.0:0', decode(repeat(md5(g::text), 12), 'hex') FROM generate_series(1, $2) g""",
        jid, sessions,
    )
    await conn.execute(
        """INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity)
           SELECT $1, '7000' || g || '.0:0', decode(md5(g::text) || md5(g::text), 'hex')
           FROM generate_series(1, $2) g""",
        jid, identity_keys,
    )
    await conn.execute(
        """INSERT INTO whatsmeow_message_secrets (our_jid, chat_jid, sender_jid, message_id, key)
           SELECT $1, '7000' || (g % 50) || '@s.whatsapp.net', '7000' || (g % 50) || '@s.whatsapp.net',
                  '3EB0' || upper(md5($1 || g)), decode(md5(g::text) || md5(g::text), 'hex')
           FROM generate_series(1, $2) g""",
        jid, secrets,
    )
    await conn.execute(
        """INSERT INTO whatsmeow_app_state_sync_keys (jid, key_id, key_data, timestamp, fingerprint)
           SELECT $1, decode(md5(g::text), 'hex'), decode(repeat(md5(g::text), 4), 'hex'),
                  extract(epoch FROM now())::bigint, '\\x00'
           FROM generate_series(1, $2) g""",
        jid, app_state_keys,
    )
    await add_privacy_tokens(conn, jid, privacy_tokens, age_days=0)


async def add_privacy_tokens(conn: asyncpg.Connection, jid: str, n: int, *, age_days: float, start: int = 0) -> None:
    await conn.execute(
        """INSERT INTO whatsmeow_privacy_tokens (our_jid, their_jid, token, timestamp)
           SELECT $1, '9' || g || '@lid', decode(md5(g::text), 'hex'),
                  extract(epoch FROM now())::bigint - ($3 * 86400)::bigint
           FROM generate_series($4 + 1, $4 + $2) g""",
        jid, n, age_days, start,
    )
