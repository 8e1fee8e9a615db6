from datetime import UTC, datetime, timedelta

from mailveil.domain.addresses import Role
from mailveil.domain.authorization import check_sender
from mailveil.domain.booking import Booking, BookingStatus, Party, is_open, open_until
from mailveil.domain.verdicts import Rejection

END = datetime(2026, 7, 1, 12, tzinfo=UTC)
WEEK = timedelta(days=7)
BOOKING = Booking(
    reference="R1", supplier=Party("Sunny Tours", "ops@sunny.example", "fr"),
    customer=Party("Ann", "ann@example.org", "th"), activity_start=END - timedelta(hours=3),
    activity_end=END, status=BookingStatus.CONFIRMED, customer_token="12ab3456cd78",
    supplier_token="1a2b3c4d5678",
)


def test_window_closes_grace_after_activity_end() -> None:
    assert open_until(BOOKING, WEEK) == END + WEEK
    assert is_open(BOOKING, WEEK, END + WEEK - timedelta(seconds=1))
    assert not is_open(BOOKING, WEEK, END + WEEK)


def test_moving_the_activity_moves_the_window() -> None:
    later = BOOKING.__class__(**{**BOOKING.__dict__, "activity_end": END + timedelta(days=30)})
    assert is_open(later, WEEK, END + timedelta(days=20))


def test_cancellation_closes_grace_after_cancelling_but_never_later() -> None:
    cancelled_at = END - timedelta(days=20)
    cancelled = Booking(**{**BOOKING.__dict__, "status": BookingStatus.CANCELLED,
                           "cancelled_at": cancelled_at})
    assert open_until(cancelled, WEEK) == cancelled_at + WEEK
    late = Booking(**{**cancelled.__dict__, "cancelled_at": END + timedelta(days=3)})
    assert open_until(late, WEEK) == END + WEEK


def test_only_the_other_party_may_write() -> None:
    assert check_sender(BOOKING, Role.SUPPLIER, "ANN@example.org") is None
    assert check_sender(BOOKING, Role.CUSTOMER, "ops@sunny.example") is None
    assert check_sender(BOOKING, Role.CUSTOMER, "ann@example.org") is Rejection.NOT_A_PARTY
    assert check_sender(BOOKING, Role.SUPPLIER, "eve@example.org") is Rejection.NOT_A_PARTY
    assert check_sender(None, Role.SUPPLIER, "ann@example.org") is Rejection.UNKNOWN_ADDRESS
