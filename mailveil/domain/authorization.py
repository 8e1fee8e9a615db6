"""May this envelope sender write to this relay address? Decided from plain values."""

from __future__ import annotations

from mailveil.domain.addresses import Role, same_mailbox
from mailveil.domain.booking import Booking
from mailveil.domain.verdicts import Rejection


def check_sender(booking: Booking | None, role: Role, sender: str) -> Rejection | None:
    """Reject at RCPT time, or ``None`` to accept.

    Mail to the customer's relay address is accepted only from the booking's supplier
    account address, and the other way round. The conversation window is not checked here:
    a party writing after it closed deserves a notice that explains why (see
    :mod:`mailveil.pipeline`), which an SMTP rejection would not give in their language.
    """
    if booking is None:
        return Rejection.UNKNOWN_ADDRESS
    if not same_mailbox(sender, booking.party(role.other).email):
        return Rejection.NOT_A_PARTY
    return None
