"""The facts the relay's rules decide on, read once from the raw message.

Rules must not each re-parse mail with their own tolerance for broken headers; they get
one immutable summary instead, computed without ever raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailveil.mail.mime import Entity, Field, parse, payload_size
from mailveil.mail.rewrite import KEPT_HEADERS

_MSG_ID = re.compile(r"<([^<>]+)>")
_ADDR_SPEC = re.compile(r"[^\s<>@\",;:()\[\]]+@[^\s<>@\",;:()\[\]]+")
_TOKEN = re.compile(r"[\w.-]+")
_LIST_PRECEDENCE = frozenset({"bulk", "junk", "list"})

MAX_REWRITTEN_HEADER = 64 * 1024
"""Bytes of a top-level field the relay may have to rewrite. Real ones stay far below (a
long Subject is a few hundred); past this the message is refused with a notice rather
than rewritten: one folded over 30,000 lines cost 31 s before rewriting was linear."""

MAX_SUBJECT = 998
"""Characters of the Subject kept for the archive and quoted in notices: enough to tell
which message it was; a notice's Subject folded from megabytes costs seconds."""


@dataclass(frozen=True)
class MessageFacts:
    subject: str
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    to_cc: list[str]
    auto_submitted: bool
    is_delivery_report: bool
    attachment_bytes: int
    date: str | None
    from_name: str
    oversized_header: str | None = None  # a field the relay writes out, too long to rewrite


def facts(raw: bytes) -> MessageFacts:
    root = parse(raw)
    subject = root.get("subject")
    date = root.get("date")
    message_ids = _msg_ids(root.get("message-id"))
    return MessageFacts(
        subject=_shortened(subject.decoded.strip()) if subject else "",
        message_id=message_ids[0] if message_ids else _bare_id(root.get("message-id")),
        in_reply_to=_msg_ids(root.get("in-reply-to")),
        references=_msg_ids(root.get("references")),
        to_cc=_recipients(root),
        auto_submitted=_auto_submitted(root),
        is_delivery_report=root.content_type == "multipart/report"
        and (root.param("report-type") or "").lower() == "delivery-status",
        attachment_bytes=sum(
            payload_size(e) for e in root.walk() if not e.multipart and e.is_attachment
        ),
        date=(date.text or None) if date else None,
        from_name=_display_name(root.get("from")),
        oversized_header=next((f.name for f in root.fields
                               if f.key in KEPT_HEADERS and len(f.raw) > MAX_REWRITTEN_HEADER),
                              None),
    )


def _shortened(text: str) -> str:
    return text if len(text) <= MAX_SUBJECT else text[: MAX_SUBJECT - 1] + "\u2026"


def _msg_ids(found: Field | None) -> list[str]:
    """Every ``<...>`` in the field, whitespace inside removed (broken folders insert it)."""
    if found is None:
        return []
    ids = ("<" + "".join(m.group(1).split()) + ">" for m in _MSG_ID.finditer(found.text))
    return list(dict.fromkeys(one for one in ids if one != "<>"))


def _bare_id(found: Field | None) -> str | None:
    """Some mailers omit the angle brackets; a lone ``local@domain`` is still an id."""
    words = found.text.split() if found else []
    return f"<{words[0]}>" if len(words) == 1 and "@" in words[0] else None


def _recipients(root: Entity) -> list[str]:
    """Addr-specs of To and Cc; an unparsable field is searched for anything address-like."""
    found: list[str] = []
    for one in root.fields:
        if one.key not in ("to", "cc"):
            continue
        mailboxes = one.mailboxes
        if mailboxes is None:
            found.extend(_ADDR_SPEC.findall(one.decoded))
        else:
            for mailbox in mailboxes:
                found.extend(_ADDR_SPEC.findall(mailbox.addr_spec))
    return list(dict.fromkeys(address.lower() for address in found))


def _auto_submitted(root: Entity) -> bool:
    """RFC 3834 plus the older conventions that still drive auto-responders and lists."""
    auto = root.get("auto-submitted")
    precedence = root.get("precedence")
    return (
        (auto is not None and _first_token(auto) != "no")
        or (precedence is not None and _first_token(precedence) in _LIST_PRECEDENCE)
        or root.get("x-autoreply") is not None
        or root.get("x-autorespond") is not None
    )


def _first_token(found: Field) -> str:
    match = _TOKEN.search(found.text)
    return match.group(0).lower() if match else ""


def _display_name(found: Field | None) -> str:
    mailboxes = found.mailboxes if found else None
    return mailboxes[0].display_name if mailboxes else ""
