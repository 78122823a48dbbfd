"""A real `waorch up` in a subprocess, on free ports and its own data dir, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cli.embedded import free_port


class StackProcess:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.extra_env = env
        self.ports = {
            "TEMPORAL_PORT": free_port(),
            "TEMPORAL_UI_PORT": free_port(),
            "POSTGRES_PORT": free_port(),
            "REDIS_PORT": free_port(),
            "API_PORT": free_port(),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    @property
    def temporal(self) -> str:
        return f"127.0.0.1:{self.ports['TEMPORAL_PORT']}"

    def start(self) -> float:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "API_ADMIN_KEY"}}
        env.update({k: str(v) for k, v in self.ports.items()})
        env.update(DATA_DIR=str(self.data_dir), WA_TRANSPORT="simulator", LOG_LEVEL="WARNING")
        env.update(self.extra_env)
        self.log = self.data_dir.parent / f"up-{uuid.uuid4().hex[:6]}.log"
        started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "up"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        deadline = started + 90
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "Ctrl-C stops everything" in text:
                self.output = text.splitlines(keepends=True)
                return time.monotonic() - started
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("stack did not come up:\n" + self.log.read_text()[-4000:])

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code



    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def cli_env(self) -> dict[str, str]:
        """Environment for `waorch <command>` against this stack."""
        env = {k: v for k, v in os.environ.items() if k not in {"API_ADMIN_KEY"}}
        env.update(DATA_DIR=str(self.data_dir), API_PORT=str(self.ports["API_PORT"]))
        return env

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
