"""PostgreSQL access for the project's own tables: pool, retry policy (SPEC D2), migrations (D1)."""

from storage.db import Database, RetryPolicy, is_transient
from storage.migrations import MIGRATIONS, migrate

__all__ = ["MIGRATIONS", "Database", "RetryPolicy", "is_transient", "migrate"]
