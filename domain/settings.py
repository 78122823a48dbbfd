"""One settings object for every process (SPEC O4), read from the environment.

Every field is documented in ``.env.example``. Secrets are ``SecretStr`` so
they never appear in a repr, a log line or a traceback.
"""

from __future__ import annotations

import socket
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def build_database_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """A PostgreSQL URL with user and password percent-encoded (SPEC D4)."""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@{host}:{port}/{quote(database, safe='')}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    # `waorch up` writes each process's output to DATA_DIR/logs/<name>.log, rotated past LOG_MAX_BYTES;
    # LOG_BACKUP_COUNT old files (<name>.log.1 …) are kept.
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backup_count: int = Field(default=5, ge=0)

    # Temporal. Unset address → the launcher runs the embedded dev server.
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_core_queue: str = "wa-core"
    temporal_connector_queue: str = "connector"
    # Production Temporal (Temporal Cloud, a TLS-secured cluster). The same variables the `temporal`
    # CLI reads. TLS is on when TEMPORAL_TLS is true, or unset and any TEMPORAL_TLS_* setting or the API
    # key is given; no TEMPORAL_TLS_CA → the system's trusted roots. CERT + KEY make it mTLS.
    temporal_tls: bool | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    # TEMPORAL_SDK_METRICS_PORT: this process serves the Temporal SDK's Prometheus metrics (task
    # slots, poll and schedule-to-start latency) on TEMPORAL_SDK_METRICS_HOST:port; unset → off.
    temporal_sdk_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    temporal_sdk_metrics_host: str = "127.0.0.1"
    # Base URL of the Temporal Web UI, for the links of the operator page (/dashboard). Unset: `waorch up`
    # passes its embedded dev server's UI; an API of its own on the default dev server assumes
    # 127.0.0.1:TEMPORAL_UI_PORT (8233); with TEMPORAL_ADDRESS set and this unset the page shows no link.
    temporal_ui_url: str | None = None

    # PostgreSQL. DATABASE_URL wins; else DB_* parts (password URL-encoded for you);
    # else the embedded server.
    database_url: SecretStr | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_user: str = "postgres"
    db_password: SecretStr = SecretStr("")
    db_name: str = "waorch"
    db_pool_max: int = Field(default=10, ge=1, le=200)
    # TLS of the DB_* connection (libpq's sslmode, sslrootcert, sslcert, sslkey); with DATABASE_URL
    # put them in its query string instead (…/waorch?sslmode=verify-full&sslrootcert=/etc/…/ca.pem).
    db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    db_sslrootcert: Path | None = None
    db_sslcert: Path | None = None
    db_sslkey: Path | None = None

    # Redis. Unset → embedded redis-server.
    redis_url: SecretStr | None = None
    redis_prefix: str = ""

    # Ports of the embedded servers and the API. TEMPORAL_PORT / TEMPORAL_UI_PORT
    # override temporal-dev.yaml (useful to run a second stack beside the first).
    temporal_port: int | None = None
    temporal_ui_port: int | None = None
    postgres_port: int = 55432
    redis_port: int = 56379
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_admin_key: SecretStr | None = None
    public_url: str | None = None

    # WhatsApp.
    wa_transport: Literal["neonize", "simulator"] = "neonize"
    # Stable across restarts (the default is the host name): a restarted connector takes its own sessions
    # back on the same queue without telling Temporal. Two live connectors may not share one id.
    connector_id: str = Field(default_factory=socket.gethostname)
    qr_first_timeout_s: float = Field(default=60.0, gt=0)
    qr_next_timeout_s: float = Field(default=20.0, gt=0)
    qr_total_timeout_s: float = Field(default=160.0, gt=0)
    # Connector liveness (README "Connector liveness"): each connector renews a lease in PostgreSQL and
    # in Redis every LEASE_RENEW_S; a lease lives LEASE_TTL_S in each store; a connector that renewed in
    # neither store for LEASE_FENCE_S exits (its sockets close); a peer takes its sessions over once
    # the lease has been expired in both stores for LEASE_FENCE_S + 1.5 s.
    lease_renew_s: float = Field(default=1.0, gt=0)
    lease_ttl_s: float = Field(default=4.0, gt=0)
    lease_fence_s: float = Field(default=4.0, gt=0)
    # A peer on this machine whose process is gone is declared dead at once (its sockets are closed);
    # off, a SIGKILL is detected like one on another host, by the lease alone (bench/scale.py uses that).
    lease_local_process_check: bool = True
    # A hold request waits this long for a live connector to take it before it counts as failed.
    hold_start_timeout_s: float = Field(default=60.0, ge=5)
    connector_max_sessions: int = Field(default=5000, ge=1)
    # The simulated phone side on loopback HTTP (connector/phone_side.py): tests and fault runs only.
    phone_side_port: int | None = None
    # Incoming messages spooled in PostgreSQL and not yet handed to Temporal: past this many a
    # connector stops taking new ones from WhatsApp until the spool drains (backpressure, not loss).
    spool_max_pending: int = Field(default=100_000, ge=10)
    # Session workflows the worker keeps in memory (each one not cached is replayed on its next task).
    worker_max_cached_workflows: int = Field(default=10_000, ge=100)
    # NEONIZE_CLIENT: "neonize" (the real library) or "model" (connector.whatsmeow_model, a model of
    # neonize's client for tests and fault-injection benchmarks; refused in production).
    neonize_client: Literal["neonize", "model"] = "neonize"
    # A client start holds the Go gate until Go has loaded the device on its store connection (seen in
    # pg_stat_activity), at most this long.
    neonize_start_settle_s: float = Field(default=5.0, gt=0, le=60)
    # A stop waits this long for whatsmeow to give up a dial in flight (the client must be dead first).
    neonize_stop_timeout_s: float = Field(default=75.0, gt=0)
    # After a scan, the 515 restart must bring "connected" within this.
    neonize_paired_connect_timeout_s: float = Field(default=60.0, gt=0)
    # Keepalive timeouts are tolerated this long (whatsmeow restores or reconnects by itself), then a drop.
    neonize_keepalive_grace_s: float = Field(default=200.0, gt=0)
    # The connector drains (hands its sessions on, exits non-zero, the launcher restarts it) when its
    # whatsmeow store holds this many PostgreSQL connections (each connect() leaves one open) ...
    neonize_store_max_connections: int = Field(default=200, ge=2)
    # ... or when this many client threads never returned (neonize's FetchMe wait).
    connector_leak_threshold: int = Field(default=50, ge=1)

    # Health (SPEC H1): a probe not answering within HEALTH_PROBE_TIMEOUT_S is down; one answering slower
    # than HEALTH_PROBE_SLOW_S is degraded. A task-queue poller (worker, connector) not seen by Temporal
    # for POLLER_STALE_S is gone (an idle worker re-polls about once a minute).
    health_probe_timeout_s: float = Field(default=5.0, gt=0)
    health_probe_slow_s: float = Field(default=1.0, gt=0)
    poller_stale_s: float = Field(default=120.0, gt=0)
    # The API's infrastructure watchdog (alerts when Temporal, PostgreSQL, Redis, the worker or every
    # connector has been down longer than WATCHDOG_GRACE_S, once more when back; and on an inbox
    # backlog: a message queued longer than INBOX_BACKLOG_ALERT_S).
    watchdog_enabled: bool = True
    watchdog_interval_s: float = Field(default=15.0, gt=0)
    watchdog_grace_s: float = Field(default=60.0, ge=0)
    inbox_backlog_alert_s: float = Field(default=600.0, gt=0)

    # Reconnection (SPEC S3) and alerts (SPEC H4).
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)
    backoff_max_attempts: int = Field(default=20, ge=1)
    alert_grace_s: float = Field(default=10.0, ge=0)
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    # TELEGRAM_API_URL: the Bot API's base URL (a local Bot API server, a proxy, or a test's stand-in).
    telegram_api_url: str = Field(default="https://api.telegram.org", pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    sentry_dsn: SecretStr | None = None

    # Sending (SPEC M2).
    rate_limit_count: int = Field(default=30, ge=1)
    rate_limit_window_s: float = Field(default=60.0, gt=0)
    # DEFAULT_PHONE_REGION: numbers without a leading + are read in this region first ("RU": 8 999…,
    # 999… → 7999…); unset → they are read as international digits only.
    default_phone_region: str | None = None

    # Message status, chat actions, number checks, "connected but dead" (issue 11.3-11.8).
    # ACK_TIMEOUT_S: a sent message WhatsApp's server has not acknowledged in this long makes the session
    # `degraded`; it is re-held once, and if that does not help an alert goes out after ALERT_GRACE_S.
    ack_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # MESSAGE_STATUS_MAX_AGE_DAYS: the latest status of each sent message is kept this long after its last
    # change; the cleanup job deletes older rows (dry-run and report like the key cleanup).
    message_status_max_age_days: int = Field(default=30, ge=1)
    # Number checks (GET …/contacts/{phone}): their own sliding window, stricter than sends (bulk checks get
    # numbers banned), and each answer cached this long (0: not cached; a cached answer uses no slot).
    contact_check_limit_count: int = Field(default=10, ge=1)
    contact_check_window_s: float = Field(default=60.0, gt=0)
    contact_check_cache_s: int = Field(default=86400, ge=0)
    # The send option {"typing": true}: "typing…" for the text's length at this many characters per second,
    # at least SEND_TYPING_MIN_S and at most SEND_TYPING_MAX_S, before the text goes out.
    send_typing_chars_per_s: float = Field(default=15.0, gt=0)
    send_typing_min_s: float = Field(default=1.0, ge=0)
    send_typing_max_s: float = Field(default=8.0, gt=0, le=20)

    # Nightly jobs (SPEC B1-B3).
    backup_dir: Path | None = None
    # BACKUP_COPY_DIR: a second place (e.g. a mounted network share) each verified backup is copied to and
    # checked at; unset → none.
    backup_copy_dir: Path | None = None
    # RESTORE_RTO_TARGET_S: a restore test slower than this alerts.
    restore_rto_target_s: float = Field(default=600.0, gt=0)
    backup_keep_daily: int = Field(default=7, ge=1)
    backup_keep_monthly: int = Field(default=4, ge=0)
    backup_cron: str = "0 3 * * *"
    cleanup_cron: str = "30 3 * * *"
    restore_test_cron: str = "0 4 1 * *"
    cleanup_max_age_days: int = Field(default=30, ge=1)
    # PG_BIN_DIR: where pg_dump / pg_restore live; unset → the embedded PostgreSQL 16 tools of the
    # pgserver wheel. A pg_dump older than the server's major version is refused (SPEC B1).
    pg_bin_dir: Path | None = None
    # BACKUP_TIMEOUT_S: one pg_dump + verify (or restore test) may take at most this long.
    backup_timeout_s: float = Field(default=3600.0, gt=0)
    # CLEANUP_WARN_ROWS: a cleanup that would delete more rows than this alerts (SPEC B3).
    cleanup_warn_rows: int = Field(default=1000, ge=0)
    # PRIVACY_TOKEN_MAX_AGE_DAYS: whatsmeow privacy tokens older than this are expired.
    privacy_token_max_age_days: int = Field(default=28, ge=1)
    # WORKER_METRICS_PORT: the worker serves its job metrics (Prometheus text) here; unset → off.
    worker_metrics_port: int | None = None

    # Incoming messages (SPEC M4, E2): the handler of a company without its own (companies.handler),
    # the webhook delivery (timeouts, retry window with Temporal backoff) and the inbox workflow's bounds.
    inbox_default_handler: Literal["none", "echo", "webhook", "callable"] = "none"
    inbox_default_webhook_url: str | None = None
    inbox_default_webhook_secret: SecretStr | None = None
    inbox_default_callable: str | None = None  # "package.module:function"
    inbox_webhook_connect_timeout_s: float = Field(default=5.0, gt=0)
    inbox_webhook_timeout_s: float = Field(default=10.0, gt=0)
    # INBOX_RETRY_WINDOW_S: a handler that keeps failing this long leaves the message waiting for an operator.
    inbox_retry_window_s: float = Field(default=3600.0, gt=0)
    inbox_retry_initial_s: float = Field(default=1.0, gt=0)
    inbox_retry_max_interval_s: float = Field(default=60.0, gt=0)
    # A reply waits this long for a connected session (and the rate limit) before it is given up.
    inbox_reply_window_s: float = Field(default=600.0, gt=0)
    # The per-chat inbox workflow completes after this long without a message, and continues as new
    # after this many messages; it remembers this many recent message ids to drop redeliveries.
    inbox_idle_s: float = Field(default=300.0, gt=0)
    inbox_max_messages_per_run: int = Field(default=500, ge=1)
    inbox_seen_ids: int = Field(default=2000, ge=1)
    # A handled WhatsApp id stays claimed (a Redis key with this TTL) so a redelivery after the inbox
    # went idle is dropped too; keys expire, so Redis does not grow per message beyond this window.
    inbox_claim_ttl_s: int = Field(default=86400, ge=60)
    # Failed messages wait for an operator; while any remain, this schedule (UTC) reminds once a day.
    failed_messages_reminder_cron: str = "0 8 * * *"

    # Media (issue #11). Sends: the largest file of each kind (413 past it), read from a URL with these
    # timeouts, following at most MEDIA_FETCH_MAX_REDIRECTS; private, loopback, link-local, multicast and
    # reserved addresses are refused unless in MEDIA_FETCH_ALLOWED_NETWORKS (comma-separated CIDRs).
    media_max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    media_max_video_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    media_max_audio_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    media_max_voice_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    media_max_document_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    media_max_sticker_bytes: int = Field(default=500 * 1024, ge=1024)
    media_fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    media_fetch_timeout_s: float = Field(default=30.0, gt=0)
    media_fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    media_fetch_allowed_networks: str = ""
    # A media send (read from the store, uploaded to WhatsApp) may take this long before it is a 504.
    media_send_timeout_s: float = Field(default=120.0, gt=0)
    # Incoming: media larger than this are not downloaded (the message is delivered, the media "failed").
    media_incoming_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # One download attempt may take MEDIA_DOWNLOAD_TIMEOUT_S; failed ones are retried with backoff for
    # MEDIA_DOWNLOAD_WINDOW_S, then the message goes to the handler with its media "failed".
    media_download_timeout_s: float = Field(default=120.0, gt=0)
    media_download_window_s: float = Field(default=300.0, gt=0)
    # Where media live: "local" (MEDIA_DIR, default DATA_DIR/media, content-addressed) or "s3" (an
    # S3-compatible bucket; credentials from the usual AWS_* variables; needs the [s3] extra).
    media_store: Literal["local", "s3"] = "local"
    media_dir: Path | None = None
    media_s3_bucket: str | None = None
    media_s3_prefix: str = "media/"
    media_s3_endpoint_url: str | None = None
    media_s3_region: str | None = None
    # The nightly cleanup removes media (sent and received) older than this.
    media_max_age_days: int = Field(default=30, ge=1)

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"DEFAULT_PHONE_REGION {value!r} is not a region code phonenumbers knows (e.g. RU, DE)")
        return region

    @field_validator("media_fetch_allowed_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            if part:
                try:
                    ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(
                        f"MEDIA_FETCH_ALLOWED_NETWORKS: {part!r} is not a network such as 10.0.0.0/8") from None
        return value

    @field_validator("temporal_ui_url")
    @classmethod
    def _temporal_ui_url_is_http(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
            raise ValueError("TEMPORAL_UI_URL must be an http(s) URL such as https://temporal.example.com")
        return value.strip().rstrip("/")

    @field_validator("connector_id")
    @classmethod
    def _connector_id_is_queue_safe(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or len(value) > 100:
            raise ValueError("CONNECTOR_ID must be 1-100 characters without spaces")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.lease_fence_s < 2 * self.lease_renew_s or self.lease_ttl_s < 2 * self.lease_renew_s:
            raise ValueError("LEASE_FENCE_S and LEASE_TTL_S must be at least twice LEASE_RENEW_S")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("BACKOFF_CAP_S must be >= BACKOFF_BASE_S")
        if self.send_typing_max_s < self.send_typing_min_s:
            raise ValueError("SEND_TYPING_MAX_S must be >= SEND_TYPING_MIN_S")
        if self.environment == "production" and self.phone_side_port is not None:
            raise ValueError("PHONE_SIDE_PORT is for tests and fault runs; it is refused in production")
        if self.environment == "production" and self.api_admin_key is None:
            raise ValueError("API_ADMIN_KEY must be set in production")
        if self.environment == "production" and self.neonize_client == "model":
            raise ValueError("NEONIZE_CLIENT=model is a test double of WhatsApp: refused when ENVIRONMENT=production")
        if self.api_admin_key is not None and len(self.api_admin_key.get_secret_value()) < 16:
            raise ValueError("API_ADMIN_KEY must be at least 16 characters")
        if self.media_store == "s3" and not self.media_s3_bucket:
            raise ValueError("MEDIA_STORE=s3 needs MEDIA_S3_BUCKET")
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mTLS): set both or neither")
        if self.temporal_tls is False and (self.temporal_tls_cert or self.temporal_tls_ca):
            raise ValueError("TEMPORAL_TLS=false contradicts TEMPORAL_TLS_CERT / TEMPORAL_TLS_CA")
        return self

    @cached_property
    def resolved_backup_dir(self) -> Path:
        return self.backup_dir or self.data_dir / "backups"

    @cached_property
    def resolved_media_dir(self) -> Path:
        return self.media_dir or self.data_dir / "media"

    @property
    def api_base_url(self) -> str:
        """Where clients reach this API: PUBLIC_URL, else API_HOST:API_PORT (media URLs in webhooks)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::", "") else self.api_host
        return f"http://{host}:{self.api_port}"

    def media_max_bytes(self, kind: str) -> int:
        """The size limit of one media kind (``MEDIA_MAX_<KIND>_BYTES``)."""
        value: int = getattr(self, f"media_max_{kind}_bytes")
        return value

    @property
    def media_fetch_networks(self) -> list[IPv4Network | IPv6Network]:
        return [ip_network(p.strip(), strict=False) for p in self.media_fetch_allowed_networks.split(",") if p.strip()]

    @property
    def connector_pool(self) -> str:
        """The connectors that adopt each other's holds: one Temporal namespace and connector queue."""
        return f"{self.temporal_namespace}/{self.temporal_connector_queue}"

    def typing_seconds(self, text: str) -> float:
        """How long the send option ``typing`` shows "typing…" before ``text`` goes out."""
        return min(self.send_typing_max_s, max(self.send_typing_min_s, len(text) / self.send_typing_chars_per_s))

    @property
    def connector_own_queue(self) -> str:
        """The task queue only this connector polls (sends, logouts, simulator controls)."""
        return f"{self.temporal_connector_queue}.{self.connector_id}"

    @property
    def temporal_ui_base_url(self) -> str | None:
        """Where the Temporal Web UI is, or None when nobody said (external Temporal, no TEMPORAL_UI_URL)."""
        if self.temporal_ui_url is not None:
            return self.temporal_ui_url
        if self.uses_embedded_temporal:
            return f"http://127.0.0.1:{self.temporal_ui_port or 8233}"
        return None

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port or 7233}"

    @property
    def database_dsn(self) -> str:
        """The DSN to connect with. Secret: never log it."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.db_host:
            url = build_database_url(
                self.db_user, self.db_password.get_secret_value(), self.db_host, self.db_port, self.db_name
            )
            tls = {
                "sslmode": self.db_sslmode, "sslrootcert": self.db_sslrootcert,
                "sslcert": self.db_sslcert, "sslkey": self.db_sslkey,
            }
            query = urlencode({k: str(v) for k, v in tls.items() if v is not None})
            return f"{url}?{query}" if query else url
        # The embedded server has no TLS: say so (whatsmeow's lib/pq requires TLS by default).
        return build_database_url("postgres", "", "127.0.0.1", self.postgres_port, self.db_name) + "?sslmode=disable"

    @property
    def redis_dsn(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def events_channel(self) -> str:
        from domain.events import EVENTS_CHANNEL

        return f"{self.redis_prefix}{EVENTS_CHANNEL}"

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None and not self.db_host

    @property
    def uses_embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def temporal_uses_tls(self) -> bool:
        if self.temporal_tls is not None:
            return self.temporal_tls
        tls_settings = (self.temporal_tls_cert, self.temporal_tls_ca, self.temporal_tls_server_name)
        return any(v is not None for v in tls_settings) or self.temporal_api_key is not None

    @property
    def uses_embedded_temporal(self) -> bool:
        return self.temporal_address is None

    def redacted(self) -> dict[str, object]:
        """Settings as a dict safe to print: secrets shown as ``**********``."""
        return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.model_dump().items()}
