"""The RCPT-time verdict: pure, so every case is tested without a socket."""

from __future__ import annotations

from dataclasses import dataclass

from mailveil.domain.addresses import Kind, ParsedAddress
from mailveil.domain.authorization import check_sender
from mailveil.domain.booking import Booking
from mailveil.domain.verdicts import Rejection
from mailveil.smtp import replies


@dataclass(frozen=True)
class Lookup:
    """What the store knows about one envelope recipient."""

    parsed: ParsedAddress | None
    booking: Booking | None = None
    bounce_known: bool = False


def rcpt_reply(mail_from: str, lookup: Lookup) -> str | None:
    """``None`` to accept the recipient, else the SMTP reply that refuses it.

    Bounces come from the null sender to a VERP address; relay addresses never accept the
    null sender, since no party writes from it and a notice to it would go nowhere.
    """
    parsed = lookup.parsed
    if parsed is None:
        return replies.S550_UNKNOWN
    if parsed.kind is Kind.BOUNCE:
        return None if lookup.bounce_known else replies.S550_UNKNOWN
    if not mail_from:
        return replies.S550_NULL_SENDER
    assert parsed.role is not None
    rejection = check_sender(lookup.booking, parsed.role, mail_from)
    if rejection is Rejection.UNKNOWN_ADDRESS:
        return replies.S550_UNKNOWN
    if rejection is Rejection.NOT_A_PARTY:
        return replies.S550_NOT_PARTY
    return None
