from datetime import UTC, datetime

from mailveil.domain.addresses import AddressBook, Kind, ParsedAddress, Role
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.smtp import replies
from mailveil.smtp.gate import Lookup, rcpt_reply

T = datetime(2026, 1, 1, tzinfo=UTC)
BOOKING = Booking("R1", Party("S", "ops@sunny.example", "fr"), Party("C", "c@example.org", "en"),
                  T, T, BookingStatus.CONFIRMED, "0" * 12, "1" * 12)
TO_SUPPLIER = ParsedAddress(Kind.PARTY, "1" * 12, Role.SUPPLIER)


def test_unknown_and_foreign_addresses() -> None:
    assert rcpt_reply("c@example.org", Lookup(None)) == replies.S550_UNKNOWN
    assert rcpt_reply("c@example.org", Lookup(TO_SUPPLIER, None)) == replies.S550_UNKNOWN


def test_party_checks() -> None:
    assert rcpt_reply("c@example.org", Lookup(TO_SUPPLIER, BOOKING)) is None
    assert rcpt_reply("x@example.org", Lookup(TO_SUPPLIER, BOOKING)) == replies.S550_NOT_PARTY
    assert rcpt_reply("", Lookup(TO_SUPPLIER, BOOKING)) == replies.S550_NULL_SENDER


def test_bounces_only_to_known_verp_addresses() -> None:
    bounce = ParsedAddress(Kind.BOUNCE, "a" * 20, None)
    assert rcpt_reply("", Lookup(bounce, bounce_known=True)) is None
    assert rcpt_reply("", Lookup(bounce, bounce_known=False)) == replies.S550_UNKNOWN


def test_addresses_parse_through_the_book() -> None:
    book = AddressBook("reply.example.com")
    assert book.parse("local-partner-111111111111@reply.example.com") == TO_SUPPLIER
