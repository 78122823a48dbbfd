"""Process plumbing shared by worker, connector and api: logging, Temporal and Redis clients, Sentry."""
