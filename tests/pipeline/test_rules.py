from datetime import UTC, datetime, timedelta

import pytest

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Booking, BookingStatus, Party
from mailveil.domain.verdicts import Outcome
from mailveil.pipeline.rules import (
    MAX_ATTACHMENT_BYTES,
    Context,
    Recipient,
    decide,
    may_notify,
)

BOOK = AddressBook("reply.example.com")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def booking(n: int, end: datetime = NOW + timedelta(days=3)) -> Booking:
    return Booking(
        reference=f"R{n}", supplier=Party("Sunny", "ops@sunny.example", "fr"),
        customer=Party(f"C{n}", f"c{n}@example.org", "en"), activity_start=end,
        activity_end=end, status=BookingStatus.CONFIRMED, customer_token=f"{n:012x}",
        supplier_token=f"{n + 100:012x}")


def to_customer(n: int, **kw: datetime) -> Recipient:
    b = booking(n, **kw)
    return Recipient(BOOK.relay_address(Role.CUSTOMER, b.customer_token), n, b, Role.CUSTOMER)


def ctx(**kw: object) -> Context:
    values: dict[str, object] = {"to_cc": (), "attachment_bytes": 0, "scan": "clean",
                                 "now": NOW, "grace": timedelta(days=7), "book": BOOK}
    values.update(kw)
    return Context(**values)  # type: ignore[arg-type]


def test_clean_message_is_relayed() -> None:
    [d] = decide(ctx(), [to_customer(1)])
    assert d.outcome is Outcome.RELAYED


def test_several_customers_in_to_or_cc_refuses_everyone() -> None:
    rs = [to_customer(1), to_customer(2)]
    decisions = decide(ctx(to_cc=(rs[0].address, rs[1].address.upper())), rs)
    assert {d.outcome for d in decisions} == {Outcome.REFUSED_SEVERAL_CUSTOMERS}


def test_one_customer_in_to_others_in_bcc_is_fine() -> None:
    rs = [to_customer(1), to_customer(2), to_customer(3)]
    decisions = decide(ctx(to_cc=(rs[0].address, "friend@example.net")), rs)
    assert {d.outcome for d in decisions} == {Outcome.RELAYED}


@pytest.mark.parametrize(("size", "outcome"), [
    (MAX_ATTACHMENT_BYTES, Outcome.RELAYED),
    (MAX_ATTACHMENT_BYTES + 1, Outcome.REFUSED_TOO_LARGE),
])
def test_attachment_limit_is_ten_megabytes(size: int, outcome: Outcome) -> None:
    assert decide(ctx(attachment_bytes=size), [to_customer(1)])[0].outcome is outcome


def test_closed_conversation() -> None:
    r = to_customer(1, end=NOW - timedelta(days=10))
    assert decide(ctx(), [r])[0].outcome is Outcome.REFUSED_EXPIRED


def test_virus_wins_over_everything() -> None:
    r = to_customer(1, end=NOW - timedelta(days=10))
    d = decide(ctx(scan="infected: Eicar", attachment_bytes=MAX_ATTACHMENT_BYTES * 2), [r])[0]
    assert d.outcome is Outcome.REFUSED_VIRUS


@pytest.mark.parametrize(("mail_from", "auto", "report", "expected"), [
    ("ann@example.org", False, False, True),
    ("", False, False, False),
    ("ann@example.org", True, False, False),
    ("ann@example.org", False, True, False),
    ("no-reply@reply.example.com", False, False, False),
    ("customer-000000000001@REPLY.example.com", False, False, False),
])
def test_never_answer_loops(mail_from: str, auto: bool, report: bool, expected: bool) -> None:
    assert may_notify(mail_from, auto, report, BOOK) is expected
