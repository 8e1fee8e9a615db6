"""Calendar invitations (iCalendar, RFC 5545) and contact cards (vCard, RFC 6350).

An invitation names both parties: ``ORGANIZER;CN=Ann:mailto:ann@…`` and one
``ATTENDEE;…:mailto:…`` per guest, and a vCard has ``EMAIL:`` lines. Left alone, they
would hand each party the other's real address, wherever the part sits (inline in a
multipart/alternative, ``application/ics``, a named ``.ics`` or ``.vcf`` attachment).

A party's own address is treated differently here than in text: in the copy for the
recipient, the recipient's *relay* address becomes their real one. Their calendar
program then finds its own user among the attendees (or as the organiser) and offers
"Accept"; the iMIP REPLY (RFC 6047) it sends goes to the relay address it sees for the
other party, and on the way back the same rule gives the organiser a REPLY that names
them as ORGANIZER and the guest by relay address, which their program matches to the
event. Each side sees only relay addresses of the other; nobody sees more than their own.

The rewriting works on content lines, not on a parsed calendar: the ``icalendar`` and
``vobject`` packages re-serialise every line (parameter quoting, folding, property order,
escapes), which would change bytes nobody asked to change and break what other programs
read from them (X- properties, odd but working folding, vendor quirks). Here a content
line is unfolded (RFC 5545 3.1), scrubbed only when it holds a real address, and then
folded again at 75 octets without splitting a UTF-8 sequence; every other line keeps its
bytes. Known limits: a vCard 2.1 quoted-printable value continued with soft line breaks
(``=`` at the end of a line) is searched one physical line at a time, and a calendar in
UTF-16 is not read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mailveil.mail.mime import Entity, payload
from mailveil.mail.scrub import scrub_text

CARD_TYPES = frozenset({
    "text/calendar", "text/x-vcalendar", "application/ics",
    "text/vcard", "text/x-vcard", "text/directory",
})
CARD_SUFFIXES = (".ics", ".ical", ".ifb", ".vcs", ".vcf", ".vcard")
FOLD_OCTETS = 75
"""RFC 5545 3.1 and RFC 6350 3.2: content lines SHOULD NOT be longer, line break excluded."""

_BEGIN = re.compile(rb"^(?:\xef\xbb\xbf)?\s*BEGIN:(?:VCALENDAR|VCARD)\b", re.IGNORECASE)
_ESCAPE = re.compile(r"(\\.)")
"""A TEXT escape (``\\n``, ``\\,``): never part of an address, but ``\\nann@…`` would hide
one behind a letter."""


def card_replacements(replacements: Mapping[str, str], recipient: str) -> dict[str, str]:
    """The text replacements, with the recipient's relay address mapped back to them.

    ``replacements`` maps both parties' real addresses to their relay addresses; for the
    recipient's own copy, their real address stays and their relay address becomes it.
    """
    own = recipient.strip().lower()
    mapping = {real: relay for real, relay in replacements.items() if real.lower() != own}
    mapping.update({relay: recipient for real, relay in replacements.items()
                    if real.lower() == own})
    return mapping


def rewrite_card(entity: Entity, replacements: Mapping[str, str]) -> bytes | None:
    """The new decoded content of a calendar or vCard leaf; None for any other part, or
    when nothing in it changes."""
    if entity.multipart or not _declared_card(entity):
        return None
    data = payload(entity)
    if not _BEGIN.match(data):
        return None
    new = rewrite_lines(data, replacements)
    return None if new == data else new


def _declared_card(entity: Entity) -> bool:
    if entity.content_type in CARD_TYPES:
        return True
    name = entity.filename
    return name is not None and name.strip().lower().endswith(CARD_SUFFIXES)


def rewrite_lines(data: bytes, replacements: Mapping[str, str]) -> bytes:
    """``data`` with the real addresses of each content line replaced, other lines as they
    came."""
    out: list[bytes] = []
    physical = data.splitlines(keepends=True)
    start = 0
    while start < len(physical):
        end = start + 1
        while end < len(physical) and physical[end][:1] in (b" ", b"\t"):
            end += 1
        out.append(_content_line(physical[start:end], replacements))
        start = end
    return b"".join(out)


def _content_line(lines: list[bytes], replacements: Mapping[str, str]) -> bytes:
    """One content line, given as its physical lines, folded afresh only if it changed."""
    unfolded = b"".join(
        (line if i == 0 else line[1:]).rstrip(b"\r\n") for i, line in enumerate(lines)
    )
    text = unfolded.decode("utf-8", "surrogateescape")
    new = "".join(piece if _ESCAPE.fullmatch(piece) else scrub_text(piece, replacements)
                  for piece in _ESCAPE.split(text))
    if new == text:
        return b"".join(lines)
    last = lines[-1]
    ending = last[len(last.rstrip(b"\r\n")):]
    first = lines[0]
    newline = first[len(first.rstrip(b"\r\n")):] or b"\r\n"
    return fold_line(new.encode("utf-8", "surrogateescape"), newline) + ending


def fold_line(line: bytes, newline: bytes = b"\r\n") -> bytes:
    """``line`` folded into physical lines of at most 75 octets, never inside a UTF-8
    sequence; the continuation lines start with a space (which counts)."""
    pieces: list[bytes] = []
    start, room = 0, FOLD_OCTETS
    while len(line) - start > room:
        cut = start + room
        while cut > start + 1 and 0x80 <= line[cut] < 0xC0:  # a UTF-8 continuation byte
            cut -= 1
        pieces.append(line[start:cut])
        start, room = cut, FOLD_OCTETS - 1
    pieces.append(line[start:])
    return (newline + b" ").join(pieces)
