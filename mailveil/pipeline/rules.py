"""The rules a message meets after it was accepted, in order, as data.

Each rule looks at plain values and says whether it stops the message for one recipient.
The first rule that hits decides; a message no rule stops is relayed. Rules never edit the
message (that is :mod:`mailveil.mail.rewrite`'s job).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailveil.domain.addresses import AddressBook, Kind, Role
from mailveil.domain.booking import Booking, is_open
from mailveil.domain.verdicts import Outcome

MAX_ATTACHMENT_MB = 10  # the help centre's promise; the refusal notice quotes it
MAX_ATTACHMENT_BYTES = MAX_ATTACHMENT_MB * 1024 * 1024


@dataclass(frozen=True)
class Context:
    """Everything the rules may look at, for one message."""

    to_cc: tuple[str, ...]
    attachment_bytes: int
    scan: str
    now: datetime
    grace: timedelta
    book: AddressBook


@dataclass(frozen=True)
class Recipient:
    address: str
    booking_id: int
    booking: Booking
    role: Role  # the role of the party who receives


@dataclass(frozen=True)
class Rule:
    outcome: Outcome
    description: str
    hits: Callable[[Context, Recipient], bool]


def _infected(ctx: Context, _r: Recipient) -> bool:
    return ctx.scan.startswith("infected")


def _several_customers(ctx: Context, _r: Recipient) -> bool:
    customers = set()
    for address in ctx.to_cc:
        parsed = ctx.book.parse(address)
        if parsed is not None and parsed.kind is Kind.PARTY and parsed.role is Role.CUSTOMER:
            customers.add(parsed.token)
    return len(customers) > 1


def _too_large(ctx: Context, _r: Recipient) -> bool:
    return ctx.attachment_bytes > MAX_ATTACHMENT_BYTES


def _closed(ctx: Context, r: Recipient) -> bool:
    return not is_open(r.booking, ctx.grace, ctx.now)


RULES: tuple[Rule, ...] = (
    # An infected attachment stops the message whatever else is true of it.
    Rule(Outcome.REFUSED_VIRUS, "an attachment was found infected", _infected),
    # Privacy: customers must not see each other's relay addresses (BCC is fine).
    Rule(Outcome.REFUSED_SEVERAL_CUSTOMERS, "several customers in To or Cc", _several_customers),
    Rule(Outcome.REFUSED_TOO_LARGE, f"attachments above {MAX_ATTACHMENT_MB} MB", _too_large),
    # Confirmation to activity end + grace period; a cancellation closes it early.
    Rule(Outcome.REFUSED_EXPIRED, "the conversation is closed", _closed),
)


@dataclass(frozen=True)
class Decision:
    recipient: Recipient
    outcome: Outcome
    rule: str  # the description of the rule that decided, "" when relayed


def decide(ctx: Context, recipients: list[Recipient]) -> list[Decision]:
    decisions = []
    for r in recipients:
        hit = next((rule for rule in RULES if rule.hits(ctx, r)), None)
        decisions.append(Decision(r, hit.outcome, hit.description) if hit
                         else Decision(r, Outcome.RELAYED, ""))
    return decisions


def may_notify(mail_from: str, auto_submitted: bool, is_delivery_report: bool,
               book: AddressBook) -> bool:
    """Never answer a bounce, an auto-reply or our own addresses: no mail loops, no
    backscatter (RFC 3834)."""
    return not (not mail_from or auto_submitted or is_delivery_report or book.is_ours(mail_from))
