"""A real connector process (``python -m cli.main connector``) for restart tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from domain.settings import Settings


class ConnectorProcess:
    def __init__(self, settings: Settings, connector_id: str, log_dir: Path, temporal_target: str) -> None:
        self.connector_id = connector_id
        self.queue = f"{settings.temporal_connector_queue}.{connector_id}"
        env = dict(os.environ)
        env.update(
            TEMPORAL_ADDRESS=temporal_target,
            TEMPORAL_NAMESPACE=settings.temporal_namespace,
            TEMPORAL_CORE_QUEUE=settings.temporal_core_queue,
            TEMPORAL_CONNECTOR_QUEUE=settings.temporal_connector_queue,
            DATABASE_URL=settings.database_dsn,
            REDIS_URL=settings.redis_dsn,
            REDIS_PREFIX=settings.redis_prefix,
            CONNECTOR_ID=connector_id,
            WA_TRANSPORT="simulator",
            ENVIRONMENT="test",
            DATA_DIR=str(log_dir),
            LOG_LEVEL="INFO",
            # The connector starts stored companies' workflows itself: same tunables as the test's.
            HOLD_HEARTBEAT_TIMEOUT_S=str(settings.hold_heartbeat_timeout_s),
            BACKOFF_BASE_S=str(settings.backoff_base_s),
            BACKOFF_CAP_S=str(settings.backoff_cap_s),
            ALERT_GRACE_S=str(settings.alert_grace_s),
        )
        self.env = env
        self.log_path = log_dir / f"connector-{connector_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "connector"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]
