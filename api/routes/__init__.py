"""Routers, one module per noun. ``api.app`` includes every router listed here."""

from __future__ import annotations

from fastapi import APIRouter


def all_routers() -> list[APIRouter]:
    # Imported here so a route module can import api.deps without a cycle.
    from api.routes import health

    return [health.router]
