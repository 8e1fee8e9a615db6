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
bytes. A content line is searched like text (:func:`scrub_text`: ``mailto:``, ``CN=``,
quoted, any case).

Known limits: a vCard 2.1 quoted-printable value continued with soft line breaks (``=`` at
the end of a line) is searched one physical line at a time; a calendar that does not start
with ``BEGIN:`` in an ASCII-compatible charset (UTF-16) is left to the text scrubber when
it is ``text/*`` and relayed as it came otherwise; a non-ASCII local part is matched
case-insensitively in ASCII letters only; and a recipient's own non-ASCII address put back
into a 7-bit part makes it 8-bit (it can only be delivered with SMTPUTF8 anyway).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

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
_FOLD_BREAK = rb"(?:(?:\r\n|\r|\n)[ \t])?"
_BREAK = re.compile(rb"\r\n|\r|\n")
_FOLD = (b" ", b"\t")
_UNFOLD = re.compile(rb"(?:\r\n|\r|\n)[ \t]")
_SEPARATOR = "\n\x00\n"
"""Joins the pieces scrubbed together: no unfolded line holds a line break, and an encoded
word (which :func:`scrub_text` may decode) can neither hold it nor run across it."""
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
    came.

    Only content lines that hold the local part of an address to replace (folded or not)
    are unfolded, and they are scrubbed in one call: the rest of a large calendar is copied
    in slices, and many short lines cost one scrubbing pass, not one each.
    """
    locals_ = frozenset(real.rpartition("@")[0].lower().encode("utf-8", "surrogateescape")
                        for real in replacements if "@" in real)
    spans = _candidate_lines(data, _local_parts(locals_ - {b""}))
    texts = [_UNFOLD.sub(b"", data[start:end]).rstrip(b"\r\n").decode("utf-8", "surrogateescape")
             for start, end in spans]
    splits = [_ESCAPE.split(text) for text in texts]
    pieces = [piece for split in splits for piece in split[::2]]
    scrubbed = scrub_text(_SEPARATOR.join(pieces), replacements).split(_SEPARATOR)
    if len(scrubbed) != len(pieces):  # a future scrub_text that joined pieces: one by one
        scrubbed = [scrub_text(piece, replacements) for piece in pieces]
    done, taken, out = 0, 0, []
    for (start, end), text, split in zip(spans, texts, splits, strict=True):
        count = len(split[::2])
        split[::2], taken = scrubbed[taken : taken + count], taken + count
        if (new := "".join(split)) != text:
            out += [data[done:start], _refolded(data[start:end], new)]
            done = end
    return b"".join([*out, data[done:]])


@lru_cache(maxsize=256)
def _local_parts(locals_: frozenset[bytes]) -> re.Pattern[bytes] | None:
    """Any of ``locals_``, case-insensitive, a fold allowed between any two octets."""
    if not locals_:
        return None
    spelled = (_FOLD_BREAK.join(re.escape(local[i : i + 1]) for i in range(len(local)))
               for local in sorted(locals_))
    return re.compile(b"|".join(spelled), re.IGNORECASE)


def _candidate_lines(data: bytes, local: re.Pattern[bytes] | None) -> list[tuple[int, int]]:
    """Where each content line that may name an address to replace begins and ends."""
    spans: list[tuple[int, int]] = []
    done = 0
    while local is not None and (hit := local.search(data, done)):
        start = _line_start(data, hit.start(), done)
        while start > done and data[start : start + 1] in _FOLD:  # a fold: go back a line
            before = start - 2 if data[start - 2 : start] == b"\r\n" else start - 1
            start = _line_start(data, before, done)
        end = hit.start()
        while (found := _BREAK.search(data, end)) and data[found.end() : found.end() + 1] in _FOLD:
            end = found.end()
        done = found.end() if found else len(data)
        spans.append((start, done))
    return spans


def _line_start(data: bytes, at: int, floor: int) -> int:
    """The start of the physical line holding ``data[at]``, searching back no further than
    ``floor`` (where the last content line ended), which keeps the whole scan linear."""
    return max(data.rfind(b"\n", floor, at), data.rfind(b"\r", floor, at), floor - 1) + 1


def _refolded(raw: bytes, text: str) -> bytes:
    """The content line ``raw`` written afresh with ``text``, in its own line breaks."""
    first = _BREAK.search(raw)
    newline = first.group() if first else b"\r\n"
    ending = raw[len(raw.rstrip(b"\r\n")) :]
    return fold_line(text.encode("utf-8", "surrogateescape"), newline) + ending


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
