import pytest

from api.onboarding import InvalidOnboardingToken, issue_token, verify_token

ADMIN = "admin-key-0123456789abcdef"


def test_round_trip_and_expiry() -> None:
    token, expires = issue_token(ADMIN, "company_1", ttl_s=600, now=1_000_000)
    assert expires == 1_000_600
    assert verify_token(ADMIN, token, now=1_000_599) == "company_1"
    with pytest.raises(InvalidOnboardingToken, match="expired"):
        verify_token(ADMIN, token, now=1_000_601)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("company_1", "company_2"),  # another company, same signature
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
        lambda t: t.rsplit(".", 2)[0] + ".9999999999." + t.rsplit(".", 1)[1],  # extended expiry
        lambda t: "obt_../x.1.abc",
        lambda t: "obt_",
        lambda t: t + "." * 400,
    ],
)
def test_tampering_is_refused(mutate) -> None:
    token, _ = issue_token(ADMIN, "company_1", ttl_s=600, now=1_000_000)
    with pytest.raises(InvalidOnboardingToken):
        verify_token(ADMIN, mutate(token), now=1_000_100)


def test_rotating_the_admin_key_revokes_links() -> None:
    token, _ = issue_token(ADMIN, "company_1", ttl_s=600, now=1_000_000)
    with pytest.raises(InvalidOnboardingToken, match="signature"):
        verify_token(ADMIN + "-rotated", token, now=1_000_100)


def test_ttl_bounds() -> None:
    with pytest.raises(ValueError):
        issue_token(ADMIN, "c", ttl_s=5)
