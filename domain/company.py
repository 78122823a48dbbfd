"""Company identifiers (SPEC S1).

One company, one id: ``962302``, ``company_962302`` and `` company_962302 `` all
name ``company_962302``. Anything that is not ``[A-Za-z0-9_-]{1,64}`` after
trimming is refused, so no id can smuggle a path, a SQL fragment or a
JavaScript ``[object Object]`` into a workflow id, a key or a log line.
"""

from __future__ import annotations

import re

COMPANY_ID_MAX = 64
_ALLOWED = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DIGITS = re.compile(r"[0-9]+")
PREFIX = "company_"
# Every id ``normalize_company_id`` accepts as it is (no surrounding spaces), as one JSON-schema pattern:
# a bare number short enough to take the prefix, or 1-64 allowed characters with at least one non-digit.
COMPANY_ID_PATTERN = (rf"^(?:[0-9]{{1,{COMPANY_ID_MAX - len(PREFIX)}}}"
                      rf"|[A-Za-z0-9_-]{{0,{COMPANY_ID_MAX - 1}}}[A-Za-z_-][A-Za-z0-9_-]{{0,{COMPANY_ID_MAX - 1}}})$")


class InvalidCompanyId(ValueError):
    """Raised when a company id cannot be normalised; the message says why."""


def normalize_company_id(raw: object) -> str:
    """Return the canonical company id for ``raw``.

    Args:
        raw: what a caller sent (path segment, JSON field, CLI argument).

    Returns:
        ``company_<digits>`` for a bare number, otherwise the trimmed id.

    Raises:
        InvalidCompanyId: ``raw`` is not a string, is empty, or contains
            characters outside ``[A-Za-z0-9_-]``, or is longer than 64.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidCompanyId(f"company id must be a string, got {type(raw).__name__}")
    text = str(raw).strip()
    if not text:
        raise InvalidCompanyId("company id is empty")
    if _DIGITS.fullmatch(text):
        text = PREFIX + text
    if not _ALLOWED.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InvalidCompanyId(
            f"company id {shown!r} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return text
