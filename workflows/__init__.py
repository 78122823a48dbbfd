"""Deterministic workflow code only. Every workflow the worker runs is listed here."""

from __future__ import annotations

from workflows.company_events import CompanyEventsWorkflow
from workflows.inbox import FailedInboxMessageWorkflow, FailedMessagesReminderWorkflow, InboxWorkflow
from workflows.jobs import BackupWorkflow, CleanupWorkflow, RestoreTestWorkflow
from workflows.send import ConnectorCallWorkflow, SendMessageWorkflow
from workflows.session import SessionWorkflow

ALL_WORKFLOWS: list[type] = [
    SessionWorkflow, SendMessageWorkflow, ConnectorCallWorkflow,
    BackupWorkflow, RestoreTestWorkflow, CleanupWorkflow,
    InboxWorkflow, FailedInboxMessageWorkflow, FailedMessagesReminderWorkflow, CompanyEventsWorkflow,
]
