"""One settings object for every process (SPEC O4), read from the environment.

Every field is documented in ``.env.example``. Secrets are ``SecretStr`` so
they never appear in a repr, a log line or a traceback.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

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

    # PostgreSQL. DATABASE_URL wins; else DB_* parts (password URL-encoded for you);
    # else the embedded server.
    database_url: SecretStr | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_user: str = "postgres"
    db_password: SecretStr = SecretStr("")
    db_name: str = "waorch"
    db_pool_max: int = Field(default=10, ge=1, le=200)

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
    connector_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    qr_first_timeout_s: float = Field(default=60.0, gt=0)
    qr_next_timeout_s: float = Field(default=20.0, gt=0)
    qr_total_timeout_s: float = Field(default=160.0, gt=0)
    hold_heartbeat_timeout_s: float = Field(default=20.0, ge=2)

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
    sentry_dsn: SecretStr | None = None

    # Sending (SPEC M2).
    rate_limit_count: int = Field(default=30, ge=1)
    rate_limit_window_s: float = Field(default=60.0, gt=0)
    # DEFAULT_PHONE_REGION: numbers without a leading + are read in this region first ("RU": 8 999…,
    # 999… → 7999…); unset → they are read as international digits only.
    default_phone_region: str | None = None

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

    @field_validator("connector_id")
    @classmethod
    def _connector_id_is_queue_safe(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or len(value) > 100:
            raise ValueError("CONNECTOR_ID must be 1-100 characters without spaces")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("BACKOFF_CAP_S must be >= BACKOFF_BASE_S")
        if self.environment == "production" and self.api_admin_key is None:
            raise ValueError("API_ADMIN_KEY must be set in production")
        if self.api_admin_key is not None and len(self.api_admin_key.get_secret_value()) < 16:
            raise ValueError("API_ADMIN_KEY must be at least 16 characters")
        return self

    @cached_property
    def resolved_backup_dir(self) -> Path:
        return self.backup_dir or self.data_dir / "backups"

    @property
    def connector_own_queue(self) -> str:
        """The task queue only this connector polls (sends, logouts, simulator controls)."""
        return f"{self.temporal_connector_queue}.{self.connector_id}"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port or 7233}"

    @property
    def database_dsn(self) -> str:
        """The DSN to connect with. Secret: never log it."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.db_host:
            return build_database_url(
                self.db_user, self.db_password.get_secret_value(), self.db_host, self.db_port, self.db_name
            )
        return build_database_url("postgres", "", "127.0.0.1", self.postgres_port, self.db_name)

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
    def uses_embedded_temporal(self) -> bool:
        return self.temporal_address is None

    def redacted(self) -> dict[str, object]:
        """Settings as a dict safe to print: secrets shown as ``**********``."""
        return {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in self.model_dump().items()}
