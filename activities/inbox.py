"""Worker-side activities of the inbox (SPEC M4, E2): handler config, webhook, callable, echo, reply slot.

The handler of a company comes from its ``companies`` row (set by the admin
endpoint ``PUT /api/companies/{id}/handler``), else from the settings'
default. Every activity reads the row itself, so a changed handler applies to
the next message, and the webhook secret never enters a workflow history.

Webhook delivery: an HTTP POST of the message event (E1 shape) with
``X-Signature-256: sha256=<HMAC-SHA256 of the raw body with the company's
secret>`` and a stable ``X-Event-Id``; any failure raises, and Temporal retries
with backoff for the retry window (the workflow's retry policy). The body and
its signature are the same on every attempt, so a receiver can de-duplicate
on ``X-Event-Id`` (a worker killed after the POST and before recording the
result delivers again — at least once, never lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from domain.inbox import (
    ACTIVITY_DELIVER_EVENT,
    ACTIVITY_HANDLE_INCOMING,
    ACTIVITY_INBOX_TUNING,
    ACTIVITY_RESERVE_REPLY,
    CALLABLE_PATH,
    HandleOutcome,
    HandleRequest,
    InboxEvent,
    InboxTuning,
    IncomingMessage,
    ReplyReservation,
    ReplySlot,
    message_event_id,
)
from domain.session import ERROR_NOT_CONNECTED
from domain.settings import Settings
from infra.metrics import counters_key
from infra.ratelimit import RateLimiter
from infra.sessions import session_status
from storage import Database

log = logging.getLogger("waorch.inbox")

HANDLER_TYPES = ("none", "echo", "webhook", "callable")
# package.module:function — checked before anything is imported.
SIGNATURE_HEADER = "X-Signature-256"
EVENT_ID_HEADER = "X-Event-Id"
MAX_REPLY = 4096


def sign(secret: str, body: bytes) -> str:
    """The ``X-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256 with secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def message_payload(msg: IncomingMessage, base_url: str = "") -> dict[str, Any]:
    """The ``message`` event as a webhook receives it (E1 keys; the same bytes on every attempt).

    A media message carries ``media`` (issue #11): type, state, mimetype, size, sha256, caption,
    filename, error and the URL of the API route that serves it (``base_url``: the API's public URL).
    """
    media = {} if msg.media is None else {"media": msg.media.to_wire(base_url, msg.company_id)}
    return {
        "id": message_event_id(msg.company_id, msg.message_id),
        "type": "message",
        "companyId": msg.company_id,
        "timestamp": msg.timestamp.isoformat(),
        "messageId": msg.message_id,
        "chat": msg.chat,
        "sender": msg.sender,
        "senderPhone": msg.sender_phone,
        "pushName": msg.push_name,
        "text": msg.text,
        "messageType": msg.message_type,
        "fromMe": msg.from_me,
        "metadata": msg.metadata,
        **media,
    }


@dataclass(frozen=True)
class HandlerConfig:
    kind: str
    webhook_url: str | None = None
    secret: str | None = None
    callable_path: str | None = None
    event_webhook_url: str | None = None


def default_handler(settings: Settings) -> HandlerConfig:
    secret = settings.inbox_default_webhook_secret
    return HandlerConfig(
        kind=settings.inbox_default_handler,
        webhook_url=settings.inbox_default_webhook_url,
        secret=secret.get_secret_value() if secret else None,
        callable_path=settings.inbox_default_callable,
    )


async def load_handler(db: Database, settings: Settings, company_id: str) -> HandlerConfig:
    """The company's handler (its row), or the settings' default when the row sets none."""
    row = await db.fetchrow(
        """SELECT handler, webhook_url, webhook_secret, handler_callable, event_webhook_url
           FROM companies WHERE company_id = $1""",
        company_id,
    )
    fallback = default_handler(settings)
    if row is None:
        return fallback
    event_url = row["event_webhook_url"]
    if not row["handler"]:
        return HandlerConfig(fallback.kind, fallback.webhook_url, row["webhook_secret"] or fallback.secret,
                             fallback.callable_path, event_url)
    return HandlerConfig(row["handler"], row["webhook_url"], row["webhook_secret"], row["handler_callable"],
                         event_url)


def _reply_of(answer: object) -> str | None:
    if isinstance(answer, dict):
        answer = answer.get("reply")
    if not isinstance(answer, str) or not answer.strip():
        return None
    return answer[:MAX_REPLY]


def inbox_tuning_from(s: Settings) -> InboxTuning:
    """The worker's inbox settings in the form workflows take them (they cannot read the environment)."""
    return InboxTuning(
        handler_attempt_timeout_s=s.inbox_webhook_connect_timeout_s + s.inbox_webhook_timeout_s + 2.0,
        retry_window_s=s.inbox_retry_window_s,
        retry_initial_s=s.inbox_retry_initial_s,
        retry_max_interval_s=s.inbox_retry_max_interval_s,
        reply_window_s=s.inbox_reply_window_s,
        idle_s=s.inbox_idle_s,
        max_messages_per_run=s.inbox_max_messages_per_run,
        seen_ids=s.inbox_seen_ids,
        media_download_timeout_s=s.media_download_timeout_s,
        media_download_window_s=s.media_download_window_s,
    )


class InboxActivities:
    def __init__(self, settings: Settings, db: Database, redis: aioredis.Redis, client: Client) -> None:
        self._settings = settings
        self._db = db
        self._redis = redis
        self._client = client
        self._limiter = RateLimiter(
            redis, prefix=settings.redis_prefix, limit=settings.rate_limit_count,
            window_s=settings.rate_limit_window_s, counters_key=counters_key(settings.redis_prefix),
        )
        self._http: httpx.AsyncClient | None = None
        self._callables: dict[str, Callable[..., Any]] = {}

    def _http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            s = self._settings
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(s.inbox_webhook_timeout_s, connect=s.inbox_webhook_connect_timeout_s),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                follow_redirects=False,
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ activities

    @activity.defn(name=ACTIVITY_INBOX_TUNING)
    async def inbox_tuning(self) -> InboxTuning:
        return inbox_tuning_from(self._settings)

    @activity.defn(name=ACTIVITY_HANDLE_INCOMING)
    async def handle_incoming(self, req: HandleRequest) -> HandleOutcome:
        """Run the company's handler on one message; a failure raises so Temporal retries it."""
        msg = req.message
        if not await self._claim(msg, req.claim):
            log.info("inbox duplicate company_id=%s message_id=%s", msg.company_id, msg.message_id)
            return HandleOutcome(handler="duplicate")
        outcome = await self._handled_before(msg, req.claim)
        if outcome is None:
            outcome = await self._run_handler(msg)
            await self._remember_handled(msg, req.claim, outcome)
        else:
            # The handler ran, and then the workflow task that recorded it was lost (a worker or Temporal
            # died): its answer stands; the company's webhook is not called a second time.
            log.info("inbox handled before company_id=%s message_id=%s", msg.company_id, msg.message_id)
        if outcome.reply is not None:
            # The usual case takes its send slot here, saving the workflow a second activity.
            slot = await self._reserve(msg.company_id, msg.message_id, raise_not_connected=False)
            if slot.allowed:
                outcome.holder_queue = slot.holder_queue
        log.info("inbox handled company_id=%s message_id=%s handler=%s reply=%s attempt=%d",
                 msg.company_id, msg.message_id, outcome.handler, outcome.reply is not None, activity.info().attempt)
        return outcome

    @activity.defn(name=ACTIVITY_RESERVE_REPLY)
    async def reserve_reply(self, req: ReplyReservation) -> ReplySlot:
        """The reply's send slot: connected session (else raise, retried) and the company's rate limit."""
        return await self._reserve(req.company_id, req.message_id, raise_not_connected=True)

    @activity.defn(name=ACTIVITY_DELIVER_EVENT)
    async def deliver_inbox_event(self, event: InboxEvent) -> int:
        """POST one event to the company's event webhook (E2); 0 when it has none."""
        config = await load_handler(self._db, self._settings, event.company_id)
        if not config.event_webhook_url:
            return 0
        body = {**event.data, "id": event.event_id, "type": event.type, "companyId": event.company_id,
                "timestamp": event.timestamp}
        media = body.get("media")
        if isinstance(media, dict) and str(media.get("url", "")).startswith("/"):
            body["media"] = {**media, "url": self._settings.api_base_url + media["url"]}
        resp = await self._post(config.event_webhook_url, config.secret, event.event_id, event.type, body,
                                event.company_id)
        return resp.status_code

    # ------------------------------------------------------------------ internals

    async def _run_handler(self, msg: IncomingMessage) -> HandleOutcome:
        config = await load_handler(self._db, self._settings, msg.company_id)
        match config.kind:
            case "webhook":
                reply = await self._webhook(config, msg)
            case "callable":
                reply = await self._call(config, msg)
            case "echo":
                reply = f"echo: {msg.text}" if msg.text else None
            case _:
                reply = None
        if msg.from_me and reply is not None:
            # Our own message (sent from the phone, or an earlier reply): answering it could loop forever.
            log.info("inbox reply to own message dropped company_id=%s message_id=%s", msg.company_id,
                     msg.message_id)
            reply = None
        return HandleOutcome(handler=config.kind, reply=reply, event_webhook=bool(config.event_webhook_url))

    def _done_key(self, msg: IncomingMessage) -> str:
        return f"{self._settings.redis_prefix}whatsapp:inbox:done:{msg.company_id}:{msg.message_id}"

    async def _handled_before(self, msg: IncomingMessage, claim: str) -> HandleOutcome | None:
        """This chain's earlier outcome for the message, if its handler already ran (Redis down: None)."""
        try:
            raw = await self._redis.get(self._done_key(msg))
        except (aioredis.RedisError, OSError):
            return None
        if not raw:
            return None
        done = json.loads(raw)
        if done.get("claim") != claim:
            return None
        return HandleOutcome(handler=str(done["handler"]), reply=done.get("reply"),
                             event_webhook=bool(done.get("event_webhook")))

    async def _remember_handled(self, msg: IncomingMessage, claim: str, outcome: HandleOutcome) -> None:
        done = {"claim": claim, "handler": outcome.handler, "reply": outcome.reply,
                "event_webhook": outcome.event_webhook}
        try:
            await self._redis.set(self._done_key(msg), json.dumps(done), ex=self._settings.inbox_claim_ttl_s)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("inbox outcome not remembered company_id=%s message_id=%s error=%s",
                        msg.company_id, msg.message_id, type(exc).__name__)

    async def _claim(self, msg: IncomingMessage, claim: str) -> bool:
        """True when this inbox chain may handle the WhatsApp id (first to claim it, or it already did)."""
        key = f"{self._settings.redis_prefix}whatsapp:inbox:claim:{msg.company_id}:{msg.message_id}"
        try:
            if await self._redis.set(key, claim, nx=True, ex=self._settings.inbox_claim_ttl_s):
                return True
            return bool(await self._redis.get(key) == claim)
        except (aioredis.RedisError, OSError) as exc:
            # Redis down: handle it (the workflow's own seen ids still drop redeliveries within the chain).
            log.warning("inbox claim unavailable company_id=%s message_id=%s error=%s",
                        msg.company_id, msg.message_id, type(exc).__name__)
            return True

    async def _reserve(self, company_id: str, message_id: str, *, raise_not_connected: bool) -> ReplySlot:
        status = await session_status(self._client, company_id)
        # A degraded session still holds its connection: its reply goes out (and is the probe that
        # tells whether the server acknowledges sends again).
        if status is None or not status.state.holds_connection or not status.holder_queue:
            if raise_not_connected:
                state = status.state.value if status else "none"
                raise ApplicationError(f"company {company_id} is not connected (state: {state})",
                                       type=ERROR_NOT_CONNECTED)
            return ReplySlot(allowed=False)
        # The member is per message: a retried reservation does not use a second slot.
        decision = await self._limiter.check(company_id, f"reply-{message_id}")
        if not decision.allowed:
            log.info("inbox reply rate limited company_id=%s message_id=%s retry_after_s=%.2f",
                     company_id, message_id, decision.retry_after_s)
            return ReplySlot(allowed=False, retry_after_s=decision.retry_after_s)
        return ReplySlot(allowed=True, holder_queue=status.holder_queue)

    async def _webhook(self, config: HandlerConfig, msg: IncomingMessage) -> str | None:
        if not config.webhook_url:
            raise ApplicationError(f"company {msg.company_id} has the webhook handler but no webhook URL",
                                   type="HandlerMisconfigured")
        event_id = message_event_id(msg.company_id, msg.message_id)
        resp = await self._post(config.webhook_url, config.secret, event_id, "message",
                                message_payload(msg, self._settings.api_base_url), msg.company_id)
        if not resp.content:
            return None
        try:
            answer = resp.json()
        except ValueError:
            return None  # a 2xx without a JSON body: delivered, no reply
        return _reply_of(answer)

    async def _post(self, url: str, secret: str | None, event_id: str, kind: str, payload: dict[str, Any],
                    company_id: str) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "waorch-inbox/1",
            EVENT_ID_HEADER: event_id,
            "X-Event-Type": kind,
            "X-Delivery-Attempt": str(activity.info().attempt),
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            resp = await self._http_client().post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            # The URL may carry a token: name only the error class.
            log.warning("webhook unreachable company_id=%s event_id=%s error=%s attempt=%d",
                        company_id, event_id, type(exc).__name__, activity.info().attempt)
            raise ApplicationError(f"webhook unreachable: {type(exc).__name__}", type="WebhookUnreachable") from None
        if not 200 <= resp.status_code < 300:
            log.warning("webhook refused company_id=%s event_id=%s status=%d attempt=%d",
                        company_id, event_id, resp.status_code, activity.info().attempt)
            raise ApplicationError(f"webhook answered HTTP {resp.status_code}", type="WebhookStatus")
        return resp

    def _resolve(self, path: str) -> Callable[..., Any]:
        fn = self._callables.get(path)
        if fn is None:
            if not CALLABLE_PATH.fullmatch(path):
                raise ApplicationError(f"invalid handler callable {path!r}", type="HandlerMisconfigured",
                                       non_retryable=True)
            module_name, _, attr = path.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                # Retried: a deploy may bring the module; the window bounds it.
                raise ApplicationError(f"handler callable {path} not importable: {exc}",
                                       type="HandlerMisconfigured") from None
            if not callable(fn):
                raise ApplicationError(f"handler {path} is not callable", type="HandlerMisconfigured")
            self._callables[path] = fn
        return fn

    async def _call(self, config: HandlerConfig, msg: IncomingMessage) -> str | None:
        if not config.callable_path:
            raise ApplicationError(f"company {msg.company_id} has the callable handler but no callable",
                                   type="HandlerMisconfigured")
        fn = self._resolve(config.callable_path)
        payload = message_payload(msg, self._settings.api_base_url)
        try:
            if inspect.iscoroutinefunction(fn):
                answer = await fn(payload)
            else:
                answer = await asyncio.to_thread(fn, payload)
        except Exception as exc:
            log.warning("handler callable failed company_id=%s message_id=%s error=%s",
                        msg.company_id, msg.message_id, type(exc).__name__)
            raise ApplicationError(f"handler callable raised {type(exc).__name__}: {exc}",
                                   type="HandlerFailed") from None
        return _reply_of(answer)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.inbox_tuning, self.handle_incoming, self.reserve_reply, self.deliver_inbox_event]
