"""The mutation run: break the code on purpose, one named break at a time, and check that the
tests meant to guard that behaviour fail.

A break is (name, file, exact original text, replacement, the pytest node ids that must catch
it). The original text must occur exactly once in its file: a break whose text is gone or no
longer unique fails the whole run before anything runs, so a stale break is noticed, while edits
elsewhere in the file do not matter. The node ids are collected first for the same reason.

Breaks are applied to a scratch copy of the repository (its tracked and untracked, not ignored,
files), never to the working tree; the tests run there with this interpreter (the project's
.venv) and ``-x``, with their own pytest temp root.

    .venv/bin/python -m bench.mutations                  # every break
    .venv/bin/python -m bench.mutations --only NAME ...  # some of them
    .venv/bin/python -m bench.mutations --list

Prints one JSON line per break (``break``, ``file``, ``caught``, ``seconds``, ``failing_test``)
and a summary line with the survivors; exits 1 if any break survives or cannot be run. Not part
of .ci/run: it runs integration tests once per break (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BREAK_TIMEOUT_S = 900


@dataclass(frozen=True)
class Break:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


AUTH = "tests/api/test_auth_validation.py"
LINKS = "tests/api/test_onboarding_links.py"
LIFECYCLE = "tests/sessions/test_lifecycle.py"
RESTARTS = "tests/sessions/test_restarts.py"
HELD_ONCE = f"{RESTARTS}::test_two_connectors_each_session_held_once_steadily_and_after_failover"
LEASE_RENEWAL = "tests/connector/test_lease_renewal.py"
INBOX = "tests/inbox/test_inbox.py"
OUTCOMES = "tests/connector/test_event_outcomes.py"
RELAY = "tests/inbox/test_event_relay.py::test_state_events_reach_the_event_webhook_in_order"
ADMIN_WALK = f"{AUTH}::test_every_admin_route_refuses_company_keys_and_onboarding_links"
MEDIA = "tests/api/test_media.py"
NEONIZE_MEDIA = "tests/connector/test_neonize_media.py"
STATUS = "tests/api/test_message_status.py"
BEYOND_MODEL = "tests/connector/test_neonize_beyond_text.py"
TYPING = "tests/api/test_chat_actions.py::test_typing_option_shows_typing_for_the_text_length_without_holding_up_others"
CONTACTS = "tests/api/test_contacts_groups.py::test_number_check_is_cached_and_rate_limited_apart_from_sends"
DEGRADED_SESSION = "tests/sessions/test_degraded.py"
DEGRADED_API = "tests/api/test_degraded.py"

BREAKS: tuple[Break, ...] = (
    # ---- the breaks of issue #16's table: each once passed every test
    Break("onboarding-link-minted-by-a-company-key", "api/routes/onboarding.py",
          "from api.deps import AdminDep, CompanyIdPath, CtxDep, parse_company_id",
          "from api.deps import CompanyIdPath, CtxDep, parse_company_id\nfrom api.deps import PrincipalDep as AdminDep",
          (ADMIN_WALK,)),
    Break("jobs-run-by-a-company-key", "api/routes/jobs.py",
          "from api.deps import AdminDep, CtxDep",
          "from api.deps import CtxDep\nfrom api.deps import PrincipalDep as AdminDep",
          (ADMIN_WALK,)),
    Break("onboarding-token-accepted-as-admin", "api/deps.py",
          'return Principal(is_admin=False, company_id=verify_token(ctx.admin_key, key), key_prefix="onboarding")',
          'return Principal(is_admin=True, company_id=verify_token(ctx.admin_key, key), key_prefix="onboarding")',
          (ADMIN_WALK,)),
    Break("neonize-440-mapped-to-a-drop", "connector/neonize_transport.py",
          'return HoldOutcome(HoldOutcomeKind.REPLACED, "stream replaced (440)")',
          'return HoldOutcome(HoldOutcomeKind.DROPPED, "stream replaced (440)")',
          (OUTCOMES,)),
    # The table's "connector never heartbeats its holds": holds no longer heartbeat; what proves a
    # connector alive is its lease, so the same break is a connector that never renews it.
    # Renews once, then never again (nor checks its fence): peers declare it dead while it still holds.
    # (Breaking one store's renewal alone is no break: the other store carries the lease by design.)
    Break("connector-never-renews-its-lease", "connector/lease.py",
          "                await asyncio.to_thread(self._stop.wait, max(wait, 0.01))\n",
          "                await asyncio.to_thread(self._stop.wait)\n",
          (LEASE_RENEWAL, HELD_ONCE)),
    Break("logout-and-remove-keep-the-whatsmeow-device", "activities/sessions.py",
          'deleted += int((await conn.execute("DELETE FROM whatsmeow_device WHERE jid = $1", jid)).split()[-1])',
          "pass",
          (f"{LIFECYCLE}::test_logout_and_remove_without_a_connection_delete_the_device_from_the_whatsmeow_store",)),
    Break("company-events-delivered-newest-first", "workflows/company_events.py",
          "event = self._pending.popleft()",
          "event = self._pending.pop()",
          (RELAY,)),
    Break("backoff-without-jitter", "workflows/session.py",
          "return float(raw * (0.75 + 0.25 * rnd))",
          "return float(raw)",
          (f"{LIFECYCLE}::test_sessions_dropped_together_do_not_reconnect_in_one_burst",)),
    # ---- session workflow
    Break("session-440-reconnects", "workflows/session.py",
          "        if kind is HoldOutcomeKind.REPLACED:\n",
          "        if kind is None:\n",
          (f"{LIFECYCLE}::test_replaced_waits_a_day_for_relink_with_one_alert",)),
    Break("session-fails-one-attempt-early", "workflows/session.py",
          "if self._st.attempt > self._inp.backoff_max_attempts:",
          "if self._st.attempt >= self._inp.backoff_max_attempts:",
          (f"{LIFECYCLE}::test_max_attempts_fail_with_alert_then_relink_recovers",)),
    Break("session-backoff-linear-not-exponential", "workflows/session.py",
          "raw = min(cap_s, base_s * 2 ** min(attempt - 1, 60))",
          "raw = min(cap_s, base_s * min(attempt, 60))",
          (f"{LIFECYCLE}::test_transient_drop_backs_off_exponentially_then_connects",)),
    Break("session-alerts-without-grace", "workflows/session.py",
          "timedelta(seconds=max(self._inp.alert_grace_s - elapsed, 0.001))",
          "timedelta(seconds=0.001)",
          (f"{LIFECYCLE}::test_drop_shorter_than_grace_sends_no_alert_longer_sends_one",)),
    Break("session-reconnect-keeps-the-down-alert-armed", "workflows/session.py",
          "        st.pairing_code = None\n        self._calm_down()\n",
          "        st.pairing_code = None\n",
          (f"{LIFECYCLE}::test_drop_shorter_than_grace_sends_no_alert_longer_sends_one",)),
    Break("session-remove-not-marked-removed", "workflows/session.py",
          "await self._delete_credentials(mark_removed=True)",
          "await self._delete_credentials(mark_removed=False)",
          (f"{LIFECYCLE}::test_pause_resume_logout_remove",)),
    Break("initialize-replaces-the-running-session", "infra/sessions.py",
          '"id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,',
          '"id_conflict_policy": WorkflowIDConflictPolicy.TERMINATE_EXISTING,',
          ("tests/api/test_sessions.py::test_session_lifecycle_through_the_api",)),
    # ---- inbox
    Break("inbox-newest-message-first", "workflows/inbox.py",
          "        self._pending.append(msg)\n",
          "        self._pending.insert(0, msg)\n",
          (f"{INBOX}::test_hundred_messages_in_order_each_once_through_continue_as_new",)),
    Break("inbox-redelivered-message-handled-again", "workflows/inbox.py",
          "        if msg.message_id in self._seen_set:\n",
          "        if False:\n",
          (f"{INBOX}::test_hundred_messages_in_order_each_once_through_continue_as_new",)),
    Break("inbox-failed-message-silently-dropped", "workflows/inbox.py",
          "            await self._give_up(processing, msg, err)\n",
          "            pass\n",
          (f"{INBOX}::test_receiver_that_never_recovers_leaves_a_waiting_message_and_alert",)),
    Break("inbox-reply-ignores-the-rate-limit", "activities/inbox.py",
          "        if not decision.allowed:\n",
          "        if False:\n",
          ("tests/inbox/test_replies.py::test_replies_wait_for_the_rate_limit_and_keep_order",)),
    Break("inbox-own-message-answered", "activities/inbox.py",
          "        if msg.from_me and reply is not None:\n",
          "        if False:\n",
          ("tests/inbox/test_replies.py::test_own_messages_are_not_answered",)),
    Break("inbox-redelivery-after-idle-answered-again", "activities/inbox.py",
          "            return bool(await self._redis.get(key) == claim)\n",
          "            return True\n",
          ("tests/inbox/test_handler_api.py::"
           "test_echo_handler_set_through_the_api_replies_and_inbox_completes_when_idle",)),
    Break("inbox-failed-message-loses-its-claim", "workflows/inbox.py",
          "FailedMessageInput(msg, reason, tuning, processing.claim),",
          'FailedMessageInput(msg, reason, tuning, ""),',
          ("tests/inbox/test_failed_messages.py::test_failed_messages_are_listed_counted_redelivered_and_discarded",)),
    # ---- auth
    Break("auth-company-key-reaches-any-company", "api/deps.py",
          "        return self.is_admin or self.company_id == company_id\n",
          "        return True\n",
          (f"{AUTH}::test_company_routes_answer_only_their_own_company",)),
    Break("auth-revoked-key-still-works", "api/deps.py",
          "WHERE key_hash = $1 AND revoked_at IS NULL",
          "WHERE key_hash = $1",
          (f"{AUTH}::test_company_key_is_shown_once_stored_hashed_and_revocable",)),
    Break("auth-expired-link-still-works", "api/onboarding.py",
          "    if int(expires_text) < (now or time.time()):\n",
          "    if False:\n",
          (f"{LINKS}::test_link_is_scoped_to_its_company_and_signed",)),
    Break("auth-link-opens-another-companys-page", "api/routes/onboarding.py",
          "    if token_company != cid:\n",
          "    if False:\n",
          (f"{LINKS}::test_link_is_scoped_to_its_company_and_signed",)),
    Break("auth-company-key-lists-every-session", "api/routes/sessions.py",
          "[(cid, st) for cid, st in states if principal.can_access(cid)]",
          "list(states)",
          ("tests/api/test_sessions.py::test_session_lifecycle_through_the_api",)),
    Break("auth-public-health-names-companies", "api/routes/health.py",
          "    if not await _is_admin(ctx, authorization, x_api_key):\n",
          "    if False:\n",
          ("tests/api/test_events.py::test_connector_process_events_reach_websockets_per_company",)),
    Break("onboarding-link-lives-a-week-by-default", "api/routes/onboarding.py",
          "ttl_s: int = Field(default=DEFAULT_TTL_S,",
          "ttl_s: int = Field(default=MAX_TTL_S,",
          (f"{LINKS}::test_a_link_lives_24_hours_unless_asked_otherwise_within_bounds",)),
    # ---- connector
    Break("connector-renews-its-lease-too-rarely", "connector/lease.py",
          "                wait = min(s.lease_renew_s - (time.monotonic() - started),",
          "                wait = min(2 * s.lease_ttl_s - (time.monotonic() - started),",
          (LEASE_RENEWAL, HELD_ONCE)),
    Break("adopter-ignores-stored-credentials", "connector/activities.py",
          "        jid = await self.devices.device_jid(row.company_id) or row.jid\n",
          "        jid = None\n",
          (f"{RESTARTS}::test_connector_sigkill_then_sigterm_sessions_come_back_without_qr",)),
    Break("connector-sigterm-logs-out", "connector/activities.py",
          "(self._stop_client(h) for h in holds)",
          "(self.transport.logout(h.company_id) for h in holds)",
          (f"{RESTARTS}::test_connector_sigkill_then_sigterm_sessions_come_back_without_qr",)),
    Break("lease-peer-declared-dead-on-postgresql-alone", "connector/lease.py",
          "                    alive_in_redis = bool(await redis.exists(lease_key(self._s, inc)))\n",
          "                    alive_in_redis = False\n",
          ("tests/sessions/test_lease.py::test_one_lease_store_gone_changes_nothing[postgresql]",)),
    Break("lease-needs-both-stores", "connector/lease.py",
          "                if self.pg_ok or self.redis_ok:\n",
          "                if self.pg_ok and self.redis_ok:\n",
          ("tests/ops/test_outage_run.py",)),
    Break("lease-lost-but-connector-keeps-running", "connector/lease.py",
          "                if silent >= s.lease_fence_s:\n",
          "                if False:\n",
          ("tests/sessions/test_lease.py::test_connector_cut_off_from_both_stores_exits_before_its_sessions_move",)),
    Break("hold-claimed-from-a-live-connector", "connector/holds.py",
          "                WHERE h.holder = EXCLUDED.holder OR h.ended IS NOT NULL OR NOT EXISTS (",
          "                WHERE TRUE OR h.holder = EXCLUDED.holder OR h.ended IS NOT NULL OR NOT EXISTS (",
          ("tests/connector/test_holds.py", HELD_ONCE)),
    Break("spool-writes-out-of-arrival-order", "connector/spool.py",
          "            batch, self._queue = self._queue, []\n",
          "            batch, self._queue = self._queue[::-1], []\n",
          ("tests/sessions/test_incoming_order.py::test_concurrent_hand_offs_keep_chat_order",)),
    Break("spool-forgets-messages-of-a-killed-connector", "connector/spool.py",
          "SET owner = $1 WHERE owner IN ({_ORPHAN_OWNERS})",
          "SET owner = $1 WHERE FALSE AND owner IN ({_ORPHAN_OWNERS})",
          ("tests/inbox/test_spool_crash.py",)),
    Break("job-failure-not-alerted", "workflows/jobs.py",
          '        await _alert(f"{kind} FAILED: {message}", "critical")\n',
          "        pass\n",
          ("tests/jobs/test_job_alerts.py::test_a_restore_test_without_a_backup_fails_with_one_critical_alert",)),
    Break("job-warnings-not-alerted", "workflows/jobs.py",
          '    for warning in details.get("warnings", []):\n',
          "    for warning in []:\n",
          ("tests/jobs/test_job_alerts.py",)),
    Break("spool-without-a-bound", "connector/spool.py",
          "        while self.pending >= self.max_pending:\n",
          "        while False:\n",
          ("tests/inbox/test_spool_bound.py",)),
    Break("spool-not-in-metrics", "api/routes/sessions.py",
          "                           spool=spool,\n",
          "                           spool=None,\n",
          ("tests/api/test_health_metrics.py::test_spooled_incoming_messages_show_in_metrics_and_health",)),
    Break("connector-440-published-as-a-drop", "connector/activities.py",
          "    HoldOutcomeKind.REPLACED: EventType.REPLACED,\n",
          "    HoldOutcomeKind.REPLACED: EventType.DISCONNECTED,\n",
          (RELAY,)),
    Break("inbox-handler-runs-again-after-a-lost-task", "activities/inbox.py",
          "        outcome = await self._handled_before(msg, req.claim)\n",
          "        outcome = None\n",
          ("tests/inbox/test_handled_once.py",)),
    # No break for the timer before the inbox's continue-as-new: without it a webhook may run again
    # after the new run starts, but the handled-once record in Redis (tests/inbox/test_handled_once.py)
    # then answers for it, so no test can see the difference (an equivalent mutant).
    Break("neonize-logout-mapped-to-a-drop", "connector/neonize_transport.py",
          "return HoldOutcome(HoldOutcomeKind.LOGGED_OUT, f\"logged out{when} (reason {getattr(ev, 'Reason', '?')})\")",
          "return HoldOutcome(HoldOutcomeKind.DROPPED, f\"logged out{when} (reason {getattr(ev, 'Reason', '?')})\")",
          (OUTCOMES,)),
    Break("neonize-ban-expiry-ignored", "connector/neonize_transport.py",
          "ban_expires_s=expire or None)",
          "ban_expires_s=None)",
          (OUTCOMES,)),
    # ---- operations around them
    Break("alerts-ignore-the-telegram-api-url", "infra/alerts.py",
          "f\"{self._settings.telegram_api_url.rstrip('/')}/bot{token.get_secret_value()}/sendMessage\"",
          "f\"https://api.telegram.org/bot{token.get_secret_value()}/sendMessage\"",
          ("tests/api/test_alerts.py",)),
    Break("alerts-telegram-error-not-retried", "infra/alerts.py",
          "        if resp.status_code >= 400:\n",
          "        if False:\n",
          ("tests/api/test_alerts.py",)),
    Break("health-ignores-temporal", "api/routes/health.py",
          'VITAL = ("temporal", "postgres")',
          'VITAL = ("postgres",)',
          ("tests/api/test_health_metrics.py::test_health_is_down_503_when_temporal_stops",)),
    Break("health-never-sees-the-connector", "infra/probes.py",
          "fresh_after = datetime.now(UTC) - timedelta(seconds=self.settings.poller_stale_s)",
          "fresh_after = datetime.now(UTC)",
          ("tests/cli/test_stack.py::test_up_is_healthy_persistent_and_stops_cleanly",)),
    Break("logs-carry-request-urls-with-the-bot-token", "infra/logs.py",
          '    for name in ("httpx", "httpcore"):\n',
          "    for name in ():\n",
          ("tests/cli/test_commands.py::test_no_log_line_holds_a_secret_or_a_message_body",)),
    Break("cli-no-dry-run-ignored", "cli/commands.py",
          '            payload["dryRun"] = args.dry_run\n',
          '            payload["dryRun"] = True\n',
          ("tests/cli/test_commands.py::test_cleanup_deletes_only_without_dry_run",)),
    Break("cli-pairing-phone-ignored", "cli/commands.py",
          'payload = {"pairingPhone": args.pairing_phone} if args.pairing_phone else None',
          "payload = None",
          ("tests/cli/test_commands.py::test_init_with_a_pairing_phone_links_by_code",)),
    Break("cli-missing-key-is-not-a-usage-error", "cli/commands.py",
          "or start the stack once to create {path}\", 2)",
          "or start the stack once to create {path}\", 1)",
          ("tests/cli/test_commands.py::test_usage_errors_exit_2",)),
    Break("wait-until-swallows-assertions", "cli/embedded.py",
          "        except AssertionError:\n            raise\n",
          "",
          ("tests/cli/test_wait_until.py",)),
    # ---- media (issue #11)
    Break("media-url-private-addresses-fetched", "infra/media_intake.py",
          "            why = address_refusal(address, self._allowed)\n",
          "            why = None\n",
          (f"{MEDIA}::test_private_and_loopback_urls_are_refused_also_behind_a_redirect",)),
    Break("media-url-read-past-the-size-limit", "infra/media_intake.py",
          "                        if total > limit:\n",
          "                        if False:\n",
          (f"{MEDIA}::test_limits_types_and_bodies_are_refused_with_the_problem_named",)),
    Break("media-declared-type-trusted", "infra/media_intake.py",
          "    if declared and declared != sniffed:\n",
          "    if False:\n",
          (f"{MEDIA}::test_limits_types_and_bodies_are_refused_with_the_problem_named",)),
    Break("media-keyed-retry-fetches-again", "api/routes/messages.py",
          "    if keyed_workflow is not None and inline is None and await _already_sent(ctx, keyed_workflow):",
          "    if False:",
          (f"{MEDIA}::test_media_sends_keep_idempotency_rate_limit_and_409",)),
    Break("media-served-to-any-key", "api/routes/media.py",
          "from api.deps import CompanyDep, CtxDep\n",
          "from api.deps import CtxDep, PrincipalDep\nCompanyDep = str\n",
          (f"{MEDIA}::test_incoming_media_of_each_kind_is_stored_served_and_described_in_the_webhook",
           "tests/api/test_auth_validation.py::test_company_routes_answer_only_their_own_company")),
    Break("media-handler-sees-it-before-the-download", "workflows/inbox.py",
          "            msg = await processing.store_media(msg)\n",
          "            pass\n",
          (f"{MEDIA}::test_incoming_media_of_each_kind_is_stored_served_and_described_in_the_webhook",)),
    Break("media-download-not-retried", "workflows/inbox.py",
          "                if _root_type(err) == ERROR_MEDIA_GONE or workflow.now() >= deadline:\n",
          "                if True:\n",
          (f"{MEDIA}::test_a_failing_download_is_retried_and_then_named_and_the_message_still_delivered",)),
    Break("media-download-key-sent-to-temporal", "connector/activities.py",
          "                msg = dataclasses.replace(msg, media=dataclasses.replace(msg.media, source=None))\n",
          "                pass\n",
          (f"{MEDIA}::test_message_events_carry_the_descriptor_pending_then_stored",)),
    Break("media-health-never-degraded", "api/routes/health.py",
          '    return {"status": "degraded" if kinds else "ok", "unavailable": kinds, "connectors": unavailable}',
          '    return {"status": "ok", "unavailable": kinds, "connectors": unavailable}',
          (f"{MEDIA}::test_health_names_media_kinds_a_connector_cannot_send",)),
    Break("media-cleanup-deletes-shared-files", "activities/cleanup.py",
          "if sha not in referenced]",
          "if True]",
          ("tests/jobs/test_media_cleanup.py::"
           "test_dry_run_counts_then_cleanup_removes_old_media_and_unreferenced_files",)),
    Break("media-files-readable-by-others", "storage/blobs.py",
          "            os.chmod(directory, 0o700)\n",
          "            os.chmod(directory, 0o755)\n",
          ("tests/storage/test_blobs.py::test_local_blobs_are_private_files_in_private_directories",)),
    Break("neonize-voice-note-sent-as-audio", "connector/neonize_transport.py",
          "            return client.send_audio(target, data, ptt=True)\n",
          "            return client.send_audio(target, data, ptt=False)\n",
          (f"{NEONIZE_MEDIA}::test_each_kind_goes_out_as_the_protobuf_neonize_builds",)),
    Break("neonize-incoming-voice-note-read-as-audio", "connector/neonize_transport.py",
          "    if kind is MediaKind.AUDIO and part.PTT:\n",
          "    if False:\n",
          (f"{NEONIZE_MEDIA}::test_incoming_media_events_become_descriptors_and_download_through_the_model",)),
    Break("neonize-expired-media-retried", "connector/neonize_transport.py",
          '            if any(code in str(exc) for code in ("404", "410")):',
          "            if False:",
          (f"{NEONIZE_MEDIA}::test_a_failing_download_fails_then_succeeds_and_an_expired_one_is_gone",)),
    Break("neonize-media-send-outside-the-go-gate", "connector/neonize_transport.py",
          "        async with GO_CALLS.shared():\n",
          "        async with contextlib.AsyncExitStack():\n",
          (f"{NEONIZE_MEDIA}::test_media_sends_never_overlap_a_client_start_or_stop",)),
    Break("neonize-media-sent-without-ffmpeg", "connector/neonize_transport.py",
          "        why = self.media_unavailable().get(media.kind.value)\n",
          "        why = None\n",
          (f"{NEONIZE_MEDIA}::test_kinds_that_need_ffmpeg_are_refused_at_once_without_it",)),
    # ---- beyond text (issue 11.3-11.8)
    Break("message-status-moves-back", "storage/message_status.py",
          "status = CASE WHEN EXCLUDED.ack > message_status.ack THEN EXCLUDED.status ELSE message_status.status END",
          "status = EXCLUDED.status",
          (STATUS,)),
    Break("message-ack-events-not-published", "connector/activities.py",
          "        for message_id in receipt.message_ids:\n",
          "        for message_id in receipt.message_ids[:0]:\n",
          (STATUS,)),
    Break("message-status-never-expires", "storage/message_status.py",
          'EXPIRED_WHERE = "updated_at < now() - make_interval(days => $1)"',
          'EXPIRED_WHERE = "updated_at < now() - make_interval(days => $1 * 100)"',
          ("tests/jobs/test_message_status_expiry.py",)),
    Break("neonize-read-receipt-taken-as-delivered", "connector/neonize_transport.py",
          "Receipt.READ: MessageStatus.READ,",
          "Receipt.READ: MessageStatus.DELIVERED,",
          (BEYOND_MODEL,)),
    Break("neonize-own-devices-receipts-taken-as-steps", "connector/neonize_transport.py",
          "if status is None or src.IsFromMe or not ev.MessageIDs:",
          "if status is None or not ev.MessageIDs:",
          (BEYOND_MODEL,)),
    Break("neonize-reply-forgets-the-quoted-message", "connector/neonize_transport.py",
          "                self.recent.remember(entry.company_id, ev)\n",
          "                pass\n",
          (BEYOND_MODEL,)),
    Break("neonize-reaction-always-from-me", "connector/neonize_transport.py",
          'author = parse_jid(sender or entry.jid or entry.device or "")',
          'author = parse_jid(entry.jid or entry.device or "")',
          (BEYOND_MODEL,)),
    Break("neonize-proxy-of-the-company-ignored", "connector/neonize_transport.py",
          "proxy = await self._devices.proxy_of(company_id) or self._proxy",
          "proxy = self._proxy",
          (BEYOND_MODEL,)),
    Break("neonize-proxy-logged-with-its-password", "connector/neonize_transport.py",
          "proxy=%s\", entry.company_id, masked_proxy(entry.proxy))",
          "proxy=%s\", entry.company_id, entry.proxy)",
          (BEYOND_MODEL,)),
    Break("simulator-dials-without-the-proxy", "connector/simulator.py",
          "link.proxy = await self._devices.proxy_of(link.company_id)",
          "link.proxy = None",
          ("tests/api/test_proxy.py",)),
    Break("proxy-answered-unmasked", "api/routes/proxy.py",
          '{"url": masked_proxy(url), "set": url is not None,',
          '{"url": url, "set": url is not None,',
          ("tests/api/test_proxy.py",)),
    Break("typing-option-ignored", "api/routes/messages.py",
          "typing_s = ctx.settings.typing_seconds(request.text) if options.typing else 0.0",
          "typing_s = 0.0",
          (TYPING,)),
    Break("typing-time-unbounded", "domain/settings.py",
          "return min(self.send_typing_max_s, max(self.send_typing_min_s, len(text) / self.send_typing_chars_per_s))",
          "return max(self.send_typing_min_s, len(text) / self.send_typing_chars_per_s)",
          (TYPING, "tests/domain/test_beyond_text.py")),
    Break("group-read-mark-without-its-author", "api/routes/chats.py",
          "    if chat.is_group:\n        raise ApiError(422",
          "    if False:\n        raise ApiError(422",
          ("tests/api/test_chat_actions.py::test_read_presence_and_reactions_reach_the_phone",)),
    Break("reactions-not-rate-limited", "api/routes/chats.py",
          "    decision = await ctx.limiter.check(company_id)\n",
          "    decision = await ctx.limiter.check(company_id, 'same')\n",
          ("tests/api/test_chat_actions.py::test_read_presence_and_reactions_reach_the_phone",)),
    Break("number-check-not-cached", "api/routes/chats.py",
          "    cached = await _cache_get(ctx, key)\n",
          "    cached = None\n",
          (CONTACTS,)),
    Break("number-checks-share-the-send-window", "api/app.py",
          '            name="contact-checks",\n',
          '            name="ratelimit",\n',
          (CONTACTS,)),
    Break("number-checks-as-lenient-as-sends", "api/app.py",
          "redis, prefix=settings.redis_prefix, limit=settings.contact_check_limit_count,",
          "redis, prefix=settings.redis_prefix, limit=settings.rate_limit_count,",
          (CONTACTS,)),
    Break("unknown-group-is-a-502", "api/routes/chats.py",
          "        if kind == ERROR_NOT_FOUND:\n",
          "        if kind == 'never':\n",
          ("tests/api/test_contacts_groups.py::test_group_info_gives_subject_and_participants",)),
    Break("no-server-ack-never-noticed", "connector/activities.py",
          "deadline = loop.call_later(self.settings.ack_timeout_s, expire)",
          "deadline = loop.call_later(3600, expire)",
          (DEGRADED_SESSION, DEGRADED_API)),
    Break("degraded-reheld-every-time", "workflows/session.py",
          "        if self._st.degraded_reholds == 0:\n",
          "        if True:\n",
          (DEGRADED_SESSION,)),
    Break("degraded-never-reheld", "workflows/session.py",
          "            self._restart_hold = True  # the run loop releases this hold",
          "            pass  # the run loop releases this hold",
          (DEGRADED_SESSION,)),
    Break("degraded-never-alerts", "workflows/session.py",
          "            self._start_down_episode()  # the re-hold did not help: alert after the grace period (H4)\n",
          "            pass\n",
          (DEGRADED_SESSION,)),
    Break("acknowledged-send-leaves-it-degraded", "connector/activities.py",
          "hold.degraded or (session_degraded and not hold.delivering_told)):",
          "(session_degraded and not hold.delivering_told)):",
          (DEGRADED_SESSION, DEGRADED_API)),
    Break("adopted-hold-stays-degraded", "connector/activities.py",
          "hold.degraded or (session_degraded and not hold.delivering_told)):",
          "hold.degraded):",
          (DEGRADED_SESSION,)),
    Break("degraded-session-refuses-sends", "api/routes/messages.py",
          "if status is None or not status.state.holds_connection or not status.holder_queue:",
          "if status is None or status.state is not SessionState.CONNECTED or not status.holder_queue:",
          (DEGRADED_API,)),
)


class StaleBreak(Exception):
    pass


def scratch_copy(dest: Path) -> None:
    """The repository's tracked and untracked (not ignored) files, as they are now, into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def check_breaks(root: Path, breaks: list[Break]) -> None:
    problems = []
    for b in breaks:
        path = root / b.file
        if not path.is_file():
            problems.append(f"{b.name}: {b.file} does not exist")
            continue
        found = path.read_text().count(b.original)
        if found != 1:
            problems.append(f"{b.name}: original text found {found} times in {b.file} (must be exactly once)")
    if problems:
        raise StaleBreak("stale breaks:\n  " + "\n  ".join(problems))


def pytest_env(root: Path) -> dict[str, str]:
    temp_root = root / ".pytest-tmp"
    temp_root.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTEST_DEBUG_TEMPROOT=str(temp_root))
    env.pop("PYTHONPATH", None)
    return env


def check_scratch_is_imported(root: Path) -> None:
    """The scratch copy's code is what runs there, not the editable install's."""
    out = subprocess.run([sys.executable, "-c", "import api.deps, workflows.session; print(api.deps.__file__)"],
                         cwd=root, env=pytest_env(root), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise StaleBreak(f"the scratch copy imports {out}, not its own code")


def check_tests_exist(root: Path, breaks: list[Break]) -> None:
    ids = sorted({t for b in breaks for t in b.tests})
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n0", "-p", "no:cacheprovider", *ids],
        cwd=root, env=pytest_env(root), capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise StaleBreak(f"cannot collect the breaks' tests:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")


FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def run_break(root: Path, b: Break) -> dict[str, object]:
    path = root / b.file
    original = path.read_text()
    path.write_text(original.replace(b.original, b.replacement, 1))
    started = time.monotonic()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-n0", "-q", "-rfE", "-p", "no:cacheprovider", *b.tests],
            cwd=root, env=pytest_env(root), capture_output=True, text=True, timeout=BREAK_TIMEOUT_S,
        )
        code, output = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = -1, f"timed out after {BREAK_TIMEOUT_S}s: {exc}"
    finally:
        path.write_text(original)
    failing = FAILED_LINE.search(output)
    result: dict[str, object] = {
        "break": b.name, "file": b.file, "caught": code == 1, "seconds": round(time.monotonic() - started, 1),
        "failing_test": failing.group(2) if failing and code == 1 else None,
    }
    if code not in (0, 1):  # not a verdict: usage error, interrupted, timed out
        result["error"] = f"pytest exit code {code}: {output[-1500:]}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this break (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args(argv)

    if args.list:
        for b in BREAKS:
            print(f"{b.name:48} {b.file:32} {' '.join(b.tests)}")
        return 0
    names = [b.name for b in BREAKS]
    if len(set(names)) != len(names):
        raise StaleBreak("two breaks share a name")
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown break(s): {', '.join(unknown)}; see --list")
    chosen = [b for b in BREAKS if not args.only or b.name in args.only]

    root = Path(tempfile.mkdtemp(prefix="waorch-mutations-"))
    started = time.monotonic()
    try:
        scratch_copy(root)
        check_breaks(root, chosen)
        check_scratch_is_imported(root)
        check_tests_exist(root, chosen)
        results = []
        for b in chosen:
            result = run_break(root, b)
            results.append(result)
            print(json.dumps(result, ensure_ascii=False), flush=True)
    finally:
        if args.keep:
            print(f"scratch copy kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    survivors = [r["break"] for r in results if not r["caught"] and "error" not in r]
    errors = [r["break"] for r in results if "error" in r]
    print(json.dumps({"summary": True, "breaks": len(results), "caught": sum(bool(r["caught"]) for r in results),
                      "survivors": survivors, "errors": errors,
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 1 if survivors or errors else 0


if __name__ == "__main__":
    sys.exit(main())
