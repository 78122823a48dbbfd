"""Operator commands (SPEC O7): the same operations as the REST API, from a shell.

Every command is a call to the running API, so it goes through the same
validation, rate limits, auth and audit as any client. The key is taken from
``--key``, else ``API_ADMIN_KEY``, else the dev admin key in ``DATA_DIR/admin.key``.
Output is a readable table; ``--json`` prints the API's JSON for scripts.
Exit codes: 0 ok, 1 the API refused (its message is printed), 2 usage, 3 API unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from domain.settings import Settings
from infra.admin_key import KEY_FILE


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator commands on the ``waorch`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", help="API base URL (default: http://API_HOST:API_PORT)")
    common.add_argument("--key", help="API key (default: API_ADMIN_KEY or DATA_DIR/admin.key)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    sessions = sub.add_parser("sessions", help="list and steer company sessions").add_subparsers(
        dest="action", required=True
    )
    sessions.add_parser("list", parents=[common], help="every session with its state")
    for name, text in [
        ("status", "state, phone, holder, reconnect attempts"),
        ("relink", "reconnect with stored credentials (after 440 / failed)"),
        ("pause", "close the connection, keep credentials"),
        ("resume", "reconnect a paused session"),
        ("logout", "unlink the device and delete its credentials"),
        ("remove", "log out and end the session workflow"),
    ]:
        p = sessions.add_parser(name, parents=[common], help=text)
        p.add_argument("company_id")
    init = sessions.add_parser("init", parents=[common], help="start (or show) a session: QR or pairing code")
    init.add_argument("company_id")
    init.add_argument("--pairing-phone", help="link by pairing code to this phone instead of a QR")

    send = sub.add_parser("send", parents=[common], help="send a text message")
    send.add_argument("company_id")
    send.add_argument("to", help="phone number (+7999…) or JID (…@s.whatsapp.net, …@lid, …@g.us)")
    send.add_argument("message")
    send.add_argument("--idempotency-key", help="repeat a send safely (default: a new key)")

    jobs = sub.add_parser("jobs", help="nightly jobs on demand").add_subparsers(dest="action", required=True)
    run = jobs.add_parser("run", parents=[common], help="run a job now and wait for its result")
    run.add_argument("kind", choices=["backup", "restore-test", "cleanup"])
    dry = run.add_mutually_exclusive_group()
    dry.add_argument("--dry-run", dest="dry_run", action="store_true", default=None)
    dry.add_argument("--no-dry-run", dest="dry_run", action="store_false")
    run.add_argument("--verbose", action="store_true")
    runs = jobs.add_parser("runs", parents=[common], help="history of a job")
    runs.add_argument("kind", choices=["backup", "restore-test", "cleanup"])
    runs.add_argument("--limit", type=int, default=10)

    schedules = sub.add_parser("schedules", help="the Temporal Schedules of the jobs").add_subparsers(
        dest="action", required=True
    )
    schedules.add_parser("list", parents=[common])
    for name in ("trigger", "pause", "unpause"):
        schedules.add_parser(name, parents=[common]).add_argument("schedule_id")

    inbox = sub.add_parser("inbox", help="incoming messages that need a person").add_subparsers(
        dest="action", required=True)
    failed = inbox.add_parser("failed", help="messages whose handler failed: list, redeliver, discard")
    failed_actions = failed.add_subparsers(dest="failed_action", required=True)
    listing = failed_actions.add_parser("list", parents=[common], help="waiting messages, oldest first")
    listing.add_argument("--company", help="only this company")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (("redeliver", "run the company's handler on it again (and send its reply)"),
                       ("discard", "give it up (recorded in the audit)")):
        act = failed_actions.add_parser(name, parents=[common], help=text)
        act.add_argument("company_id")
        act.add_argument("message_id", nargs="?", help="one message (or --all)")
        act.add_argument("--all", action="store_true", help="every waiting message of the company, oldest first")

    links = sub.add_parser(
        "onboarding-links", parents=[common],
        help="cut-over: an onboarding link per company of a list, as CSV for one mail-merge",
        description="Reads company ids (one per line, or a CSV whose first column is the id; other columns, "
                    "such as an e-mail address, are carried into the output) and writes CSV: company_id, "
                    "onboarding_url, expires_at, error, then the input's other columns. Exit 1 if any row failed "
                    "(every row is still written).")
    links.add_argument("input", help="file of company ids, or - for stdin")
    links.add_argument("--output", help="write the CSV here (mode 0600: the links are credentials); default stdout")
    links.add_argument("--ttl-hours", type=float, default=168.0,
                       help="how long each link works (1-168 h; default 168: a week to act on the mail)")

    keys = sub.add_parser("keys", help="company API keys").add_subparsers(dest="action", required=True)
    keys.add_parser("issue", parents=[common], help="issue a key (shown once)").add_argument("company_id")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke one key, or every key of the company")
    revoke.add_argument("company_id")
    revoke.add_argument("key_id", nargs="?")

    from cli.doctor import add_doctor

    add_doctor(sub, common)


class Api:
    def __init__(self, base: str, key: str, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self._http = httpx.Client(base_url=self.base, timeout=timeout, headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, json=json_body, headers=headers,
                                      timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach the API at {self.base}: {type(exc).__name__}", 3) from None
        try:
            body: dict[str, Any] = resp.json()
        except ValueError:
            body = {"success": False, "error": resp.text[:300] or resp.reason_phrase}
        if resp.status_code >= 400 and not (resp.status_code == 503 and path.endswith("/health")):
            raise CommandError(f"{resp.status_code} {body.get('code', '')}: {body.get('error', body)}".strip())
        return body


def seg(value: str) -> str:
    """One URL path segment: '/' and '..' in an argument stay data, never become path (the API says 422)."""
    return quote(value, safe="")


def _resolve_key(args: argparse.Namespace, settings: Settings) -> str:
    if args.key:
        return str(args.key)
    if settings.api_admin_key is not None:
        return settings.api_admin_key.get_secret_value()
    path = settings.data_dir / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    raise CommandError(f"no API key: pass --key, set API_ADMIN_KEY, or start the stack once to create {path}", 2)


@contextmanager
def progress(label: str, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed seconds on stderr while a long call runs (only on a terminal)."""
    if not enabled:
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        frames = "|/-\\"
        i = 0
        while not done.wait(0.2):
            sys.stderr.write(f"\r{frames[i % 4]} {label} … {time.monotonic() - started:5.1f}s")
            sys.stderr.flush()
            i += 1
        sys.stderr.write(f"\r✓ {label} — {time.monotonic() - started:.1f}s\n")

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain aligned columns: ``columns`` is (heading, key)."""
    if not rows:
        return "(none)"
    cells = [[("" if r.get(k) is None else str(r.get(k))) for _, k in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    lines = ["  ".join(h.upper().ljust(w) for (h, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def pairs(body: dict[str, Any], keys: Sequence[str]) -> str:
    width = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(width)}  {body[k]}" for k in keys if body.get(k) is not None)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        key = _resolve_key(args, settings)
        api = Api(args.api or f"http://{settings.api_host}:{settings.api_port}", key)
        if args.command == "doctor":
            from cli.doctor import run_doctor

            code, text = run_doctor(api, key, args)
            print(text)
            return code
        body, text = _dispatch(api, args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(body, indent=2, default=str) if args.json else text)
    return 0


def _dispatch(api: Api, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    cmd, action = str(args.command), str(getattr(args, "action", ""))
    if cmd == "sessions":
        return _sessions(api, action, args)
    if cmd == "send":
        key = args.idempotency_key or uuid.uuid4().hex
        body = api.call("POST", f"/api/whatsapp/sessions/{seg(args.company_id)}/send",
                        json_body={"to": args.to, "message": args.message}, headers={"Idempotency-Key": key})
        return body, pairs({**body, "idempotencyKey": key}, ["messageId", "timestamp", "idempotencyKey"])
    if cmd == "jobs" and action == "run":
        payload: dict[str, Any] = {"wait": True, "verbose": args.verbose}
        if args.dry_run is not None:
            payload["dryRun"] = args.dry_run
        with progress(f"{args.kind} running", sys.stderr.isatty() and not args.json):
            body = api.call("POST", f"/api/jobs/{seg(args.kind)}", json_body=payload, timeout=3600)
        if not body.get("success", False):
            raise CommandError(f"{args.kind} failed: {body.get('error')}")
        details = body.get("details") or {}
        summary = {k: v for k, v in details.items() if not isinstance(v, dict | list)}
        return body, pairs({"status": body.get("status"), "dryRun": body.get("dryRun"), **summary},
                           ["status", "dryRun", *summary])
    if cmd == "jobs" and action == "runs":
        body = api.call("GET", f"/api/jobs/{args.kind}/runs?limit={args.limit}")
        return body, table(body["runs"], [("id", "id"), ("status", "status"), ("dry run", "dry_run"),
                                          ("started", "started_at"), ("seconds", "duration_s"), ("error", "error")])
    if cmd == "schedules":
        if action == "list":
            body = api.call("GET", "/api/schedules")
            return body, table(body["schedules"], [("id", "id"), ("cron", "cron"), ("paused", "paused"),
                                                   ("next run", "next_run"), ("workflow", "workflow")])
        body = api.call("POST", f"/api/schedules/{seg(args.schedule_id)}/{action}")
        return body, f"schedule {args.schedule_id}: {action} done"
    if cmd == "onboarding-links":
        return _onboarding_links(api, args)
    if cmd == "inbox":
        return _failed_messages(api, str(args.failed_action), args)
    if cmd == "keys":
        if action == "issue":
            body = api.call("POST", f"/api/companies/{seg(args.company_id)}/keys")
            return body, pairs(body, ["companyId", "keyId", "key"]) + "\n(the key is shown only now)"
        path = f"/api/companies/{seg(args.company_id)}/keys" + (f"/{seg(args.key_id)}" if args.key_id else "")
        body = api.call("DELETE", path)
        return body, f"revoked: {body.get('revoked', body)}"
    raise CommandError(f"unknown command {cmd} {action}", 2)


HEADER_NAMES = frozenset({"company", "company_id", "companyid", "id", "salon_id"})
LINK_COLUMNS = ["company_id", "onboarding_url", "expires_at", "error"]


def _onboarding_links(api: Api, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The cut-over mail-merge: one onboarding link per listed company (README "Coming from the old system")."""
    import csv
    import io
    import os

    if not 1 <= args.ttl_hours <= 168:
        raise CommandError("--ttl-hours must be between 1 and 168", 2)
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandError(f"cannot read {args.input}: {exc.strerror}", 2) from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(cell.strip() for cell in r)]
    extra_header: list[str] = []
    if rows and rows[0][0].strip().lower() in HEADER_NAMES:
        extra_header = [h.strip() for h in rows[0][1:]]
        rows = rows[1:]
    width = max([len(extra_header), *(len(r) - 1 for r in rows)], default=0)
    extra_header += [f"column_{i + 2}" for i in range(len(extra_header), width)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LINK_COLUMNS + extra_header)
    results, failures = [], 0
    for n, row in enumerate(rows, 1):
        raw, extra = row[0].strip(), [c.strip() for c in row[1:]] + [""] * (width - len(row) + 1)
        try:
            body = api.call("POST", f"/api/companies/{seg(raw)}/onboarding-link",
                            json_body={"ttlSeconds": int(args.ttl_hours * 3600)})
            record = {"company_id": body["companyId"], "onboarding_url": body["url"],
                      "expires_at": body["expiresAt"], "error": ""}
        except CommandError as exc:
            if exc.exit_code == 3:
                raise  # the API is unreachable: stop, do not write a sheet of errors
            failures += 1
            record = {"company_id": raw, "onboarding_url": "", "expires_at": "", "error": str(exc)}
        writer.writerow([record[c] for c in LINK_COLUMNS] + extra[:width])
        results.append(record)
        if n % 50 == 0:
            print(f"{n} of {len(rows)} links issued", file=sys.stderr, flush=True)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(out.getvalue())
        shown = f"{len(rows) - failures} link(s) written to {args.output}" + (
            f"; {failures} row(s) failed (see the error column)" if failures else "")
    else:
        shown = out.getvalue().rstrip("\n")
    summary = {"success": failures == 0, "count": len(rows), "failed": failures, "links": results}
    if failures:
        print(json.dumps(summary, indent=2) if args.json else shown)
        raise CommandError(f"{failures} of {len(rows)} companies got no link (see the error column)")
    return summary, shown


def _failed_messages(api: Api, action: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if action == "list":
        query = f"?limit={args.limit}" + (f"&company={seg(args.company)}" if args.company else "")
        body = api.call("GET", f"/api/inbox/failed{query}")
        shown = table(body["messages"], [("company", "companyId"), ("message", "messageId"), ("chat", "chat"),
                                         ("failed at", "failedAt"), ("attempts", "attempts"), ("error", "error")])
        return body, f"{shown}\n{body['count']} shown of {body['total']} waiting"
    if args.all == bool(args.message_id):
        raise CommandError("give one message id, or --all", 2)
    ids = [args.message_id] if args.message_id else [
        m["messageId"] for m in api.call("GET", f"/api/inbox/failed?limit=1000&company={seg(args.company_id)}")[
            "messages"]]
    results, lines, failures = [], [], 0
    for message_id in ids:
        path = f"/api/inbox/failed/{seg(args.company_id)}/{seg(message_id)}/{action}"
        try:
            body = api.call("POST", path, timeout=150)
        except CommandError as exc:
            failures += 1
            body = {"messageId": message_id, "status": "error", "error": str(exc)}
        results.append(body)
        line = f"{message_id}: {body.get('status')}" + (f" ({body['error']})" if body.get("error") else "")
        lines.append(line)
        if len(ids) > 1:
            print(line, file=sys.stderr, flush=True)  # progress on a long run
    if failures and len(ids) == 1:
        raise CommandError(results[0]["error"])
    summary = {"success": failures == 0, "count": len(ids), "failed": failures, "results": results}
    if failures:
        print(json.dumps(summary, indent=2, default=str) if args.json else "\n".join(lines))
        raise CommandError(f"{failures} of {len(ids)} not {action}ed")
    return summary, "\n".join(lines) if ids else "(none waiting)"


def _sessions(api: Api, action: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if action == "list":
        body = api.call("GET", "/api/whatsapp/sessions")
        return body, table(body["sessions"], [("company", "companyId"), ("state", "status"),
                                              ("phone", "phone"), ("attempts", "reconnectAttempts")])
    base = f"/api/whatsapp/sessions/{seg(args.company_id)}"
    if action == "status":
        body = api.call("GET", f"{base}/status")
        keys = [k for k in body if k not in ("success", "qr")]
        return body, pairs(body, keys)
    if action == "init":
        payload = {"pairingPhone": args.pairing_phone} if args.pairing_phone else None
        body = api.call("POST", f"{base}/initialize", json_body=payload, timeout=120)
        if body.get("pairingCode"):
            return body, f"pairing code: {body['pairingCode']}\n{body.get('message', '')}"
        if body.get("qrTerminal"):
            return body, f"{body['qrTerminal']}\n{body.get('message', '')}"
        return body, pairs(body, ["companyId", "status", "phone", "message"])
    if action == "remove":
        body = api.call("DELETE", base)
        return body, pairs(body, ["companyId", "status"])
    body = api.call("POST", f"{base}/{action}")
    return body, pairs(body, [k for k in ("companyId", "signal", "status") if k in body])
