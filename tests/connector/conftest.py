from tests.sessions.conftest import company_id, ts_stack  # noqa: F401  (shared fixtures)
