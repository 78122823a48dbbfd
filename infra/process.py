"""Signal handling shared by the long-running processes."""

from __future__ import annotations

import asyncio
import signal


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C): the graceful-shutdown trigger."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
