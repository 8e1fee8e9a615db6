"""Replacing real addresses by relay addresses wherever a reader could still see them.

Mail programs quote the other party in many shapes: plain text, ``mailto:`` links,
URL-encoded ``%40``, HTML entities (``&#64;``), and RFC 2047 encoded words pasted into
bodies. Each shape keeps its own "@" spelling so that links and markup stay valid.

Spellings that veil other characters of an address too (``&#97;nn@…``, ``%61nn%40…``, a
fullwidth "@" (U+FF20), a zero-width space before the "@") are found in a normalised copy of the
text (HTML entities, percent escapes, Unicode NFKC, invisible characters removed) and
replaced, in the original, by the plain relay address; the text around them is kept.
"""

from __future__ import annotations

import html
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Mapping
from email.charset import Charset
from functools import lru_cache

from mailveil.mail.charsets import ENCODED_RUN, decode_words
from mailveil.mail.mime import MAX_ENCODING_DEPTH

_AT_FORMS = r"(?:@|%40|=40|&#0*64;|&#[xX]0*40;|&commat;)"
_BEFORE = r"(?:(?<![\w.+-])|(?<=%[0-9A-Fa-f]{2}))"
_AFTER = r"(?![\w-]|\.[\w-])"
_BEFORE_IN_FILE_NAME = r"(?:(?<![^\W_])|(?<=%[0-9A-Fa-f]{2}))"
_AFTER_IN_FILE_NAME = r"(?![^\W_])"
_VEILED = re.compile(
    r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});|%[0-7][0-9a-fA-F]"
    r"|[^\x00-\x7f]+"
)
"""What may hide a character of an address: an entity, an ASCII percent escape, non-ASCII."""
_INVISIBLE_CHARS = r"\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
"""Format characters a reader does not see (NFKC keeps them)."""
_VEILED_AT = re.compile(
    rf"[\ufe6b\uff01-\uff5e{_INVISIBLE_CHARS}]|[^\x00-\x7f]@|@[^\x00-\x7f]|&#|%[0-7]"
)
"""The cheap test before normalising: a fullwidth or small ASCII character, an invisible
one, non-ASCII at a plain "@", an entity or a percent escape. Text without any was fully
scrubbed by the pattern."""
_MAY_SPELL_AN_ADDRESS = re.compile(rf"{_AT_FORMS}|=\?", re.IGNORECASE)
_UTF8 = Charset("utf-8")


def scrub_text(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every real address in ``replacements`` (case-insensitive) swapped."""
    return _scrub(text, replacements, in_file_name=False)


def scrub_filename(name: str, replacements: Mapping[str, str]) -> str:
    """Like :func:`scrub_text`, but only letters and digits extend an address.

    File names join words with ``-``, ``_`` and ``.``: in "voucher-ann@example.org.pdf" a
    reader sees the sender's address. In running text that would be another address
    (``voucher-ann@…``, ``ann@example.org.uk``); in a file name, replacing too much is the
    safe side.
    """
    return _scrub(name, replacements, in_file_name=True)


def may_name_address(text: str) -> bool:
    """False only when ``text`` holds no "@" spelling, not even in an encoded word.

    A cheap test that spares parsing the many header fields that cannot name anyone.
    """
    return _MAY_SPELL_AN_ADDRESS.search(text) is not None


def unveiled(text: str) -> str:
    """``text`` as a reader sees it: entities and percent escapes decoded, Unicode NFKC,
    invisible characters removed (for matching, e.g. review requests; never sent)."""
    return _VEILED.sub(lambda m: _shown(m.group(0)), text)


def scrub_bytes(data: bytes, replacements: Mapping[str, str]) -> bytes:
    """Scrub bytes of unknown charset; latin-1 maps each byte to one char, so the rest is kept."""
    return scrub_text(data.decode("latin-1"), replacements).encode("latin-1", "replace")


def _scrub(text: str, replacements: Mapping[str, str], *, in_file_name: bool) -> str:
    pairs = _pairs(replacements)
    if not pairs:
        return text
    locals_ = {real.rpartition("@")[0].casefold() for real, _ in pairs}

    def swap(part: str) -> str:
        # Most text names nobody: a substring test spares building the pattern, which
        # costs most of a millisecond for a conversation not seen recently.
        folded = part.casefold()
        if any(local in folded for local in locals_):
            part = _swapper(pairs, in_file_name)(part)
        return _unveiled(part, pairs, in_file_name) if _VEILED_AT.search(part) else part

    return swap(ENCODED_RUN.sub(lambda m: _scrub_encoded(m.group(0), swap), text))


def _pairs(replacements: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Keys without "@" cannot be spelled in the shapes above and are ignored."""
    usable = ((real.strip(), relay.strip()) for real, relay in replacements.items())
    return tuple(sorted((real, relay) for real, relay in usable if "@" in real and "@" in relay))


def _unveiled(text: str, pairs: tuple[tuple[str, str], ...], in_file_name: bool) -> str:
    """``text`` with the addresses that only show once normalised replaced: an HTML entity
    or a percent escape for any character, a fullwidth or otherwise compatible character
    (Unicode NFKC), an invisible one (zero-width space, soft hyphen...) inside the address.

    Only the pieces that spell an address are changed; they become the plain relay address.
    Linear: each veiled piece is normalised once, and matches are mapped back to the
    original text by a bisection over the pieces' offsets.
    """
    plain: list[str] = []
    starts: list[int] = []  # where each piece starts in the normalised text
    spans: list[tuple[int, int]] = []  # and where it came from in ``text``
    as_is: list[bool] = []  # whether the piece was not normalised
    position = length = 0
    for veiled in [*_VEILED.finditer(text), None]:
        begin = len(text) if veiled is None else veiled.start()
        if begin > position or veiled is None:
            plain.append(text[position:begin])
            starts.append(length)
            spans.append((position, begin))
            as_is.append(True)
            length += begin - position
        if veiled is None:
            break
        shown = _shown(veiled.group(0))
        plain.append(shown)
        starts.append(length)
        spans.append((begin, veiled.end()))
        as_is.append(False)
        length += len(shown)
        position = veiled.end()
    normalised = "".join(plain)
    folded = normalised.casefold()
    if not any(real.rpartition("@")[0].casefold() in folded for real, _ in pairs):
        return text
    found = list(_pattern(pairs, in_file_name).finditer(normalised))
    if not found:
        return text

    def original(offset: int, *, end: bool) -> int:
        index = bisect_right(starts, offset - (1 if end else 0)) - 1
        start, stop = spans[index]
        if as_is[index]:
            return start + offset - starts[index]
        return stop if end else start

    out: list[str] = []
    position = 0
    for match in found:
        begin, end = original(match.start(), end=False), original(match.end(), end=True)
        if begin < position:
            continue
        out.append(text[position:begin])
        out.append(pairs[int((match.lastgroup or "at0")[2:])][1])
        position = end
    out.append(text[position:])
    return "".join(out)


def _shown(veiled: str) -> str:
    """What a reader sees of an entity, a percent escape or a run of non-ASCII text."""
    if veiled.startswith("&"):
        return html.unescape(veiled)
    if veiled.startswith("%"):
        return chr(int(veiled[1:], 16))
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", veiled))


@lru_cache(maxsize=1024)
def _pattern(pairs: tuple[tuple[str, str], ...], in_file_name: bool) -> re.Pattern[str]:
    """One pattern per replacement set; the group ``at<i>`` tells which address hit."""
    alternatives = []
    for index, (real, _relay) in enumerate(pairs):
        local, _, domain = real.rpartition("@")
        alternatives.append(rf"{re.escape(local)}(?P<at{index}>{_AT_FORMS}){re.escape(domain)}")
    before, after = (
        (_BEFORE_IN_FILE_NAME, _AFTER_IN_FILE_NAME) if in_file_name else (_BEFORE, _AFTER)
    )
    return re.compile(rf"{before}(?:{'|'.join(alternatives)}){after}", re.IGNORECASE)


@lru_cache(maxsize=1024)
def _swapper(pairs: tuple[tuple[str, str], ...], in_file_name: bool) -> Callable[[str], str]:
    """Each address replaced by its relay address, spelled with the same "@"."""
    pattern = _pattern(pairs, in_file_name)

    def relay_for(match: re.Match[str]) -> str:
        group = match.lastgroup or "at0"
        local, _, domain = pairs[int(group[2:])][1].rpartition("@")
        return f"{local}{match.group(group)}{domain}"

    return lambda text: pattern.sub(relay_for, text)


def _scrub_encoded(run: str, swap: Callable[[str], str], depth: int = 1) -> str:
    """Decode a run of encoded words; re-encode it as UTF-8 only when an address was in it.

    Encoded words inside the decoded text are scrubbed too, to the depth a header written
    afresh is decoded (:func:`mailveil.mail.mime.header_text`): one level deeper than a
    reader goes, an address would otherwise come out in the open.
    """
    decoded = decode_words(run)
    inner = decoded if depth >= MAX_ENCODING_DEPTH else ENCODED_RUN.sub(
        lambda m: _scrub_encoded(m.group(0), swap, depth + 1), decoded)
    scrubbed = swap(inner)
    return run if scrubbed == decoded else _UTF8.header_encode(scrubbed)
