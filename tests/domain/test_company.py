import pytest

from domain.company import InvalidCompanyId, normalize_company_id


@pytest.mark.parametrize(
    "raw",
    ["962302", "company_962302", " company_962302 ", "\tcompany_962302\n", 962302],
)
def test_same_company_under_every_spelling(raw: object) -> None:
    assert normalize_company_id(raw) == "company_962302"


@pytest.mark.parametrize("raw", ["acme", "Acme-Salon_2", "a" * 64, "company_x-1"])
def test_plain_ids_are_kept(raw: str) -> None:
    assert normalize_company_id(raw) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../etc/passwd", "invalid"),
        ("company_1/../../x", "invalid"),
        ("[object Object]", "invalid"),
        ("a" * 65, "invalid"),
        ("x; DROP TABLE companies", "invalid"),
        ("ко123", "invalid"),
        ("a\x00b", "invalid"),
        ("%2e%2e", "invalid"),
        (None, "must be a string"),
        (True, "must be a string"),
        ({"id": 1}, "must be a string"),
        (12.5, "must be a string"),
    ],
)
def test_hostile_ids_are_rejected_with_a_reason(raw: object, fragment: str) -> None:
    with pytest.raises(InvalidCompanyId) as err:
        normalize_company_id(raw)
    assert fragment in str(err.value)


def test_long_hostile_id_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidCompanyId) as err:
        normalize_company_id("<" * 5000)
    assert len(str(err.value)) < 200
