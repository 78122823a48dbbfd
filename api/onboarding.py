"""Short-lived onboarding links (SPEC O6): a company-scoped credential in a URL.

A token is ``obt_<company>.<expiry unix>.<signature>``; the signature is an
HMAC-SHA256 over company and expiry with a key derived from the admin key, so
no table is needed, rotating the admin key revokes every link, and a token
for one company can never be turned into another's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from domain.company import InvalidCompanyId, normalize_company_id

PREFIX = "obt_"
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 7 * 24 * 3600


class InvalidOnboardingToken(ValueError):
    pass


def _signing_key(admin_key: str) -> bytes:
    return hashlib.sha256(b"waorch onboarding link v1\x00" + admin_key.encode()).digest()


def _sign(admin_key: str, company_id: str, expires: int) -> str:
    mac = hmac.new(_signing_key(admin_key), f"{company_id}\x00{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue_token(
    admin_key: str, company_id: str, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> tuple[str, int]:
    """Return ``(token, expires_unix)`` for ``company_id``."""
    if not 60 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be between 60 and {MAX_TTL_S} seconds")
    expires = int((now or time.time()) + ttl_s)
    return f"{PREFIX}{company_id}.{expires}.{_sign(admin_key, company_id, expires)}", expires


def is_onboarding_token(key: str) -> bool:
    return key.startswith(PREFIX)


def verify_token(admin_key: str, token: str, now: float | None = None) -> str:
    """The company id the token was issued for.

    Raises:
        InvalidOnboardingToken: malformed, forged, or expired.
    """
    if not is_onboarding_token(token) or len(token) > 300:
        raise InvalidOnboardingToken("not an onboarding link token")
    parts = token[len(PREFIX):].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise InvalidOnboardingToken("malformed onboarding link token")
    company, expires_text, signature = parts
    try:
        company = normalize_company_id(company)
    except InvalidCompanyId:
        raise InvalidOnboardingToken("malformed onboarding link token") from None
    expected = _sign(admin_key, company, int(expires_text))
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise InvalidOnboardingToken("onboarding link signature does not match")
    if int(expires_text) < (now or time.time()):
        raise InvalidOnboardingToken("onboarding link has expired: ask for a new one")
    return company
