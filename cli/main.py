"""``waorch``: the launcher and the operator's command line (SPEC O7)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from cli.commands import add_commands, run_command
from domain.settings import Settings
from infra.logs import setup_logging
from infra.sentry import init_sentry

OPERATOR_COMMANDS = frozenset({"sessions", "send", "jobs", "schedules", "keys", "doctor", "inbox", "onboarding-links"})
EXIT_CONFIG = 78  # sysexits EX_CONFIG: the configuration cannot work; restarting will not help


def _run_api(settings: Settings) -> int:
    import uvicorn

    from api.app import create_app

    uvicorn.run(
        create_app(settings), host=settings.api_host, port=settings.api_port,
        log_level=settings.log_level.lower(), access_log=False,
    )
    return 0


def _exit_now(code: int) -> None:
    """Leave at once with ``code``, logs flushed, without interpreter finalization."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="waorch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the whole stack (Temporal, PostgreSQL, Redis, connector, worker, api)")
    sub.add_parser("worker", help="run the workflow worker against configured services")
    sub.add_parser("connector", help="run the WhatsApp connector against configured services")
    sub.add_parser("api", help="run the HTTP API against configured services")
    restore = sub.add_parser("restore", help="replace the configured database with a verified backup "
                                             "(docs/disaster-recovery.md)")
    restore.add_argument("backup", help="a backup file (path or name in BACKUP_DIR / BACKUP_COPY_DIR) or 'latest'")
    restore.add_argument("--force", action="store_true",
                         help="restore even while sessions are held, or when Temporal cannot be asked")
    add_commands(sub)
    args = parser.parse_args(argv)

    settings = Settings()
    if args.command in OPERATOR_COMMANDS:
        return run_command(args, settings)
    setup_logging(settings.log_level, component=args.command)
    if args.command in ("worker", "connector"):  # the api inits Sentry in create_app (SPEC H5)
        init_sentry(settings, args.command)
    if args.command == "up":
        from cli.stack import run_stack

        return asyncio.run(run_stack(settings))
    from infra.temporal import TemporalConfigError  # not before: operator commands need no Temporal SDK

    try:
        if args.command == "worker":
            from activities.worker import run_worker

            asyncio.run(run_worker(settings))
            return 0
        if args.command == "connector":
            from connector.main import run_connector

            code = asyncio.run(run_connector(settings))
            # neonize's threads of pairings that ended without a device never return (FetchMe), and they
            # are not daemon threads: once the connector has closed everything, leave without them.
            _exit_now(code)
    except TemporalConfigError as exc:
        # Wrong certificates or key: no restart can fix it (systemd: RestartPreventExitStatus=78).
        logging.getLogger(f"waorch.{args.command}").error("cannot start: %s", exc)
        # Exit without interpreter finalization: the SDK's core threads, left from the failed connect,
        # can abort a finalizing interpreter (SIGABRT in PyGILState_Release) and hide the 78.
        _exit_now(EXIT_CONFIG)
    if args.command == "api":
        return _run_api(settings)
    if args.command == "restore":
        from cli.restore import run_restore

        return run_restore(settings, args.backup, args.force)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
