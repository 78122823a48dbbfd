"""The launcher's log files, rotated by size (issue #15.4): ``DATA_DIR/logs/<child>.log``.

``waorch up`` pipes each child's output (and the embedded Temporal's) through a
:class:`RotatingLogFile`: past ``LOG_MAX_BYTES`` the file becomes ``<name>.1``,
``<name>.1`` becomes ``<name>.2`` and so on, and only ``LOG_BACKUP_COUNT`` old files
are kept. Rotation happens between lines, so a line is never split across files.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import IO

log = logging.getLogger("waorch.stack")


class RotatingLogFile:
    """An append-only log file that rotates by size and keeps ``backups`` old files."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")
        self._size = self._file.tell()

    def rotated(self) -> list[Path]:
        """The old files that exist now, newest first."""
        return [p for i in range(1, self.backups + 1) if (p := self._old(i)).exists()]

    def _old(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            self._old(self.backups).unlink(missing_ok=True)
            for i in range(self.backups - 1, 0, -1):
                if self._old(i).exists():
                    self._old(i).replace(self._old(i + 1))
            self.path.replace(self._old(1))
        self._file = open(self.path, "ab")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def follow(self, stream: IO[bytes], name: str) -> threading.Thread:
        """Copy ``stream`` (a child's stdout) into this file, line by line, until it closes."""

        def pump() -> None:
            try:
                for line in iter(stream.readline, b""):
                    self.write(line)
            except (OSError, ValueError) as exc:  # the file closed under us at shutdown
                log.debug("log pump ended name=%s error=%s", name, type(exc).__name__)
            finally:
                stream.close()

        thread = threading.Thread(target=pump, name=f"log-{name}", daemon=True)
        thread.start()
        return thread
