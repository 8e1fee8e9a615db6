"""What the portal's pages show, decided from plain values: a message's readable text and
attachments, where a message stands, whether a booking may still be asked to cancel.

Every message is attacker-controlled: its text is returned as text (the templates escape
it), and attachments are only ever offered as downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from enum import StrEnum
from html.parser import HTMLParser

from mailveil.domain.states import OutboxState
from mailveil.domain.verdicts import Outcome

MAX_TEXT = 20_000
"""Characters of a message's text shown on the page; the rest is in the archive."""


class Status(StrEnum):
    """Where a message of the thread stands, as the portal names it."""

    SENDING = "sending"
    DELIVERED = "delivered"
    REFUSED = "refused"
    UNDELIVERABLE = "undeliverable"
    BOUNCED = "bounced"
    FAILED = "failed"


_COPY_STATUS = {
    OutboxState.QUEUED: Status.SENDING,
    OutboxState.DELIVERED: Status.DELIVERED,
    OutboxState.UNDELIVERABLE: Status.UNDELIVERABLE,
    OutboxState.FAILED: Status.UNDELIVERABLE,
    OutboxState.RETURNED: Status.BOUNCED,
    OutboxState.BOUNCED: Status.BOUNCED,
    OutboxState.HELD: Status.SENDING,  # a review request care has not decided on yet
    OutboxState.REFUSED: Status.REFUSED,
    OutboxState.WITHHELD: Status.REFUSED,
}


def status(outcome: str, copy_state: str | None) -> Status:
    """A relayed message stands where its copy does; any other outcome was refused (the
    reason is the outcome) or failed."""
    if outcome == Outcome.RELAYED and copy_state is not None:
        return _COPY_STATUS.get(OutboxState(copy_state), Status.SENDING)
    if outcome == Outcome.FAILED:
        return Status.FAILED
    return Status.REFUSED


@dataclass(frozen=True)
class Attachment:
    index: int  # position among the message's parts, for the download link
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Readable:
    text: str
    truncated: bool
    attachments: list[Attachment]


def visible(mine: bool, copy: bytes | None, original: bytes) -> bytes | None:
    """What the supplier may read of a message: the copy the other side received, or their
    own original when none went out; never the customer's undelivered original, which the
    relay did not clean of the customer's real address."""
    if copy is not None:
        return copy
    return original if mine else None


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def readable(raw: bytes) -> Readable:
    """The text a person reads (plain preferred, else HTML reduced to its text) and the list
    of attachments."""
    message = parse(raw)
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        content = _content(body)
        text = _html_text(content) if body.get_content_subtype() == "html" else content
    text = text.strip()
    return Readable(text[:MAX_TEXT], len(text) > MAX_TEXT, attachments(message))


def attachments(message: EmailMessage) -> list[Attachment]:
    found = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if filename is None and not part.is_attachment():
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        found.append(Attachment(index, _safe_name(filename or f"part-{index}"),
                                part.get_content_type(), size))
    return found


def attachment_bytes(raw: bytes, index: int) -> tuple[str, bytes] | None:
    """The file name and decoded bytes of attachment ``index``, if it is one."""
    message = parse(raw)
    for found in attachments(message):
        if found.index == index:
            part = list(message.walk())[index]
            payload = part.get_payload(decode=True)
            return found.filename, payload if isinstance(payload, bytes) else b""
    return None


def _content(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset or broken encoding
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _safe_name(name: str) -> str:
    """A file name fit for a Content-Disposition header and a download folder."""
    cleaned = "".join(c for c in name if c.isprintable() and c not in '/\\"\r\n')
    return cleaned.strip(". ")[:200] or "attachment"


class _Text(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "title"})
    _BREAK = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class Request(StrEnum):
    """Where the latest cancellation request of a booking stands."""

    NONE = "none"
    WAITING = "waiting"
    CONFIRMED = "confirmed"
    DECLINED = "declined"
    UNANSWERED = "unanswered"  # no answer in time: recorded for care


def request_state(state: str | None, answer_by: datetime | None, now: datetime) -> Request:
    if state is None or answer_by is None:
        return Request.NONE
    if state == "requested":
        return Request.WAITING if now < answer_by else Request.UNANSWERED
    return Request(state)


def may_request_cancellation(booking_open: bool, cancelled: bool, latest: Request) -> bool:
    """An open, uncancelled booking without a request waiting for the customer."""
    return booking_open and not cancelled and latest is not Request.WAITING
