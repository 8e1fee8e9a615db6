"""A confirmed booking as the relay sees it, and the conversation window it opens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailveil.domain.addresses import Role


class BookingStatus(StrEnum):
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Party:
    name: str
    email: str
    locale: str


@dataclass(frozen=True)
class Booking:
    reference: str
    supplier: Party
    customer: Party
    activity_start: datetime
    activity_end: datetime
    status: BookingStatus
    customer_token: str
    supplier_token: str
    cancelled_at: datetime | None = None

    def party(self, role: Role) -> Party:
        return self.customer if role is Role.CUSTOMER else self.supplier

    def token(self, role: Role) -> str:
        return self.customer_token if role is Role.CUSTOMER else self.supplier_token


def open_until(booking: Booking, grace: timedelta) -> datetime:
    """When the conversation closes.

    Confirmation opens it; the activity's end plus the grace period closes it, so a changed
    activity date moves the window. A cancelled booking closes at its cancellation time
    plus the grace period (but never later than the normal window): the parties can still
    sort out a refund or a forgotten item for a few days, then the relay goes quiet.
    """
    normal = _later(booking.activity_end, grace)
    if booking.status is BookingStatus.CANCELLED and booking.cancelled_at is not None:
        return min(normal, _later(booking.cancelled_at, grace))
    return normal


def _later(when: datetime, delta: timedelta) -> datetime:
    """``when + delta``, held at the ends of the calendar instead of raising.

    The API keeps activity dates within a horizon, but a window that cannot be computed
    must not turn every message and API call of a booking into an error: past year 9999
    a conversation simply never closes (and before year 1 it is long closed).
    """
    try:
        return when + delta
    except OverflowError:
        end = datetime.max if delta > timedelta(0) else datetime.min
        return end.replace(tzinfo=when.tzinfo)


def is_open(booking: Booking, grace: timedelta, now: datetime) -> bool:
    return now < open_until(booking, grace)


def beyond_horizon(when: datetime, now: datetime, horizon: timedelta) -> bool:
    """True for an activity date further than ``horizon`` from ``now``, either way.

    Bookings are registered when confirmed, so a date years ahead is a typo or a probe,
    and one would keep a conversation open for as long. Past dates stay allowed within
    the same horizon: a booking entered late (or moved back to correct a mistake) still
    gets its window, already closed if the activity ended more than the grace period ago.
    The difference of two aware datetimes cannot overflow, unlike ``now + horizon``.
    """
    return abs(when - now) > horizon
