import re

from hypothesis import given
from hypothesis import strategies as st

from mailveil.domain.addresses import AddressBook, Kind, Role, new_bounce_token, new_token

BOOK = AddressBook("reply.example.com")


def test_tokens_are_12_lowercase_hex_and_unique() -> None:
    tokens = {new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{12}", t) for t in tokens)


def test_addresses_have_the_brief_shape() -> None:
    assert BOOK.relay_address(Role.CUSTOMER, "12ab3456cd78") == \
        "customer-12ab3456cd78@reply.example.com"
    assert BOOK.relay_address(Role.SUPPLIER, "1a2b3c4d5678") == \
        "local-partner-1a2b3c4d5678@reply.example.com"


@given(st.sampled_from(list(Role)), st.from_regex(r"[0-9a-f]{12}", fullmatch=True))
def test_parse_inverts_format(role: Role, token: str) -> None:
    parsed = BOOK.parse(BOOK.relay_address(role, token))
    assert parsed is not None
    assert (parsed.kind, parsed.role, parsed.token) == (Kind.PARTY, role, token)


def test_parse_is_case_insensitive_and_takes_angle_brackets() -> None:
    parsed = BOOK.parse("<Customer-12AB3456CD78@Reply.Example.COM>")
    assert parsed is not None and parsed.token == "12ab3456cd78"


def test_parse_refuses_lookalikes() -> None:
    for address in ["customer-12ab3456cd7@reply.example.com",
                    "customer-12ab3456cd789@reply.example.com",
                    "customer-12ab3456cdzz@reply.example.com",
                    "customer-12ab3456cd78@reply.example.com.evil.example",
                    "customer-12ab3456cd78@example.com",
                    "customer-12ab3456cd78",
                    "no-reply@reply.example.com",
                    ""]:
        assert BOOK.parse(address) is None, address


def test_bounce_addresses_round_trip() -> None:
    token = new_bounce_token()
    parsed = BOOK.parse(BOOK.bounce_address(token))
    assert parsed is not None and (parsed.kind, parsed.token) == (Kind.BOUNCE, token)


def test_prefixes_are_configuration() -> None:
    book = AddressBook("mail.tours.example", "guest-", "host-")
    parsed = book.parse("host-1a2b3c4d5678@mail.tours.example")
    assert parsed is not None and parsed.role is Role.SUPPLIER
    assert book.parse("local-partner-1a2b3c4d5678@mail.tours.example") is None
