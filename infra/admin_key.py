"""The development admin key: generated once, kept 0600 in the data dir (SPEC X1)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "admin.key"


def load_or_create_admin_key(data_dir: Path) -> tuple[str, bool]:
    """Return ``(key, created_now)``; the file is created with mode 0600 atomically."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    key = "wa_admin_" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key, True
