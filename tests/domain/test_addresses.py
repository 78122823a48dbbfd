import pytest

from domain.addresses import InvalidAddress, normalize_phone, parse_jid, phone_of, recipient_jid


def test_lid_keeps_its_suffix() -> None:
    jid = recipient_jid("123456789012345@lid")
    assert str(jid) == "123456789012345@lid"
    assert jid.is_lid and jid.phone is None


def test_device_suffix_is_split_off_not_lost() -> None:
    jid = parse_jid("79991234567:12@s.whatsapp.net")
    assert (jid.user, jid.device, str(jid)) == ("79991234567", 12, "79991234567@s.whatsapp.net")


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("79991234567@s.whatsapp.net", "79991234567"),
        ("79991234567:3@s.whatsapp.net", "79991234567"),
        ("79991234567@c.us", "79991234567"),
        ("120363012345678901@g.us", None),
        ("98765432101234@lid", None),
        ("garbage", None),
    ],
)
def test_phone_extraction(text: str, phone: str | None) -> None:
    assert phone_of(text) == phone


def test_phone_numbers_are_validated() -> None:
    assert normalize_phone("+7 999 123-45-67") == "79991234567"
    assert normalize_phone("79991234567") == "79991234567"
    assert str(recipient_jid("+1 650 253 0000")) == "16502530000@s.whatsapp.net"
    for bad in ["123", "+0000000", "hello", "", "+7999123456789012345"]:
        with pytest.raises(InvalidAddress):
            normalize_phone(bad)


@pytest.mark.parametrize("bad", ["user@evil.com", "@lid", "a b@s.whatsapp.net", "x@", "../x@lid"])
def test_bad_jids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        recipient_jid(bad)
