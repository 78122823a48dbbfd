"""A real connector process (``python -m cli.main connector``) for restart tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from domain.settings import Settings
from tests.process_env import settings_env


class ConnectorProcess:
    def __init__(self, settings: Settings, connector_id: str, log_dir: Path, temporal_target: str) -> None:
        self.connector_id = connector_id
        self.queue = f"{settings.temporal_connector_queue}.{connector_id}"
        # Every setting as the test's (the connector starts stored companies' workflows itself
        # with the same tunables), only its own id and log dir differ.
        env = settings_env(settings, temporal_target, CONNECTOR_ID=connector_id, DATA_DIR=str(log_dir),
                           LOG_LEVEL="INFO")
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
