"""The environment of a child process (connector, worker) that must run with a test's Settings."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from domain.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def settings_env(settings: Settings, temporal_target: str, **overrides: str) -> dict[str, str]:
    """``os.environ`` plus every field of ``settings`` as its variable (secrets unwrapped), the
    Temporal address, and ``overrides`` last."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or isinstance(value, dict | list):
            continue
        env[name.upper()] = str(value)
    env.update(TEMPORAL_ADDRESS=temporal_target, LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
    env.update(overrides)
    return env
