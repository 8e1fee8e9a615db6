"""Builds the bytes that leave: a relayed copy for one recipient, or a refusal notice.

Pure apart from the clock and random ids the caller passes in or that ``make_msgid`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid

from mailveil.domain.addresses import AddressBook, Role
from mailveil.domain.booking import Booking, open_until
from mailveil.domain.threading import IdPair, translate_ids
from mailveil.domain.verdicts import Outcome
from mailveil.mail.banner import BOX_STYLE, banner
from mailveil.mail.inspect import MessageFacts
from mailveil.mail.mime import header_block
from mailveil.mail.notices import Notice, UndeliverableCause, build_notice
from mailveil.mail.rewrite import STEPS, RewritePlan
from mailveil.mail.steps import run
from mailveil.pipeline.rules import MAX_ATTACHMENT_MB


@dataclass(frozen=True)
class Voice:
    """How the platform presents itself; from the operator's settings."""

    platform_name: str
    display_name_template: str
    banner: bool
    grace: timedelta
    contact_form_url: str
    banner_style: str = BOX_STYLE
    # The portal's contact form for (booking reference, the notice's reader), a signed link;
    # None: contact_form_url, the operator's own page.
    contact_link: Callable[[str, Role], str] | None = None


@dataclass(frozen=True)
class Relayed:
    raw: bytes
    message_id: str
    pair: IdPair | None  # None when the original had no Message-ID to thread on
    steps: tuple[str, ...]  # the names of the STEPS that changed it, for the archive


def new_message_id(book: AddressBook) -> str:
    return make_msgid(domain=book.domain)


def relay_copy(raw: bytes, facts: MessageFacts, booking: Booking, recipient_role: Role,
               pairs: list[IdPair], book: AddressBook, voice: Voice,
               unverified: bool = False, sign: Callable[[bytes], bytes] | None = None
               ) -> Relayed:
    """The copy for the other party, through every step of ``rewrite.STEPS``;
    ``unverified``: the banner warns that nothing proved the sender's domain sent it;
    ``sign``: DKIM with the relay domain's key."""
    sender_role = recipient_role.other
    sender, recipient = booking.party(sender_role), booking.party(recipient_role)
    relay_of = {role: book.relay_address(role, booking.token(role)) for role in Role}
    message_id = new_message_id(book)
    text = html = None
    if voice.banner:
        b = banner(recipient.locale, sender.name, booking.reference, voice.platform_name,
                   open_until(booking, voice.grace) if recipient_role is Role.SUPPLIER else None,
                   recipient_role is Role.SUPPLIER, voice.banner_style, unverified)
        text, html = b.text, b.html
    plan = RewritePlan(
        from_name=voice.display_name_template.format(name=sender.name,
                                                     platform=voice.platform_name),
        from_address=relay_of[sender_role],
        to_name=recipient.name,
        to_address=recipient.email,
        message_id=message_id,
        in_reply_to=translate_ids(facts.in_reply_to, pairs, recipient_role),
        references=translate_ids(facts.references, pairs, recipient_role),
        replacements={sender.email.lower(): relay_of[sender_role],
                      recipient.email.lower(): relay_of[recipient_role]},
        banner_text=text,
        banner_html=html,
        sign=sign,
    )
    pair = IdPair(sender_role, facts.message_id, message_id) if facts.message_id else None
    done = run(STEPS, raw, plan)
    return Relayed(done.raw, message_id, pair, done.changed)


def notice(*, reason: Outcome, cause: UndeliverableCause | None, booking: Booking,
           sender_role: Role, original: bytes, facts: MessageFacts, book: AddressBook,
           voice: Voice, now: datetime) -> tuple[bytes, str]:
    """A DSN to the sender of a refused message, in their language."""
    sender = booking.party(sender_role)
    message_id = new_message_id(book)
    raw = build_notice(Notice(
        reason=reason, cause=cause, locale=sender.locale,
        to_name=sender.name, to_address=sender.email,
        relay_domain=book.domain, noreply_address=book.noreply_address,
        platform_name=voice.platform_name, booking_reference=booking.reference,
        original_subject=facts.subject, original_message_id=facts.message_id,
        original_headers=header_block(original),  # their own headers
        final_recipient=book.relay_address(sender_role.other, booking.token(sender_role.other)),
        contact_form_url=(voice.contact_link(booking.reference, sender_role)
                          if voice.contact_link else voice.contact_form_url),
        max_attachment_mb=MAX_ATTACHMENT_MB,
        message_id=message_id, date=now, grace_days=voice.grace.days,
    ))
    return raw, message_id
