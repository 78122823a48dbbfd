"""Child processes that run with a given :class:`Settings`: a connector or a worker started by a
test or a benchmark exactly as ``waorch connector`` / ``waorch worker`` would be started by hand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from domain.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings, temporal_target: str, **overrides: str) -> dict[str, str]:
    """``os.environ`` plus every field of ``settings`` as its variable (secrets unwrapped), the
    Temporal address, and ``overrides`` last."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or isinstance(value, dict | list):
            continue
        env[name.upper()] = str(value)
    env.update(TEMPORAL_ADDRESS=temporal_target, LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
    env.update(overrides)
    return env


class ServiceProcess:
    """A real ``python -m cli.main <command>`` process (connector, worker, api) with the given settings."""

    def __init__(self, settings: Settings, command: str, name: str, log_dir: Path, temporal_target: str,
                 *, cwd: Path = REPO, **env_overrides: str) -> None:
        self.command = command
        self.name = name
        self.cwd = cwd
        self.env = settings_env(settings, temporal_target, DATA_DIR=str(log_dir), LOG_LEVEL="INFO",
                                PYTHONPATH=str(cwd), **env_overrides)
        self.log_path = log_dir / f"{command}-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", self.command],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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


class ConnectorProcess(ServiceProcess):
    """A real connector process (``python -m cli.main connector``) with the given settings."""

    def __init__(self, settings: Settings, connector_id: str, log_dir: Path, temporal_target: str,
                 *, cwd: Path = REPO, **env_overrides: str) -> None:
        # Every setting as the caller's (the connector starts stored companies' workflows itself
        # with the same tunables), only its own id and log dir differ.
        super().__init__(settings, "connector", connector_id, log_dir, temporal_target, cwd=cwd,
                         CONNECTOR_ID=connector_id, **env_overrides)
        self.connector_id = connector_id
        self.queue = f"{settings.temporal_connector_queue}.{connector_id}"

    def start(self) -> ConnectorProcess:
        super().start()
        return self
