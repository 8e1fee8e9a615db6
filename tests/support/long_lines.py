"""Checks shared by the rewrite tests and the end-to-end tests of real mail's long lines."""

from __future__ import annotations

import email
import re
from email import policy
from typing import NamedTuple

from mailveil.mail.mime import MAX_LINE

_LINE = re.compile(rb"[^\n]*")


def long_lines(raw: bytes) -> list[int]:
    """The lengths (CRLF not counted) of the lines of ``raw`` over RFC 5322's 998."""
    lengths = (len(m.group(0).removesuffix(b"\r")) for m in _LINE.finditer(raw))
    return [n for n in lengths if n > MAX_LINE]


class Leaf(NamedTuple):
    kind: str  # the content type
    filename: str | None
    data: bytes  # the decoded payload


def decoded_leaves(raw: bytes) -> list[Leaf]:
    """Every leaf as the stdlib reads it, forwarded messages opened: an independent reading
    of what a recipient gets."""
    found: list[Leaf] = []
    for part in email.message_from_bytes(raw, policy=policy.compat32).walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        if part.get_content_type() in ("message/rfc822", "message/global"):
            found.extend(decoded_leaves(data))
            continue
        found.append(Leaf(part.get_content_type(), part.get_filename(), data))
    return found
