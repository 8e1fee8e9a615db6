from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailveil.domain.addresses import Role
from mailveil.domain.authorization import check_sender
from mailveil.domain.booking import (
    Booking,
    BookingStatus,
    Party,
    beyond_horizon,
    is_open,
    open_until,
)
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


ANY_ZONE = st.timezones() | st.builds(
    timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                            max_value=timedelta(hours=23, minutes=59)))
ANY_TIME = st.datetimes(timezones=ANY_ZONE)
ANY_GRACE = st.timedeltas()


@given(end=ANY_TIME, cancelled_at=st.none() | ANY_TIME, grace=ANY_GRACE, now=ANY_TIME)
def test_window_is_computed_for_any_date_and_grace(end: datetime, cancelled_at: datetime | None,
                                                    grace: timedelta, now: datetime) -> None:
    status = BookingStatus.CONFIRMED if cancelled_at is None else BookingStatus.CANCELLED
    booking = Booking(**{**BOOKING.__dict__, "activity_start": end, "activity_end": end,
                         "status": status, "cancelled_at": cancelled_at})
    until = open_until(booking, grace)
    is_open(booking, grace, now)  # comparing with any time never raises either
    beyond_horizon(end, now, abs(grace))
    normal = open_until(Booking(**{**booking.__dict__, "status": BookingStatus.CONFIRMED}), grace)
    assert until <= normal  # cancelling never lengthens the window
    try:
        exact = end + grace
    except OverflowError:  # held at the end of the calendar it ran past
        assert normal.replace(tzinfo=None) in (datetime.max, datetime.min)
        assert (normal.replace(tzinfo=None) == datetime.max) == (grace > timedelta(0))
    else:
        assert normal == exact


def test_a_window_past_year_9999_never_closes() -> None:
    far = Booking(**{**BOOKING.__dict__, "activity_end": datetime(9999, 12, 31, 23, 59, 59,
                                                                   tzinfo=UTC)})
    assert open_until(far, WEEK) == datetime.max.replace(tzinfo=UTC)
    assert is_open(far, WEEK, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))


@pytest.mark.parametrize(("when", "beyond"), [
    (END + timedelta(days=730), False),
    (END + timedelta(days=730, seconds=1), True),
    (END - timedelta(days=730), False),
    (END - timedelta(days=730, seconds=1), True),
    (datetime.max.replace(tzinfo=UTC), True),
    (datetime.min.replace(tzinfo=timezone(timedelta(hours=-23))), True),
])
def test_activity_dates_must_lie_within_the_horizon_either_way(when: datetime,
                                                                beyond: bool) -> None:
    assert beyond_horizon(when, END, timedelta(days=730)) is beyond
