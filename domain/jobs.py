"""The contract of the nightly jobs (SPEC B1-B4): kinds, inputs and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domain.inbox import FAILED_REMINDER_WORKFLOW

JOB_KINDS = ("backup", "restore-test", "cleanup")

# Failures that retrying cannot fix: a wrong pg_dump, a dump that does not match
# its manifest, a restore whose counts differ, no backup to restore.
NON_RETRYABLE = ["BackupRefused", "VerificationFailed", "RestoreMismatch", "NoVerifiedBackup", "ToolFailed"]


@dataclass
class JobInput:
    dry_run: bool = False
    verbose: bool = False
    trigger: str = "schedule"  # "schedule" | "api" | "cli"


@dataclass
class JobStart:
    kind: str
    workflow_id: str
    dry_run: bool


@dataclass
class JobFinish:
    run_id: int
    status: str  # "succeeded" | "failed"
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class JobResult:
    kind: str
    run_id: int
    status: str
    dry_run: bool
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# The workflow type that runs each kind (workflows/jobs.py registers them under these names).
# "failed-messages" is the daily reminder of failed incoming messages still waiting (workflows/inbox.py):
# scheduled like the jobs (listed, paused, triggered with them), not a job with job_runs rows.
JOB_WORKFLOW_TYPES: dict[str, str] = {
    "backup": "BackupWorkflow",
    "restore-test": "RestoreTestWorkflow",
    "cleanup": "CleanupWorkflow",
    "failed-messages": FAILED_REMINDER_WORKFLOW,
}
