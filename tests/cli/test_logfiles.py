"""The launcher's log files rotate by size and keep a bounded number of old files (issue #15.4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli.logfiles import RotatingLogFile
from domain.settings import Settings


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_writing_past_the_limit_rotates_and_keeps_only_the_configured_number(tmp_path: Path) -> None:
    log = RotatingLogFile(tmp_path / "worker.log", max_bytes=1000, backups=2)
    lines = [f"line {i:04d} " + "x" * 88 + "\n" for i in range(50)]  # 100 bytes each: 5 files' worth
    for line in lines:
        log.write(line.encode())
    log.close()

    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["worker.log", "worker.log.1", "worker.log.2"]  # no .3: only 2 kept
    assert all(f.stat().st_size <= 1000 for f in files)
    kept = _lines(tmp_path / "worker.log.2") + _lines(tmp_path / "worker.log.1") + _lines(tmp_path / "worker.log")
    assert kept == [line.rstrip("\n") for line in lines[-len(kept):]]  # the newest lines, whole, in order
    assert kept[-1].startswith("line 0049") and len(kept) == 30


def test_a_child_output_piped_through_it_rotates(tmp_path: Path) -> None:
    log = RotatingLogFile(tmp_path / "api.log", max_bytes=64 * 1024, backups=1)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor i in range(3000): print(f'{i:05d} ' + 'y' * 94)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert child.stdout is not None
    pump = log.follow(child.stdout, "api")
    assert child.wait(30) == 0
    pump.join(10)
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.log", "api.log.1"]
    assert (tmp_path / "api.log").stat().st_size <= 64 * 1024
    assert _lines(tmp_path / "api.log")[-1].startswith("02999 ")  # nothing lost at the end


def test_limits_are_settings_with_sane_defaults() -> None:
    s = Settings(_env_file=None)
    assert (s.log_max_bytes, s.log_backup_count) == (10 * 1024 * 1024, 5)
    assert Settings(_env_file=None, log_max_bytes=2048, log_backup_count=0).log_backup_count == 0
