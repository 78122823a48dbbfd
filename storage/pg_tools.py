"""Where the PostgreSQL 16 client and server programs of the ``pgserver`` wheel live.

Both the launcher (the embedded server: initdb, pg_ctl, psql) and the backup
activities (pg_dump, pg_restore) use them, so they are found here rather than
in either.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def pg_program(name: str) -> Path:
    """The path of one program of the bundled PostgreSQL (found without importing ``pgserver``,
    whose import has side effects nothing here needs)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pgserver wheel is not installed; pip install the project or set DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name


def pg_bin_dir() -> Path:
    """The bundled PostgreSQL 16 ``bin`` directory."""
    return pg_program("pg_dump").parent
