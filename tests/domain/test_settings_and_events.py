from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from domain.events import Event, EventType
from domain.settings import Settings, build_database_url
from domain.states import SessionState


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "API_ADMIN_KEY", "WA_TRANSPORT"]:
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert (s.backoff_base_s, s.backoff_cap_s, s.backoff_max_attempts) == (1.0, 300.0, 20)
    assert (s.rate_limit_count, s.rate_limit_window_s) == (30, 60.0)
    assert s.alert_grace_s == 10.0
    assert s.cleanup_max_age_days == 30
    assert (s.backup_keep_daily, s.backup_keep_monthly) == (7, 4)
    assert s.backup_cron == "0 3 * * *" and s.cleanup_cron == "30 3 * * *"
    assert s.uses_embedded_postgres and s.uses_embedded_redis and s.uses_embedded_temporal
    assert s.events_channel == "whatsapp:events"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKOFF_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("WA_TRANSPORT", "simulator")
    monkeypatch.setenv("CONNECTOR_ID", "box-1")
    s = Settings(_env_file=None)
    assert s.backoff_max_attempts == 5
    assert s.wa_transport == "simulator"
    assert s.connector_own_queue == "connector.box-1"


def test_bad_settings_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKOFF_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError, match="backoff_max_attempts"):
        Settings(_env_file=None)
    monkeypatch.delenv("BACKOFF_MAX_ATTEMPTS")
    monkeypatch.setenv("WA_TRANSPORT", "baileys")
    with pytest.raises(ValidationError, match="wa_transport"):
        Settings(_env_file=None)
    monkeypatch.delenv("WA_TRANSPORT")
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("API_ADMIN_KEY", raising=False)
    with pytest.raises(ValidationError, match="API_ADMIN_KEY"):
        Settings(_env_file=None)


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.setenv("DB_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("API_ADMIN_KEY", "admin-key-0123456789abcdef")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:telegram-secret")
    s = Settings(_env_file=None)
    shown = repr(s) + str(s) + str(s.redacted())
    for secret in ["hunter2-very-secret", "admin-key-0123456789abcdef", "telegram-secret"]:
        assert secret not in shown
    # The DSN itself carries the password (it is what asyncpg needs): only never printed.
    assert s.database_dsn == "postgresql://postgres:hunter2-very-secret@db.internal:5432/waorch"


def test_database_url_encodes_special_characters() -> None:
    url = build_database_url("wa user", "p@ss:w/rd#%?&", "db.local", 5433, "waorch")
    assert url == "postgresql://wa%20user:p%40ss%3Aw%2Frd%23%25%3F%26@db.local:5433/waorch"


def test_event_wire_format_round_trips() -> None:
    when = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    ev = Event(type=EventType.CONNECTED, company_id="company_1", timestamp=when, data={"phone": "7999"})
    wire = ev.to_wire()
    assert wire == {"type": "connected", "companyId": "company_1", "timestamp": when.isoformat(), "phone": "7999",
                    "phoneNumber": "7999"}  # the old back end's name beside the new one
    assert Event.from_wire(wire) == ev


def test_states_are_the_spec_vocabulary() -> None:
    assert [s.value for s in SessionState] == [
        "starting", "qr", "connecting", "connected", "backoff",
        "replaced", "logged_out", "paused", "failed", "stopped",
        "degraded",  # an addition to S11 (issue 11.8): connected, sends not acknowledged
    ]
    assert {s for s in SessionState if s.holds_connection} == {SessionState.CONNECTED, SessionState.DEGRADED}
    assert not SessionState.DEGRADED.needs_operator and not SessionState.DEGRADED.is_healthy


def test_temporal_ui_url_is_checked_and_defaults_to_the_embedded_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["TEMPORAL_ADDRESS", "TEMPORAL_UI_URL", "TEMPORAL_UI_PORT"]:
        monkeypatch.delenv(name, raising=False)
    assert Settings(_env_file=None).temporal_ui_base_url == "http://127.0.0.1:8233"
    monkeypatch.setenv("TEMPORAL_UI_PORT", "18233")
    assert Settings(_env_file=None).temporal_ui_base_url == "http://127.0.0.1:18233"
    # Someone else's Temporal: no guess, the operator page shows no link until the URL is given.
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    assert Settings(_env_file=None).temporal_ui_base_url is None
    monkeypatch.setenv("TEMPORAL_UI_URL", "https://temporal.example.com/ui/")
    assert Settings(_env_file=None).temporal_ui_base_url == "https://temporal.example.com/ui"
    for bad in ["temporal.example.com", "ftp://temporal.example.com", "https://t.example.com/?x=1"]:
        monkeypatch.setenv("TEMPORAL_UI_URL", bad)
        with pytest.raises(ValidationError, match="TEMPORAL_UI_URL must be an http"):
            Settings(_env_file=None)
