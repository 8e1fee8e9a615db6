"""The portal's own mail (a sign-in link, a cancellation question): composed here from
texts the templates rendered in the reader's language, then signed and put in the outbox
like every notice, so the worker delivers it with retries and the archive keeps it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

from sqlalchemy.orm import Session

from mailveil.domain.addresses import AddressBook, Role, new_bounce_token
from mailveil.domain.states import OutboxKind
from mailveil.pipeline.compose import new_message_id
from mailveil.store import repository as repo

_POLICY = policy.SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class Letter:
    to_name: str
    to_address: str
    subject: str
    body: str


def compose(letter: Letter, *, from_name: str, from_address: str, message_id: str,
            date: datetime) -> bytes:
    """Plain text in UTF-8, CRLF line ends; nothing should answer it automatically."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = Address(" ".join(from_name.split()), addr_spec=from_address)
    local, _, domain = letter.to_address.rpartition("@")
    msg["To"] = Address(" ".join(letter.to_name.split())[:200], local, domain)
    msg["Subject"] = " ".join(letter.subject.split())
    msg["Date"] = date
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(letter.body, charset="utf-8")
    return msg.as_bytes()


def queue(s: Session, letter: Letter, *, role: Role, booking_id: int | None, book: AddressBook,
          platform_name: str, sign: Callable[[bytes], bytes], now: datetime) -> None:
    """Into the outbox with the null envelope sender, like a notice: it never bounces back."""
    message_id = new_message_id(book)
    raw = compose(letter, from_name=platform_name, from_address=book.noreply_address,
                  message_id=message_id, date=now)
    repo.queue_outbounds(s, [repo.NewOutbound(
        kind=OutboxKind.NOTICE, inbound_id=None, booking_id=booking_id, recipient_role=role,
        bounce_token=new_bounce_token(), mail_from="", rcpt_to=letter.to_address,
        message_id=message_id, raw=sign(raw))], now)
