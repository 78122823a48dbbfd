"""Schema of the project's own tables, migrated idempotently at start (SPEC D1).

Migrations are numbered and append-only. ``migrate`` takes a transaction-level
advisory lock, so any number of processes starting at once apply each
migration exactly once.
"""

from __future__ import annotations

import logging

from storage.db import Database

log = logging.getLogger("waorch.db")

_LOCK_KEY = 0x7761_6F72  # "waor"

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "project tables",
        """
        CREATE TABLE companies (
            company_id     text PRIMARY KEY,
            device_jid     text,
            phone          text,
            push_name      text,
            created_at     timestamptz NOT NULL DEFAULT now(),
            updated_at     timestamptz NOT NULL DEFAULT now(),
            removed_at     timestamptz,
            handler        text,
            webhook_url    text,
            webhook_secret text,
            event_webhook_url text
        );
        CREATE TABLE api_keys (
            id          bigserial PRIMARY KEY,
            company_id  text NOT NULL,
            key_hash    text NOT NULL UNIQUE,
            key_prefix  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz
        );
        CREATE INDEX api_keys_company ON api_keys (company_id) WHERE revoked_at IS NULL;
        CREATE TABLE job_runs (
            id           bigserial PRIMARY KEY,
            kind         text NOT NULL,
            workflow_id  text,
            status       text NOT NULL,
            dry_run      boolean NOT NULL DEFAULT false,
            started_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            duration_s   double precision,
            details      jsonb NOT NULL DEFAULT '{}'::jsonb,
            error        text
        );
        CREATE INDEX job_runs_kind_started ON job_runs (kind, started_at DESC);
        CREATE TABLE audit (
            id          bigserial PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            actor       text NOT NULL,
            company_id  text,
            action      text NOT NULL,
            details     jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX audit_company_at ON audit (company_id, at DESC);
        """,
    ),
    (
        20,
        "simulator device store",
        # The simulator's "device credentials": like whatsmeow_device for neonize,
        # so a restarted connector reconnects a simulated company without a QR.
        """
        CREATE TABLE sim_devices (
            company_id  text PRIMARY KEY,
            jid         text NOT NULL UNIQUE,
            phone       text,
            push_name   text,
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        30,
        "first_seen on whatsmeow message secrets (when the store already exists)",
        # whatsmeow keeps no timestamp on message secrets, so age-based cleanup (SPEC B3)
        # records one itself. The store may be created after this migration (by the
        # connector): storage.whatsmeow.ensure_store_timestamps repeats this when the
        # store is created and at each cleanup.
        """
        DO $$
        BEGIN
            IF to_regclass('public.whatsmeow_message_secrets') IS NOT NULL THEN
                ALTER TABLE whatsmeow_message_secrets
                    ADD COLUMN IF NOT EXISTS first_seen timestamptz NOT NULL DEFAULT now();
            END IF;
        END $$;
        """,
    ),
    (
        50,
        "inbox handler: import path of a Python callable",
        # companies.handler is "none" | "echo" | "webhook" | "callable" (NULL: the settings' default).
        "ALTER TABLE companies ADD COLUMN IF NOT EXISTS handler_callable text;",
    ),
    (
        60,
        "test transports: live sockets per device, invariant breaches, what each phone sent",
        # connector.live_sockets: every socket the simulator or the model of neonize's client
        # opens, keyed by device (never two live ones: SPEC S1); breaches of that rule; and the
        # outbox of the test transports, kept here so it survives a connector SIGKILL.
        """
        CREATE TABLE IF NOT EXISTS live_sockets (
            socket_id   text PRIMARY KEY,
            device      text NOT NULL,
            transport   text NOT NULL,
            company_id  text,
            host        text NOT NULL,
            pid         integer NOT NULL,
            pid_started bigint NOT NULL,
            opened_at   timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS live_sockets_device ON live_sockets (device);
        CREATE TABLE IF NOT EXISTS transport_breaches (
            id          bigserial PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            kind        text NOT NULL,
            device      text,
            company_id  text,
            detail      text NOT NULL
        );
        CREATE TABLE IF NOT EXISTS transport_outbox (
            id          bigserial PRIMARY KEY,
            company_id  text NOT NULL,
            transport   text NOT NULL,
            message_id  text NOT NULL,
            to_jid      text NOT NULL,
            text        text NOT NULL,
            quoted      text,
            sent_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS transport_outbox_company ON transport_outbox (company_id, id);
        """,
    ),
    (
        100,
        "connector leases, session holds, incoming spool",
        # A pool is the connectors of one deployment (Temporal namespace + connector queue): they
        # adopt each other's holds and spooled messages, never another pool's.
        # connector_leases: one row per connector process (incarnation), renewed every second
        # (README "Connector liveness"); session_holds: which process holds which company's
        # connection, under which hold attempt of the session workflow (at most one row per
        # company: the database-level half of SPEC S1); incoming_spool: incoming messages made
        # durable before the transport's callback returns, deleted once Temporal has them.
        """
        CREATE TABLE connector_leases (
            incarnation   text PRIMARY KEY,
            pool          text NOT NULL,
            connector_id  text NOT NULL,
            own_queue     text NOT NULL,
            host          text NOT NULL,
            process       text NOT NULL,
            started_at    timestamptz NOT NULL DEFAULT now(),
            renewed_at    timestamptz NOT NULL DEFAULT now(),
            expires_at    timestamptz NOT NULL,
            released_at   timestamptz,
            dead_at       timestamptz,
            dead_reason   text
        );
        CREATE INDEX connector_leases_live ON connector_leases (pool, expires_at)
            WHERE dead_at IS NULL AND released_at IS NULL;
        CREATE TABLE session_holds (
            pool             text NOT NULL,
            company_id       text NOT NULL,
            hold_id          text NOT NULL,
            holder           text NOT NULL,
            workflow_id      text NOT NULL,
            jid              text,
            pairing_phone    text,
            announced_queue  text,
            ended            jsonb,
            since            timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pool, company_id)
        );
        CREATE INDEX session_holds_holder ON session_holds (holder);
        CREATE TABLE incoming_spool (
            id           bigserial PRIMARY KEY,
            owner        text NOT NULL,
            company_id   text NOT NULL,
            chat         text NOT NULL,
            message_id   text NOT NULL,
            payload      jsonb NOT NULL,
            received_at  timestamptz NOT NULL DEFAULT now(),
            attempts     integer NOT NULL DEFAULT 0,
            last_error   text
        );
        CREATE INDEX incoming_spool_owner ON incoming_spool (owner, id);
        CREATE INDEX incoming_spool_chat ON incoming_spool (company_id, chat, id);
        """,
    ),
    (
        110,
        "failed incoming messages waiting for an operator",
        # A message whose handler failed for the whole retry window (issue #15.1). Temporal's
        # retention cannot be the only copy: the row stays until an operator redelivers or
        # discards it (then it is deleted and the audit table says who did what).
        """
        CREATE TABLE failed_messages (
            company_id       text NOT NULL,
            message_id       text NOT NULL,
            chat             text NOT NULL,
            message          jsonb NOT NULL,
            error            text NOT NULL,
            claim            text NOT NULL,
            workflow_id      text NOT NULL,
            attempts         integer NOT NULL DEFAULT 1,
            failed_at        timestamptz NOT NULL DEFAULT now(),
            last_attempt_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (company_id, message_id)
        );
        CREATE INDEX failed_messages_failed_at ON failed_messages (failed_at);
        """,
    ),
    (
        120,
        "media: stored media of sends and incoming messages, the simulator's media servers",
        # media (issue #11): one row per media a send carried or an incoming message brought; the bytes
        # are in the blob store under their sha256 (storage/blobs.py), shared by rows with the same
        # content. ``source`` is the transport's download key while the download is pending (it never
        # goes to Temporal). sim_media: what the simulator's phones sent, as WhatsApp's media servers
        # would keep it (any connector may download it). transport_outbox.media: what a media send
        # of the test transports carried.
        """
        CREATE TABLE media (
            company_id  text NOT NULL,
            id          text NOT NULL,
            direction   text NOT NULL,
            kind        text NOT NULL,
            state       text NOT NULL,
            mimetype    text,
            size        bigint,
            sha256      text,
            caption     text,
            filename    text,
            message_id  text,
            chat        text,
            source      text,
            error       text,
            attempts    integer NOT NULL DEFAULT 0,
            created_at  timestamptz NOT NULL DEFAULT now(),
            stored_at   timestamptz,
            PRIMARY KEY (company_id, id)
        );
        CREATE INDEX media_created_at ON media (created_at);
        CREATE INDEX media_sha256 ON media (sha256);
        CREATE TABLE sim_media (
            ref            text PRIMARY KEY,
            data           bytea NOT NULL,
            failures_left  integer NOT NULL DEFAULT 0,
            created_at     timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE transport_outbox ADD COLUMN IF NOT EXISTS media jsonb;
        """,
    ),
    (
        130,
        "message status, company proxy, what the test transports were asked to do",
        # message_status: the latest status of each sent message (issue 11.3), moved only forward by
        # the server ack and the receipts, with when each step happened; rows not changed for
        # MESSAGE_STATUS_MAX_AGE_DAYS are deleted by the cleanup job. companies.proxy_url: the
        # company's outbound proxy (issue 11.7; a secret, never answered or logged unmasked).
        # transport_actions: what the simulator and the model of neonize's client were asked to do
        # besides sending text (read marks, presence, reactions, lookups, the proxy of each dial), for
        # tests, like transport_outbox.
        """
        CREATE TABLE message_status (
            company_id    text NOT NULL,
            message_id    text NOT NULL,
            chat          text,
            status        text NOT NULL,
            ack           smallint NOT NULL,
            server_at     timestamptz,
            delivered_at  timestamptz,
            read_at       timestamptz,
            played_at     timestamptz,
            updated_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (company_id, message_id)
        );
        CREATE INDEX message_status_updated ON message_status (updated_at);
        ALTER TABLE companies ADD COLUMN IF NOT EXISTS proxy_url text;
        CREATE TABLE IF NOT EXISTS transport_actions (
            id          bigserial PRIMARY KEY,
            company_id  text NOT NULL,
            transport   text NOT NULL,
            kind        text NOT NULL,
            chat        text,
            detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
            at          timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS transport_actions_company ON transport_actions (company_id, id);
        """,
    ),
]


async def migrate(db: Database) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied now."""
    applied: list[int] = []
    async with db.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(version)
            log.info("db migrated version=%d name=%s where=%s", version, name, db.where)
    return applied
