"""Sentry for every process (SPEC H5): a no-op without ``SENTRY_DSN``.

``init_sentry(settings, component)`` once at process start; workers add
``sentry_interceptors()`` to their ``Worker(interceptors=...)`` so workflow and
activity failures are captured with component, operation and company id tags
(shape of samples-python ``sentry/interceptor.py``; workflow captures only
when not replaying, so a replay never reports an old failure twice).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from typing import Any

from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from domain.settings import Settings

with workflow.unsafe.imports_passed_through():
    import sentry_sdk

log = logging.getLogger("waorch.sentry")

_enabled = False


def init_sentry(settings: Settings, component: str, **options: Any) -> bool:
    """Initialise Sentry for ``component`` (api, worker, connector); ``False`` when no DSN is set.

    Logging warnings become breadcrumbs and errors become events; degraded modes
    are reported as warnings (:func:`capture_warning`). ``options`` go to
    ``sentry_sdk.init`` (e.g. a ``transport`` in tests).
    """
    global _enabled
    if settings.sentry_dsn is None:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        release="waorch@0.1.0",
        send_default_pii=False,
        # Frame locals would carry message texts and keys into Sentry (STYLE: never a body, never a secret).
        include_local_variables=False,
        traces_sample_rate=0.0,
        **options,
    )
    sentry_sdk.set_tag("component", component)
    sentry_sdk.set_tag("connector_id", settings.connector_id)
    _enabled = True
    log.info("sentry enabled component=%s", component)
    return True


def sentry_enabled() -> bool:
    return _enabled


def close_sentry() -> None:
    """Flush and switch Sentry off (process exit, tests)."""
    global _enabled
    if _enabled:
        sentry_sdk.flush(timeout=2)
        sentry_sdk.init(dsn=None)
    _enabled = False


def capture_warning(message: str, *, operation: str, company_id: str | None = None) -> None:
    """A degraded mode worth a Sentry warning (no-op without a DSN)."""
    if not _enabled:
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("operation", operation)
        if company_id:
            scope.set_tag("company_id", company_id)
        scope.capture_message(message, level="warning")


def _company_of(args: Any) -> str | None:
    for arg in args:
        value = getattr(arg, "company_id", None)
        if isinstance(value, str):
            return value
        if isinstance(arg, str) and len(args) == 1:
            return arg
    return None


def _context_of(args: Any) -> dict[str, Any] | None:
    if len(args) == 1 and is_dataclass(args[0]) and not isinstance(args[0], type):
        body = asdict(args[0])
        body.pop("text", None)  # never a message body in an error report
        return body
    return None


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if not _enabled:
            return await super().execute_activity(input)
        with sentry_sdk.isolation_scope() as scope:
            info = activity.info()
            scope.set_tag("temporal.execution_type", "activity")
            scope.set_tag("operation", info.activity_type)
            scope.set_tag("temporal.workflow.type", info.workflow_type)
            scope.set_tag("temporal.workflow.id", info.workflow_id)
            scope.set_tag("temporal.activity.task_queue", info.task_queue)
            company = _company_of(input.args)
            if company:
                scope.set_tag("company_id", company)
            try:
                return await super().execute_activity(input)
            except Exception:
                context = _context_of(input.args)
                if context is not None:
                    scope.set_context("temporal.activity.input", context)
                scope.capture_exception()
                raise


class _WorkflowInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        if not _enabled:
            return await super().execute_workflow(input)
        with sentry_sdk.isolation_scope() as scope:
            info = workflow.info()
            scope.set_tag("temporal.execution_type", "workflow")
            scope.set_tag("operation", info.workflow_type)
            scope.set_tag("temporal.workflow.id", info.workflow_id)
            scope.set_tag("temporal.workflow.task_queue", info.task_queue)
            company = _company_of(input.args)
            if company:
                scope.set_tag("company_id", company)
            try:
                return await super().execute_workflow(input)
            except Exception:
                if not workflow.unsafe.is_replaying():
                    with workflow.unsafe.sandbox_unrestricted():
                        scope.capture_exception()
                raise


class SentryInterceptor(Interceptor):
    """Reports workflow and activity failures to Sentry (pass-through when Sentry is off)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(super().intercept_activity(next))

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowInbound


def sentry_interceptors() -> list[Interceptor]:
    """``Worker(interceptors=sentry_interceptors())``: empty when Sentry is off."""
    return [SentryInterceptor()] if _enabled else []
