"""The text a reader of a message sees, as one string to match words and links against
(review requests, :mod:`mailveil.domain.review`): the Subject and every text part that is
not an attachment, decoded from its transfer encoding and charset, HTML once as written
(its links) and once without tags (its words), then unveiled as the scrubber unveils
addresses (entities, percent escapes, NFKC, invisible characters). Pure, never raises.

Only the first :data:`MAX_SEEN` characters are read: unveiling and matching cost about a
microsecond a character, and a request for a review sits where the reader sees it, not
after sixty pages of text (a sender who hides it there hides it from the reader too)."""

from __future__ import annotations

import re

from mailveil.budget import spend
from mailveil.mail import charsets
from mailveil.mail.mime import Entity, parse, payload
from mailveil.mail.scrub import unveiled

_BLOCK_TAG = re.compile(
    r"</?(?:p|div|br|hr|li|ul|ol|tr|td|th|table|h[1-6]|blockquote|section|article|a)\b[^<>]*>",
    re.IGNORECASE)
"""Tags that part words for a reader; the others (``<b>``, ``<span>``…) may sit inside one."""
_TAG = re.compile(r"<[^<>]*>")
MAX_SEEN = 200_000


def seen_text(raw: bytes) -> str:
    """Subject and readable text parts of ``raw``, one per line, as a reader sees them."""
    root = parse(raw)
    subject = root.get("subject")
    pieces = [subject.decoded if subject is not None else ""]
    length = len(pieces[0])
    for entity in root.walk():
        if length >= MAX_SEEN:
            break
        if entity.multipart or entity.maintype != "text" or entity.is_attachment:
            continue
        spend()
        text = _decoded(entity)[:MAX_SEEN]
        seen = ([text, _TAG.sub("", _BLOCK_TAG.sub(" ", text))]
                if entity.content_type == "text/html" else [text])
        pieces += seen
        length += sum(map(len, seen))
    return unveiled("\n".join(pieces)[:MAX_SEEN])


def _decoded(entity: Entity) -> str:
    """A charset the relay does not decode is read as UTF-8, as the scrubber falls back."""
    declared = charsets.codec(entity.param("charset") or "us-ascii") or "utf-8"
    data = payload(entity)
    try:
        return data.decode(declared)
    except UnicodeError:
        return data.decode("utf-8", "replace")
