"""Structured logs: one line per event, key=value, never a secret."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", component: str = "waorch") -> None:
    fmt = f"%(asctime)s level=%(levelname)s component={component} logger=%(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Temporal's own worker logs are chatty at INFO; keep them to warnings.
    logging.getLogger("temporalio").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request's full URL at INFO, and the Telegram Bot API's URL holds the bot token.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
