"""Deterministic workflow code only. Every workflow the worker runs is listed here."""

from __future__ import annotations

ALL_WORKFLOWS: list[type] = []
